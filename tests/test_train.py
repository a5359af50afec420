from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest
import torch

from tests.conftest import LABEL_NAMES
from tests.helpers import copy_tokens, small_params, write_validated
from textclf.core import artifacts
from textclf.core.codedeps import PACKAGE_DIR, import_closure
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling import batching, checkpoint, network, objectives, optimisation
from textclf.modeling.bundle import load_bundle
from textclf.modeling.precision import resolve_precision
from textclf.stages import tokenize, train


@pytest.fixture
def tokens_root(tmp_path_factory, corpus_dir):
    root = tmp_path_factory.mktemp("project")
    write_validated(root, corpus_dir)
    tokenize.run(small_params(), Paths(root))
    return root


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path, monkeypatch):
    # dvclive looks for a DVC repo from the cwd; tests must not see (or touch) this checkout.
    monkeypatch.chdir(tmp_path)


def _train(root, **overrides):
    return train.run(small_params(**overrides), Paths(root))


def test_trains_a_loadable_model_that_beats_chance(tokens_root, monkeypatch) -> None:
    monkeypatch.setattr(train, "LOG_EVERY_STEPS", 2)  # the tiny corpus has few steps per epoch
    summary = _train(tokens_root, train={"epochs": 3, "refit": False})
    assert summary["best_val_acc"] > 0.6  # four classes: chance is 0.25
    bundle = load_bundle(tokens_root / "models" / "model.pt")
    assert bundle.label_names == LABEL_NAMES
    assert bundle.train_config["train"]["epochs"] == 3
    assert bundle.train_config["model"]["d_model"] == 32
    assert bundle.tokenizer.encoding == "cl100k_base"
    metrics = json.loads((tokens_root / "metrics" / "train" / "metrics.json").read_text())
    assert metrics["best/val_acc"] == summary["best_val_acc"]
    curve = (tokens_root / "metrics/train/plots/metrics/val/acc.tsv").read_text().splitlines()
    assert curve[0] == "step\tacc" and len(curve) == 1 + summary["epochs_run"]
    # The loss and lr every 2 steps, at the same steps; validation at each epoch's last step.
    plots = tokens_root / "metrics/train/plots/metrics"
    loss = [line.split("\t") for line in (plots / "train/loss.tsv").read_text().splitlines()]
    lr = [line.split("\t") for line in (plots / "lr.tsv").read_text().splitlines()]
    steps = [int(row[0]) for row in loss[1:]]
    assert loss[0] == ["step", "loss"] and lr[0] == ["step", "lr"]
    assert steps == [int(row[0]) for row in lr[1:]] and steps == sorted(set(steps))
    assert len(steps) > 2 * summary["epochs_run"] and all(float(row[1]) > 0 for row in loss[1:])
    epoch_ends = [int(line.split("\t")[0]) for line in curve[1:]]
    assert epoch_ends[-1] == steps[-1] and set(epoch_ends) <= set(steps)
    assert float(lr[1][1]) != float(lr[-1][1])  # warm-up and decay: the schedule is visible
    # Speed differs between identical runs: it goes beside the metrics, not into them.
    assert not any("samples_per_s" in key or key == "resumed" for key in metrics)
    runtime = json.loads((tokens_root / "metrics" / "runtime" / "train.json").read_text())
    assert runtime["resumed"] is False
    assert len(runtime["samples_per_s"]) == 3 and min(runtime["samples_per_s"]) > 0


