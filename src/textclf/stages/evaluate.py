"""Stage `evaluate`: the trained model and its TF-IDF baseline, scored on the test split.

Reads  models/model.pt, data/tokens/{train,val,test}.npz + vocab.json,
       data/validated/{train,test}.parquet (inputs for the baseline and the error report)
Writes metrics/eval.json              (the task's metrics for the model and the baseline)
       metrics/eval/plots/            (dvclive: confusion matrix; ROC and precision-recall
                                       curves for a binary task; per-label F1 for multi-label)
       metrics/eval/misclassified.csv (the most confident wrong predictions)
       metrics/eval/predictions.json  (every test row's label, the model's and the baseline's
                                       decision: `textclf report` pairs two revisions on it)

Metrics per task: accuracy, macro-F1 and per-class P/R/F1 for one label per row (multiclass,
pairs); plus F1 of the positive class (label 1 of the sorted names), ROC-AUC and PR-AUC when
there are two classes; micro- and macro-F1, subset accuracy, Hamming loss and per-label P/R/F1
for multi-label, at the thresholds the model ships. The baseline is fitted on exactly the rows
the model trained on (and, for multi-label, gets its own thresholds chosen on the same
validation rows), so the difference measures the model, not the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textclf.core.artifacts import inputs_of_rows, load_split, load_vocab
from textclf.core.atomic import atomic_dir, atomic_path, write_json
from textclf.core.config import Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.baseline import as_inputs, probabilities
from textclf.modeling.baseline import fit as fit_baseline
from textclf.modeling.batching import batched_logits, joined_splits
from textclf.modeling.bundle import Bundle, load_bundle
from textclf.modeling.objectives import choose_thresholds

_TEXT_CHARS = 300  # misclassified.csv stays readable in a terminal and in DVC Studio


def run(params: Params, paths: Paths) -> dict[str, Any]:
    cfg = params.evaluate
    bundle = load_bundle(paths.model)
    _check_same_tokens(bundle, load_vocab(paths.tokens), paths)
    pairs, multilabel = bundle.task == "pair", bundle.task == "multilabel"
    train, val, test = (load_split(paths.tokens, s) for s in ("train", "val", "test"))
    if bundle.train_config.get("refit", False):
        train = joined_splits(train, val)
    # The validation rows' inputs serve only multi-label's baseline thresholds.
    wanted = [("train", "train", train), ("test", "test", test)]
    if multilabel:
        wanted.append(("val", "train", val))
    inputs = {name: as_inputs(*inputs_of_rows(paths.validated / f"{file}.parquet",
                                               split["rows"], pairs))
              for name, file, split in wanted}
    names, actual, k = bundle.label_names, test["labels"], len(bundle.label_names)

    logits = batched_logits(bundle.model, test["ids"], test["lengths"], cfg.batch_size)
    baseline = fit_baseline(inputs["train"], train["labels"], params.baseline)
    base_probs = probabilities(baseline, inputs["test"], k)
    if multilabel:
        probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
        predicted = probs >= np.asarray(bundle.thresholds)
        base_thresholds = choose_thresholds(probabilities(baseline, inputs["val"], k),
                                            val["labels"])
        base_predicted = base_probs >= np.asarray(base_thresholds)
        model_scores = multilabel_scores(actual, predicted, names)
        base_scores = multilabel_scores(actual, base_predicted, names)
        headline = "macro_f1"
    else:
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        predicted, base_predicted = probs.argmax(1), base_probs.argmax(1)
        model_scores = scores(actual, predicted, names, probs)
        base_scores = scores(actual, base_predicted, names, base_probs)
        headline = "accuracy"
    report = {
        "task": bundle.task,
        "model": model_scores,
        "baseline": {key: value for key, value in base_scores.items() if key != "per_class"},
        f"model_minus_baseline_{headline}": round(
            model_scores[headline] - base_scores[headline], 6),
        "train_rows": len(train["labels"]),  # of the model and of the baseline alike
        "test_rows": len(actual),
    }
    write_json(paths.eval_metrics, report)
    _plots(paths, names, actual, predicted, probs, model_scores, multilabel)
    write_predictions(paths.eval_predictions, bundle.task, headline, names, inputs["test"],
                      actual, predicted, base_predicted)
    _misclassified(paths, cfg.n_misclassified, inputs["test"], names, actual, predicted, probs,
                   multilabel)
    return {"task": bundle.task, headline: model_scores[headline],
            f"baseline_{headline}": base_scores[headline], "test_rows": len(actual)}


def scores(actual: np.ndarray, predicted: np.ndarray, names: list[str],
           probs: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class P/R/F1 by name; with two classes and ``probs`` also
    the positive class's F1, ROC-AUC and PR-AUC (average precision)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = list(range(len(names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": _round(accuracy_score(actual, predicted)),
        "macro_f1": _round(f1_score(actual, predicted, labels=labels, average="macro",
                                    zero_division=0)),
    }
    if len(names) == 2 and probs is not None and len(set(actual.tolist())) == 2:
        out["positive_label"] = names[1]
        out["f1"] = _round(f1[1])
        out["roc_auc"] = _round(roc_auc_score(actual, probs[:, 1]))
        out["pr_auc"] = _round(average_precision_score(actual, probs[:, 1]))
    out["per_class"] = {name: {"precision": _round(precision[i]), "recall": _round(recall[i]),
                               "f1": _round(f1[i])} for i, name in enumerate(names)}
    return out


def multilabel_scores(actual: np.ndarray, predicted: np.ndarray,
                      names: list[str]) -> dict[str, Any]:
    """Micro- and macro-F1, subset accuracy, Hamming loss and per-label P/R/F1 by name."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    truth, guess = actual.astype(int), predicted.astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, guess, zero_division=0)
    return {
        "micro_f1": _round(f1_score(truth, guess, average="micro", zero_division=0)),
        "macro_f1": _round(f1_score(truth, guess, average="macro", zero_division=0)),
        "subset_accuracy": _round(accuracy_score(truth, guess)),
        "hamming_loss": _round(hamming_loss(truth, guess)),
        "per_class": {name: {"precision": _round(precision[i]), "recall": _round(recall[i]),
                             "f1": _round(f1[i])} for i, name in enumerate(names)},
    }


