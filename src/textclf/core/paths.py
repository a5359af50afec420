"""Where every stage reads and writes, relative to the project root.

dvc.yaml declares the same files as each stage's outs, metrics and plots; ``STAGE_OUTPUTS`` is
that declaration on the code's side, and tests/test_dvc_yaml.py fails when the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def validation_metrics(self) -> Path:
        return self.metrics / "validation.json"

    @property
    def tokens(self) -> Path:
        return self.root / "data" / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "models" / "model.pt"

    @property
    def checkpoint(self) -> Path:
        # The resume point: a local cache train reads and writes, not a pipeline output.
        return self.root / "models" / "checkpoint"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train"  # dvclive's folder: metrics.json and plots/metrics

    @property
    def train_runtime(self) -> Path:
        return self.runtime / "train.json"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.json"

    @property
    def eval_plots(self) -> Path:
        # dvclive's folder: plots/sklearn/{confusion_matrix,roc,precision_recall}.json,
        # plots/custom/per_label_f1.json (which ones: the task's).
        return self.metrics / "eval" / "plots"

    @property
    def misclassified(self) -> Path:
        return self.metrics / "eval" / "misclassified.csv"

    @property
    def raw_source(self) -> Path:
        return self.raw / "source.json"  # fetch's record of each split file's origin, sha256

    @property
    def model_card(self) -> Path:
        return self.root / "models" / "model.card.md"

    @property
    def eval_predictions(self) -> Path:
        return self.metrics / "eval" / "predictions.json"

    @property
    def onnx(self) -> Path:
        return self.root / "models" / "model.onnx"

    @property
    def parity_metrics(self) -> Path:
        return self.metrics / "parity.json"

    @property
    def parity_runtime(self) -> Path:
        return self.runtime / "parity.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def runtime(self) -> Path:
        # How a run went (speed, resumed or not): differs between identical runs, so it is
        # kept out of the metrics files that `dvc metrics diff` compares.
        return self.root / "metrics" / "runtime"


# Each stage's outputs as dvc.yaml declares them (outs, metrics and plots), by Paths property.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "fetch": ("raw",),
    "validate": ("validated", "validation_metrics"),
    "tokenize": ("tokens",),
    "train": ("model", "train_runtime", "train_metrics"),
    "evaluate": ("eval_metrics", "eval_plots", "misclassified", "eval_predictions"),
    "export": ("onnx", "model_card"),
    "parity": ("parity_metrics", "parity_runtime"),
}
