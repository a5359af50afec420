"""The TF-IDF + logistic-regression baseline: the bar the model must clear, and its teacher.

One definition serves two stages: `evaluate` fits it on the rows the model trained on and scores
the test split beside the model; `tokenize` fits it fold by fold on the training split to give
every training row soft labels from a model that never saw that row (the distillation targets),
and the validation rows soft labels from one fitted on the whole training split.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from textclf.core.config import BaselineConfig
from textclf.core.errors import TextclfError
from textclf.core.progress import progress


def as_inputs(texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
    """The baseline's input rows: texts (N,), or (N, 2) [text, text_pair] for pairs."""
    if pairs is None:
        return np.asarray(texts, dtype=object)
    return np.stack([np.asarray(texts, dtype=object), np.asarray(pairs, dtype=object)], axis=1)


def fit(inputs: np.ndarray, labels: np.ndarray, cfg: BaselineConfig):
    """A fitted sklearn pipeline: word 1..n-gram TF-IDF (sublinear tf) -> logistic regression.

    Pairs get one vectorizer per side (a word in the hypothesis is another feature than in the
    premise); multi-label ``labels`` (N, K) get one regression per label (one-vs-rest).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    def vectorizer() -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, cfg.ngram_max), sublinear_tf=True,
                               min_df=cfg.min_df)

    features = (vectorizer() if inputs.ndim == 1 else
                ColumnTransformer([("text", vectorizer(), 0), ("text_pair", vectorizer(), 1)]))
    regression = LogisticRegression(C=cfg.c, max_iter=2000)
    pipeline = make_pipeline(features, OneVsRestClassifier(regression) if labels.ndim == 2
                             else regression)
    try:
        with warnings.catch_warnings():
            # A baseline a hair short of full convergence is still a fair reference point;
            # a label absent from a fold is predicted as absent.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="Label .* is present in all training")
            pipeline.fit(inputs, labels)
    except ValueError as exc:  # min_df above every term's count, or above the row count
        raise TextclfError(
            f"baseline: the TF-IDF vectorizer keeps no term ({exc}). Lower baseline.min_df "
            "in params.yaml."
        ) from None
    return pipeline


def probabilities(model, inputs: np.ndarray, num_labels: int) -> np.ndarray:
    """float32 (N, K): class probabilities, or per-label ones for a multi-label fit."""
    out = np.zeros((len(inputs), num_labels), dtype=np.float32)
    if len(inputs):
        classes = getattr(model, "classes_", None)
        probs = model.predict_proba(inputs)
        if classes is not None and probs.shape[1] != num_labels:
            out[:, classes] = probs  # a class absent from the fit keeps probability 0
        else:
            out[:] = probs
    return out


def teacher_probabilities(inputs: np.ndarray, labels: np.ndarray, held_out: np.ndarray,
                          num_labels: int, cfg: BaselineConfig, folds: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, K] and [M, K]: probabilities no row gets from a baseline that saw it.

    The N training rows get out-of-fold probabilities (``folds`` folds, stratified for one
    label per row); the M held-out rows get those of one baseline fitted on all N, so a refit
    run (train.refit) can distil on them too.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (KFold(n_splits=folds, shuffle=True, random_state=seed) if labels.ndim == 2
                else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    try:
        splits = list(splitter.split(inputs, labels if labels.ndim == 1 else None))
    except ValueError as exc:
        raise TextclfError(
            f"tokenize: cannot split the training rows into {folds} teacher folds ({exc}). "
            "Lower tokenize.teacher_folds (0 turns the teacher off)."
        ) from None
    jobs = [(inputs[fit_rows], labels[fit_rows], inputs[rows]) for fit_rows, rows in splits]
    jobs.append((inputs, labels, held_out))

    def fit_and_score(fit_inputs, fit_labels, predict_inputs) -> np.ndarray:
        return probabilities(fit(fit_inputs, fit_labels, cfg), predict_inputs, num_labels)

    # The fits are independent and single-threaded: one process per core.
    fitted = []
    with progress(len(jobs), "teacher", "fit") as bar:
        for probs in Parallel(n_jobs=min(len(jobs), os.cpu_count() or 1), return_as="generator")(
                delayed(fit_and_score)(*job) for job in jobs):
            fitted.append(probs)
            bar.update(1)
    out_of_fold = np.zeros((len(inputs), num_labels), dtype=np.float32)
    for (_, rows), fold_probs in zip(splits, fitted[:-1], strict=True):
        out_of_fold[rows] = fold_probs
    return out_of_fold, fitted[-1]
