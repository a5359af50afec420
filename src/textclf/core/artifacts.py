"""Reading the files one stage hands the next, with the error that says which stage makes them.

validate writes data/validated/{train,test}.parquet; tokenize writes data/tokens/{split}.npz and
vocab.json. Every later stage reads them through these functions (numpy and pandas only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from textclf.core.errors import TextclfError


def read_validated(path: Path, columns: list[str]) -> Any:
    """``columns`` of a validated split as a pandas DataFrame."""
    import pandas as pd

    if not path.exists():
        raise TextclfError(f"{path}: not found. Run `dvc repro validate` first.")
    return pd.read_parquet(path, columns=columns)


def texts_of_rows(path: Path, rows: np.ndarray,
                  column: str = "text") -> list[str]:
    """The validated split's ``column`` at ``rows`` (the row numbers a token split records)."""
    texts = read_validated(path, [column])[column].to_numpy()
    if len(rows) and int(rows.max()) >= len(texts):
        raise TextclfError(
            f"{path}: has {len(texts)} rows but data/tokens refers to row {int(rows.max())}. "
            "The tokens are stale: run `dvc repro tokenize`."
        )
    return [str(t) for t in texts[rows]]


def inputs_of_rows(path: Path, rows: np.ndarray, pairs: bool) -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) at ``rows``: what the model and the baseline read."""
    return (texts_of_rows(path, rows),
            texts_of_rows(path, rows, "text_pair") if pairs else None)


def load_split(tokens_dir: Path, split: str) -> dict[str, np.ndarray]:
    """One split's arrays as the tokenize stage writes them: ids, lengths, labels, rows."""
    path = tokens_dir / f"{split}.npz"
    if not path.exists():
        raise TextclfError(f"{path}: not found. Run `dvc repro tokenize` first.")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def load_vocab(tokens_dir: Path) -> dict:
    return json.loads(read_text_artifact(tokens_dir / "vocab.json"))


def read_text_artifact(path: Path) -> str:
    """A small text file a stage writes (dataset.json, vocab.json), or which stage makes it."""
    if not path.exists():
        stage = "validate" if path.parent.name == "validated" else "tokenize"
        raise TextclfError(f"{path}: not found. Run `dvc repro {stage}` first.")
    return path.read_text(encoding="utf-8")
