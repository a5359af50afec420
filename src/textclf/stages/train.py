"""Stage `train`: data/tokens -> models/model.pt, metrics/train/ (dvclive), models/checkpoint/.

Precision and device follow `train.precision` and `train.device` (modeling/precision.py).
Batches are length-bucketed and trimmed to their longest real sequence, so padding to
max_length costs nothing here. The model is selected on the validation split only; with
`train.refit` it trains on the validation rows too and the last epoch is shipped (settings were
chosen on validation in refit-off experiments). Multi-label training always holds the validation
split out: each label's decision threshold is chosen on it (F1-best) and shipped in the model.
Losses: cross-entropy for one label per row (multiclass, pairs), BCE-with-logits per label for
multi-label (modeling/objectives.py). A checkpoint is written after every epoch
(modeling/checkpoint.py); a re-run with the same config, data and code resumes from it and ends
exactly where an uninterrupted run would. Speed and whether the run resumed go to
metrics/runtime/train.json, not to the metrics `dvc metrics diff` compares.
`train.nproc` > 1 (or `--nnodes`) trains data-parallel through torchrun's launcher
(modeling/distributed.py): the same steps as one process, rank 0 the only writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textclf import __version__
from textclf.core.artifacts import load_split, load_vocab
from textclf.core.atomic import atomic_dir, write_json
from textclf.core.codedeps import import_closure
from textclf.core.config import Params, TrainConfig
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.core.progress import progress
from textclf.modeling.batching import (
    batched_logits,
    bucketed_batches,
    refit_rows,
    soft_labels,
    trimmed,
)
from textclf.modeling.bundle import Bundle, save_bundle
from textclf.modeling.checkpoint import TrainState
from textclf.modeling.distributed import Nodes, World, launch, process_group, threads_per_process
from textclf.modeling.network import TextClassifier, separator_row
from textclf.modeling.objectives import choose_thresholds, score_key, smoothed
from textclf.modeling.optimisation import (
    Optimisation,
    build_optimisation,
    drop_tokens,
    train_step,
)
from textclf.modeling.precision import Precision, resolve_precision
from textclf.serving.contract import TokenizerInfo

# The training curve's resolution: the loss is averaged over windows of this many steps (a
# few dozen batches smooth the per-batch noise and still give ~60 points for a default run).
LOG_EVERY_STEPS = 25


def run(params: Params, paths: Paths, nodes: Nodes | None = None) -> dict[str, Any]:
    """Train in this process, or launch `train.nproc` workers per node when asked to."""
    nodes, world = nodes or Nodes(), World.from_env()
    if not world.launched and (params.train.nproc > 1 or nodes.count > 1):
        _check_batch_size(params.train, params.train.nproc * nodes.count)
        device = resolve_precision(params.train).device
        summary = launch(train_worker, (params, paths), params.train.nproc, nodes, device)
        return summary or {"node_rank": nodes.rank, "nnodes": nodes.count}
    return train_worker(params, paths)


def train_worker(params: Params, paths: Paths) -> dict[str, Any]:
    """The whole training run as one process of its world (alone: rank 0 of 1)."""
    world, cfg = World.from_env(), params.train
    _check_batch_size(cfg, world.size)
    precision = resolve_precision(cfg)
    with process_group(world, precision.device) as device:
        precision = dataclasses.replace(precision, device=device)
        return _train(params, paths, world, precision)


def _check_batch_size(cfg: TrainConfig, processes: int) -> None:
    if cfg.batch_size < processes:
        raise TextclfError(
            f"train.batch_size ({cfg.batch_size}) is the batch all {processes} processes "
            "share; it must hold at least one row per process. Raise train.batch_size or "
            "lower train.nproc.")


def _train(params: Params, paths: Paths, world: World, precision: Precision) -> dict[str, Any]:
    cfg = params.train
    torch.manual_seed(cfg.seed)
    if cfg.num_threads or world.size > 1:
        torch.set_num_threads(threads_per_process(world, cfg.num_threads))
    if precision.device.type == "cpu":
        torch.use_deterministic_algorithms(True)

    vocab = load_vocab(paths.tokens)
    tok, task = TokenizerInfo(**vocab["tokenizer"]), vocab["task"]
    train_split, val_split = load_split(paths.tokens, "train"), load_split(paths.tokens, "val")
    # Multi-label thresholds are chosen on the validation rows: they cannot be trained on.
    refit = cfg.refit and task != "multilabel"
    if refit:
        train_split = refit_rows(train_split, val_split, cfg)
    teacher_probs = soft_labels(train_split, cfg)
    vocab_raw_ids = torch.tensor(vocab["raw_ids"], dtype=torch.int64)
    model = TextClassifier(params.model, vocab_rows=len(vocab["raw_ids"]) + 2,
                           num_labels=len(vocab["label_names"]), max_length=tok.max_length,
                           sep_row=separator_row(vocab_raw_ids, tok.pair_separator_id),
                           ).to(precision.device)
    opt = build_optimisation(model, cfg, precision, len(train_split["labels"]))
    if world.rank:  # its own dropout masks; rank 0 draws what a lone process would
        torch.manual_seed(cfg.seed + world.rank)

    state = TrainState(fingerprint=fingerprint(params, paths))
    if len(set(world.all_gather(state.fingerprint))) > 1:
        raise TextclfError(
            "train: the processes of this run hold different data/tokens, params or textclf "
            "code (their training fingerprints differ). Check out the same revision on every "
            "node and bring its data with `dvc pull` (or `dvc repro tokenize`), then retry.")
    ckpt_path = paths.checkpoint / "last.pt"
    payload = world.broadcast(state.read(ckpt_path) if world.writer else None)
    resumed = state.restore(payload, *opt.parts(), rank=world.rank, world_size=world.size)
    stepper = world.wrap(model, precision.device)

    with _metrics_log(paths, state, world) as live:
        for epoch in range(state.epoch, cfg.epochs):
            if state.stale_epochs >= cfg.patience > 0:
                break
            row, speed = _train_epoch(opt, stepper, epoch, train_split, teacher_probs,
                                      precision, cfg, world)
            if not refit:  # a refit trained on the validation rows: scoring them says nothing
                val = validation_scores(opt.scored, val_split, cfg.batch_size * 4, precision,
                                        world, cfg.label_smoothing)
                row.update({"val_loss": val["loss"], score_key(task): val["score"]})
            row.update(lr=opt.scheduler.get_last_lr()[0], samples_per_s=speed)
            state.record(row, opt.scored, keep_last=refit, score_key=score_key(task))
            rank_rng = world.all_gather(torch.get_rng_state())
            if live is not None:
                _log_epoch(live, row)
                scores = "".join(f" {key} {row[key]:.4f}" for key in
                                 ("train_loss", "val_loss", score_key(task)) if key in row)
                print(f"epoch {row['epoch']}/{cfg.epochs}:{scores} "
                      f"{row['samples_per_s']:.0f} samples/s", file=sys.stderr, flush=True)
                state.save(ckpt_path, *opt.parts(), rank_rng=rank_rng)
        best = state.best_row or {}
        if live is not None:
            live.summary.update({f"best/{k}": v for k, v in best.items()
                                 if k not in ("lr", "samples_per_s", "steps")})
            live.summary.update({"epochs_run": len(state.history),
                                 "train_rows": len(train_split["labels"]),
                                 "precision": str(precision.dtype or "fp32").replace("torch.", ""),
                                 "device": precision.device.type})
    if not world.writer:
        return {"rank": world.rank}
    write_json(paths.train_runtime, {
        "resumed": resumed, "processes": world.size,
        "samples_per_s": [row["samples_per_s"] for row in state.history]})

    model.load_state_dict(state.best_weights or opt.scored.state_dict())
    model.cpu().eval()
    thresholds = None
    if task == "multilabel":
        val_logits = batched_logits(model, val_split["ids"], val_split["lengths"],
                                    cfg.batch_size * 4)
        thresholds = choose_thresholds(1 / (1 + np.exp(-val_logits)), val_split["labels"])
    save_bundle(paths.model, Bundle(
        model=model, vocab_raw_ids=vocab_raw_ids, label_names=vocab["label_names"],
        tokenizer=tok, task=task, thresholds=thresholds, input_fields=vocab["input_fields"],
        train_config={"train": cfg.model_dump(), "model": params.model.model_dump(),
                      "refit": refit, "best_epoch": best.get("epoch"),
                      "processes": world.size, "fingerprint": state.fingerprint},
        package_version=__version__,
    ))
    summary = {"best_epoch": best.get("epoch"), "epochs_run": len(state.history),
               "train_rows": len(train_split["labels"]), "resumed": resumed}
    if score_key(task) in best:  # a refit has no held-out score to report
        summary[f"best_{score_key(task)}"] = best[score_key(task)]
    return summary


def validation_scores(model: torch.nn.Module, split: dict[str, np.ndarray], batch_size: int,
                      precision: Precision, world: World,
                      label_smoothing: float = 0.0) -> dict[str, float]:
    """Loss and the selection score (accuracy, or micro-F1 at 0.5 for multi-label); each
    process scores its share of the rows, every process gets the same figures."""
    labels = torch.from_numpy(split["labels"])
    rows = world.share(np.arange(len(labels)))
    logits = batched_logits(model, split["ids"][rows], split["lengths"][rows], batch_size,
                            precision.device, precision.autocast)
    logits = torch.from_numpy(world.gather_rows(rows, logits, len(labels)))
    if labels.ndim == 2:
        loss = F.binary_cross_entropy_with_logits(logits, smoothed(labels, label_smoothing))
        on, truth = logits > 0, labels > 0.5
        hits, claimed = (on & truth).sum().item(), on.sum().item() + truth.sum().item()
        return {"loss": loss.item(), "score": 2 * hits / max(1, claimed)}
    loss = F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing).item()
    return {"loss": loss, "score": (logits.argmax(-1) == labels).float().mean().item()}


def fingerprint(params: Params, paths: Paths) -> str:
    """Identity of a training run: configs, the exact token files and the code this stage runs
    (its import closure, the same files its dvc.yaml deps must cover): a checkpoint written by
    other code is never resumed as if it were this run. The process count is left out: it
    takes the same steps, so a checkpoint resumes with any count."""
    digest = hashlib.sha256()
    for cfg in (params.model, params.train):
        digest.update(repr(cfg.model_dump(exclude={"nproc"})).encode())
    for path in (*(paths.tokens / n for n in ("train.npz", "val.npz", "vocab.json")),
                 *import_closure(__name__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _metrics_log(paths: Paths, state: TrainState, world: World) -> Iterator[Any]:
    """Rank 0's dvclive log (None elsewhere), written into a temporary folder that replaces
    metrics/train at the end."""
    if not world.writer:
        yield None
        return
    from dvclive import Live

    with atomic_dir(paths.train_metrics) as live_dir:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False)
        for row in state.history:  # DVC cleared metrics/train: replay what the checkpoint saw
            _log_epoch(live, row)
        yield live
        live.end()


def _train_epoch(opt: Optimisation, stepper: torch.nn.Module, epoch: int,
                 split: dict[str, np.ndarray], teacher_probs: np.ndarray | None,
                 precision: Precision, cfg: TrainConfig,
                 world: World) -> tuple[dict[str, Any], float]:
    """One pass over ``split`` in shuffled length buckets: ({epoch, train_loss, steps},
    samples/s); ``steps`` holds [step, mean loss, lr] every LOG_EVERY_STEPS steps."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    batches = bucketed_batches(split["lengths"], cfg.batch_size, generator)
    opt.model.train()
    # Per logging window: [loss sum, rows, step, lr]; summed over processes once per epoch.
    windows: list[list[float]] = []
    started = time.perf_counter()
    with progress(len(split["labels"]), f"epoch {epoch + 1}/{cfg.epochs}", "sample",
                  shown=world.writer) as bar:
        for i, batch in enumerate(batches):
            bar.update(len(batch))
            if len(batch) < world.size:  # a tail batch too small to share: all processes skip
                continue
            index = world.share(batch)
            ids, labels = trimmed(split, index, precision.device)
            ids = drop_tokens(ids, cfg.token_dropout)
            teacher = (torch.from_numpy(teacher_probs[index]).to(precision.device)
                       if teacher_probs is not None else None)
            loss = train_step(stepper, ids, labels, opt.optimizer, opt.scaler, precision, cfg,
                              teacher, weight=len(index) * world.size / len(batch))
            opt.scheduler.step()
            if opt.ema is not None:
                opt.ema.update_parameters(opt.model)
            if not windows or i % LOG_EVERY_STEPS == 0:
                windows.append([0.0, 0, 0, 0.0])
            step = epoch * len(batches) + i + 1
            windows[-1][:] = [windows[-1][0] + loss * len(index), windows[-1][1] + len(index),
                              step, opt.scheduler.get_last_lr()[0]]
    sums = world.all_sum([value for w in windows for value in w[:2]], precision.device)
    steps = [[int(w[2]), sums[2 * j] / sums[2 * j + 1], w[3]] for j, w in enumerate(windows)]
    seen = sum(sums[1::2])
    return ({"epoch": epoch + 1, "train_loss": sum(sums[0::2]) / seen, "steps": steps},
            seen / (time.perf_counter() - started))


def _log_epoch(live: Any, row: dict[str, Any]) -> None:
    """The epoch's loss/lr windows at their steps, then its validation figures at its last."""
    for step, loss, lr in row["steps"]:
        live.step = step
        live.log_metric("train/loss", loss)
        live.log_metric("lr", lr)
    for key in ("val_loss", "val_acc", "val_micro_f1"):
        if key in row:
            live.log_metric(key.replace("_", "/", 1), row[key])
    live.log_metric("epoch", row["epoch"], plot=False)
    live.summary["train/epoch_loss"] = row["train_loss"]
    live.make_summary()
