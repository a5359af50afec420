"""Stage `tokenize`: validated text -> padded compact-id arrays, labels, lengths, vocabulary.

Reads  data/validated/{train,test}.parquet, data/validated/dataset.json
Writes data/tokens/{train,val,test}.npz  (ids int32 [N, max_length], lengths, labels (int64 [N],
                                         or 0/1 float32 [N, K] for multi-label), rows; train
                                         and val also `teacher`: baseline probs from fits that
                                         did not see the row)
       data/tokens/vocab.json            (tokenizer (serving/contract.TokenizerInfo), task,
                                         label names, input fields, raw_ids)

The validation split is carved out of the training file here (stratified by class when there is
one label per row, seeded), so model selection never sees the test file. The compact vocabulary
covers only ids seen in the training split: the embedding table shrinks from ~100k rows to the
tens of thousands the data uses. How a text becomes ids is serving/encoding.py's, the same code
`predict` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from textclf.core.artifacts import read_text_artifact, read_validated
from textclf.core.atomic import atomic_dir
from textclf.core.config import Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.core.progress import progress
from textclf.modeling.baseline import as_inputs, teacher_probabilities
from textclf.serving.contract import TokenizerInfo
from textclf.serving.encoding import PAD_ROW, compact_map, encode, flatten, pad_flat, take_rows
from textclf.serving.text import model_input
from textclf.serving.tokenizer import load_encoding, pad_id, separator_id

SPLITS = ("train", "val", "test")


def encode_corpus(tok: TokenizerInfo, texts: Sequence[str], pairs: Sequence[str] | None,
                  workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model input of every text (or pair), encoded: (flat raw ids int64, lengths int64).

    tiktoken holds the GIL, so threads do not help; forked worker processes clean and encode
    contiguous parts (1.34x on 2 cores: docs/results.md, Tokenization), in order, a few thousand
    texts at a time so the progress bar moves. ``workers`` 0 means one per available core;
    small corpora and platforms without fork stay in-process.
    """
    workers = workers or _available_cores()
    parallel = (workers > 1 and len(texts) >= _PARALLEL_MIN_TEXTS
                and "fork" in multiprocessing.get_all_start_methods())
    parts = _contiguous_parts(len(texts), max(workers if parallel else 1,
                                              -(-len(texts) // _PART_TEXTS)))
    jobs = [(tok, texts[a:b], pairs[a:b] if pairs is not None else None) for a, b in parts]
    results = []
    with progress(len(texts), "tokenize", "text") as bar, contextlib.ExitStack() as stack:
        if parallel:
            load_encoding(tok.encoding)  # loaded once here, inherited by every forked worker
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")))
            encoded = pool.map(_encode_part, jobs)
        else:
            encoded = map(_encode_part, jobs)
        for (a, b), result in zip(parts, encoded, strict=True):
            results.append(result)
            bar.update(b - a)
    return (np.concatenate([flat for flat, _ in results]),
            np.concatenate([lengths for _, lengths in results]))


def build_vocab(train_ids: np.ndarray, n_vocab: int, size: int, min_freq: int) -> np.ndarray:
    """Raw ids kept in the compact vocabulary, sorted ascending: seen >= min_freq times in the
    training split's flat ids, and the ``size`` most frequent of those when size > 0 (ties:
    lower id)."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=n_vocab)
    kept = np.flatnonzero(counts >= min_freq)
    if size and len(kept) > size:
        order = np.lexsort((kept, -counts[kept]))
        kept = np.sort(kept[order[:size]])
    return kept.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val), reproducibly; each class split in the same proportion when
    there is one label per row (multi-label rows are split at random)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    try:
        train_rows, val_rows = train_test_split(
            rows, test_size=val_fraction, random_state=seed,
            stratify=labels if labels.ndim == 1 else None)
    except ValueError as exc:
        raise TextclfError(
            f"tokenize: cannot carve a stratified validation split ({exc}). Each class needs "
            "at least two training rows: lower tokenize.val_fraction or fetch more data."
        ) from None
    return np.sort(train_rows), np.sort(val_rows)


def run(params: Params, paths: Paths) -> dict[str, int]:
    cfg = params.tokenize
    dataset = json.loads(read_text_artifact(paths.validated / "dataset.json"))
    pairs = dataset["task"] == "pair"
    columns = ["label", "text", "text_pair"] if pairs else ["label", "text"]
    frames = {name: read_validated(paths.validated / f"{name}.parquet", columns)
              for name in ("train", "test")}
    encoding = load_encoding(cfg.encoding)
    tok = TokenizerInfo(
        encoding=cfg.encoding, max_length=cfg.max_length, pad_id=pad_id(encoding),
        n_vocab=encoding.n_vocab, lowercase=cfg.lowercase, normalize=dataset["normalize"],
        head_tokens=(round(cfg.head_share * cfg.max_length) if cfg.truncation == "head_tail"
                     else cfg.max_length),
        pair_separator_id=separator_id(encoding) if pairs else -1)
    multilabel = dataset["task"] == "multilabel"
    labels = {name: label_array(frame["label"], multilabel) for name, frame in frames.items()}

    train_rows, val_rows = stratified_split(labels["train"], cfg.val_fraction, cfg.seed)
    split_rows = {"train": train_rows, "val": val_rows, "test": np.arange(len(frames["test"]))}
    split_source = {"train": "train", "val": "train", "test": "test"}

    # One pass over both files: the worker processes start once.
    texts = frames["train"]["text"].tolist() + frames["test"]["text"].tolist()
    second = (frames["train"]["text_pair"].tolist() + frames["test"]["text_pair"].tolist()
              if pairs else None)
    flat, lengths = encode_corpus(tok, texts, second)
    file_offset = {"train": 0, "val": 0, "test": len(frames["train"])}
    raw_ids = build_vocab(take_rows(flat, lengths, train_rows)[0], encoding.n_vocab,
                          cfg.vocab_size, cfg.min_freq)
    # (The pair separator is in every pair row: the most frequent id, always kept.)
    table = compact_map(raw_ids, encoding.n_vocab, tok.pad_id)

    teacher: dict[str, np.ndarray] = {}
    if cfg.teacher_folds:
        train_file = frames["train"]
        inputs = as_inputs(train_file["text"], train_file["text_pair"] if pairs else None)
        teacher["train"], teacher["val"] = teacher_probabilities(
            inputs[train_rows], labels["train"][train_rows], inputs[val_rows],
            len(dataset["label_names"]), params.baseline, cfg.teacher_folds, cfg.seed)

    summary: dict[str, int] = {"vocab_rows": len(raw_ids) + 2}
    with atomic_dir(paths.tokens) as out:
        for split in SPLITS:
            rows = split_rows[split]
            split_flat, split_lengths = take_rows(flat, lengths, rows + file_offset[split])
            arrays = {
                "ids": pad_flat(split_flat, split_lengths, PAD_ROW, width=cfg.max_length,
                                table=table, dtype=np.int32),
                "lengths": split_lengths.astype(np.int32),
                "labels": labels[split_source[split]][rows],
                "rows": rows.astype(np.int64),
            }
            if split in teacher:
                arrays["teacher"] = teacher[split]
            np.savez(out / f"{split}.npz", **arrays)
            summary[f"{split}_rows"] = len(rows)
        vocab = {"tokenizer": dataclasses.asdict(tok), "task": dataset["task"],
                 "label_names": dataset["label_names"],
                 "input_fields": dataset["input_fields"], "raw_ids": raw_ids.tolist()}
        (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return summary


def label_array(column: Any, multilabel: bool) -> np.ndarray:
    """int64 (N,) class indices, or float32 (N, K) 0/1 rows for multi-label."""
    if multilabel:
        return np.stack(column.to_numpy()).astype(np.float32)
    return column.to_numpy(np.int64)


# Below this many texts, starting a worker process costs more than it saves.
_PARALLEL_MIN_TEXTS = 4096
# Texts per unit of work (and progress step): large enough that passing it to a worker is cheap.
_PART_TEXTS = 4096


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _contiguous_parts(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(1, min(parts, n)) + 1).astype(int)
    return list(itertools.pairwise(bounds.tolist()))


def _encode_part(job: tuple[TokenizerInfo, Sequence[str], Sequence[str] | None],
                 ) -> tuple[np.ndarray, np.ndarray]:
    tok, texts, pairs = job
    def prepared(values: Sequence[str]) -> list[str]:
        return [model_input(t, tok.normalize, tok.lowercase) for t in values]

    rows = encode(load_encoding(tok.encoding), tok, prepared(texts),
                  prepared(pairs) if pairs is not None else None)
    # Arrays, not lists: a worker's result crosses the process boundary as one buffer.
    return flatten(rows)
