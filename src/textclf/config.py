"""Typed, frozen configuration: one dataclass per ``params.yaml`` section, validated once.

``load_params`` reads the file and returns a ``Params``; any unknown key, missing key, wrong type
or out-of-range value raises one ``TextclfError`` naming the key and the accepted values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from textclf.errors import TextclfError
from textclf.typed_config import build, check

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class FetchConfig:
    # A local directory, a file:// URL or any fsspec URL (https://, s3://, ...) holding
    # train.csv and test.csv in the char-CNN format. Relative paths are from the project root.
    source: str
    # Pinned sha256 per split ("train", "test"); a SHA256SUMS file at the source is checked too.
    sha256: dict[str, str] = field(default_factory=dict)
    # Stratified subsample for quick runs: keep this share of each class (1.0 = everything) ...
    fraction: float = 1.0
    # ... and at most this many rows per class and split (0 = no cap).
    max_rows_per_class: int = 0
    seed: int = 42
    timeout_s: float = 60.0

    def check(self, section: str) -> None:
        check(bool(self.source.strip()), f"{section}.source", "a path or URL", self.source)
        for split, digest in self.sha256.items():
            check(split in ("train", "test"), f"{section}.sha256", "keyed by train/test", split)
            check(_is_sha256(digest), f"{section}.sha256.{split}", "64 hex digits", digest)
        check(0 < self.fraction <= 1, f"{section}.fraction", "in (0, 1]", self.fraction)
        check(self.max_rows_per_class >= 0, f"{section}.max_rows_per_class", ">= 0",
               self.max_rows_per_class)
        check(self.timeout_s > 0, f"{section}.timeout_s", "> 0", self.timeout_s)


@dataclass(frozen=True)
class ValidateConfig:
    # Index i names class i + 1 of the CSV (the char-CNN files number classes from 1).
    label_names: tuple[str, ...]
    min_rows: int = 100
    min_text_chars: int = 10
    max_text_chars: int = 5000
    # Largest / smallest class count, per split.
    max_class_ratio: float = 1.5
    # Share of train rows whose text also appears in test; they are dropped, above this it fails.
    max_leakage_share: float = 0.01
    # How many offending rows each failed expectation shows.
    report_rows: int = 5

    def check(self, section: str) -> None:
        names = self.label_names
        check(len(names) >= 2 and len(set(names)) == len(names), f"{section}.label_names",
               "a list of at least two distinct names", list(names))
        check(self.min_rows >= 1, f"{section}.min_rows", ">= 1", self.min_rows)
        check(0 <= self.min_text_chars <= self.max_text_chars, f"{section}.min_text_chars",
               "between 0 and max_text_chars", self.min_text_chars)
        check(self.max_class_ratio >= 1, f"{section}.max_class_ratio", ">= 1",
               self.max_class_ratio)
        check(0 <= self.max_leakage_share <= 1, f"{section}.max_leakage_share", "in [0, 1]",
               self.max_leakage_share)
        check(self.report_rows >= 1, f"{section}.report_rows", ">= 1", self.report_rows)


@dataclass(frozen=True)
class TokenizeConfig:
    encoding: str = "cl100k_base"
    max_length: int = 256
    val_fraction: float = 0.1
    seed: int = 42
    # Keep the K most frequent training ids (0 = every id seen in the training split).
    vocab_size: int = 0
    # Ids seen fewer times than this in the training split map to the unknown row.
    min_freq: int = 1
    # Lower-case text before encoding: "Oil" and "oil" share an id, a smaller vocabulary that
    # generalises better on small corpora (serving applies the same, from the ONNX metadata).
    lowercase: bool = False
    # Out-of-fold TF-IDF teacher probabilities for every training row (the distillation
    # targets of train.distill_weight); 0 skips the teacher.
    teacher_folds: int = 5

    def check(self, section: str) -> None:
        check(self.max_length >= 2, f"{section}.max_length", ">= 2", self.max_length)
        check(0 < self.val_fraction < 1, f"{section}.val_fraction", "in (0, 1)",
               self.val_fraction)
        check(self.vocab_size >= 0, f"{section}.vocab_size", ">= 0", self.vocab_size)
        check(self.min_freq >= 1, f"{section}.min_freq", ">= 1", self.min_freq)
        check(self.teacher_folds == 0 or self.teacher_folds >= 2, f"{section}.teacher_folds",
               "0 (off) or >= 2", self.teacher_folds)


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1

    def check(self, section: str) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            check(getattr(self, name) >= 1, f"{section}.{name}", ">= 1", getattr(self, name))
        check(self.d_model % self.n_heads == 0, f"{section}.d_model",
               f"a multiple of n_heads ({self.n_heads})", self.d_model)
        check(0 <= self.dropout < 1, f"{section}.dropout", "in [0, 1)", self.dropout)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 3
    # Share of all optimisation steps spent warming up linearly; cosine decay afterwards.
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    precision: Precision = "auto"
    device: Device = "auto"
    # Stop after this many epochs without a better validation accuracy (0 = never stop early).
    patience: int = 2
    seed: int = 42
    # CPU threads for torch (0 = leave torch's default).
    num_threads: int = 0
    # Share of real tokens replaced by the unknown row during training: the model cannot lean
    # on any single rare token (the strongest regulariser for small corpora here).
    token_dropout: float = 0.0
    # Share of the loss from matching the TF-IDF teacher's soft labels (0 = plain labels).
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    # Decay of the exponential moving average of the weights that is validated and saved
    # (0 = off: the raw weights); it warms up, so short runs average their recent steps.
    ema_decay: float = 0.0
    # Train on the validation rows too and ship the last epoch: the final fit once the settings
    # were chosen on validation (false: hold them out, select the best epoch on them).
    refit: bool = False

    def check(self, section: str) -> None:
        check(self.lr > 0, f"{section}.lr", "> 0", self.lr)
        check(self.weight_decay >= 0, f"{section}.weight_decay", ">= 0", self.weight_decay)
        check(self.batch_size >= 1, f"{section}.batch_size", ">= 1", self.batch_size)
        check(self.epochs >= 1, f"{section}.epochs", ">= 1", self.epochs)
        check(0 <= self.warmup_frac < 1, f"{section}.warmup_frac", "in [0, 1)",
               self.warmup_frac)
        check(0 <= self.min_lr_frac <= 1, f"{section}.min_lr_frac", "in [0, 1]",
               self.min_lr_frac)
        check(0 <= self.label_smoothing < 1, f"{section}.label_smoothing", "in [0, 1)",
               self.label_smoothing)
        check(self.grad_clip >= 0, f"{section}.grad_clip", ">= 0 (0 disables)", self.grad_clip)
        check(self.patience >= 0, f"{section}.patience", ">= 0", self.patience)
        check(self.num_threads >= 0, f"{section}.num_threads", ">= 0", self.num_threads)
        check(0 <= self.token_dropout < 1, f"{section}.token_dropout", "in [0, 1)",
               self.token_dropout)
        check(0 <= self.distill_weight <= 1, f"{section}.distill_weight", "in [0, 1]",
               self.distill_weight)
        check(self.distill_temperature > 0, f"{section}.distill_temperature", "> 0",
               self.distill_temperature)
        check(0 <= self.ema_decay < 1, f"{section}.ema_decay", "in [0, 1)", self.ema_decay)
        check(not (self.refit and self.patience), f"{section}.patience",
              f"0 when {section}.refit is true (no held-out rows are left to stop early on; "
              f"set {section}.refit to false to select epochs on validation)", self.patience)


@dataclass(frozen=True)
class BaselineConfig:
    """TF-IDF + logistic regression: evaluate's reference model and tokenize's teacher."""

    ngram_max: int = 2
    min_df: int = 2
    c: float = 10.0

    def check(self, section: str) -> None:
        check(self.ngram_max >= 1, f"{section}.ngram_max", ">= 1", self.ngram_max)
        check(self.min_df >= 1, f"{section}.min_df", ">= 1", self.min_df)
        check(self.c > 0, f"{section}.c", "> 0", self.c)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 256
    # Rows in metrics/eval/misclassified.csv (most confident mistakes first).
    n_misclassified: int = 25

    def check(self, section: str) -> None:
        check(self.batch_size >= 1, f"{section}.batch_size", ">= 1", self.batch_size)
        check(self.n_misclassified >= 0, f"{section}.n_misclassified", ">= 0",
               self.n_misclassified)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    # int8 dynamic quantisation of the weights (onnxruntime.quantization): a ~3.5x smaller file;
    # parity then checks it with its int8_* limits and max_accuracy_drop.
    quantize: bool = False
    # onnxruntime's fused attention/GELU kernels (ort_fusion.py): faster, but onnxruntime-only.
    ort_fusions: bool = True

    def check(self, section: str) -> None:
        check(self.opset >= 17, f"{section}.opset", ">= 17", self.opset)


@dataclass(frozen=True)
class ParityConfig:
    max_abs_diff: float = 1e-4
    min_argmax_agreement: float = 1.0
    # The limits for an int8-quantised export (export.quantize), which cannot match fp32 exactly.
    int8_max_abs_diff: float = 0.1
    int8_min_argmax_agreement: float = 0.99
    # Test accuracy the exported model may lose against models/model.pt (0.003 = 0.3 points).
    max_accuracy_drop: float = 0.003
    batch_size: int = 256
    latency_runs: int = 50

    def check(self, section: str) -> None:
        for name in ("max_abs_diff", "int8_max_abs_diff"):
            check(getattr(self, name) > 0, f"{section}.{name}", "> 0", getattr(self, name))
        for name in ("min_argmax_agreement", "int8_min_argmax_agreement"):
            check(0 <= getattr(self, name) <= 1, f"{section}.{name}", "in [0, 1]",
                  getattr(self, name))
        check(0 <= self.max_accuracy_drop <= 1, f"{section}.max_accuracy_drop", "in [0, 1]",
              self.max_accuracy_drop)
        check(self.batch_size >= 1, f"{section}.batch_size", ">= 1", self.batch_size)
        check(self.latency_runs >= 1, f"{section}.latency_runs", ">= 1", self.latency_runs)


@dataclass(frozen=True)
class Params:
    fetch: FetchConfig
    validate: ValidateConfig
    tokenize: TokenizeConfig
    baseline: BaselineConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    parity: ParityConfig


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``TextclfError`` naming the first bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextclfError(
            f"{path}: not found. Run textclf from the project root (where params.yaml lives) "
            "or pass --params PATH."
        ) from None
    except yaml.YAMLError as exc:
        raise TextclfError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from None
    return params_from_dict(raw)


def params_from_dict(raw: Any) -> Params:
    check(isinstance(raw, dict), "<top level>", "a mapping of sections", type(raw).__name__)
    return build(Params, raw, "")


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, relative to the project root (as in dvc.yaml)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def tokens(self) -> Path:
        return self.root / "data" / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "models" / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "models" / "checkpoint"

    @property
    def onnx(self) -> Path:
        return self.root / "models" / "model.onnx"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def runtime(self) -> Path:
        # How a run went (speed, resumed or not): differs between identical runs, so it is
        # kept out of the metrics files that `dvc metrics diff` compares.
        return self.root / "metrics" / "runtime"
