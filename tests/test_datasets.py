"""Your data, your task: header CSV / TSV / JSON lines / Parquet, binary, multi-label and pair
datasets described by `data.*` alone, every stage following the task, and bad input refused
with one paragraph naming file, row and field (tiny synthetic corpora; real data: tests/e2e)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import _COMMON_WORDS, _TOPIC_WORDS
from tests.helpers import params_dict
from textclf.core.config import Params, params_from_dict
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.serving.predictor import Predictor
from textclf.stages import evaluate, export, fetch, parity, tokenize, train, validate

TOPICS = ["politics", "sports", "business", "science"]


def sentence(rng: random.Random, topics: list[int], n: int = 12) -> str:
    words = [rng.choice(_TOPIC_WORDS[rng.choice(topics)]) if rng.random() < 0.7
             else rng.choice(_COMMON_WORDS) for _ in range(n)]
    return " ".join(words) + f" {rng.randrange(10**6)}."


def binary_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Reviews: sports words -> "pos", business words -> "neg"; HTML breaks inside."""
    rng = random.Random(seed)
    return [{"review": sentence(rng, [1 if i % 2 else 2]) + "<br /><br />The end.",
             "sentiment": "pos" if i % 2 else "neg"} for i in range(n)]


def multilabel_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        on = rng.sample(range(4), rng.choice([1, 1, 2]))
        rows.append({"comment": sentence(rng, on, 16),
                     **{TOPICS[k]: int(k in on) for k in range(4)}})
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Same topic on both sides -> "same", else "different": only the pair tells."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = rng.randrange(4)
        second = first if i % 2 else (first + rng.randrange(1, 4)) % 4
        rows.append({"premise": sentence(rng, [first]), "hypothesis": sentence(rng, [second], 6),
                     "relation": "same" if first == second else "different"})
    return rows


def write(directory: Path, split: str, rows: list[dict[str, Any]], fmt: str = "csv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    path = directory / f"{split}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def write_splits(source: Path, rows: Any, n_train: int = 40, n_test: int = 20,
                 fmt: str = "csv") -> Path:
    """train and test files of ``rows(n, seed)`` rows at ``source``."""
    write(source, "train", rows(n_train, 0), fmt)
    write(source, "test", rows(n_test, 1), fmt)
    return source


def data_params(source: Path, **data: Any) -> Params:
    """Only `data.*` overrides on top of the repo's params (the AG News preset): what a user
    types as `dvc exp run -S data.source=... -S data.text=... -S data.label=...`."""
    raw = params_dict(validate={"min_rows": 10}, **small_params_dict())
    raw["data"].update(source=str(source), **data)
    return params_from_dict(raw)


def small_params_dict() -> dict[str, dict[str, Any]]:
    return {"tokenize": {"max_length": 48, "teacher_folds": 2},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0},
            "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "precision": "fp32",
                      "device": "cpu"},
            "evaluate": {"batch_size": 16, "n_misclassified": 5},
            "parity": {"batch_size": 32, "latency_runs": 3}}