def test_refit_trains_on_the_validation_rows_and_ships_the_last_epoch(tokens_root,
                                                                      monkeypatch) -> None:
    tokens = tokens_root / "data" / "tokens"
    train_rows = artifacts.load_split(tokens, "train")
    val_rows = artifacts.load_split(tokens, "val")
    n_train, n_all = len(train_rows["labels"]), len(train_rows["labels"]) + len(val_rows["labels"])
    seen: dict[int, list[int]] = {}
    real_trimmed = train.trimmed

    def spy(split, index, device):
        # Every row a step trains on, keyed by position, as its token ids.
        for i in index.tolist():
            seen[i] = split["ids"][i, :split["lengths"][i]].tolist()
        return real_trimmed(split, index, device)

    monkeypatch.setattr(train, "trimmed", spy)
    summary = _train(tokens_root, train={"epochs": 3, "refit": True, "ema_decay": 0.9})

    assert sorted(seen) == list(range(n_all))  # each epoch covers train and validation rows
    for j in range(len(val_rows["labels"])):
        assert seen[n_train + j] == val_rows["ids"][j, :val_rows["lengths"][j]].tolist()
    # No validation score and no selection: the last epoch's (averaged) weights are shipped.
    assert "best_val_acc" not in summary and summary["best_epoch"] == 3
    assert summary["train_rows"] == n_all
    metrics = json.loads((tokens_root / "metrics" / "train" / "metrics.json").read_text())
    assert metrics["train_rows"] == n_all and metrics["best/epoch"] == 3
    assert not any("val" in key for key in metrics)
    assert not (tokens_root / "metrics/train/plots/metrics/val").exists()
    bundle = load_bundle(tokens_root / "models" / "model.pt")
    assert bundle.train_config["train"]["refit"] is True
    last = torch.load(tokens_root / "models" / "checkpoint" / "last.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items()
                if k.startswith("module.")}
    assert all(torch.equal(v, averaged[k]) for k, v in bundle.model.state_dict().items())


def test_same_seed_same_weights(tokens_root, tmp_path) -> None:
    copy_tokens(tokens_root, tmp_path)
    _train(tokens_root)
    _train(tmp_path)
    first = load_bundle(tokens_root / "models" / "model.pt").model.state_dict()
    second = load_bundle(tmp_path / "models" / "model.pt").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(("ema_decay", "refit"), [(0.0, False), (0.9, True)],
                         ids=["raw-weights-selected-on-val", "weight-average-refit"])
