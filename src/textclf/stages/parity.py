"""Stage `parity`: PyTorch and ONNX Runtime must agree before models/model.onnx ships.

Reads  models/model.pt, models/model.onnx, data/validated/test.parquet,
       data/tokens/{test.npz,vocab.json}
Writes metrics/parity.json (only when parity holds; otherwise the stage fails with the figures)

Both engines get the same raw-id batches, produced by the serving path (`Predictor`:
normalise -> tiktoken -> truncate -> pad), over the whole test split plus edge cases (empty text,
one token, exactly max_length tokens, far beyond it, non-Latin script; as either side of a pair
for a pair model). Decisions are compared as the task makes them: the argmax, or every label's
threshold for multi-label. The serving ids are also
compared with the tokens the model was evaluated on, to catch a train/serve tokenization skew.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textclf.core.artifacts import inputs_of_rows, load_split, load_vocab
from textclf.core.atomic import write_json
from textclf.core.config import Params, ParityConfig
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.bundle import Bundle, load_bundle
from textclf.serving.encoding import compact_map
from textclf.serving.predictor import Predictor


@dataclass(frozen=True)
class ParityReport:
    rows: int  # texts compared, edge cases included
    edge_cases: int
    max_abs_diff: float
    argmax_agreement: float  # share of rows where both engines decide the same (every label)
    accuracy_drop: float  # torch's minus ONNX's accuracy (per label for multi-label)
    quantized: bool  # the ONNX file is int8: the config's int8_* limits apply
    torch_p50_ms: float
    onnx_p50_ms: float
    config: ParityConfig

    @property
    def limits(self) -> tuple[float, float]:
        """(max |logit difference|, min argmax agreement) for this kind of export."""
        cfg = self.config
        if self.quantized:
            return cfg.int8_max_abs_diff, cfg.int8_min_argmax_agreement
        return cfg.max_abs_diff, cfg.min_argmax_agreement

    @property
    def passed(self) -> bool:
        max_diff, min_agreement = self.limits
        return (self.max_abs_diff <= max_diff and self.argmax_agreement >= min_agreement
                and self.accuracy_drop <= self.config.max_accuracy_drop)

    def metrics(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "edge_cases": self.edge_cases,
            "quantized": self.quantized,
            "max_abs_diff": self.max_abs_diff,
            "argmax_agreement": round(self.argmax_agreement, 6),
            "accuracy_drop": round(self.accuracy_drop, 6),
        }

    def latency(self) -> dict[str, float]:
        return {"torch_p50_ms": round(self.torch_p50_ms, 4),
                "onnx_p50_ms": round(self.onnx_p50_ms, 4)}

    def raise_if_failed(self, onnx_path: Path | str = "models/model.onnx") -> None:
        if self.passed:
            return
        max_diff, min_agreement = self.limits
        prefix = "parity.int8_" if self.quantized else "parity."
        broken = []
        if not self.max_abs_diff <= max_diff:
            broken.append(f"max_abs_diff {self.max_abs_diff:.3g} exceeds {prefix}max_abs_diff "
                          f"{max_diff:g}")
        if self.argmax_agreement < min_agreement:
            broken.append(f"argmax agreement {self.argmax_agreement:.4%} is below "
                          f"{prefix}min_argmax_agreement {min_agreement:.4%}")
        if self.accuracy_drop > self.config.max_accuracy_drop:
            broken.append(f"accuracy drop {self.accuracy_drop:.2%} exceeds "
                          f"parity.max_accuracy_drop {self.config.max_accuracy_drop:.2%}")
        raise TextclfError(
            f"parity: ONNX Runtime and PyTorch disagree on {self.rows} inputs (test split + "
            f"{self.edge_cases} edge cases): {'; '.join(broken)}. Most likely {onnx_path} does "
            "not come from this models/model.pt (stale or edited): re-export it with "
            "`dvc repro export`. If a fresh export still fails, the exporter mistranslated an "
            "op: try another export.opset; raise parity.max_abs_diff only if the gap is float "
            "rounding (well below 1e-3)."
        )


def run(params: Params, paths: Paths) -> dict[str, Any]:
    bundle = load_bundle(paths.model)
    tokens = load_split(paths.tokens, "test")
    texts, pairs = inputs_of_rows(paths.validated / "test.parquet", tokens["rows"],
                                  bundle.task == "pair")

    predictor = Predictor(paths.onnx, providers=["CPUExecutionProvider"])
    report = check_parity(bundle, predictor, texts, params.parity, tokens["labels"], pairs)
    report.raise_if_failed(paths.onnx)
    skew = tokenization_skew(predictor, texts, pairs, tokens["ids"], load_vocab(paths.tokens),
                             params.parity.batch_size)
    metrics = {**report.metrics(), "serving_token_mismatch_rows": skew}
    write_json(paths.parity_metrics, metrics)
    write_json(paths.parity_runtime, report.latency())
    return {**metrics, "latency": report.latency()}


def check_parity(bundle: Bundle, onnx: Predictor | Path | str, texts: Sequence[str],
                 cfg: ParityConfig, labels: np.ndarray | None = None,
                 pairs: Sequence[str] | None = None) -> ParityReport:
    """Compare torch (fp32, eval) and ONNX Runtime logits on ``texts`` (with their ``pairs``
    for a pair model) plus the edge cases.

    ``onnx`` is a model file (opened on the CPU) or an open Predictor. With ``labels`` (one per
    text), also how much accuracy the ONNX model loses against torch.
    """
    predictor = (onnx if isinstance(onnx, Predictor)
                 else Predictor(onnx, providers=["CPUExecutionProvider"]))
    _check_same_model(bundle, predictor, predictor.path)
    model = bundle.raw_id_model().float().eval()
    edges = edge_cases(predictor)
    inputs = [*texts, *edges]
    # A pair model: each edge case as the first side (second: "the"), then as the second.
    second = ([*pairs, *(["the"] * len(edges))] if pairs is not None else None)
    if second is not None:
        inputs, second = [*inputs, *(["the"] * len(edges))], [*second, *edges]
        edges = [*edges, *edges]

    max_diff = 0.0
    torch_batches, onnx_batches = [], []
    for start in range(0, len(inputs), cfg.batch_size):
        part = slice(start, start + cfg.batch_size)
        ids = predictor.encode(inputs[part], second[part] if second is not None else None)
        expected = _torch_logits(model, ids)
        got = predictor.logits(ids)
        diff = float(np.abs(expected - got).max())
        # NaN must fail, and max() silently drops NaN.
        max_diff = max(max_diff, diff if np.isfinite(diff) else float("inf"))
        torch_batches.append(predictor.decisions(expected))
        onnx_batches.append(predictor.decisions(got))
    torch_pred, onnx_pred = np.concatenate(torch_batches), np.concatenate(onnx_batches)
    accuracy_drop = 0.0
    if labels is not None and len(labels):
        truth = np.asarray(labels).astype(torch_pred.dtype)
        accuracy_drop = float(np.mean(torch_pred[: len(truth)] == truth)
                              - np.mean(onnx_pred[: len(truth)] == truth))
    agree = torch_pred == onnx_pred
    agree = agree.all(1) if agree.ndim == 2 else agree

    torch_ms, onnx_ms = _latencies(model, predictor, inputs, second, cfg.latency_runs)
    return ParityReport(
        rows=len(inputs), edge_cases=len(edges), max_abs_diff=max_diff,
        argmax_agreement=float(np.mean(agree)), accuracy_drop=accuracy_drop,
        quantized=predictor.quantized, torch_p50_ms=statistics.median(torch_ms),
        onnx_p50_ms=statistics.median(onnx_ms), config=cfg,
    )


def edge_cases(predictor: Predictor) -> list[str]:
    """Empty, one token, exactly max_length tokens, 4x max_length, non-Latin script."""
    n = predictor.max_length
    # " the" is one cl100k/o200k token per word; the length is checked, not assumed.
    exact = "the" + " the" * (n - 1)
    if len(predictor.encoding.encode_ordinary(exact)) != n:
        exact = " ".join(["news"] * (2 * n))
    return ["", "the", exact, " ".join(["markets", "rally", "after", "election"] * n),
            "株価が上昇 — Économie: l\u2019euro grimpe 📈"]


def tokenization_skew(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None,
                      token_ids: np.ndarray, vocab: dict, batch_size: int) -> int:
    """Rows whose serving-path compact ids differ from the tokenize stage's (0 = no skew)."""
    tok = vocab["tokenizer"]
    table = compact_map(np.asarray(vocab["raw_ids"], dtype=np.int64), tok["n_vocab"],
                        tok["pad_id"])
    mismatched = 0
    for start in range(0, len(texts), batch_size):
        part = slice(start, start + batch_size)
        raw = predictor.encode(texts[part], pairs[part] if pairs is not None else None)
        serving = np.zeros((len(raw), token_ids.shape[1]), dtype=np.int64)
        serving[:, : raw.shape[1]] = table[raw]
        stored = token_ids[start:start + batch_size]
        mismatched += int((serving != stored).any(axis=1).sum())
    return mismatched


