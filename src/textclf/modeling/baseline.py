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


def teacher_probabilities(texts: Sequence[str], labels: np.ndarray, held_out_texts: Sequence[str],
                          num_labels: int, cfg: BaselineConfig, folds: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, K] and [M, K]: class probabilities no row gets from a baseline that saw it.

    The N training rows get out-of-fold probabilities (``folds`` stratified folds); the M
    held-out rows get those of one baseline fitted on all N, so a refit run (train.refit) can
    distil on them too.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    texts = np.asarray(texts, dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        splits = list(splitter.split(texts, labels))
    except ValueError as exc:
        raise TextclfError(
            f"tokenize: cannot split the training rows into {folds} teacher folds ({exc}). "
            "Lower tokenize.teacher_folds (0 turns the teacher off)."
        ) from None
    jobs = [(texts[fit_rows], labels[fit_rows], texts[held_out]) for fit_rows, held_out in splits]
    jobs.append((texts, labels, np.asarray(held_out_texts, dtype=object)))

    def probabilities(fit_texts, fit_labels, predict_texts) -> np.ndarray:
        model = fit(fit_texts, fit_labels, cfg)
        out = np.zeros((len(predict_texts), num_labels), dtype=np.float32)
        if len(predict_texts):
            # Columns follow the classes this fit saw; a class absent from it keeps probability 0.
            out[:, model.classes_] = model.predict_proba(predict_texts)
        return out

    # The fits are independent and single-threaded: one process per core.
    fitted = Parallel(n_jobs=min(len(jobs), os.cpu_count() or 1))(
        delayed(probabilities)(*job) for job in jobs)
    out_of_fold = np.zeros((len(texts), num_labels), dtype=np.float32)
    for (_, held_out), fold_probs in zip(splits, fitted[:-1], strict=True):
        out_of_fold[held_out] = fold_probs
    return out_of_fold, fitted[-1]
