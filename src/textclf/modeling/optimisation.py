"""One optimisation step and what it updates: AdamW, the warm-up + cosine schedule, the loss
scaler, the weights' moving average, token dropout.

The step takes a ``weight`` for its batch's loss: a data-parallel process trains on a share of
each batch and weights its mean loss by its share of the rows, so the gradient that
DistributedDataParallel averages over the processes is the whole batch's (distributed.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from textclf.core.config import TrainConfig
from textclf.modeling.network import UNK_ROW, TextClassifier
from textclf.modeling.objectives import classification_loss
from textclf.modeling.precision import Precision


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_frac`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclasses.dataclass
class Optimisation:
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


def build_optimisation(model: TextClassifier, cfg: TrainConfig, precision: Precision,
                       rows: int) -> Optimisation:
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
    return Optimisation(model, optimizer, scheduler, scaler, ema)


def train_step(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               precision: Precision, cfg: TrainConfig,
               teacher: torch.Tensor | None = None, weight: float = 1.0) -> float:
    """One optimisation step under the configured precision; returns the batch's mean loss.

    ``model`` may be the DistributedDataParallel wrapper: its backward averages the gradients.
    """
    with precision.autocast():
        logits = model(ids)
    loss = classification_loss(logits.float(), labels, cfg, teacher)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * weight).backward()
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
