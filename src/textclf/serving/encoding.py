"""Text -> raw ids -> padded arrays, and raw ids -> the compact rows the model embeds.

The one definition of how ids are built, shared by the tokenize stage (the training arrays), the
export (the compact-id map baked into the graph) and serving (`Predictor`), so train and serve
cannot drift. numpy and tiktoken only.

Truncation (the model contract, docs/architecture.md): a single text longer than max_length
keeps its first ``head_tokens`` ids and its last ``max_length - head_tokens`` (long reviews put
their verdict at the end); a pair is ``first ids + [separator id] + second ids``, and while it
is longer than max_length the longer side loses its last id (the second side on a tie).

Compact ids: row 0 is padding, row 1 is "unknown", rows 2.. are the training split's raw ids.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import tiktoken

from textclf.serving.contract import TokenizerInfo

PAD_ROW, UNK_ROW = 0, 1


def encode(encoding: tiktoken.Encoding, tok: TokenizerInfo, texts: Sequence[str],
           pairs: Sequence[str] | None = None) -> list[list[int]]:
    """Raw tiktoken ids per (already normalised) input, truncated as the contract says.

    Special tokens in the text are plain text: only the pair separator is ever a special id.
    """
    # A plain loop: encode_ordinary_batch's thread pool costs more per text than it saves on
    # short texts (measured 2-3x slower on AG News, see benchmarks/tokenize_speed.py).
    encode_one = encoding.encode_ordinary
    if pairs is None:
        return [truncate(encode_one(text), tok.max_length, tok.head_tokens) for text in texts]
    budget = tok.max_length - 1
    out = []
    for text, pair in zip(texts, pairs, strict=True):
        first, second = truncate_pair(encode_one(text), encode_one(pair), budget)
        out.append([*first, tok.pair_separator_id, *second])
    return out


def truncate(ids: list[int], max_length: int, head_tokens: int) -> list[int]:
    """The first ``head_tokens`` ids and the last ``max_length - head_tokens`` of a long text."""
    if len(ids) <= max_length:
        return ids
    tail = max_length - min(head_tokens, max_length)
    return ids[:max_length - tail] + (ids[-tail:] if tail else [])


def truncate_pair(first: list[int], second: list[int],
                  budget: int) -> tuple[list[int], list[int]]:
    """Longest first: cut the longer side until both fit ``budget`` ids (the second on a tie)."""
    a, b = len(first), len(second)
    excess = a + b - budget
    if excess > 0:
        gap = min(excess, abs(a - b))
        if a > b:
            a -= gap
        else:
            b -= gap
        excess -= gap
        b -= (excess + 1) // 2  # equal lengths now: the second side goes first, alternately
        a -= excess // 2
    return first[:a], second[:b]


def take_rows(flat: np.ndarray, lengths: np.ndarray,
              rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ragged sub-corpus of ``rows`` (in that order) of a (flat, lengths) corpus."""
    starts = (np.cumsum(lengths) - lengths)[rows]
    picked = lengths[rows]
    # Position k of the output is token (k - first output index of its row) of its row.
    row_of = np.repeat(np.arange(len(rows)), picked)
    first_out = np.cumsum(picked) - picked
    return flat[starts[row_of] + np.arange(len(row_of)) - first_out[row_of]], picked


def pad(rows: Sequence[Sequence[int]], pad_value: int, width: int | None = None,
        table: np.ndarray | None = None, dtype: type = np.int64) -> np.ndarray:
    """Right-pad to ``width`` (default: the longest row, at least 1) -> (N, width) of ``dtype``.

    With ``table``, every id is looked up in it first (raw -> compact ids).
    """
    if len(rows) > _FEW_ROWS:
        return pad_flat(*flatten(rows), pad_value, width, table, dtype)
    # A few rows (serving one text at a time): a row loop costs a quarter of the array
    # operations' fixed overhead (7 us vs 27 us for one text, the same at 32 rows).
    if width is None:
        width = max(1, max(map(len, rows), default=0))
    out = np.full((len(rows), width), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        kept = row[:width]
        out[i, :len(kept)] = table[kept] if table is not None else kept
    return out


def flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> (flat ids int64, lengths int64): the form the stage builds arrays from."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                       count=int(lengths.sum()))
    return flat, lengths


def pad_flat(flat: np.ndarray, lengths: np.ndarray, pad_value: int, width: int | None = None,
             table: np.ndarray | None = None, dtype: type = np.int64) -> np.ndarray:
    """``pad`` for a (flat ids, lengths) corpus; rows longer than ``width`` are cut."""
    if width is None:
        width = max(1, int(lengths.max(initial=0)))
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kept = flat[position < width]
    if table is not None:
        kept = table[kept]  # mapping the real tokens only: several times cheaper than the grid
    out = np.full((len(lengths), width), pad_value, dtype=dtype)
    out[np.arange(width)[None, :] < np.minimum(lengths, width)[:, None]] = kept
    return out


def compact_map(raw_ids: np.ndarray, n_vocab: int, pad: int) -> np.ndarray:
    """Lookup table raw id -> compact row: the training arrays' and the exported graph's map."""
    table = np.full(n_vocab, UNK_ROW, dtype=np.int64)
    table[raw_ids] = np.arange(2, 2 + len(raw_ids))
    table[pad] = PAD_ROW
    return table


# Up to this many rows, `pad` fills row by row instead of through `pad_flat`.
_FEW_ROWS = 16