def test_crash_after_checkpoint_resumes_to_identical_result(tokens_root, tmp_path, monkeypatch,
                                                            ema_decay: float, refit: bool) -> None:
    copy_tokens(tokens_root, tmp_path)
    config = {"epochs": 3, "patience": 0, "ema_decay": ema_decay, "refit": refit}
    reference = _train(tokens_root, train=config)

    real_save = checkpoint.TrainState.save

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if self.epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(checkpoint.TrainState, "save", save_then_crash)
        _train(tmp_path, train=config)
    resumed = _train(tmp_path, train=config)

    assert resumed["resumed"] is True
    assert resumed.get("best_val_acc") == reference.get("best_val_acc")
    assert ("best_val_acc" not in resumed) == refit
    a = load_bundle(tokens_root / "models" / "model.pt").model.state_dict()
    b = load_bundle(tmp_path / "models" / "model.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Replayed epoch 1 + trained epochs 2 and 3: the curves an uninterrupted run draws.
    for curve in ("train/loss.tsv", "lr.tsv"):
        a_curve, b_curve = (root / "metrics/train/plots/metrics" / curve
                            for root in (tokens_root, tmp_path))
        assert b_curve.read_text() == a_curve.read_text()
        assert len(b_curve.read_text().splitlines()) >= 4


def test_the_saved_model_is_the_weight_average_when_enabled(tokens_root) -> None:
    _train(tokens_root, train={"epochs": 1, "ema_decay": 0.9})
    saved = load_bundle(tokens_root / "models" / "model.pt").model.state_dict()
    ckpt = torch.load(tokens_root / "models" / "checkpoint" / "last.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()
                if k.startswith("module.")}
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not all(torch.equal(saved[k], ckpt["model"][k]) for k in saved)  # not the raw ones


def test_checkpoint_of_another_config_is_not_resumed(tokens_root) -> None:
    _train(tokens_root, train={"epochs": 1})
    summary = _train(tokens_root, train={"epochs": 1, "lr": 1e-3})
    assert summary["resumed"] is False


def test_checkpoint_of_other_training_code_is_not_resumed(tokens_root, tmp_path,
                                                          monkeypatch) -> None:
    _train(tokens_root, train={"epochs": 1})
    assert _train(tokens_root, train={"epochs": 1})["resumed"] is True
    # The same run after an edit to any file the stage imports (here the serving layer's id
    # encoding, far from train.py): copies of its import closure with that one file changed.
    closure = import_closure("textclf.stages.train")
    copies = []
    for source in closure:
        copy = tmp_path / "code" / source.relative_to(PACKAGE_DIR)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    assert tmp_path / "code" / "serving" / "encoding.py" in copies
    with (tmp_path / "code" / "serving" / "encoding.py").open("a") as fh:
        fh.write("# edited\n")
    monkeypatch.setattr(train, "import_closure", lambda module: tuple(copies))
    summary = _train(tokens_root, train={"epochs": 1})
    assert summary["resumed"] is False
    runtime = json.loads((tokens_root / "metrics" / "runtime" / "train.json").read_text())
    assert runtime["resumed"] is False


def test_bucketed_batches_cover_every_row_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    batches = batching.bucketed_batches(lengths, 32, torch.Generator().manual_seed(1))
    counts = collections.Counter(np.concatenate(batches).tolist())
    assert sorted(counts) == list(range(1000)) and set(counts.values()) == {1}
    # Sorting within buckets keeps each batch's lengths close together.
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [optimisation.lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_precision_choice() -> None:
    params = small_params(train={"precision": "fp32", "device": "cpu"})
    assert resolve_precision(params.train).dtype is None
    bf16 = resolve_precision(small_params(train={"precision": "bf16"}).train)
    assert bf16.dtype == torch.bfloat16 and not bf16.scaled
    if not torch.cuda.is_available():
        with pytest.raises(TextclfError, match="no CUDA device"):
            resolve_precision(small_params(train={"device": "cuda"}).train)


def test_distillation_needs_teacher_labels(tokens_root, tmp_path) -> None:
    summary = _train(tokens_root, train={"epochs": 1, "distill_weight": 0.5,
                                         "token_dropout": 0.1, "refit": False})
    assert summary["best_val_acc"] > 0.25
    # A refit also distils on the validation rows: their soft labels must be there too.
    val = dict(np.load(tokens_root / "data" / "tokens" / "val.npz"))
    np.savez(tokens_root / "data" / "tokens" / "val.npz",
             **{k: v for k, v in val.items() if k != "teacher"})
    with pytest.raises(TextclfError, match=r"val\.npz holds no teacher.*dvc repro tokenize"):
        _train(tokens_root, train={"epochs": 1, "distill_weight": 0.5, "refit": True})
    _train(tokens_root, train={"epochs": 1, "distill_weight": 0.5, "refit": False})
    split = dict(np.load(tokens_root / "data" / "tokens" / "train.npz"))
    del split["teacher"]
    np.savez(tokens_root / "data" / "tokens" / "train.npz", **split)
    with pytest.raises(TextclfError, match=r"tokenize\.teacher_folds"):
        _train(tokens_root, train={"epochs": 1, "distill_weight": 0.5})


def test_distillation_loss_pulls_towards_the_teacher() -> None:
    cfg = small_params(train={"distill_weight": 1.0, "distill_temperature": 1.0,
                              "label_smoothing": 0.0}).train
    labels = torch.tensor([0])
    teacher = torch.tensor([[0.1, 0.9, 0.0, 0.0]])
    loss = objectives.classification_loss
    near = loss(torch.tensor([[0.0, 2.2, -5.0, -5.0]]), labels, cfg, teacher)
    far = loss(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), labels, cfg, teacher)
    assert near < far  # the true label is 0, but a pure distillation loss follows the teacher


def test_token_dropout_keeps_padding_and_rate() -> None:
    ids = torch.randint(2, 100, (64, 50))
    ids[:, 40:] = 0
    dropped = optimisation.drop_tokens(ids, 0.2)
    assert (dropped[:, 40:] == 0).all()
    share = (dropped[:, :40] == 1).float().mean().item()
    assert 0.15 < share < 0.25
    assert torch.equal(optimisation.drop_tokens(ids, 0.0), ids)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16),
                                                ("fp32", torch.float32)])
def test_training_runs_in_the_precision_asked_for(tokens_root, monkeypatch, precision,
                                                  dtype) -> None:
    head_outputs: set[torch.dtype] = set()
    forward = network.TextClassifier.forward

    def recording(self, ids):
        logits = forward(self, ids)
        if self.training:
            head_outputs.add(logits.dtype)
        return logits

    monkeypatch.setattr(network.TextClassifier, "forward", recording)
    summary = _train(tokens_root, train={"precision": precision, "epochs": 1, "refit": False})
    assert head_outputs == {dtype}  # every training step's matmuls ran under that autocast
    assert summary["best_val_acc"] > 0.25


def test_pickled_object_in_model_file_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"format": 1, "payload": collections.OrderedDict(a=object())}, path)
    with pytest.raises(TextclfError, match="refused to load"):
        load_bundle(path)
