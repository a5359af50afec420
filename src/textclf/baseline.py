"""The TF-IDF + logistic-regression baseline: the bar the model must clear, and its teacher.

One definition serves two stages: `evaluate` fits it on the training split and scores the test
split beside the model; `tokenize` fits it fold by fold on the training split to give every
training row soft labels from a model that never saw that row (the distillation targets).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from textclf.config import BaselineConfig
from textclf.errors import TextclfError


def fit(texts: Sequence[str], labels: np.ndarray, cfg: BaselineConfig):
    """A fitted sklearn pipeline: word 1..n-gram TF-IDF (sublinear tf) -> logistic regression."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, cfg.ngram_max), sublinear_tf=True, min_df=cfg.min_df),
        LogisticRegression(C=cfg.c, max_iter=2000),
    )
    try:
        with warnings.catch_warnings():
            # A baseline a hair short of full convergence is still a fair reference point.
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(list(texts), labels)
    except ValueError as exc:  # min_df above every term's count, or above the row count
        raise TextclfError(
            f"baseline: the TF-IDF vectorizer keeps no term ({exc}). Lower baseline.min_df "
            "in params.yaml."
        ) from None
    return pipeline


def out_of_fold_probabilities(texts: Sequence[str], labels: np.ndarray, num_labels: int,
                              cfg: BaselineConfig, folds: int, seed: int) -> np.ndarray:
    """float32 [N, K]: each row's class probabilities from a baseline fitted without it."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    texts = np.asarray(texts, dtype=object)
    probs = np.zeros((len(texts), num_labels), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        splits = list(splitter.split(texts, labels))
    except ValueError as exc:
        raise TextclfError(
            f"tokenize: cannot split the training rows into {folds} teacher folds ({exc}). "
            "Lower tokenize.teacher_folds (0 turns the teacher off)."
        ) from None

    def fold(fit_rows: np.ndarray, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = fit(texts[fit_rows], labels[fit_rows], cfg)
        return model.classes_, model.predict_proba(texts[held_out])

    # The folds are independent single-threaded fits: one process per core.
    fitted = Parallel(n_jobs=min(folds, os.cpu_count() or 1))(
        delayed(fold)(fit_rows, held_out) for fit_rows, held_out in splits)
    for (_, held_out), (classes, fold_probs) in zip(splits, fitted, strict=True):
        # Columns follow the classes this fold saw; a class absent from it keeps probability 0.
        probs[np.ix_(held_out, classes)] = fold_probs
    return probs
