"""Rows and batches: which rows and soft labels a run trains on (train.refit, distillation),
training batches length-bucketed, shuffled and trimmed to their longest real sequence, and
scoring in length-sorted batches (`batched_logits`).

Attention costs T^2 and a padded position costs as much as a real one, so batches of similar
lengths, each cut to its own longest text, train 3.3x faster on this project's CPU than batches
padded to max_length (benchmarks/results/train_throughput.json).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from textclf.core.config import TrainConfig
from textclf.core.errors import TextclfError
from textclf.modeling.network import TextClassifier

BUCKET_BATCHES = 50  # batches per length-sorted bucket: little padding, still well shuffled


def bucketed_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                     shuffle: bool = True) -> list[np.ndarray]:
    """Index batches of similar length: shuffle, sort within buckets, shuffle the batches."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    bucket = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, n, bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def trimmed(split: dict[str, np.ndarray], index: np.ndarray,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch cut to its longest real sequence: (ids (B, T), labels (B,))."""
    width = max(1, int(split["lengths"][index].max()))
    ids = torch.from_numpy(split["ids"][index, :width].astype(np.int64))
    labels = torch.from_numpy(split["labels"][index])
    return ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def joined_splits(first: dict[str, np.ndarray],
                  second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows of ``first`` then those of ``second``, for every array both splits hold."""
    return {key: np.concatenate([first[key], second[key]]) for key in first if key in second}


def refit_rows(train_split: dict[str, np.ndarray], val_split: dict[str, np.ndarray],
               cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The training split with the validation rows appended: what a refit run trains on."""
    # (No teacher at all is soft_labels' error; only a missing validation half is checked here.)
    if cfg.distill_weight and "teacher" in train_split and "teacher" not in val_split:
        raise TextclfError(
            "train.refit trains on the validation rows, but data/tokens/val.npz holds no "
            "teacher soft labels for them (tokens written by an older textclf). Re-run "
            "`dvc repro tokenize`, or set train.refit to false."
        )
    return joined_splits(train_split, val_split)


def soft_labels(split: dict[str, np.ndarray], cfg: TrainConfig) -> np.ndarray | None:
    """The teacher's (N, K) probabilities when distilling; checked before any step is taken."""
    if cfg.distill_weight == 0:
        return None
    if "teacher" not in split:
        raise TextclfError(
            "train.distill_weight > 0 but data/tokens/train.npz holds no teacher soft labels. "
            "Set tokenize.teacher_folds >= 2 (and re-run `dvc repro`), or set "
            "train.distill_weight to 0."
        )
    return split["teacher"]


def batched_logits(model: TextClassifier, ids: np.ndarray, lengths: np.ndarray, batch_size: int,
                   device: torch.device | None = None,
                   autocast: Callable[[], AbstractContextManager] = nullcontext) -> np.ndarray:
    """float32 (N, K) logits for compact ids (N, max_length), in the input's row order.

    Longest rows first, each batch cut to its longest real sequence: attention costs T^2, so
    similar lengths per batch and no padding to max_length make scoring several times faster.
    """
    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(ids), model.head.out_features), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max()))
            batch = torch.from_numpy(ids[rows, :width].astype(np.int64)).to(device or "cpu")
            with autocast():
                logits = model(batch)
            out[rows] = logits.float().cpu().numpy()
    return out