def write_predictions(path: Path, task: str, headline: str, names: list[str],
                      inputs: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                      base_predicted: np.ndarray) -> None:
    """Per test row: a key of its text, the true label(s), the model's and the baseline's.

    Git-tracked, one row per line (~27 bytes each), so a pull-request report can run a paired
    test between two revisions' decisions without pulling anything; the key (12 hex of the
    text's sha256) pairs rows even when a change re-orders or subsamples the test split.
    Single-label rows hold label indices, multi-label rows lists of them.
    """
    import hashlib

    def decided(values: np.ndarray) -> list:
        if values.ndim == 2:  # multi-label: each row's labels that are on
            return [np.flatnonzero(row > 0.5).tolist() for row in values]
        return values.astype(int).tolist()

    texts = ["\x1f".join(row) if inputs.ndim == 2 else row for row in inputs]
    keys = [hashlib.sha256(text.encode()).hexdigest()[:12] for text in texts]
    rows = zip(keys, decided(actual), decided(predicted), decided(base_predicted), strict=True)
    header = json.dumps({"format": 1, "task": task, "headline": headline, "label_names": names,
                         "columns": ["key", "actual", "model", "baseline"]})
    body = ",\n".join(json.dumps(list(row)) for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(f'{header[:-1]}, "rows": [\n{body}\n]}}\n')


def _round(value: Any) -> float:
    return round(float(value), 6)


def _plots(paths: Paths, names: list[str], actual: np.ndarray, predicted: np.ndarray,
           probs: np.ndarray, model_scores: dict[str, Any], multilabel: bool) -> None:
    import shutil
    import tempfile

    from dvclive import Live

    # dvclive writes under <dir>/plots/: a scratch dir whose plots replace metrics/eval/plots.
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(paths.eval_plots) as tmp:
        live = Live(scratch, dvcyaml=None, save_dvc_exp=False, report=None)
        if multilabel:
            live.log_plot("per_label_f1", [
                {"label": name, "f1": model_scores["per_class"][name]["f1"]} for name in names],
                x="f1", y="label", template="bar_horizontal", title="Per-label F1 (test)")
        else:
            live.log_sklearn_plot("confusion_matrix", [names[a] for a in actual],
                                  [names[p] for p in predicted], name="confusion_matrix.json")
            if "roc_auc" in model_scores:
                live.log_sklearn_plot("roc", actual, probs[:, 1], name="roc.json")
                live.log_sklearn_plot("precision_recall", actual, probs[:, 1],
                                      name="precision_recall.json")
        live.end()
        shutil.copytree(Path(scratch) / "plots", tmp, dirs_exist_ok=True)


def _misclassified(paths: Paths, n: int, inputs: np.ndarray, names: list[str],
                   actual: np.ndarray, predicted: np.ndarray, probs: np.ndarray,
                   multilabel: bool) -> None:
    import pandas as pd

    texts = [" [SEP] ".join(row) if inputs.ndim == 2 else row for row in inputs]
    if multilabel:
        wrong = np.flatnonzero((predicted != actual.astype(bool)).any(1))
        # Most confident mistake: the largest gap between a wrong decision's score and 1/2.
        confidence = np.abs(probs - 0.5).max(1)[wrong] if len(wrong) else np.array([])

        def shown(rows: np.ndarray) -> str:
            return ", ".join(names[i] for i in np.flatnonzero(rows)) or "(none)"
        actual_names = [shown(actual[i] > 0.5) for i in wrong]
        predicted_names = [shown(predicted[i]) for i in wrong]
    else:
        wrong = np.flatnonzero(predicted != actual)
        confidence = probs[wrong, predicted[wrong]]
        actual_names = [names[actual[i]] for i in wrong]
        predicted_names = [names[predicted[i]] for i in wrong]
    worst = np.argsort(-confidence, kind="stable")[:n]
    table = pd.DataFrame({
        "text": [_truncate(texts[wrong[j]]) for j in worst],
        "actual": [actual_names[j] for j in worst],
        "predicted": [predicted_names[j] for j in worst],
        "confidence": [round(float(confidence[j]), 4) for j in worst],
    })
    with atomic_path(paths.misclassified) as tmp:
        table.to_csv(tmp, index=False)


def _check_same_tokens(bundle: Bundle, vocab: dict, paths: Paths) -> None:
    # test.npz holds compact ids: they mean the same tokens only under the model's own vocabulary.
    from textclf.serving.contract import TokenizerInfo

    same = (
        vocab.get("raw_ids") == bundle.vocab_raw_ids.tolist()
        and TokenizerInfo(**vocab["tokenizer"]) == bundle.tokenizer
        and vocab.get("label_names") == bundle.label_names
        and vocab.get("task") == bundle.task
    )
    if not same:
        raise TextclfError(
            f"evaluate: {paths.model} was trained on another tokenization than {paths.tokens} "
            "(vocabulary, tokenizer, task or label names differ). Re-train it: `dvc repro train`."
        )


def _truncate(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1].rstrip() + "…"
