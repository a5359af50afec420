"""``models/model.pt``: the trained network with everything needed to rebuild, evaluate and
export it (vocabulary map, label names, tokenizer, the training config that made it).

Saved with plain types only and loaded with ``weights_only=True``: a bundle cannot run code.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textclf.core.atomic import atomic_path
from textclf.core.config import ModelConfig
from textclf.core.errors import TextclfError
from textclf.modeling.network import (
    RawIdClassifier,
    TextClassifier,
    compact_id_map,
    separator_row,
)
from textclf.serving.contract import TokenizerInfo

BUNDLE_FORMAT = 2  # 2: tasks (task, thresholds, input fields, pair separator)


@dataclass
class Bundle:
    """Everything ``models/model.pt`` holds; enough to rebuild, evaluate and export the model."""

    model: TextClassifier
    vocab_raw_ids: torch.Tensor  # (V - 2,) int64: raw id of compact rows 2..
    label_names: list[str]
    tokenizer: TokenizerInfo
    task: str  # multiclass | multilabel | pair
    thresholds: list[float] | None  # multi-label: per-label decision thresholds (validation)
    input_fields: dict[str, list[str]]  # the dataset's text / text_pair column names
    train_config: dict[str, Any]
    package_version: str

    def raw_id_model(self) -> RawIdClassifier:
        t = self.tokenizer
        return RawIdClassifier(self.model, compact_id_map(self.vocab_raw_ids, t.n_vocab, t.pad_id))


def save_bundle(path: Path | str, bundle: Bundle) -> None:
    """Write the bundle atomically with plain types only, so it loads with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in bundle.model.state_dict().items()}
    payload = {
        "format": BUNDLE_FORMAT,
        "state_dict": state,
        "model_config": bundle.model.cfg.model_dump(),
        "vocab_raw_ids": bundle.vocab_raw_ids.cpu(),
        "label_names": list(bundle.label_names),
        "tokenizer": dataclasses.asdict(bundle.tokenizer),
        "task": bundle.task,
        "thresholds": bundle.thresholds,
        "input_fields": bundle.input_fields,
        "train_config": dict(bundle.train_config),
        "package_version": bundle.package_version,
    }
    # Into an open file: given a path, torch.save names the archive's root folder after the
    # (random) temp name, and equal bundles would differ in bytes, hence in DVC's md5.
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save(payload, fh)


def load_bundle(path: Path | str) -> Bundle:
    """Load ``models/model.pt`` safely (weights_only=True) and rebuild the model in eval mode."""
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise TextclfError(
            f"{path}: not a textclf model bundle (format {BUNDLE_FORMAT}). "
            "Re-create it with `dvc repro train`."
        )
    cfg = ModelConfig(**payload["model_config"])
    tok = TokenizerInfo(**payload["tokenizer"])
    state = payload["state_dict"]
    model = TextClassifier(
        cfg,
        vocab_rows=state["tok_emb.weight"].shape[0],
        num_labels=len(payload["label_names"]),
        max_length=tok.max_length,
        sep_row=separator_row(payload["vocab_raw_ids"], tok.pair_separator_id),
    )
    model.load_state_dict(state)
    model.eval()
    return Bundle(
        model=model,
        vocab_raw_ids=payload["vocab_raw_ids"],
        label_names=list(payload["label_names"]),
        tokenizer=tok,
        task=payload["task"],
        thresholds=payload["thresholds"],
        input_fields=payload["input_fields"],
        train_config=dict(payload["train_config"]),
        package_version=payload["package_version"],
    )


def safe_torch_load(path: Path | str) -> Any:
    """``torch.load`` with ``weights_only=True``; a pickled object is refused with a clear error."""
    path = Path(path)
    if not path.exists():
        raise TextclfError(f"{path}: not found. Run the stage that makes it (`dvc repro`).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TextclfError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"({str(exc).splitlines()[0]}). Loading it could run arbitrary code. Only load "
            "files this project wrote; re-create it with `dvc repro`."
        ) from None
    except (RuntimeError, EOFError, io.UnsupportedOperation) as exc:
        raise TextclfError(
            f"{path}: not a readable torch file ({exc}). It may be truncated; delete it and "
            "re-run `dvc repro`."
        ) from None
