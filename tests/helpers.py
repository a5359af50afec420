"""Builders tests share: params with overrides, and validated data written without GX."""

from __future__ import annotations

import copy
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import yaml

from textclf.core.config import Params, params_from_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AGNEWS_RULES = ["scrape_entities", "html_entities", "html_tags", "backslash_escapes",
                "whitespace"]


def charcnn_data(source: Path | str, sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """The `data` section for a corpus in AG News's headerless char-CNN form at ``source``
    (the synthetic corpora): the agnews preset with its details moved to that source."""
    return {"source": str(source), "files": None, "text": ["title", "description"],
            "text_pair": None, "label": "class", "task": "auto",
            "details": {"for_source": str(source), "columns": ["class", "title", "description"],
                        "label_names": {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"},
                        "normalize": AGNEWS_RULES, "sha256": sha256 or {}}}


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


def write_validated(root: Path, corpus: Path, data: dict[str, Any] | None = None) -> None:
    """data/validated/ as the validate stage writes it (without GX) from a corpus dir; ``data``
    describes it (default: the char-CNN form of the synthetic corpora)."""
    from textclf.core.dataset import encoded_labels, label_names, model_table, raw_file
    from textclf.serving.text import normalize

    cfg = params_from_dict(params_dict(data=data or charcnn_data(corpus))).data
    details = cfg.source_details()
    rules = details.normalize if details else ()
    frames = {split: model_table(raw_file(corpus, split), cfg, lambda t: normalize(t, rules))
              for split in ("train", "test")}
    label_map = details.label_names if details else None
    names = label_names(frames["train"], cfg, label_map)
    out = root / "data" / "validated"
    out.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        encoded_labels(frame, cfg, names, label_map).to_parquet(out / f"{split}.parquet")
    (out / "dataset.json").write_text(json.dumps({
        "task": cfg.resolved_task, "label_names": names, "normalize": list(rules),
        "input_fields": {"text": list(cfg.text_columns),
                         "text_pair": [cfg.text_pair] if cfg.text_pair else []}}))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (every socket is held until all are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def copy_tokens(root: Path, to: Path) -> Path:
    """``root``'s data/tokens into ``to`` (another project dir, for a second training run)."""
    shutil.copytree(root / "data" / "tokens", to / "data" / "tokens")
    return to
