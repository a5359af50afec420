"""Builders tests share: params with overrides, and validated data written without GX."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from textclf.core.config import Params, params_from_dict
from textclf.serving.text import join_title_description

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def covers(dep: Path, path: Path) -> bool:
    """A dvc.yaml dep (a file, or a folder) covers ``path``."""
    return path == dep or dep in path.parents


def params_dict(**overrides: dict[str, Any]) -> dict[str, Any]:
    """The repo's params.yaml as a dict, with per-section overrides: train={"epochs": 1}."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


def small_params(**overrides: dict[str, Any]) -> Params:
    """Params sized for tests: a tiny model, short sequences, one quick epoch."""
    sized = {
        "tokenize": {"max_length": 48},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        # fp32 on the CPU: tests compare weights bit for bit, which a GPU run would not give.
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "precision": "fp32", "device": "cpu"},
    }
    for section, values in overrides.items():
        sized.setdefault(section, {}).update(values)
    return params_from_dict(params_dict(**sized))


def write_validated(root: Path, corpus: Path, label_names: list[str]) -> None:
    """data/validated/ as the validate stage writes it, straight from a char-CNN corpus dir."""
    out = root / "data" / "validated"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        frame = pd.read_csv(corpus / f"{split}.csv", header=None, dtype=str,
                            names=["label", "title", "description"], keep_default_na=False)
        frame["label"] = frame["label"].astype("int64") - 1
        frame["text"] = [join_title_description(t, d)
                         for t, d in zip(frame["title"], frame["description"], strict=True)]
        frame.to_parquet(out / f"{split}.parquet")
    (out / "labels.json").write_text(json.dumps({"label_names": label_names}))
