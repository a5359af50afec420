"""The deployable contract: what models/model.onnx promises any client, in one place.

- input ``input_ids``: int64 [batch, seq], raw tiktoken ids of the metadata's encoding,
  right-padded with its pad id, seq <= max_length (the compact-vocabulary map is in the graph);
- output ``logits``: float32 [batch, num_labels];
- metadata (strings; lists as JSON): label_names, encoding, max_length, pad_id, n_vocab,
  lowercase, package_version, quantized ("none" | "int8"), ort_fusions ("true": com.microsoft
  ops, onnxruntime only).

The export writes the metadata with ``ModelMetadata.props``; `Predictor` reads it back with
``ModelMetadata.from_props``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from textclf.core.errors import TextclfError

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
# ORT's graph transformer that would re-introduce SkipLayerNormalization at session start:
# slower than the Add + LayerNormalization it replaces on this model (modeling/ort_fusion.py).
SLOW_ORT_FUSIONS = ("SkipLayerNormFusion",)
_REQUIRED = ("label_names", "encoding", "max_length", "pad_id")
_REEXPORT = "Export it with `textclf export` (or `dvc repro export`)."


@dataclass(frozen=True)
class TokenizerInfo:
    """How text becomes the raw ids the model reads."""

    encoding: str
    max_length: int
    pad_id: int
    n_vocab: int
    lowercase: bool


@dataclass(frozen=True)
class ModelMetadata:
    """An exported model's self-description: everything a client needs besides the graph."""

    label_names: list[str]
    tokenizer: TokenizerInfo
    package_version: str
    quantized: bool = False
    ort_fusions: bool = False

    def props(self) -> dict[str, str]:
        """ONNX metadata_props, in the order they are written (part of the file's bytes)."""
        tok = self.tokenizer
        return {
            "label_names": json.dumps(list(self.label_names)),
            "encoding": tok.encoding,
            "max_length": str(tok.max_length),
            "pad_id": str(tok.pad_id),
            "n_vocab": str(tok.n_vocab),
            "lowercase": _flag(tok.lowercase),
            "package_version": self.package_version,
            "quantized": "int8" if self.quantized else "none",
            "ort_fusions": _flag(self.ort_fusions),
        }

    @classmethod
    def from_props(cls, meta: dict[str, str], path: Path) -> ModelMetadata:
        missing = [key for key in _REQUIRED if key not in meta]
        if missing:
            raise TextclfError(f"{path}: not a textclf model: its metadata lacks "
                               f"{', '.join(missing)}. {_REEXPORT}")
        try:
            tokenizer = TokenizerInfo(
                encoding=meta["encoding"], max_length=int(meta["max_length"]),
                pad_id=int(meta["pad_id"]), n_vocab=int(meta.get("n_vocab", 0)),
                lowercase=meta.get("lowercase", "false") == "true")
            label_names = [str(name) for name in json.loads(meta["label_names"])]
        except (ValueError, TypeError) as exc:
            raise TextclfError(
                f"{path}: unreadable textclf metadata ({exc}). {_REEXPORT}") from None
        return cls(label_names=label_names, tokenizer=tokenizer,
                   package_version=meta.get("package_version", ""),
                   quantized=meta.get("quantized", "none") == "int8",
                   ort_fusions=meta.get("ort_fusions", "false") == "true")


def _flag(value: bool) -> str:
    return "true" if value else "false"
