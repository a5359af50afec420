"""The real DVC workflow users run, end to end, in a throw-away git copy of the repo."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest
import yaml

from tests.conftest import SHARED_DATA, make_corpus
from tests.helpers import PROJECT_ROOT, charcnn_data, covers
from textclf.core.codedeps import import_closure
from textclf.core.paths import STAGE_OUTPUTS

pytestmark = pytest.mark.slow

# Small enough for CI, big enough that the model must learn something to pass parity/eval.
SMALL = {
    "tokenize": {"max_length": 64},
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
    "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3},
    "validate": {"min_rows": 20},
}


def stages_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_repro_experiment_push_pull_predict(make_repo, tmp_path) -> None:
    source = make_corpus(tmp_path / "source", n_train=80, n_test=20)
    repo = make_repo(data=charcnn_data(source), **SMALL)

    first = repo.run("dvc", "repro")
    assert stages_ran(first.stdout) == {
        "fetch", "validate", "tokenize", "train", "evaluate", "export", "parity"}
    for out in ("models/model.onnx", "metrics/eval.json", "metrics/parity.json",
                "metrics/validation.json", "metrics/train/metrics.json"):
        assert (repo.root / out).is_file(), out
    assert "didn't change" in repo.run("dvc", "repro").stdout
    assert stages_ran(repo.run("dvc", "repro").stdout) == set()
    repo.commit("baseline run")

    exp = repo.run("dvc", "exp", "run", "-S", "train.lr=1e-4")
    assert stages_ran(exp.stdout) == {"train", "evaluate", "export", "parity"}
    changed = json.loads(repo.run("dvc", "metrics", "diff", "--json").stdout)
    # A 30x smaller learning rate trains another model: its loss and its scores move.
    assert changed["metrics/train/metrics.json"]["best/train_loss"]["diff"] != 0
    assert "model.accuracy" in changed["metrics/eval.json"]
    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    # The experiment's and the committed baseline's.
    assert set(map(float, learning_rates(shown))) == {1e-4, SMALL["train"]["lr"]}
    params_diff = repo.run("dvc", "params", "diff").stdout
    assert "train.lr" in params_diff

    # The default is the refit (no held-out score); choosing settings turns it off.
    refit_metrics = json.loads((repo.root / "metrics" / "train" / "metrics.json").read_text())
    assert not any("val" in key for key in refit_metrics)
    held_out = repo.run("dvc", "exp", "run", "-S", "train.refit=false", "-S", "train.lr=1e-4")
    assert stages_ran(held_out.stdout) == {"train", "evaluate", "export", "parity"}
    metrics = json.loads((repo.root / "metrics" / "train" / "metrics.json").read_text())
    assert metrics["best/val_acc"] > 0.25 and metrics["train_rows"] < refit_metrics["train_rows"]
    evaluated = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert evaluated["train_rows"] == metrics["train_rows"]  # the baseline fits the same rows

    # Share: push to a local remote, lose the cache and the model, pull the model alone.
    repo.run("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    repo.run("dvc", "push")
    model = repo.root / "models" / "model.onnx"
    before = md5(model)
    shutil.rmtree(repo.root / ".dvc" / "cache")
    model.unlink()
    repo.run("dvc", "pull", "models/model.onnx")
    assert md5(model) == before

    predicted = repo.run("textclf", "predict", "stock market shares profit earnings")
    line = json.loads(predicted.stdout.splitlines()[0])
    assert line["label"] in line["probabilities"]
    assert abs(sum(line["probabilities"].values()) - 1) < 1e-4


def learning_rates(shown: object) -> list[object]:
    """Every train.lr in `dvc exp show --json` output (workspace, commits and experiments)."""
    if isinstance(shown, list):
        return [lr for item in shown for lr in learning_rates(item)]
    if not isinstance(shown, dict):
        return []
    found = [shown["params.yaml"]["data"]["train"]["lr"]] if "params.yaml" in shown else []
    return found + [lr for value in shown.values() for lr in learning_rates(value)]


def code_changed_stages(repo) -> set[str]:
    """Stages `dvc status` reports with a changed code dependency (src/...)."""
    status = json.loads(repo.run("dvc", "status", "--json").stdout)
    return {stage for stage, changes in status.items() for change in changes
            if isinstance(change, dict)
            for dep in change.get("changed deps", {}) if dep.startswith("src/")}


def test_a_code_change_reruns_exactly_the_stages_that_import_it(make_repo) -> None:
    repo = make_repo()
    assert code_changed_stages(repo) == set(), (
        "dvc.lock is stale: code changed after the last `dvc repro`. Re-run it and commit "
        "dvc.lock, so that the committed metrics and model come from the committed code.")
    every = set(STAGE_OUTPUTS)
    reruns = {
        "src/textclf/stages/evaluate.py": {"evaluate"},
        "src/textclf/serving/text.py": every - {"fetch"},
        "src/textclf/modeling/network.py": every - {"fetch", "validate"},
        "src/textclf/core/atomic.py": every,
    }
    for edited, expected in reruns.items():
        # dvc.yaml lists code by layer folder (a stage by its own module): a stage re-runs
        # when it imports the edited stage module, or any module of the edited layer.
        source = PROJECT_ROOT / edited
        dep = source if source.parent.name == "stages" else source.parent
        importers = {s for s in every
                     if any(covers(dep, p) for p in import_closure(f"textclf.stages.{s}"))}
        assert importers == expected, edited
        path = repo.root / edited
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        assert code_changed_stages(repo) == expected, edited
        path.write_text(original)
    assert code_changed_stages(repo) == set()


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/agnews")
def test_real_data_beats_chance_and_parity_holds(make_repo) -> None:
    repo = make_repo(train={"epochs": 1})  # the default preset: ../shared/data/agnews
    repo.run("dvc", "repro")
    metrics = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert metrics["model"]["accuracy"] > 0.7  # chance is 0.25 on four balanced classes
    assert metrics["baseline"]["accuracy"] > 0.85
    # The stage writes parity.json only when parity holds; check the figures all the same.
    parity = json.loads((repo.root / "metrics" / "parity.json").read_text())
    assert parity["max_abs_diff"] <= 1e-4 and parity["argmax_agreement"] == 1.0

    # The model card inside the ONNX file: the metrics of metrics/eval.json, the data files'
    # sha256 that dvc.lock records for the fetch stage.
    card = repo.run("textclf", "card", "models/model.onnx").stdout
    assert card == (repo.root / "models" / "model.card.md").read_text()
    table = {cells[0]: cells[1:] for line in card.splitlines() if line.startswith("| ")
             for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}
    for key in ("accuracy", "macro_f1"):
        assert table[key] == [str(metrics["model"][key]), str(metrics["baseline"][key])]
    for label, figures in metrics["model"]["per_class"].items():
        assert table[label] == [str(figures[k]) for k in ("precision", "recall", "f1")]
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    pinned = lock["stages"]["fetch"]["params"]["params.yaml"]["data"]["details"]["sha256"]
    assert [table[split][2].strip("`") for split in ("train", "test")] == [
        pinned["train.csv"], pinned["test.csv"]]
    validation = json.loads((repo.root / "metrics" / "validation.json").read_text())
    assert [table[split][1] for split in ("train", "test")] == [
        f"{validation[split]['rows']:,}" for split in ("train", "test")]
