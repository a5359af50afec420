"""Typed, frozen configuration: one pydantic model per ``params.yaml`` section, validated once.

params.yaml is the only place values live: no field has a default here, so a key missing from
the file is an error naming the key and its section, never a silent second recipe. Unknown keys
are refused, types are strict (``true`` is not an integer, ``"5"`` is not a number), and every
range and cross-field rule is declared next to its field. ``load_params`` turns pydantic's
errors into one paragraph that names each bad key, what it must be, what it is, and the
``dvc exp run -S`` form that overrides it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from textclf.core.errors import TextclfError

# PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string; YAML 1.2, DVC's `-S train.lr=1e-4`
# and every user mean the number.
_YAML12_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml12_number(value: Any) -> Any:
    if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


Number = Annotated[float, BeforeValidator(_yaml12_number)]
_SHA256 = r"^[0-9a-fA-F]{64}$"
_NOT_BLANK = r"\S"
Sha256 = Annotated[str, Field(pattern=_SHA256)]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


def rule_broken(key: str, expected: str, value: Any) -> PydanticCustomError:
    """A cross-field rule's error, reported like any single-key error (``key`` in its section)."""
    return PydanticCustomError("param_rule", "{key} must be {expected}",
                               {"key": key, "expected": expected, "value": value})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _keys_as_text(value: Any) -> Any:
    # YAML reads `1: World` with an integer key; raw label values are compared as text.
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    return value


Columns = Annotated[tuple[Annotated[str, Field(pattern=_NOT_BLANK)], ...],
                    Field(min_length=1, strict=False)]
ColumnOrColumns = Annotated[str, Field(pattern=_NOT_BLANK)] | Columns
Task = Literal["auto", "multiclass", "multilabel", "pair"]
NormalizeRule = Literal["scrape_entities", "html_entities", "html_tags", "backslash_escapes",
                        "whitespace"]


class SourceDetails(_Section):
    """What is known about the files at one source: applied only while data.source is it."""

    for_source: str = Field(pattern=_NOT_BLANK)
    # A headerless CSV: its columns in order (null: the first row is the header).
    columns: Columns | None
    # Raw label value -> label name (null: the values themselves, sorted).
    label_names: Annotated[dict[str, str] | None, BeforeValidator(_keys_as_text)]
    # Text normalisation rules, applied in this order at training and at serving.
    normalize: tuple[NormalizeRule, ...] = Field(strict=False)
    # Pinned sha256 per file name.
    sha256: dict[str, Sha256]


