"""Stage `train`: data/tokens -> models/model.pt, metrics/train/ (dvclive), models/checkpoint/.

Mixed precision by `train.precision`: `auto` is fp16 + GradScaler on CUDA and fp32 on a CPU,
where bf16 autocast was measured 2x slower for models of this size even with native bf16
(benchmarks/results/train_throughput.json); `bf16` asks for it anyway. Batches are
length-bucketed and trimmed to their longest real sequence, so padding to max_length costs
nothing here. The model is selected on the validation split only; with `train.refit` it trains
on the validation rows too and the last epoch is shipped (settings were chosen on validation
in refit-off experiments). A checkpoint is written after every epoch (checkpoint.py); a re-run
with the same config, data and training code resumes from it and ends exactly where an
uninterrupted run would. Speed and whether the run resumed go to metrics/runtime/train.json,
not to the metrics `dvc metrics diff` compares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from textclf import __version__
from textclf.atomic import write_json
from textclf.batching import bucketed_batches, refit_rows, soft_labels, trimmed
from textclf.checkpoint import TrainState
from textclf.config import Params, Paths, TrainConfig
from textclf.errors import TextclfError
from textclf.model import (
    UNK_ROW,
    Bundle,
    TextClassifier,
    TokenizerInfo,
    batched_logits,
    save_bundle,
)
from textclf.tokenization import load_split, load_vocab

# The code that decides the weights (the train stage's deps in dvc.yaml): once it changes, a
# finished checkpoint of the old code must not be resumed as if it were this run.
TRAINING_CODE = tuple(Path(__file__).with_name(name)
                      for name in ("train.py", "batching.py", "model.py", "checkpoint.py"))


@dataclasses.dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    scaled: bool  # fp16 needs loss scaling; bf16 has fp32's range and does not

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def resolve_precision(cfg: TrainConfig) -> Precision:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise TextclfError(
            "train.device is cuda but no CUDA device is visible to torch. Set train.device to "
            "auto or cpu, or install a CUDA build of torch on a GPU machine."
        )
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda)
                          else "cpu")
    choice = cfg.precision
    if choice == "auto":
        # On CPU, autocast's casts around d_model-sized matmuls cost more than bf16 saves.
        choice = "fp16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
    return Precision(device=device, dtype=dtype, scaled=choice == "fp16")


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_frac`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate_split(model: TextClassifier, split: dict[str, np.ndarray], batch_size: int,
                   precision: Precision, label_smoothing: float = 0.0) -> dict[str, float]:
    logits = torch.from_numpy(batched_logits(model, split["ids"], split["lengths"], batch_size,
                                             precision.device, precision.autocast))
    labels = torch.from_numpy(split["labels"]).long()
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
    return {"loss": loss, "acc": (logits.argmax(-1) == labels).float().mean().item()}


def fingerprint(params: Params, paths: Paths) -> str:
    """Identity of a training run: configs, the exact token files and the training code."""
    digest = hashlib.sha256()
    for cfg in (params.model, params.train):
        digest.update(repr(dataclasses.asdict(cfg)).encode())
    for path in (*(paths.tokens / n for n in ("train.npz", "val.npz", "vocab.json")),
                 *TRAINING_CODE):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(params: Params, paths: Paths) -> dict[str, Any]:
    from dvclive import Live

    cfg = params.train
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision = resolve_precision(cfg)
    if precision.device.type == "cpu":
        torch.use_deterministic_algorithms(True)

    vocab = load_vocab(paths.tokens)
    train_split, val_split = load_split(paths.tokens, "train"), load_split(paths.tokens, "val")
    if cfg.refit:
        train_split = refit_rows(train_split, val_split, cfg)
    teacher_probs = soft_labels(train_split, cfg)
    model = TextClassifier(params.model, vocab_rows=len(vocab["raw_ids"]) + 2,
                           num_labels=len(vocab["label_names"]),
                           max_length=vocab["max_length"]).to(precision.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, fused=precision.device.type == "cuda",
    )
    steps_per_epoch = math.ceil(len(train_split["labels"]) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, round(cfg.warmup_frac * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_frac))
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.scaled)
    # Validation, selection and the saved model use the weights' moving average when enabled:
    # it smooths the last, noisy steps of each epoch and narrows the spread over seeds.
    ema = (AveragedModel(model, multi_avg_fn=ema_update(cfg.ema_decay))
           if cfg.ema_decay else None)
    scored = ema.module if ema is not None else model

    state = TrainState(fingerprint=fingerprint(params, paths))
    ckpt_path = paths.checkpoint / "last.pt"
    resumed = state.load_into(ckpt_path, model, optimizer, scheduler, scaler, ema)

    live = Live(str(paths.metrics / "train"), dvcyaml=None, save_dvc_exp=False)
    for row in state.history:  # DVC cleared metrics/train: replay what the checkpoint saw
        _log_epoch(live, row)

    for epoch in range(state.epoch, cfg.epochs):
        if state.stale_epochs >= cfg.patience > 0:
            break
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        batches = bucketed_batches(train_split["lengths"], cfg.batch_size, generator)
        model.train()
        seen, loss_sum, started = 0, 0.0, time.perf_counter()
        for index in _progress(batches, epoch, cfg.epochs):
            ids, labels = trimmed(train_split, index, precision.device)
            ids = drop_tokens(ids, cfg.token_dropout)
            teacher = (torch.from_numpy(teacher_probs[index]).to(precision.device)
                       if teacher_probs is not None else None)
            loss = train_step(model, ids, labels, optimizer, scaler, precision, cfg, teacher)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(labels)
            loss_sum += loss * len(labels)
        elapsed = time.perf_counter() - started
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen}
        if not cfg.refit:  # a refit trained on the validation rows: scoring them says nothing
            val = evaluate_split(scored, val_split, cfg.batch_size * 4, precision,
                                 cfg.label_smoothing)
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        row.update(lr=scheduler.get_last_lr()[0], samples_per_s=seen / elapsed)
        state.record(row, scored, keep_last=cfg.refit)
        _log_epoch(live, row)
        scores = "".join(f" {key} {row[key]:.4f}" for key in ("train_loss", "val_loss", "val_acc")
                         if key in row)
        print(f"epoch {row['epoch']}/{cfg.epochs}:{scores} {row['samples_per_s']:.0f} samples/s",
              file=sys.stderr, flush=True)
        state.save(ckpt_path, model, optimizer, scheduler, scaler, ema)

    best = state.best_row or {}
    live.summary.update({f"best/{k}": v for k, v in best.items()
                         if k not in ("lr", "samples_per_s")})
    live.summary.update({"epochs_run": len(state.history), "train_rows": len(train_split["labels"]),
                         "precision": str(precision.dtype or "fp32").replace("torch.", ""),
                         "device": precision.device.type})
    live.end()
    write_json(paths.runtime / "train.json", {
        "resumed": resumed, "samples_per_s": [row["samples_per_s"] for row in state.history]})

    model.load_state_dict(state.best_weights or scored.state_dict())
    model.cpu().eval()
    save_bundle(paths.model, Bundle(
        model=model,
        vocab_raw_ids=torch.tensor(vocab["raw_ids"], dtype=torch.int64),
        label_names=vocab["label_names"],
        tokenizer=TokenizerInfo(encoding=vocab["encoding"], max_length=vocab["max_length"],
                                pad_id=vocab["pad_id"], n_vocab=vocab["n_vocab"],
                                lowercase=vocab.get("lowercase", False)),
        train_config={"train": dataclasses.asdict(cfg),
                      "model": dataclasses.asdict(params.model),
                      "best_epoch": best.get("epoch"), "fingerprint": state.fingerprint},
        package_version=__version__,
    ))
    summary = {"best_epoch": best.get("epoch"), "epochs_run": len(state.history),
               "train_rows": len(train_split["labels"]), "resumed": resumed}
    if "val_acc" in best:  # a refit has no held-out score to report
        summary["best_val_acc"] = best["val_acc"]
    return summary


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


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                        teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Label-smoothed cross-entropy, blended with distillation from the teacher's soft labels."""
    hard = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if teacher is None or cfg.distill_weight == 0:
        return hard
    t = cfg.distill_temperature
    targets = torch.softmax(teacher.clamp_min(1e-8).log() / t, dim=-1)
    # t^2 keeps the soft term's gradient scale independent of the temperature (Hinton et al.).
    soft = F.kl_div(F.log_softmax(logits / t, dim=-1), targets, reduction="batchmean") * t * t
    return (1 - cfg.distill_weight) * hard + cfg.distill_weight * soft


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
    if "val_acc" in row:
        live.log_metric("val/loss", row["val_loss"])
        live.log_metric("val/acc", row["val_acc"])
    live.log_metric("lr", row["lr"], plot=False)
    live.next_step()
