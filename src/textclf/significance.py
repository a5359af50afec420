"""Is a change in the headline metric real? A paired comparison of two sets of per-row decisions.

The evaluate stage writes ``metrics/eval/predictions.json`` (git-tracked): every test row's key (12
hex of its text's sha256), true label(s), and the model's and the baseline's decisions. Two
revisions' files are paired on the rows they share (by key, so a re-ordered or subsampled test
split still pairs), labels compared by name. A paired bootstrap gives a 95% interval of the
change of the headline metric (accuracy, or macro-F1 for multi-label); for one label per row
McNemar's exact test on the rows only one side gets right must agree before a change is called
beyond noise. numpy only (scipy for the binomial test), no DVC, no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclf.core.errors import TextclfError
from textclf.core.paths import Paths

PREDICTIONS = Paths().eval_predictions  # relative to the project root
HEADLINES = {"multiclass": "accuracy", "pair": "accuracy", "multilabel": "macro_f1"}
COLUMNS = ("key", "actual", "model", "baseline")
RESAMPLES = 2000
SEED = 0  # fixed: the same two revisions always get the same interval and verdict
CONFIDENCE = 0.95
ALPHA = 0.05  # McNemar's test, at the level the interval's confidence implies
MIN_PAIRED_ROWS = 30  # below this a bootstrap interval means little: no verdict
# Resample weights are built this many (resample, row) cells at a time, bounding memory
# (~8 bytes a cell) whatever the test split's size.
_CELLS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class Predictions:
    """One revision's predictions file, validated: a row per test row, labels as indices into
    ``label_names`` (single-label tasks) or lists of them (multi-label)."""

    source: str
    task: str
    headline: str
    label_names: list[str]
    keys: list[str]
    actual: list[Any]
    model: list[Any]
    baseline: list[Any]

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


def read_predictions(text: str, source: str) -> Predictions:
    """Parse and check a predictions file's text; ``source`` names it in errors.

    Raises ``TextclfError`` saying what is wrong (not JSON, another format, a bad field or row).
    """

    def bad(what: str) -> TextclfError:
        return TextclfError(
            f"cannot read {source}: {what}. `textclf report` reads the file the evaluate stage "
            "writes (format 1: task, headline, label_names, columns key/actual/model/baseline "
            "and rows); re-create it with `dvc repro evaluate` at that revision, or compare "
            "with another one (--rev)."
        )

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"it is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise bad("the top level is not a JSON object")
    if data.get("format") != 1:
        raise bad(f"it is format {data.get('format')!r}; this textclf reads format 1 (a newer "
                  "format needs a newer textclf)")
    task, headline = data.get("task"), data.get("headline")
    if task not in HEADLINES:
        raise bad(f"unknown task {task!r} (expected one of {', '.join(HEADLINES)})")
    if headline != HEADLINES[task]:
        raise bad(f"headline {headline!r} for task {task!r} (expected {HEADLINES[task]!r})")
    names = data.get("label_names")
    if (not isinstance(names, list) or not names
            or not all(isinstance(name, str) for name in names) or len(set(names)) < len(names)):
        raise bad("label_names is not a non-empty list of distinct strings")
    columns = data.get("columns")
    if not isinstance(columns, list) or not set(COLUMNS) <= set(columns):
        raise bad(f"columns is {columns!r}, not a list holding {', '.join(COLUMNS)}")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise bad("rows is not a list")

    at = [columns.index(column) for column in COLUMNS]
    is_label = _is_label_list if task == "multilabel" else _is_label
    values: list[list[Any]] = [[], [], [], []]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, list) or len(row) != len(columns):
            raise bad(f"row {number} is not a list of {len(columns)} values: {row!r:.80}")
        key = row[at[0]]
        if not isinstance(key, str) or not key:
            raise bad(f"row {number}'s key {key!r:.40} is not a non-empty string")
        for column, index in zip(COLUMNS[1:], at[1:], strict=True):
            if not is_label(row[index], len(names)):
                kind = "a list of label indices" if task == "multilabel" else "a label index"
                raise bad(f"row {number}'s {column} {row[index]!r:.40} is not {kind} below "
                          f"{len(names)} (the number of label_names)")
        for store, index in zip(values, at, strict=True):
            store.append(row[index])
    return Predictions(source, task, headline, names, *values)


@dataclass(frozen=True)
class Change:
    """The headline metric before and after on the same rows, with a paired 95% interval of the
    change and (one label per row) McNemar's exact p-value."""

    metric: str
    rows: int
    before: float
    after: float
    low: float
    high: float
    p_value: float | None = None
    gained: int = 0  # rows only `after` gets right (one label per row)
    lost: int = 0  # rows only `before` gets right

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def interval_excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def beyond_noise(self) -> bool:
        # The percentile bootstrap is overconfident when only a few rows changed (5 rows all
        # gained: the interval misses 0, McNemar's p is 0.06), so both must agree.
        significant = self.p_value is None or self.p_value < ALPHA
        return self.interval_excludes_zero and significant

    @property
    def verdict(self) -> str:
        if not self.beyond_noise:
            return "within noise"
        return f"beyond noise ({'better' if self.low > 0 else 'worse'})"


