"""A dataset as its description (params `data`) says to read it: the model's table of a split.

validate builds its checks and data/validated from these tables; nothing here judges the data
(that is the suite's job), it only reads, joins, normalises and encodes as the description says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textclf.core.config import DataConfig
from textclf.core.errors import TextclfError
from textclf.core.readers import read_table, require_columns


def raw_file(raw_dir: Path, split: str) -> Path:
    found = sorted(raw_dir.glob(f"{split}.*")) if raw_dir.is_dir() else []
    if len(found) != 1:
        raise TextclfError(f"validate: {raw_dir}/{split}.<ext> not found. Run `textclf fetch` "
                           "(or `dvc repro`) first to create it.")
    return found[0]


def model_table(path: Path, data: DataConfig, clean: Callable[[str], str]) -> pd.DataFrame:
    """The file's rows as the model reads them: ``text`` (columns joined by a space, then
    ``clean``ed), ``text_pair``, each label column as text (``label:<column>``; None where
    missing), ``text_chars``; indexed by line."""
    details = data.source_details()
    raw = read_table(path, details.columns if details else None)
    require_columns(path, raw, data.text_columns, "text")
    if data.text_pair:
        require_columns(path, raw, [data.text_pair], "text_pair")
    require_columns(path, raw, data.label_columns, "label")
    out = pd.DataFrame(index=raw.index)
    columns = [raw[c].map(_as_text) for c in data.text_columns]
    out["text"] = [clean(" ".join(parts)) if None not in parts else None
                   for parts in zip(*columns, strict=True)]
    if data.text_pair:
        out["text_pair"] = [clean(t) if t is not None else None
                            for t in raw[data.text_pair].map(_as_text)]
    for column in data.label_columns:
        out[f"label:{column}"] = raw[column].map(_label_text)
    out["text_chars"] = out["text"].map(lambda t: len(t) if t is not None else 0)
    return out


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _label_text(value: Any) -> str | None:
    # JSON and Parquet keep types: 1, 1.0, True and "1" are the same label.
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = _as_text(value)
    return text.strip() if text is not None else None


def label_names(train: pd.DataFrame, data: DataConfig, label_map: dict | None) -> list[str]:
    """Label i's name: the mapped names in the map's order, the multi-label columns, or the
    training split's values sorted (numerically when they are all integers)."""
    if data.resolved_task == "multilabel":
        return list(data.label_columns)
    if label_map:
        return list(label_map.values())
    values = {v for v in train[f"label:{data.label}"] if v is not None}
    numeric = all(re.fullmatch(r"-?\d+", v) for v in values)
    return sorted(values, key=(lambda v: (int(v), v)) if numeric else None)


def encoded_labels(frame: pd.DataFrame, data: DataConfig, names: list[str],
                   label_map: dict | None) -> pd.DataFrame:
    out = frame[["text", "text_pair"] if data.text_pair else ["text"]].reset_index(drop=True)
    if data.resolved_task == "multilabel":
        matrix = np.stack([frame[f"label:{c}"].astype(int).to_numpy(np.int8)
                           for c in data.label_columns], axis=1)
        out["label"] = list(matrix)
    else:
        raw_to_index = {raw: names.index(label_map[raw] if label_map else raw)
                        for raw in frame[f"label:{data.label}"].unique()}
        out["label"] = frame[f"label:{data.label}"].map(raw_to_index).to_numpy(np.int64)
    return out


