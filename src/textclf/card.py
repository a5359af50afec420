"""The model card: what a model is, what it was trained on and how good it is, in one page.

Not a layer: the export stage and `textclf card` share it (export's dvc.yaml deps list it).
The export stage writes it twice from the same text: inside the ONNX file (metadata key
``model_card``, so `dvc artifacts get` and `dvc pull` deliver it with the model and
`textclf card models/model.onnx` prints it) and beside it as models/model.card.md (readable on
a git host). Only facts fixed by the inputs go in: no timestamp, no timing, so the same inputs
give the same ONNX bytes; speed is machine-dependent and lives in metrics/runtime/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textclf.core.errors import TextclfError

CARD_KEY = "model_card"
# What the card reports the versions of: the code that trained, exported and serves the model.
PACKAGES = ("textclf", "torch", "onnx", "onnxruntime", "tiktoken", "scikit-learn", "dvc")


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states, gathered by the export stage from its inputs."""

    task: str
    label_names: list[str]
    input_fields: dict[str, list[str]]
    tokenizer: dict[str, Any]  # serving.contract.TokenizerInfo as a dict
    train_config: dict[str, Any]  # the checkpoint's: model, train, refit, best_epoch
    evaluation: dict[str, Any]  # metrics/eval.json
    validation: dict[str, Any] | None  # metrics/validation.json
    source: dict[str, Any] | None  # data/raw/source.json: where the split files came from
    export: dict[str, Any]  # opset, quantize, ort_fusions
    parity: dict[str, Any]  # the limits the parity stage holds this file to
    empty_input: dict[str, Any]  # what the exported model returns for ""
    versions: dict[str, str]


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def render(facts: CardFacts) -> str:
    """The card as markdown."""
    multilabel = facts.task == "multilabel"
    evaluation, names = facts.evaluation, facts.label_names
    headline = "macro_f1" if multilabel else "accuracy"
    kind = {"multilabel": "multi-label: any number of", "pair": "text pairs: one of"}.get(
        facts.task, "one of")
    fields = " + ".join(facts.input_fields.get("text", [])) or "text"
    if facts.input_fields.get("text_pair"):
        fields += " paired with " + " + ".join(facts.input_fields["text_pair"])
    tok = facts.tokenizer
    lines = [
        "# Model card",
        "",
        f"**Task**: {facts.task} ({kind} {len(names)} labels): {', '.join(names)}.  ",
        f"**Reads**: {fields}; tiktoken `{tok['encoding']}`, at most {tok['max_length']} tokens "
        f"(longer texts keep their first {tok['head_tokens']} and last "
        f"{tok['max_length'] - tok['head_tokens']}).  ",
        f"**Headline**: test {headline} {evaluation['model'][headline]} vs "
        f"{evaluation['baseline'][headline]} for the TF-IDF + logistic-regression baseline "
        f"trained on the same {_count(evaluation['train_rows'])} rows.",
        "",
        "## Data",
        "",
        *_data_lines(facts),
        "",
        "## Test metrics",
        "",
        f"On {_count(evaluation['test_rows'])} test rows, never used to choose a setting.",
        "",
        "| metric | model | baseline |",
        "|---|---|---|",
        *(f"| {key} | {value} | {evaluation['baseline'].get(key, '—')} |"
          for key, value in evaluation["model"].items() if key != "per_class"
          and not isinstance(value, (dict, str))),
        "",
        "| label | precision | recall | F1 |",
        "|---|---|---|---|",
        *(f"| {label} | {row['precision']} | {row['recall']} | {row['f1']} |"
          for label, row in evaluation["model"]["per_class"].items()),
        "",
        "## Training",
        "",
        *_params_lines(facts.train_config),
        "",
        "## Export and parity",
        "",
        f"ONNX opset {facts.export['opset']}, "
        f"{'int8 weights' if facts.export['quantize'] else 'fp32'}, ONNX Runtime fusions "
        f"{'on' if facts.export['ort_fusions'] else 'off'}; raw tiktoken ids in, logits out "
        "(docs/architecture.md). The `parity` stage runs this file and the PyTorch model on "
        "every test row plus edge cases, through the serving tokenizer, and fails `dvc repro` "
        f"unless {_parity_limits(facts)}. Its figures are metrics/parity.json of the same "
        "commit; the serving latency it measured (p50, one text, on the machine that ran it) "
        "is metrics/runtime/parity.json.",
        "",
        "## Limits",
        "",
        *_limits_lines(facts),
        "",
        "## Packages",
        "",
        ", ".join(f"{name} {version}" for name, version in facts.versions.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _data_lines(facts: CardFacts) -> list[str]:
    validation = facts.validation or {}
    if not facts.source:
        return ["Source: not recorded (data/raw/source.json is missing; `dvc repro fetch` "
                "writes it)."]
    out = [f"Source: `{facts.source['source']}`.", "",
           "| split | file | rows after validation | sha256 |", "|---|---|---|---|"]
    for split in sorted(facts.source["files"], key=lambda name: name != "train"):
        info, rows = facts.source["files"][split], validation.get(split, {}).get("rows")
        out.append(f"| {split} | {info['name']} | {_count(rows)} | `{info['sha256']}` |")
    if validation:
        out += ["", f"{validation.get('leakage_rows_dropped', 0)} training rows repeating a "
                f"test text were dropped; the model and the baseline trained on "
                f"{_count(facts.evaluation['train_rows'])} rows."]
    return out


def _params_lines(train_config: dict[str, Any]) -> list[str]:
    def flat(section: dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in section.items())

    shipped = ("the last epoch, trained on the validation rows too (train.refit)"
               if train_config.get("refit") else
               f"epoch {train_config.get('best_epoch')}, the best on the validation rows")
    return [f"- model: {flat(train_config.get('model', {}))}",
            f"- train: {flat(train_config.get('train', {}))}",
            f"- shipped: {shipped}"]


def _parity_limits(facts: CardFacts) -> str:
    limits = facts.parity
    prefix = "int8_" if facts.export["quantize"] else ""
    return (f"every logit agrees within {limits[prefix + 'max_abs_diff']:g}, both decide the "
            f"same on at least {limits[prefix + 'min_argmax_agreement']:.1%} of rows and the "
            f"ONNX file's test score is at most {limits['max_accuracy_drop']:g} lower")


def _limits_lines(facts: CardFacts) -> list[str]:
    tok, names = facts.tokenizer, facts.label_names
    multilabel = facts.task == "multilabel"
    chars = ((facts.validation or {}).get("train") or {}).get("text_chars") or {}
    seen = (f" Its training texts had a median of {chars['median']:g} characters (95% under "
            f"{chars['p95']:g})." if chars else "")
    empty = facts.empty_input
    answer = (f"labels {empty['labels'] or '(none)'}" if "labels" in empty
              else f"label {empty['label']!r} (p={empty['probability']:.2f})")
    return [
        f"It knows only these {len(names)} labels and the language, domain and period of its "
        f"training rows; anything else still gets {'some, or none' if multilabel else 'one'}"
        " of them, with no 'unknown' answer: check a sample of your own texts before relying "
        "on it." + seen,
        f"Texts beyond {tok['max_length']} tokens are cut (the middle is dropped). An empty "
        f"{'pair' if facts.task == 'pair' else 'text'} (or one that normalises to nothing) "
        f"returns {answer}, flagged `\"empty\": true` by `textclf predict`.",
    ]


def _count(rows: int | None) -> str:
    return "—" if rows is None else f"{rows:,}"


def read_card(model_path: Path | str) -> str:
    """The card inside an exported model, or a clear error for a model without one."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise TextclfError(f"{path}: no such model file. Get one with `dvc pull` or `dvc "
                           "artifacts get <repo-url> text-classifier`, or build it with "
                           "`dvc repro export`.")
    try:
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]
                                    ).get_modelmeta().custom_metadata_map
    except Exception as exc:  # ORT raises its own types for every kind of bad file
        raise TextclfError(f"{path}: not a readable ONNX model ({type(exc).__name__}).") from None
    if CARD_KEY not in meta:
        raise TextclfError(f"{path}: holds no model card (exported by textclf "
                           f"{meta.get('package_version', '?')}, before cards existed). "
                           "Re-export it: `dvc repro export`.")
    return meta[CARD_KEY]


def load_json(path: Path, what: str, fix: str | None = None) -> dict[str, Any] | None:
    """A JSON input of the card. With ``fix``, required: a clear error names the file and the
    fix when it is missing. Without, provenance a partial project (a hand-run `textclf export`)
    may lack: None, and the card says what is not recorded."""
    if not path.is_file():
        if fix is None:
            return None
        raise TextclfError(f"export: {path} ({what}) not found; the model card needs it. {fix}")
    return json.loads(path.read_text(encoding="utf-8"))
