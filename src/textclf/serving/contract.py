"""The deployable contract: what models/model.onnx promises any client, in one place.

- input ``input_ids``: int64 [batch, seq], raw tiktoken ids of the metadata's encoding,
  right-padded with its pad id, seq <= max_length (the compact-vocabulary map is in the graph);
- output ``logits``: float32 [batch, num_labels]; probabilities are their softmax, except for
  ``task`` multilabel: a sigmoid per label, label i on where it reaches thresholds[i];
- metadata (strings; lists as JSON): label_names, encoding, max_length, pad_id, n_vocab,
  lowercase, package_version, quantized ("none" | "int8"), ort_fusions ("true": com.microsoft
  ops, onnxruntime only), then task (multiclass | multilabel | pair), thresholds (multilabel),
  normalize (the text rules of serving/text.py, in order), head_tokens (truncation, see
  serving/encoding.py), pair_separator_id (-1 unless task is pair) and input_fields (the
  dataset's column names: text columns, joined by a space, and the pair column).

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
_REQUIRED = ("label_names", "encoding", "max_length", "pad_id", "task", "normalize",
             "head_tokens", "pair_separator_id")
_REEXPORT = "Export it with `textclf export` (or `dvc repro export`)."


@dataclass(frozen=True)
class TokenizerInfo:
    """How text becomes the raw ids the model reads."""

    encoding: str
    max_length: int
    pad_id: int
    n_vocab: int
    lowercase: bool
    normalize: tuple[str, ...]  # serving/text.py rules, in order
    head_tokens: int  # a long text keeps this many ids from its start, the rest from its end
    pair_separator_id: int  # the raw id between a pair's two texts; -1: single texts

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalize", tuple(self.normalize))  # lists from JSON/torch

    @property
    def pairs(self) -> bool:
        return self.pair_separator_id >= 0


@dataclass(frozen=True)
class ModelMetadata:
    """An exported model's self-description: everything a client needs besides the graph."""

    label_names: list[str]
    tokenizer: TokenizerInfo
    task: str  # multiclass | multilabel | pair
    thresholds: list[float] | None  # multilabel: label i is on where sigmoid >= thresholds[i]
    input_fields: dict[str, list[str]]  # {"text": [columns], "text_pair": [column] or []}
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
            "task": self.task,
            "thresholds": json.dumps(self.thresholds),
            "normalize": json.dumps(list(tok.normalize)),
            "head_tokens": str(tok.head_tokens),
            "pair_separator_id": str(tok.pair_separator_id),
            "input_fields": json.dumps(self.input_fields),
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
                lowercase=meta.get("lowercase", "false") == "true",
                normalize=tuple(json.loads(meta["normalize"])),
                head_tokens=int(meta["head_tokens"]),
                pair_separator_id=int(meta["pair_separator_id"]))
            label_names = [str(name) for name in json.loads(meta["label_names"])]
            thresholds = json.loads(meta.get("thresholds", "null"))
            fields = json.loads(meta.get("input_fields", '{"text": [], "text_pair": []}'))
        except (ValueError, TypeError) as exc:
            raise TextclfError(
                f"{path}: unreadable textclf metadata ({exc}). {_REEXPORT}") from None
        return cls(label_names=label_names, tokenizer=tokenizer, task=meta["task"],
                   thresholds=thresholds, input_fields=fields,
                   package_version=meta.get("package_version", ""),
                   quantized=meta.get("quantized", "none") == "int8",
                   ort_fusions=meta.get("ort_fusions", "false") == "true")


def _flag(value: bool) -> str:
    return "true" if value else "false"
