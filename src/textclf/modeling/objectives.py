"""What training optimises and how it decides: the loss per task, and multi-label thresholds.

One label per row (multiclass, pairs): label-smoothed cross-entropy. Several 0/1 labels per row:
binary cross-entropy per label, smoothed towards 1/2. Both blend in distillation from the
TF-IDF teacher's probabilities at a temperature (Hinton et al.).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from textclf.core.config import TrainConfig


def score_key(task: str) -> str:
    """The validation score an epoch is selected on, as metrics name it."""
    return "val_micro_f1" if task == "multilabel" else "val_acc"


def choose_thresholds(probs: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per label, the threshold in 0.05..0.95 with the best validation F1 (ties: nearest 0.5;
    a label with no positive validation row keeps 0.5)."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    chosen = []
    for k in range(truth.shape[1]):
        positive = truth[:, k] > 0.5
        if not positive.any():
            chosen.append(0.5)
            continue
        on = probs[:, k][None, :] >= grid[:, None]  # (grid, N)
        hits = (on & positive).sum(1)
        f1 = 2 * hits / (on.sum(1) + positive.sum())
        best = np.flatnonzero(f1 == f1.max())
        chosen.append(float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]]))
    return chosen


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                        teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Label-smoothed cross-entropy (class indices) or BCE per label (0/1 rows, multi-label),
    blended with distillation from the teacher's soft labels at temperature t."""
    t = cfg.distill_temperature
    if labels.ndim == 2:
        hard = F.binary_cross_entropy_with_logits(logits, smoothed(labels, cfg.label_smoothing))
        if teacher is None or cfg.distill_weight == 0:
            return hard
        p = teacher.clamp(1e-6, 1 - 1e-6)
        targets = torch.sigmoid(torch.log(p / (1 - p)) / t)
        soft = F.binary_cross_entropy_with_logits(logits / t, targets) * t * t
        return (1 - cfg.distill_weight) * hard + cfg.distill_weight * soft
    hard = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if teacher is None or cfg.distill_weight == 0:
        return hard
    targets = torch.softmax(teacher.clamp_min(1e-8).log() / t, dim=-1)
    # t^2 keeps the soft term's gradient scale independent of the temperature (Hinton et al.).
    soft = F.kl_div(F.log_softmax(logits / t, dim=-1), targets, reduction="batchmean") * t * t
    return (1 - cfg.distill_weight) * hard + cfg.distill_weight * soft


def smoothed(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """0/1 targets pulled towards 1/2 by ``smoothing`` (label smoothing for per-label BCE)."""
    return labels.float() * (1 - smoothing) + smoothing / 2