def paired_change(metric: str, before: tuple[np.ndarray, np.ndarray],
                  after: tuple[np.ndarray, np.ndarray], resamples: int = RESAMPLES,
                  seed: int = SEED) -> Change:
    """Compare ``(truth, predicted)`` before and after on the same rows (row i is one text).

    ``metric`` is "accuracy" (label index arrays) or "macro_f1" (boolean rows-by-labels matrices,
    F1 of a label with no true and no predicted rows counted as 0, as evaluate's sklearn call
    does). The interval is the percentile interval of ``resamples`` paired bootstrap resamples.
    """
    stats = np.hstack([_row_stats(metric, *before), _row_stats(metric, *after)])
    n = len(stats)
    if n == 0:
        raise ValueError("paired_change needs at least one row")
    point = _score(metric, stats.sum(0, keepdims=True, dtype=np.float64), n)[0]
    diffs = _bootstrap(metric, stats, resamples, seed)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    out = {}
    if metric == "accuracy":
        right_before, right_after = stats[:, 0] > 0, stats[:, 1] > 0
        gained = int(np.sum(right_after & ~right_before))
        lost = int(np.sum(right_before & ~right_after))
        out = {"p_value": _mcnemar(gained, lost), "gained": gained, "lost": lost}
    return Change(metric, n, float(point[0]), float(point[1]), float(low), float(high), **out)


def pair_rows(before: Predictions, after: Predictions) -> tuple[list[int], list[int]]:
    """Row positions in ``before`` and ``after`` holding the same text, in ``after``'s order."""
    # A text may occur twice in a test split: its k-th occurrence pairs with the other side's k-th.
    def occurrences(keys: list[str]) -> list[tuple[str, int]]:
        seen: dict[str, int] = {}
        out = []
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
            out.append((key, seen[key]))
        return out

    where = {item: i for i, item in enumerate(occurrences(before.keys))}
    pairs = [(where[item], j) for j, item in enumerate(occurrences(after.keys)) if item in where]
    return [i for i, _ in pairs], [j for _, j in pairs]


def encode_rows(pred: Predictions, rows: Sequence[int],
            names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, model and baseline at ``rows``, with labels re-indexed into ``names`` (a superset
    of the file's): index arrays, or rows-by-labels boolean matrices for multi-label."""
    to_common = np.array([names.index(name) for name in pred.label_names])

    def encode(values: list[Any]) -> np.ndarray:
        if not pred.multilabel:
            return to_common[np.array([values[i] for i in rows], dtype=np.int64)]
        matrix = np.zeros((len(rows), len(names)), dtype=bool)
        for r, i in enumerate(rows):
            matrix[r, to_common[np.array(values[i], dtype=np.int64)]] = True
        return matrix

    return encode(pred.actual), encode(pred.model), encode(pred.baseline)


def differing_rows(truth_a: np.ndarray, truth_b: np.ndarray) -> int:
    differ = truth_a != truth_b
    return int((differ.any(1) if differ.ndim == 2 else differ).sum())


def _row_stats(metric: str, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per row, the counts the metric is a function of (their sums over a resample score it):
    right or not for accuracy; per label a true positive, false positive, false negative."""
    if metric == "accuracy":
        return (truth == predicted).astype(np.float32)[:, None]
    if metric == "macro_f1":
        return np.hstack([truth & predicted, ~truth & predicted, truth & ~predicted]
                         ).astype(np.float32)
    raise ValueError(f"no paired comparison for metric {metric!r}")


def _score(metric: str, sums: np.ndarray, n: int) -> np.ndarray:
    """(resamples, 2): the metric before and after, from each resample's summed row stats."""
    if metric == "accuracy":
        return sums / n
    tp, fp, fn = sums.reshape(len(sums), 2, 3, -1).transpose(2, 0, 1, 3)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(-1)


def _bootstrap(metric: str, stats: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The change (after - before) in ``resamples`` paired resamples of the rows."""
    rng = np.random.default_rng(seed)
    n = len(stats)
    chunk = max(1, min(resamples, _CELLS_PER_CHUNK // n))
    diffs = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # A resample as a count per row (drawn twice weighs 2): one matrix product then sums
        # every row stat of every resample, with no per-resample Python loop.
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
        scores = _score(metric, weights.astype(np.float32) @ stats, n)
        diffs[start:start + size] = scores[:, 1] - scores[:, 0]
    return diffs


def _mcnemar(gained: int, lost: int) -> float:
    """Exact McNemar: two-sided binomial test of gained vs lost rows at even odds."""
    if gained + lost == 0:
        return 1.0
    from scipy.stats import binomtest  # scikit-learn's dependency; slow to import, so here

    return float(binomtest(gained, gained + lost, 0.5).pvalue)


def _is_label(value: Any, k: int) -> bool:
    return type(value) is int and 0 <= value < k  # bool is an int subclass: not a label


def _is_label_list(value: Any, k: int) -> bool:
    return isinstance(value, list) and all(_is_label(item, k) for item in value)
