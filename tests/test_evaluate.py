"""`evaluate`: model and baseline metrics, confusion rows and the most confident mistakes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import LABEL_NAMES, tiny_params
from textclf.core.artifacts import load_split
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.batching import batched_logits
from textclf.modeling.bundle import load_bundle, save_bundle
from textclf.stages import evaluate


def _copy_project(source: Paths, root: Path) -> Paths:
    for name in ("data", "models"):
        shutil.copytree(source.root / name, root / name)
    return Paths(root)


def test_evaluate_writes_metrics_confusion_and_mistakes(tiny_model_project: Paths,
                                                        tmp_path: Path) -> None:
    paths = _copy_project(tiny_model_project, tmp_path)
    # The synthetic corpus is easy enough for a perfect score; flipping a few test labels makes
    # sure there are mistakes to report.
    test_npz = paths.tokens / "test.npz"
    test = load_split(paths.tokens, "test")
    flipped = np.arange(0, len(test["labels"]), 6)
    test["labels"][flipped] = (test["labels"][flipped] + 1) % len(LABEL_NAMES)
    np.savez(test_npz, **test)

    summary = evaluate.run(tiny_params(), paths)

    report = json.loads((paths.metrics / "eval.json").read_text())
    assert set(report) == {"task", "model", "baseline", "model_minus_baseline_accuracy",
                           "train_rows", "test_rows"}
    assert report["task"] == "multiclass" and "roc_auc" not in report["model"]  # 4 classes
    assert report["test_rows"] == len(test["labels"]) == summary["test_rows"]
    for section in ("model", "baseline"):
        for key in ("accuracy", "macro_f1"):
            assert 0.0 <= report[section][key] <= 1.0
    assert set(report["model"]["per_class"]) == set(LABEL_NAMES)
    for values in report["model"]["per_class"].values():
        assert set(values) == {"precision", "recall", "f1"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert report["model_minus_baseline_accuracy"] == pytest.approx(
        report["model"]["accuracy"] - report["baseline"]["accuracy"], abs=1e-6)
    assert report["baseline"]["accuracy"] > 0.6  # the topic words make this easy

    confusion = json.loads((paths.eval_plots / "sklearn" / "confusion_matrix.json").read_text())
    assert len(confusion) == len(test["labels"])
    assert all(set(row) == {"actual", "predicted"} for row in confusion)
    assert [row["actual"] for row in confusion] == [LABEL_NAMES[i] for i in test["labels"]]
    wrong = sum(row["actual"] != row["predicted"] for row in confusion)
    assert wrong >= len(flipped) - 2

    table = pd.read_csv(paths.metrics / "eval" / "misclassified.csv")
    n = tiny_params().evaluate.n_misclassified
    assert list(table.columns) == ["text", "actual", "predicted", "confidence"]
    assert 0 < len(table) <= n
    assert (table["actual"] != table["predicted"]).all()
    assert table["confidence"].is_monotonic_decreasing
    assert table["text"].str.len().max() <= 300

    predictions = json.loads(paths.eval_predictions.read_text())
    assert predictions["label_names"] == LABEL_NAMES and predictions["headline"] == "accuracy"
    rows = predictions["rows"]
    assert [row[1] for row in rows] == test["labels"].tolist()
    assert [LABEL_NAMES[row[2]] for row in rows] == [row["predicted"] for row in confusion]
    model_hits = np.mean([row[1] == row[2] for row in rows])
    base_hits = np.mean([row[1] == row[3] for row in rows])
    assert model_hits == pytest.approx(report["model"]["accuracy"], abs=1e-6)
    assert base_hits == pytest.approx(report["baseline"]["accuracy"], abs=1e-6)
    assert len({row[0] for row in rows}) == len(rows)  # the synthetic test texts are distinct


@pytest.mark.parametrize("refit", [False, True], ids=["held-out-val", "refit"])
def test_baseline_fits_on_the_rows_the_model_trained_on(tiny_model_project: Paths, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        refit: bool) -> None:
    paths = _copy_project(tiny_model_project, tmp_path)
    bundle = load_bundle(paths.model)
    save_bundle(paths.model, dataclasses.replace(bundle, train_config={"refit": refit}))
    seen = {}
    real = evaluate.fit_baseline

    def spy(train_texts, train_labels, cfg):
        seen.update(train=list(train_texts))
        fitted = real(train_texts, train_labels, cfg)
        predict = fitted.predict_proba

        def spy_predict(test_texts):
            seen.update(test=list(test_texts))
            return predict(test_texts)

        fitted.predict_proba = spy_predict
        return fitted

    monkeypatch.setattr(evaluate, "fit_baseline", spy)
    evaluate.run(tiny_params(), paths)
    train_rows = load_split(paths.tokens, "train")["rows"]
    val_rows = load_split(paths.tokens, "val")["rows"]
    texts = pd.read_parquet(paths.validated / "train.parquet")["text"].tolist()
    fitted_rows = np.concatenate([train_rows, val_rows]) if refit else train_rows
    assert seen["train"] == [texts[i] for i in fitted_rows]
    assert bool(set(seen["train"]) & {texts[i] for i in val_rows}) == refit
    report = json.loads((paths.metrics / "eval.json").read_text())
    assert report["train_rows"] == len(fitted_rows)
    assert len(seen["test"]) == len(load_split(paths.tokens, "test")["rows"])


def test_batched_trimmed_logits_equal_full_width_logits(tiny_model_project: Paths) -> None:
    bundle = load_bundle(tiny_model_project.model)
    test = load_split(tiny_model_project.tokens, "test")
    batched = batched_logits(bundle.model, test["ids"], test["lengths"], batch_size=7)
    with torch.inference_mode():
        full = bundle.model(torch.from_numpy(test["ids"].astype(np.int64))).numpy()
    np.testing.assert_allclose(batched, full, atol=1e-5, rtol=0)


def test_a_model_from_another_tokenization_is_refused(tiny_model_project: Paths,
                                                      tmp_path: Path) -> None:
    paths = _copy_project(tiny_model_project, tmp_path)
    vocab_path = paths.tokens / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    vocab["raw_ids"] = vocab["raw_ids"][:-1]
    vocab_path.write_text(json.dumps(vocab))
    with pytest.raises(TextclfError, match="dvc repro train"):
        evaluate.run(tiny_params(), paths)


def test_a_baseline_without_features_names_the_param(tiny_model_project: Paths,
                                                     tmp_path: Path) -> None:
    paths = _copy_project(tiny_model_project, tmp_path)
    params = tiny_params(baseline={"min_df": 10_000})
    with pytest.raises(TextclfError, match=r"baseline\.min_df"):
        evaluate.run(params, paths)