def _check_same_model(bundle: Bundle, predictor: Predictor, onnx_path: Path | str) -> None:
    theirs = predictor.metadata
    ours = (bundle.task, bundle.label_names, bundle.thresholds, bundle.tokenizer)
    if ours != (theirs.task, theirs.label_names, theirs.thresholds, theirs.tokenizer):
        raise TextclfError(
            f"parity: {onnx_path} describes another model ({theirs.task}, labels "
            f"{theirs.label_names}, thresholds {theirs.thresholds}, {theirs.tokenizer}; "
            f"models/model.pt has {bundle.task}, {bundle.label_names}, {bundle.thresholds}, "
            f"{bundle.tokenizer}). Re-export it with `dvc repro export`."
        )


def _torch_logits(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids)).numpy()


def _latencies(model: torch.nn.Module, predictor: Predictor, texts: Sequence[str],
               pairs: Sequence[str] | None, runs: int) -> tuple[list[float], list[float]]:
    # Batch 1, the same texts for both engines. One engine after the other, not interleaved:
    # each one's worker threads keep spinning briefly after a call, and interleaving made torch
    # look 100x slower on a 2-core machine while ORT's threads held both cores.
    singles = [predictor.encode([texts[i % len(texts)]],
                                [pairs[i % len(texts)]] if pairs is not None else None)
               for i in range(runs)]
    return (_timed(lambda ids: _torch_logits(model, ids), singles),
            _timed(predictor.logits, singles))


def _timed(call: Callable[[np.ndarray], np.ndarray], inputs: list[np.ndarray]) -> list[float]:
    call(inputs[0])  # warm-up: the first call allocates and plans
    ms = []
    for ids in inputs:
        start = time.perf_counter()
        call(ids)
        ms.append((time.perf_counter() - start) * 1e3)
    return ms
