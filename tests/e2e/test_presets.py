"""Every dataset preset, and a user's own CSVs, through `dvc exp run` exactly as users type it:
`-S dataset=X` for the shared datasets, `-S data.*` alone for one's own files (small fractions
of the real data and a tiny model: minutes, not the full run)."""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from tests.e2e.test_pipeline import stages_ran
from tests.test_datasets import TOPICS, multilabel_rows, pair_rows

pytestmark = pytest.mark.slow

QUICK = ["-S", "validate.fraction=0.05", "-S", "validate.min_rows=50", "-S", "train.epochs=1",
         "-S", "model.d_model=32", "-S", "model.n_layers=1", "-S", "model.n_heads=2",
         "-S", "model.d_ff=64", "-S", "tokenize.teacher_folds=2", "-S", "parity.latency_runs=3"]
EXPECTED_TASK = {"agnews": "multiclass", "imdb": "multiclass", "go_emotions": "multilabel",
                 "mnli": "pair"}
PREDICT_INPUT = {
    "agnews": ["Stocks rally as the central bank holds rates"],
    "imdb": ["A wonderful film.<br /><br />I loved every minute of it."],
    "go_emotions": ["Thank you so much, this made my day!"],
    "mnli": ["--jsonl", json.dumps({"premise": "A man is playing a guitar on stage.",
                                    "hypothesis": "Someone is making music."})],
}


@pytest.mark.skipif(not SHARED_DATA.parent.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("dataset", ["agnews", "imdb", "go_emotions", "mnli"])
def test_each_preset_runs_the_whole_pipeline(make_repo, dataset: str) -> None:
    """In a temporary copy of the repo (`--temp`, the queue's executor): the preset's data must
    come through DVC (data/shared/<name>.dvc), not through a path only the workspace sees."""
    repo = make_repo()
    done = repo.run("dvc", "exp", "run", "--temp", "-S", f"dataset={dataset}", *QUICK)
    assert stages_ran(done.stdout) == {
        "fetch", "validate", "tokenize", "train", "evaluate", "export", "parity"}
    name = re.search(r"Ran experiment\(s\): (\S+)", done.stdout)
    assert name, done.stdout
    repo.run("dvc", "exp", "apply", name[1])  # its params, metrics and outputs, into the workspace
    params = repo.root / "params.yaml"
    assert f"source: data/shared/{dataset}" in params.read_text()
    evaluation = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert evaluation["task"] == EXPECTED_TASK[dataset]
    parity = json.loads((repo.root / "metrics" / "parity.json").read_text())
    assert parity["argmax_agreement"] == 1.0 and parity["serving_token_mismatch_rows"] == 0
    if dataset == "imdb":  # two classes: the binary metrics and curves
        assert {"f1", "roc_auc", "pr_auc"} <= set(evaluation["model"])
        plots = repo.root / "metrics" / "eval" / "plots" / "sklearn"
        assert (plots / "roc.json").exists() and (plots / "precision_recall.json").exists()
    predicted = json.loads(repo.run("textclf", "predict", *PREDICT_INPUT[dataset]).stdout)
    assert ("labels" in predicted) == (dataset == "go_emotions")
    assert "error" not in predicted
    shown = repo.run("dvc", "plots", "show", "--json").stdout
    assert "metrics/eval/plots" in shown


def test_your_own_csvs_run_by_data_overrides_alone(make_repo, tmp_path) -> None:
    repo = make_repo()
    # Toxicity-style tags: unusual column names, one 0/1 column per label.
    tags = tmp_path / "tags"
    tags.mkdir()
    names = {"politics": "toxic", "sports": "obscene", "business": "insult",
             "science": "threat"}
    for split, n, seed in (("train", 400, 0), ("test", 100, 1)):
        rows = [{"comment text": r["comment"], **{names[t]: r[t] for t in TOPICS}}
                for r in multilabel_rows(n, seed)]
        pd.DataFrame(rows).to_csv(tags / f"{split}.csv", index=False)
    common = ["-S", "validate.min_rows=50", "-S", "train.epochs=2", "-S", "model.d_model=32",
              "-S", "model.n_layers=1", "-S", "model.n_heads=2", "-S", "model.d_ff=64",
              "-S", "tokenize.teacher_folds=2"]
    repo.run("dvc", "exp", "run", "-S", f"data.source={tags}", "-S", "data.text='comment text'",
             "-S", "data.label=[toxic,obscene,insult,threat]", *common)
    evaluation = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert evaluation["task"] == "multilabel"
    assert set(evaluation["model"]["per_class"]) == {"toxic", "obscene", "insult", "threat"}
    dataset = json.loads((repo.root / "data" / "validated" / "dataset.json").read_text())
    assert dataset["normalize"] == []  # none of AG News's cleaning

    # Premise / hypothesis pairs, as a TSV: the same three keys MNLI's preset sets.
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for split, n, seed in (("train", 400, 0), ("test", 100, 1)):
        pd.DataFrame(pair_rows(n, seed)).to_csv(pairs / f"{split}.tsv", sep="\t", index=False)
    repo.run("dvc", "exp", "run", "-S", f"data.source={pairs}", "-S", "data.text=premise",
             "-S", "data.text_pair=hypothesis", "-S", "data.label=relation", *common)
    evaluation = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert evaluation["task"] == "pair"
    rng = random.Random(0)
    line = json.dumps({"premise": " ".join(rng.sample(TOPICS, 2)), "hypothesis": "markets"})
    predicted = json.loads(repo.run("textclf", "predict", "--jsonl", line).stdout)
    assert predicted["label"] in {"same", "different"}