def run_stages(params: Params, root: Path, monkeypatch: pytest.MonkeyPatch,
               stages: tuple[Any, ...] = (fetch, validate)) -> dict[str, Any]:
    monkeypatch.chdir(root)  # dvclive looks for a DVC repo from the cwd: not this checkout's
    out = {}
    for stage in stages:
        out[stage.__name__.rsplit(".", 1)[-1]] = stage.run(params, Paths(root))
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def test_a_header_csv_runs_by_data_overrides_alone(tmp_path: Path, project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_splits(tmp_path / "reviews", binary_rows, 80, 20)
    params = data_params(source, text="review", label="sentiment")
    assert params.data.source_details() is None  # nothing of AG News's applies here
    run_stages(params, project, monkeypatch)
    meta = json.loads((project / "data" / "validated" / "dataset.json").read_text())
    assert meta == {"task": "multiclass", "label_names": ["neg", "pos"], "normalize": [],
                    "input_fields": {"text": ["review"], "text_pair": []}}
    frame = pd.read_parquet(project / "data" / "validated" / "train.parquet")
    assert frame["text"].str.contains("<br /><br />").all()  # no AG News cleaning leaked in
    assert frame["label"].tolist() == [int(i % 2) for i in range(80)]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_every_format_reads_like_the_csv(tmp_path: Path, project: Path, fmt: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tables = {}
    for kind in ("csv", fmt):
        source = tmp_path / kind
        for split, seed in (("train", 0), ("test", 1)):
            write(source, split, multilabel_rows(40, seed), kind)
        root = tmp_path / f"project-{kind}"
        root.mkdir()
        run_stages(data_params(source, text="comment", label=TOPICS), root, monkeypatch)
        tables[kind] = pd.read_parquet(root / "data" / "validated" / "train.parquet")
    pd.testing.assert_frame_equal(tables["csv"], tables[fmt])


def test_multilabel_task_end_to_end(tmp_path: Path, project: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_splits(tmp_path / "tags", multilabel_rows, 160, 40, fmt="jsonl")
    params = data_params(source, text="comment", label=TOPICS)
    out = run_stages(params, project, monkeypatch,
                     (fetch, validate, tokenize, train, evaluate, export, parity))
    assert out["validate"]["task"] == "multilabel"
    labels = np.load(project / "data" / "tokens" / "train.npz")["labels"]
    assert labels.shape[1] == 4 and set(np.unique(labels)) == {0.0, 1.0}
    report = json.loads((project / "metrics" / "eval.json").read_text())
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        assert key in report["model"] and key in report["baseline"]
    assert set(report["model"]["per_class"]) == set(TOPICS)
    assert report["model"]["micro_f1"] > 0.6  # the topic words make the tags learnable
    assert (project / "metrics" / "eval" / "plots" / "custom" / "per_label_f1.json").exists()
    predictor = Predictor(project / "models" / "model.onnx")
    thresholds = predictor.metadata.thresholds
    assert predictor.task == "multilabel" and len(thresholds) == 4
    assert all(0.05 <= t <= 0.95 for t in thresholds)
    [record] = predictor.predict([sentence(random.Random(5), [1], 20)])
    assert set(record) == {"labels", "scores"} and set(record["scores"]) == set(TOPICS)
    assert record["labels"] == [n for n, t in zip(TOPICS, thresholds, strict=True)
                                if record["scores"][n] >= t]
    assert json.loads((project / "metrics" / "parity.json").read_text())["argmax_agreement"] == 1


def test_pair_task_end_to_end(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    source = write_splits(tmp_path / "pairs", pair_rows, 240, 40)
    params = data_params(source, text="premise", text_pair="hypothesis", label="relation")
    run_stages(params, project, monkeypatch,
               (fetch, validate, tokenize, train, evaluate, export, parity))
    vocab = json.loads((project / "data" / "tokens" / "vocab.json").read_text())
    separator = vocab["tokenizer"]["pair_separator_id"]
    assert vocab["task"] == "pair" and separator == 100258 and separator in vocab["raw_ids"]
    ids = np.load(project / "data" / "tokens" / "train.npz")["ids"]
    table = dict(zip(vocab["raw_ids"], range(2, 2 + len(vocab["raw_ids"])), strict=True))
    assert ((ids == table[separator]).sum(1) == 1).all()  # one separator per row
    report = json.loads((project / "metrics" / "eval.json").read_text())
    assert report["task"] == "pair" and {"accuracy", "macro_f1"} <= set(report["model"])
    metrics = json.loads((project / "metrics" / "parity.json").read_text())
    assert metrics["argmax_agreement"] == 1 and metrics["serving_token_mismatch_rows"] == 0
    predictor = Predictor(project / "models" / "model.onnx")
    with pytest.raises(TextclfError, match="pairs of texts"):
        predictor.predict(["one text alone"])
    rng = random.Random(9)
    same = [sentence(rng, [1]) for _ in range(20)]
    records = predictor.predict(same, [sentence(rng, [1], 6) for _ in range(20)])
    assert {r["label"] for r in records} <= {"same", "different"}

    # The CLI: JSON lines with "text"/"text_pair" or the dataset's own column names.
    from textclf import predict as predict_cli

    lines = [json.dumps({"text": same[0], "text_pair": "markets"}),
             json.dumps({"premise": same[0], "hypothesis": "markets"}),
             "{not json", json.dumps({"premise": same[0]})]
    jsonl = tmp_path / "inputs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    predict_cli.run_cli([], jsonl, project / "models" / "model.onnx", batch_size=2)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[0]["probabilities"] == out[1]["probabilities"]  # the same pair, either naming
    assert "not valid JSON" in out[2]["error"] and "no second text" in out[3]["error"]
    with pytest.raises(TextclfError, match="give JSON lines"):
        predict_cli.run_cli(["a text alone"], None, project / "models" / "model.onnx", 2)


def test_head_tail_truncation_reaches_the_end_of_long_texts(tmp_path: Path, project: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The label is in the last words only: head-only truncation at 48 tokens never sees it.
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(_COMMON_WORDS) for _ in range(200))
             + (" great wonderful superb" if i % 2 else " awful dreadful boring"),
             "label": "pos" if i % 2 else "neg"} for i in range(120)]
    source = tmp_path / "long"
    write(source, "train", rows[:100])
    write(source, "test", rows[100:])
    params = data_params(source, text="text", label="label")
    run_stages(params, project, monkeypatch, (fetch, validate, tokenize))
    vocab = json.loads((project / "data" / "tokens" / "vocab.json").read_text())
    assert vocab["tokenizer"]["head_tokens"] == round(0.25 * 48)
    from textclf.serving.tokenizer import load_encoding

    enc = load_encoding("cl100k_base")
    tail = enc.encode_ordinary(" great wonderful superb")
    ids = np.load(project / "data" / "tokens" / "train.npz")["ids"]
    table = dict(zip(vocab["raw_ids"], range(2, 2 + len(vocab["raw_ids"])), strict=True))
    odd_rows = np.load(project / "data" / "tokens" / "train.npz")["rows"] % 2 == 1
    assert (ids[odd_rows, 48 - len(tail):] == [table[t] for t in tail]).all()


# --- Bad input: one paragraph naming file, row and field; nothing written. ----------------

def assert_refused(params: Params, project: Path, monkeypatch: pytest.MonkeyPatch,
                   *needles: str) -> str:
    with pytest.raises(TextclfError) as info:
        run_stages(params, project, monkeypatch)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert not (project / "data" / "validated").exists()
    assert not (project / "metrics" / "validation.json").exists()
    return message


def test_a_misspelt_column_suggests_the_nearest(tmp_path: Path, project: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_splits(tmp_path / "reviews", binary_rows, 40, 20)
    message = assert_refused(data_params(source, text="reveiw", label="sentiment"), project,
                             monkeypatch, "train.csv", "no column 'reveiw'", "data.text",
                             "Did you mean 'review'?")
    assert "\n" not in message


def test_a_label_column_with_one_class(tmp_path: Path, project: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [dict(row, sentiment="pos") for row in binary_rows(40, 0)]
    source = tmp_path / "one"
    write(source, "train", rows)
    write(source, "test", rows[:20])
    assert_refused(data_params(source, text="review", label="sentiment"), project, monkeypatch,
                   "train.csv", "expect_column_unique_value_count_to_be_between",
                   "`sentiment`", "at least two classes")


@pytest.mark.parametrize(("value", "shown"), [(2, "'2'"), ("yes", "'yes'")])
def test_a_multilabel_column_holding_something_else_than_0_1(
        tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch, value: Any,
        shown: str) -> None:
    rows = multilabel_rows(40, 0)
    rows[6]["sports"] = value
    source = tmp_path / "tags"
    write(source, "train", rows, "jsonl")
    write(source, "test", multilabel_rows(20, 1), "jsonl")
    assert_refused(data_params(source, text="comment", label=TOPICS), project, monkeypatch,
                   "train.jsonl", "`sports`", f"line 7: {shown}", "0 or 1")


def test_a_multilabel_column_without_positives(tmp_path: Path, project: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [dict(row, science=0) for row in multilabel_rows(40, 0)]
    rows = [row for row in rows if any(row[t] for t in TOPICS)]
    source = tmp_path / "tags"
    write(source, "train", rows)
    write(source, "test", multilabel_rows(20, 1))
    assert_refused(data_params(source, text="comment", label=TOPICS), project, monkeypatch,
                   "no row has a 1 in science", "drop those columns from data.label")


def test_a_pair_row_with_an_empty_side(tmp_path: Path, project: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pair_rows(40, 0)
    rows[3]["hypothesis"] = ""
    source = tmp_path / "pairs"
    write(source, "train", rows, "jsonl")
    write(source, "test", pair_rows(20, 1), "jsonl")
    assert_refused(data_params(source, text="premise", text_pair="hypothesis",
                               label="relation"), project, monkeypatch,
                   "train.jsonl", "`text_pair`", "line 4: ''")


def test_a_jsonl_line_that_is_not_json(tmp_path: Path, project: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "broken"
    path = write(source, "train", binary_rows(40, 0), "jsonl")
    lines = path.read_text().splitlines()
    lines[4] = '{"review": "unterminated, "sentiment": "pos"}'
    path.write_text("\n".join(lines) + "\n")
    write(source, "test", binary_rows(20, 1), "jsonl")
    assert_refused(data_params(source, text="review", label="sentiment"), project, monkeypatch,
                   "train.jsonl line 5: not valid JSON", "one JSON object per line")


def test_a_parquet_file_that_is_not_parquet(tmp_path: Path, project: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "fake"
    write(source, "train", binary_rows(40, 0))
    (source / "train.csv").rename(source / "train.parquet")
    write(source, "test", binary_rows(20, 1))
    assert_refused(data_params(source, text="review", label="sentiment"), project, monkeypatch,
                   "train.parquet: not a readable Parquet file", "re-fetch")


@pytest.mark.parametrize(("encoding", "needle"), [("utf-16", "UTF-16"),
                                                  ("utf-8-sig", "byte-order mark")])
def test_a_file_in_utf16_or_with_a_bom(tmp_path: Path, project: Path,
                                       monkeypatch: pytest.MonkeyPatch, encoding: str,
                                       needle: str) -> None:
    source = tmp_path / "encoded"
    path = write(source, "train", binary_rows(40, 0))
    path.write_bytes(path.read_text().encode(encoding))
    write(source, "test", binary_rows(20, 1))
    assert_refused(data_params(source, text="review", label="sentiment"), project, monkeypatch,
                   "train.csv", needle, "UTF-8")