class DataConfig(_Section):
    # A local directory (relative to the project root), a file:// URL or any fsspec URL.
    source: str = Field(pattern=_NOT_BLANK)
    # The split files (null: train.* and test.* found in a local source, train.csv and test.csv
    # at a URL). Their extension gives the format: .csv, .tsv, .jsonl / .ndjson, .parquet.
    files: dict[Literal["train", "test"], Annotated[str, Field(pattern=_NOT_BLANK)]] | None
    text: ColumnOrColumns  # a list of columns is joined with spaces into one text
    text_pair: Annotated[str, Field(pattern=_NOT_BLANK)] | None
    label: ColumnOrColumns  # a list of 0/1 columns: multi-label
    task: Task
    details: SourceDetails | None

    @model_validator(mode="after")
    def _task_fits_columns(self) -> DataConfig:
        many = not isinstance(self.label, str)
        if self.task == "multilabel" and not many:
            raise rule_broken("label", "a list of 0/1 columns when data.task is multilabel",
                              self.label)
        if self.task in ("multiclass", "pair") and many:
            raise rule_broken("label", f"one column when data.task is {self.task}",
                              list(self.label))
        if self.task == "pair" and self.text_pair is None:
            raise rule_broken("text_pair", "a column when data.task is pair", None)
        if self.text_pair is not None and many:
            raise rule_broken("text_pair", "null for a multi-label dataset (pairs take one "
                              "label column)", self.text_pair)
        return self

    @property
    def text_columns(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else tuple(self.text)

    @property
    def label_columns(self) -> tuple[str, ...]:
        return (self.label,) if isinstance(self.label, str) else tuple(self.label)

    @property
    def resolved_task(self) -> Literal["multiclass", "multilabel", "pair"]:
        if self.task != "auto":
            return self.task
        if not isinstance(self.label, str):
            return "multilabel"
        return "pair" if self.text_pair is not None else "multiclass"

    def source_details(self) -> SourceDetails | None:
        """``details`` when they describe ``source``; None for any other source, so nothing
        known about one source (header, label names, cleaning, pins) leaks into another."""
        if self.details is None or self.details.for_source.rstrip("/") != self.source.rstrip("/"):
            return None
        return self.details


class FetchConfig(_Section):
    # Seconds a download may stall before it fails (URL sources).
    timeout_s: Number = Field(gt=0)


class ValidateConfig(_Section):
    min_rows: int = Field(ge=1)
    # Share of train rows whose input also appears in test; they are dropped, above this it fails.
    max_leakage_share: Number = Field(ge=0, le=1)
    # How many offending rows each failed expectation shows.
    report_rows: int = Field(ge=1)
    # Opt-in limits, 0 = off (reported in metrics/validation.json either way): characters per
    # text, and largest / smallest class count per split.
    min_text_chars: int = Field(ge=0)
    max_text_chars: int = Field(ge=0)
    max_class_ratio: Number = Field(ge=0)
    # Quick runs: a seeded share of each split (stratified by label), and a row cap per split
    # (0 = none).
    fraction: Number = Field(gt=0, le=1)
    max_rows: int = Field(ge=0)
    seed: int

    @model_validator(mode="after")
    def _consistent(self) -> ValidateConfig:
        if self.max_text_chars and self.min_text_chars > self.max_text_chars:
            raise rule_broken("min_text_chars", f"at most max_text_chars ({self.max_text_chars})",
                              self.min_text_chars)
        if 0 < self.max_class_ratio < 1:
            raise rule_broken("max_class_ratio", "0 (off) or >= 1", self.max_class_ratio)
        return self


class TokenizeConfig(_Section):
    encoding: str
    max_length: int = Field(ge=2)
    val_fraction: Number = Field(gt=0, lt=1)
    seed: int
    # Keep the K most frequent training ids (0 = every id seen in the training split).
    vocab_size: int = Field(ge=0)
    # Ids seen fewer times than this in the training split map to the unknown row.
    min_freq: int = Field(ge=1)
    # Lower-case text before encoding (serving applies the same, from the ONNX metadata).
    lowercase: bool
    # A single text longer than max_length keeps its first head_share of max_length tokens and
    # its last ones (head_tail), or its first max_length (head). Pairs cut the longer side first.
    truncation: Literal["head", "head_tail"]
    head_share: Number = Field(ge=0, le=1)
    # Out-of-fold TF-IDF teacher probabilities for every training row (the distillation
    # targets of train.distill_weight); 0 skips the teacher.
    teacher_folds: int = Field(ge=0)

    @model_validator(mode="after")
    def _folds(self) -> TokenizeConfig:
        if self.teacher_folds == 1:
            raise rule_broken("teacher_folds", "0 (off) or >= 2", self.teacher_folds)
        return self


class BaselineConfig(_Section):
    """TF-IDF + logistic regression: evaluate's reference model and tokenize's teacher."""

    ngram_max: int = Field(ge=1)
    min_df: int = Field(ge=1)
    c: Number = Field(gt=0)


class ModelConfig(_Section):
    d_model: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_ff: int = Field(ge=1)
    dropout: Number = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise rule_broken("d_model", f"a multiple of n_heads ({self.n_heads})", self.d_model)
        return self


class TrainConfig(_Section):
    lr: Number = Field(gt=0)
    weight_decay: Number = Field(ge=0)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    # Share of all optimisation steps spent warming up linearly; cosine decay afterwards.
    warmup_frac: Number = Field(ge=0, lt=1)
    min_lr_frac: Number = Field(ge=0, le=1)
    label_smoothing: Number = Field(ge=0, lt=1)
    grad_clip: Number = Field(ge=0)  # 0 disables clipping
    precision: Precision
    device: Device
    # Stop after this many epochs without a better validation accuracy (0 = never stop early).
    patience: int = Field(ge=0)
    seed: int
    # CPU threads for torch (0 = leave torch's default).
    num_threads: int = Field(ge=0)
    # Share of real tokens replaced by the unknown row during training: the model cannot lean
    # on any single rare token.
    token_dropout: Number = Field(ge=0, lt=1)
    # Share of the loss from matching the TF-IDF teacher's soft labels (0 = plain labels).
    distill_weight: Number = Field(ge=0, le=1)
    distill_temperature: Number = Field(gt=0)
    # Decay of the exponential moving average of the weights that is validated and saved
    # (0 = off: the raw weights).
    ema_decay: Number = Field(ge=0, lt=1)
    # Train on the validation rows too and ship the last epoch: the final fit once the settings
    # were chosen on validation (false: hold them out, select the best epoch on them).
    refit: bool
    # Processes training one model data-parallel (torchrun's launcher, gloo on CPU, NCCL with one
    # GPU each on CUDA); train.batch_size is the batch they share, so the lr needs no rescaling.
    nproc: int = Field(ge=1)

    @model_validator(mode="after")
    def _refit_has_nothing_to_stop_on(self) -> TrainConfig:
        if self.refit and self.patience:
            raise rule_broken(
                "patience", "0 when train.refit is true (no held-out rows are left to stop "
                "early on; set train.refit to false to select epochs on validation)",
                self.patience)
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(ge=1)
    # Rows in metrics/eval/misclassified.csv (most confident mistakes first).
    n_misclassified: int = Field(ge=0)


class ExportConfig(_Section):
    opset: int = Field(ge=17)
    # int8 dynamic quantisation of the weights; parity then applies its int8_* limits.
    quantize: bool
    # onnxruntime's fused attention/GELU kernels (modeling/ort_fusion.py): onnxruntime-only.
    ort_fusions: bool


class ParityConfig(_Section):
    max_abs_diff: Number = Field(gt=0)
    min_argmax_agreement: Number = Field(ge=0, le=1)
    # The limits for an int8-quantised export (export.quantize), which cannot match fp32 exactly.
    int8_max_abs_diff: Number = Field(gt=0)
    int8_min_argmax_agreement: Number = Field(ge=0, le=1)
    # Test accuracy the exported model may lose against models/model.pt (0.003 = 0.3 points).
    max_accuracy_drop: Number = Field(ge=0, le=1)
    batch_size: int = Field(ge=1)
    latency_runs: int = Field(ge=1)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig
    fetch: FetchConfig
    validate_: ValidateConfig = Field(alias="validate")  # `validate` is a BaseModel method
    tokenize: TokenizeConfig
    baseline: BaselineConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    parity: ParityConfig

    @property
    def validate(self) -> ValidateConfig:  # type: ignore[override]
        return self.validate_


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``TextclfError`` naming every bad key."""
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
    if not isinstance(raw, dict):
        raise TextclfError(
            f"params.yaml: the top level must be a mapping of sections "
            f"({', '.join(_section_names())}), got {type(raw).__name__}. Fix params.yaml."
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise TextclfError(_describe(exc)) from None


def _section_names() -> list[str]:
    return [field.alias or name for name, field in Params.model_fields.items()]


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as one paragraph: each key, what it must be, what it is."""
    problems, first_bad = [], None
    wrong: dict[str, tuple[list[str], Any]] = {}  # key -> (what it may be, its value)
    for error in exc.errors():
        # pydantic marks a bad mapping key with a trailing "[key]" (the key itself is the
        # problem) and a value that fits no branch of a union once per branch, tagged with the
        # branch's type ("constrained-str", "tuple[...]"): one key, "must be X or Y".
        loc = [str(part) for part in error["loc"]
               if part != "[key]" and not _UNION_BRANCH.match(str(part))]
        if error["type"] == "param_rule":  # raised on the section: the key is in its context
            loc.append(error["ctx"]["key"])
        key = ".".join(loc)
        kind = error["type"]
        if kind == "missing":
            where = f"section `{loc[0]}`" if len(loc) > 1 else "the top level"
            problems.append(f"`{key}` is missing from {where}: add it (params.yaml holds every "
                            "value; the code has no defaults)")
        elif kind == "extra_forbidden":
            known = (_section_names() if len(loc) == 1
                     else list(_section_model(loc[0]).model_fields))
            problems.append(f"unknown key `{key}` (known keys in "
                            f"`{loc[0] if len(loc) > 1 else 'params.yaml'}`: {', '.join(known)});"
                            " fix the spelling or remove it")
        else:
            value = error["ctx"]["value"] if kind == "param_rule" else error.get("input")
            wrong.setdefault(key, ([], value))[0].append(_expected(error, loc))
            first_bad = first_bad or key
    problems += [f"`{key}` must be {' or '.join(dict.fromkeys(expected))}, got {value!r}"
                 for key, (expected, value) in wrong.items()]
    hint = (f" (or override it for one experiment with `dvc exp run -S {first_bad}=...`)"
            if first_bad else "")
    return f"params.yaml: {'; '.join(problems)}. Fix it in params.yaml{hint}."


_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "tuple_type": "a list of strings",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "too_short": "a list of at least {min_length} items",
}


