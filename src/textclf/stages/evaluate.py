"""Stage `evaluate`: the trained model and a TF-IDF baseline, scored on the test split.

Reads  models/model.pt, data/tokens/{train,test}.npz + vocab.json,
       data/validated/{train,test}.parquet (texts for the baseline and the error report)
Writes metrics/eval.json               (accuracy, macro-F1, per-class P/R/F1; baseline; delta)
       metrics/eval/confusion.json     (one {"actual", "predicted"} per test row, DVC template)
       metrics/eval/misclassified.csv  (the most confident wrong predictions)

The baseline (word n-gram TF-IDF + logistic regression) is fitted on exactly the rows the model
trained on (the training split, plus the validation rows for a `train.refit` model, as its
checkpoint records), so the delta measures the model, not the data.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from textclf.core.artifacts import load_split, load_vocab, texts_of_rows
from textclf.core.atomic import atomic_path, write_json, write_text
from textclf.core.config import Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.baseline import fit as fit_baseline
from textclf.modeling.batching import batched_logits, joined_splits
from textclf.modeling.bundle import Bundle, load_bundle

_TEXT_CHARS = 300  # misclassified.csv stays readable in a terminal and in DVC Studio


def run(params: Params, paths: Paths) -> dict[str, Any]:
    import pandas as pd

    cfg = params.evaluate
    bundle = load_bundle(paths.model)
    _check_same_tokens(bundle, load_vocab(paths.tokens), paths)
    train, test = load_split(paths.tokens, "train"), load_split(paths.tokens, "test")
    if bundle.train_config.get("train", {}).get("refit", False):
        train = joined_splits(train, load_split(paths.tokens, "val"))
    train_texts = texts_of_rows(paths.validated / "train.parquet", train["rows"])
    test_texts = texts_of_rows(paths.validated / "test.parquet", test["rows"])
    names = bundle.label_names
    actual = test["labels"]

    logits = batched_logits(bundle.model, test["ids"], test["lengths"], cfg.batch_size)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    predicted = probs.argmax(axis=1)
    baseline = fit_baseline(train_texts, train["labels"], params.baseline).predict(test_texts)

    model_scores = scores(actual, predicted, names)
    base_scores = scores(actual, baseline, names)
    report = {
        "model": model_scores,
        "baseline": {k: base_scores[k] for k in ("accuracy", "macro_f1")},
        "model_minus_baseline_accuracy": round(
            model_scores["accuracy"] - base_scores["accuracy"], 6),
        "train_rows": len(train["labels"]),  # of the model and of the baseline alike
        "test_rows": len(actual),
    }
    write_json(paths.eval_metrics, report)
    # One row per line: a readable git diff, and DVC's confusion template reads it as is.
    rows = (json.dumps({"actual": names[a], "predicted": names[p]})
            for a, p in zip(actual, predicted, strict=True))
    write_text(paths.confusion, "[\n" + ",\n".join(rows) + "\n]\n")

    wrong = np.flatnonzero(predicted != actual)
    confidence = probs[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][: cfg.n_misclassified]
    table = pd.DataFrame({
        "text": [_truncate(test_texts[i]) for i in worst],
        "actual": [names[actual[i]] for i in worst],
        "predicted": [names[predicted[i]] for i in worst],
        "confidence": [round(float(probs[i, predicted[i]]), 4) for i in worst],
    })
    with atomic_path(paths.misclassified) as tmp:
        table.to_csv(tmp, index=False)

    return {"accuracy": model_scores["accuracy"], "macro_f1": model_scores["macro_f1"],
            "baseline_accuracy": base_scores["accuracy"], "test_rows": len(actual)}


def scores(actual: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 keyed by label name."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(range(len(names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        actual, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(actual, predicted)), 6),
        "macro_f1": round(float(f1_score(actual, predicted, labels=labels, average="macro",
                                         zero_division=0)), 6),
        "per_class": {
            name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                   "f1": round(float(f1[i]), 6)}
            for i, name in enumerate(names)
        },
    }


def _check_same_tokens(bundle: Bundle, vocab: dict, paths: Paths) -> None:
    # test.npz holds compact ids: they mean the same tokens only under the model's own vocabulary.
    same = (
        vocab.get("raw_ids") == bundle.vocab_raw_ids.tolist()
        and vocab.get("max_length") == bundle.tokenizer.max_length
        and vocab.get("label_names") == bundle.label_names
        and vocab.get("lowercase", False) == bundle.tokenizer.lowercase
    )
    if not same:
        raise TextclfError(
            f"evaluate: {paths.model} was trained on another tokenization than {paths.tokens} "
            "(vocabulary, max_length or label names differ). Re-train it: `dvc repro train`."
        )


def _truncate(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1].rstrip() + "…"
