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
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from textclf import __version__
from textclf.core.artifacts import load_split, load_vocab
from textclf.core.atomic import atomic_dir, write_json
from textclf.core.codedeps import import_closure
from textclf.core.config import Params, TrainConfig
from textclf.core.paths import Paths
from textclf.modeling.batching import (
    batched_logits,
    bucketed_batches,
    refit_rows,
    soft_labels,
    trimmed,
)
from textclf.modeling.bundle import Bundle, save_bundle
from textclf.modeling.checkpoint import TrainState
from textclf.modeling.network import UNK_ROW, TextClassifier, separator_row
from textclf.modeling.objectives import (
    choose_thresholds,
    classification_loss,
    score_key,
    smoothed,
)
from textclf.modeling.precision import Precision, resolve_precision
from textclf.serving.contract import TokenizerInfo


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_frac`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate_split(model: TextClassifier, split: dict[str, np.ndarray], batch_size: int,
                   precision: Precision, label_smoothing: float = 0.0) -> dict[str, float]:
    """Loss and the selection score: accuracy, or micro-F1 at 0.5 for multi-label."""
    logits = torch.from_numpy(batched_logits(model, split["ids"], split["lengths"], batch_size,
                                             precision.device, precision.autocast))
    labels = torch.from_numpy(split["labels"])
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
    other code is never resumed as if it were this run."""
    digest = hashlib.sha256()
    for cfg in (params.model, params.train):
        digest.update(repr(cfg.model_dump()).encode())
    for path in (*(paths.tokens / n for n in ("train.npz", "val.npz", "vocab.json")),
                 *import_closure(__name__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass
class _Optimisation:
    """What one optimisation step updates, and what a checkpoint saves and restores."""

    model: TextClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None

    @property
    def scored(self) -> torch.nn.Module:
        # Validation, selection and the saved model use the weights' moving average when
        # enabled: it smooths the last, noisy steps of each epoch and narrows the seed spread.
        return self.ema.module if self.ema is not None else self.model

    def parts(self) -> tuple[Any, ...]:
        return self.model, self.optimizer, self.scheduler, self.scaler, self.ema


def run(params: Params, paths: Paths) -> dict[str, Any]:
    cfg = params.train
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision = resolve_precision(cfg)
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
    opt = _optimisation(model, cfg, precision, len(train_split["labels"]))

    state = TrainState(fingerprint=fingerprint(params, paths))
    ckpt_path = paths.checkpoint / "last.pt"
    resumed = state.load_into(ckpt_path, *opt.parts())

    from dvclive import Live

    # dvclive writes as it goes: into a temporary folder that replaces metrics/train at the end.
    with atomic_dir(paths.train_metrics) as live_dir:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False)
        for row in state.history:  # DVC cleared metrics/train: replay what the checkpoint saw
            _log_epoch(live, row)
        for epoch in range(state.epoch, cfg.epochs):
            if state.stale_epochs >= cfg.patience > 0:
                break
            row, speed = _train_epoch(opt, epoch, train_split, teacher_probs, precision, cfg)
            if not refit:  # a refit trained on the validation rows: scoring them says nothing
                val = evaluate_split(opt.scored, val_split, cfg.batch_size * 4, precision,
                                     cfg.label_smoothing)
                row.update({"val_loss": val["loss"], score_key(task): val["score"]})
            row.update(lr=opt.scheduler.get_last_lr()[0], samples_per_s=speed)
            state.record(row, opt.scored, keep_last=refit, score_key=score_key(task))
            _log_epoch(live, row)
            scores = "".join(f" {key} {row[key]:.4f}"
                             for key in ("train_loss", "val_loss", score_key(task)) if key in row)
            print(f"epoch {row['epoch']}/{cfg.epochs}:{scores} "
                  f"{row['samples_per_s']:.0f} samples/s", file=sys.stderr, flush=True)
            state.save(ckpt_path, *opt.parts())

        best = state.best_row or {}
        live.summary.update({f"best/{k}": v for k, v in best.items()
                             if k not in ("lr", "samples_per_s")})
        live.summary.update({"epochs_run": len(state.history),
                             "train_rows": len(train_split["labels"]),
                             "precision": str(precision.dtype or "fp32").replace("torch.", ""),
                             "device": precision.device.type})
        live.end()
    write_json(paths.train_runtime, {
        "resumed": resumed, "samples_per_s": [row["samples_per_s"] for row in state.history]})

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
                      "fingerprint": state.fingerprint},
        package_version=__version__,
    ))
    summary = {"best_epoch": best.get("epoch"), "epochs_run": len(state.history),
               "train_rows": len(train_split["labels"]), "resumed": resumed}
    if score_key(task) in best:  # a refit has no held-out score to report
        summary[f"best_{score_key(task)}"] = best[score_key(task)]
    return summary


def _optimisation(model: TextClassifier, cfg: TrainConfig, precision: Precision,
                  rows: int) -> _Optimisation:
    """AdamW (no decay on biases and norms), warm-up + cosine schedule, loss scaler, EMA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, fused=precision.device.type == "cuda",
    )
    total_steps = math.ceil(rows / cfg.batch_size) * cfg.epochs
    warmup = max(1, round(cfg.warmup_frac * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_frac))
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.scaled)
    ema = (AveragedModel(model, multi_avg_fn=ema_update(cfg.ema_decay))
           if cfg.ema_decay else None)
    return _Optimisation(model, optimizer, scheduler, scaler, ema)


def _train_epoch(opt: _Optimisation, epoch: int, split: dict[str, np.ndarray],
                 teacher_probs: np.ndarray | None, precision: Precision,
                 cfg: TrainConfig) -> tuple[dict[str, float], float]:
    """One pass over ``split`` in shuffled length buckets: ({epoch, train_loss}, samples/s)."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    batches = bucketed_batches(split["lengths"], cfg.batch_size, generator)
    opt.model.train()
    seen, loss_sum, started = 0, 0.0, time.perf_counter()
    for index in _progress(batches, epoch, cfg.epochs):
        ids, labels = trimmed(split, index, precision.device)
        ids = drop_tokens(ids, cfg.token_dropout)
        teacher = (torch.from_numpy(teacher_probs[index]).to(precision.device)
                   if teacher_probs is not None else None)
        loss = train_step(opt.model, ids, labels, opt.optimizer, opt.scaler, precision, cfg,
                          teacher)
        opt.scheduler.step()
        if opt.ema is not None:
            opt.ema.update_parameters(opt.model)
        seen += len(labels)
        loss_sum += loss * len(labels)
    return ({"epoch": epoch + 1, "train_loss": loss_sum / seen},
            seen / (time.perf_counter() - started))


def train_step(model: TextClassifier, ids: torch.Tensor, labels: torch.Tensor,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               precision: Precision, cfg: TrainConfig,
               teacher: torch.Tensor | None = None) -> float:
    """One optimisation step under the configured precision; returns the batch loss."""
    with precision.autocast():
        logits = model(ids)
    loss = classification_loss(logits.float(), labels, cfg, teacher)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def ema_update(decay: float) -> Callable[..., None]:
    """AveragedModel's update: an exponential moving average whose decay warms up.

    (1 + n) / (10 + n) after n updates caps the decay early on, so a short run (a quick
    experiment on a data fraction) averages its recent weights rather than its random start.
    """
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


def drop_tokens(ids: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace a ``rate`` share of real tokens by the unknown row (padding stays padding)."""
    if rate == 0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < rate) & (ids > UNK_ROW)
    return ids.masked_fill(drop, UNK_ROW)


def _progress(batches: list[np.ndarray], epoch: int, epochs: int) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    # A live bar on a terminal; logs (CI, dvc repro > file) get the per-epoch line instead.
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", mininterval=2.0,
               dynamic_ncols=True, disable=None)
    seen, started = 0, time.perf_counter()
    for index in bar:
        yield index
        seen += len(index)
        bar.set_postfix(samples_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False)


def _log_epoch(live: Any, row: dict[str, float]) -> None:
    live.log_metric("train/loss", row["train_loss"])
    if "val_loss" in row:
        live.log_metric("val/loss", row["val_loss"])
        for key in ("val_acc", "val_micro_f1"):
            if key in row:
                live.log_metric(key.replace("_", "/", 1), row[key])
    live.log_metric("lr", row["lr"], plot=False)
    live.next_step()