# The tag pydantic puts in an error's location for each branch of a union-typed field.
_UNION_BRANCH = re.compile(r"^(constrained-str|str|int|float|bool|none|.+\[.*\])$")

# What each pattern a field is checked against means, in the words of the error.
_PATTERNS = {_SHA256: "64 hex digits", _NOT_BLANK: "a non-blank string"}


def _expected(error: dict[str, Any], loc: list[str]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "param_rule":
        return ctx["expected"]
    if kind == "literal_error":  # pydantic's "'a', 'b' or 'c'", in this error's words
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return f"one of {', '.join(choices)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        field = _field(loc)
        return _interval(field.metadata) if field else kind.replace("_", " ")
    if kind == "string_pattern_mismatch":
        return _PATTERNS[ctx["pattern"]]
    return _KINDS.get(kind, error["msg"].lower()).format(**ctx)


def _interval(metadata: list[Any]) -> str:
    """The field's whole allowed range from its Field(gt=, ge=, lt=, le=): "> 0", "in (0, 1]"."""
    bounds = {name: getattr(m, name) for m in metadata for name in ("gt", "ge", "lt", "le")
              if getattr(m, name, None) is not None}
    low = (("(", ">", bounds["gt"]) if "gt" in bounds
           else ("[", ">=", bounds["ge"]) if "ge" in bounds else None)
    high = ((")", "<", bounds["lt"]) if "lt" in bounds
            else ("]", "<=", bounds["le"]) if "le" in bounds else None)
    if low and high:
        return f"in {low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
    _, op, value = low or high  # type: ignore[misc]
    return f"{op} {value:g}"


def _section_model(section: str) -> type[_Section]:
    for name, field in Params.model_fields.items():
        if section in (name, field.alias):
            return field.annotation  # type: ignore[return-value]
    raise KeyError(section)


def _field(loc: list[str]) -> Any:
    if len(loc) < 2:
        return None
    return _section_model(loc[0]).model_fields.get(loc[1])
