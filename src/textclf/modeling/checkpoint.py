"""The training run's resume point: models/checkpoint/last.pt, written after every epoch.

Not a pipeline output: a local cache that `train` reads only when its fingerprint (configs,
token files and the training code) matches the run at hand, so a killed `dvc repro` resumes and
a changed experiment, or changed code, starts over. It holds the optimiser, scheduler and scaler
states and every process's RNG, so the resumed run ends exactly where an uninterrupted one would.
Only rank 0 of a data-parallel run writes and reads it; the other ranks receive what it read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from textclf.core.atomic import atomic_path
from textclf.core.errors import TextclfError
from textclf.modeling.bundle import safe_torch_load


@dataclasses.dataclass
class TrainState:
    """What a checkpoint carries besides the optimiser: progress, history, the best weights."""

    fingerprint: str
    epoch: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_row: dict[str, float] | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    stale_epochs: int = 0

    def record(self, row: dict[str, float], model: torch.nn.Module, keep_last: bool,
               score_key: str) -> None:
        """Add an epoch; its weights become the ones to ship if ``keep_last`` or it validates
        best so far (``row[score_key]``, then loss)."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        better = keep_last or self.best_row is None or (row[score_key], -row["val_loss"]) > (
            self.best_row[score_key], -self.best_row["val_loss"])
        if better:
            self.best_row = row
            self.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1

    def save(self, path: Path, model, optimizer, scheduler, scaler, ema=None,
             rank_rng: list[torch.Tensor] | None = None) -> None:
        """Write the resume point; ``rank_rng`` holds every process's RNG state (rank order)."""
        payload = {
            "fingerprint": self.fingerprint, "epoch": self.epoch, "history": self.history,
            "best_row": self.best_row, "best_weights": self.best_weights,
            "stale_epochs": self.stale_epochs, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rank_rng": rank_rng or [torch.get_rng_state()],
            "ema": ema.state_dict() if ema is not None else None,
        }
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            torch.save(payload, fh)  # an open file: same bytes for the same state (bundle.py)

    def read(self, path: Path) -> dict | None:
        """The checkpoint at ``path`` if it belongs to this exact run, else None."""
        if not path.exists():
            return None
        try:
            payload = safe_torch_load(path)
        except TextclfError:
            return None  # unreadable resume point: start over rather than fail the stage
        if payload.get("fingerprint") != self.fingerprint:
            return None  # another config or other data: its progress does not apply
        return payload

    def restore(self, payload: dict | None, model, optimizer, scheduler, scaler, ema=None,
                rank: int = 0, world_size: int = 1) -> bool:
        """Continue from ``payload`` (``read``'s result); report whether there was one.

        Each process gets back its own RNG state when the run has as many processes as the one
        that wrote the checkpoint; with another count, rank 0 gets the first and the others
        keep their fresh seeds (the result is then equivalent, not identical).
        """
        if payload is None:
            return False
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        if ema is not None:
            ema.load_state_dict(payload["ema"])
        rank_rng = payload["rank_rng"]
        if len(rank_rng) == world_size or rank == 0:
            torch.set_rng_state(rank_rng[rank if len(rank_rng) == world_size else 0])
        for name in ("epoch", "history", "best_row", "best_weights", "stale_epochs"):
            setattr(self, name, payload[name])
        return True
