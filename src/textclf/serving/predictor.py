"""`Predictor`: text -> the ONNX model's labels and probabilities, through ONNX Runtime.

The ONNX file describes itself (serving/contract.py), so this needs numpy, tiktoken and
onnxruntime only. Text goes through the same normalisation (`text.model_input`, the rules the
metadata lists) and ids (`encoding.encode`, `encoding.pad`) as the training data; the parity
stage checks this very path against torch. The CLI (`textclf predict`) and the Python API both
call `Predictor.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from textclf.core.errors import TextclfError
from textclf.serving.contract import SLOW_ORT_FUSIONS, ModelMetadata
from textclf.serving.encoding import encode, pad
from textclf.serving.text import model_input
from textclf.serving.tokenizer import load_encoding

_SORTED_CHUNK = 32  # texts per ORT call inside one predict(): little padding, few calls
# An int8 model on a CPU answers a call of at most this many tokens (one short text) ~9% sooner
# on the calling thread alone than with ORT's second intra-op thread, which only pays off for
# longer calls (measured: 1.14x faster at 16 tokens, 1.09x at 64, 0.83x at 96).
_ONE_THREAD_MAX_TOKENS = 64
_MAKE_MODEL = "run `dvc repro`, or `dvc pull models/model.onnx`"


class Predictor:
    """One ONNX Runtime session over a textclf ONNX file, plus the text -> ids path before it."""

    def __init__(self, model_path: Path | str, providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise TextclfError(f"{path}: model not found. To create it, {_MAKE_MODEL}.")
        if providers is None:
            # CUDA first when this onnxruntime build has it; ORT falls back to CPU by itself.
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in available]
        self.session = _open_session(path, providers, options)
        self.metadata = ModelMetadata.from_props(
            self.session.get_modelmeta().custom_metadata_map, path)
        self.path = path
        self.encoding = load_encoding(self.metadata.tokenizer.encoding)
        self.input_name = self.session.get_inputs()[0].name
        # Small calls of an int8 model go to a second, one-thread session (see
        # _ONE_THREAD_MAX_TOKENS); not when the caller chose the session options.
        self._small_calls: ort.InferenceSession | None = None
        if (self.quantized and options is None and (os.cpu_count() or 1) > 1
                and self.session.get_providers()[0] == "CPUExecutionProvider"):
            one_thread = ort.SessionOptions()
            one_thread.intra_op_num_threads = 1
            self._small_calls = _open_session(path, ["CPUExecutionProvider"], one_thread)

    @property
    def label_names(self) -> list[str]:
        return self.metadata.label_names

    @property
    def max_length(self) -> int:
        return self.metadata.tokenizer.max_length

    @property
    def pad_id(self) -> int:
        return self.metadata.tokenizer.pad_id

    @property
    def lowercase(self) -> bool:
        return self.metadata.tokenizer.lowercase

    @property
    def quantized(self) -> bool:
        return self.metadata.quantized

    @property
    def task(self) -> str:
        return self.metadata.task

    def _prepared(self, texts: Sequence[str]) -> list[str]:
        tok = self.metadata.tokenizer
        return [model_input(t, tok.normalize, tok.lowercase) for t in texts]

    def _check_pairs(self, texts: Sequence[str], pairs: Sequence[str] | None) -> None:
        if self.metadata.tokenizer.pairs != (pairs is not None):
            wanted = ("pairs of texts: give each text its second text (text_pair)"
                      if pairs is None else "single texts: give texts alone, without text_pair")
            raise TextclfError(f"{self.path} classifies {wanted}.")
        if pairs is not None and len(pairs) != len(texts):
            raise TextclfError(f"{len(texts)} texts but {len(pairs)} second texts: give one "
                               "text_pair per text.")

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Raw ids int64 [B, T]: normalised, truncated as the contract says, right-padded to the
        longest; ``pairs`` (one second text per text) for a pair model."""
        self._check_pairs(texts, pairs)
        second = self._prepared(pairs) if pairs is not None else None
        ids = encode(self.encoding, self.metadata.tokenizer, self._prepared(texts), second)
        return pad(ids, self.pad_id)

    def _sorted_logits(self, cleaned: Sequence[str],
                       cleaned_pairs: Sequence[str] | None) -> np.ndarray:
        # Padding a whole batch to its longest text wastes most of the work (attention grows
        # with length squared): run length-sorted chunks, each trimmed to its own longest text.
        rows = encode(self.encoding, self.metadata.tokenizer, cleaned, cleaned_pairs)
        order = np.argsort([len(r) for r in rows], kind="stable")
        out = np.empty((len(rows), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(order), _SORTED_CHUNK):
            chunk = order[start:start + _SORTED_CHUNK]
            out[chunk] = self.logits(pad([rows[i] for i in chunk], self.pad_id))
        return out

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 [B, K] for raw ids as ``encode`` returns them."""
        session = self.session
        if self._small_calls is not None and ids.size <= _ONE_THREAD_MAX_TOKENS:
            session = self._small_calls
        return session.run(None, {self.input_name: ids})[0]

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """The model's decision per row: class index, or 0/1 per label (multi-label)."""
        if self.task == "multilabel":
            return (1 / (1 + np.exp(-logits.astype(np.float64)))
                    >= np.asarray(self.metadata.thresholds)).astype(np.int8)
        return logits.argmax(1)

    def predict(self, texts: Sequence[str],
                pairs: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One record per text (pair): {"label", "probabilities"} (softmax), or for a multi-label
        model {"labels": every label at or over its threshold, "scores": sigmoid per label};
        "empty": True where the normalised text (either side of a pair) is empty."""
        self._check_pairs(texts, pairs)
        if not texts:
            return []
        cleaned = self._prepared(texts)
        cleaned_pairs = self._prepared(pairs) if pairs is not None else None
        logits = self._sorted_logits(cleaned, cleaned_pairs)
        names, multilabel = self.label_names, self.task == "multilabel"
        scores = (1 / (1 + np.exp(-logits.astype(np.float64))) if multilabel
                  else softmax(logits))
        chosen = self.decisions(logits)
        out = []
        for i, row in enumerate(scores):
            by_name = {n: float(p) for n, p in zip(names, row, strict=True)}
            record: dict[str, Any] = (
                {"labels": [names[k] for k in np.flatnonzero(chosen[i])], "scores": by_name}
                if multilabel else {"label": names[int(chosen[i])], "probabilities": by_name})
            if not cleaned[i] or (cleaned_pairs is not None and not cleaned_pairs[i]):
                record["empty"] = True
            out.append(record)
        return out


def _open_session(path: Path, providers: Sequence[str],
                  options: ort.SessionOptions | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers),
                                    disabled_optimizers=list(SLOW_ORT_FUSIONS))
    except Exception as exc:  # ORT's pybind errors share no useful base class
        raise TextclfError(
            f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]}). It may be "
            f"truncated or a DVC pointer; {_MAKE_MODEL}."
        ) from None


def softmax(logits: np.ndarray) -> np.ndarray:
    # float64 and max-shift: rows sum to 1 to ~1e-15 and large logits never overflow.
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
