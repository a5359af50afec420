"""Stage `validate`: parse errors name file and line, the GX suite, leakage, outputs on success.

GX takes seconds to import; the first test to reach the suite pays for it once per session and
every later run reuses the imported module (each run builds only a cheap ephemeral context).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import LABEL_NAMES, SHARED_DATA, synthetic_rows, write_charcnn_csv
from tests.helpers import params_dict
from textclf.core.config import Params, params_from_dict
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.serving.text import join_title_description
from textclf.stages import fetch, validate

Rows = list[tuple[str, str, str]]


def make_params(**validate_overrides: Any) -> Params:
    # The synthetic test split has 60 rows, under the real-data default of 100.
    return params_from_dict(params_dict(validate={"min_rows": 20, **validate_overrides}))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_raw(root: Path, train: Rows | None = None, test: Rows | None = None) -> Path:
    raw = root / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_charcnn_csv(raw / "train.csv", synthetic_rows(60, 0) if train is None else train)
    write_charcnn_csv(raw / "test.csv", synthetic_rows(15, 1) if test is None else test)
    return raw


def assert_no_outputs(root: Path) -> None:
    assert not (root / "data" / "validated").exists()
    assert not (root / "metrics" / "validation.json").exists()


def test_synthetic_corpus_passes(project: Path) -> None:
    train = synthetic_rows(60, 0)
    write_raw(project, train=train)
    summary = validate.run(make_params(), Paths(project))
    assert summary["train_rows"] == 240 and summary["test_rows"] == 60

    out = project / "data" / "validated"
    frame = pd.read_parquet(out / "train.parquet")
    assert list(frame.columns) == ["label", "text", "title", "description"]
    assert frame["label"].dtype == "int64" and sorted(frame["label"].unique()) == [0, 1, 2, 3]
    # Same order as the CSV; label 0-based; text is the cleaned join of title and description.
    assert frame["label"].tolist() == [int(c) - 1 for c, _, _ in train]
    assert frame["text"].iloc[0] == join_title_description(train[0][1], train[0][2])
    assert frame["title"].iloc[0] == train[0][1]
    assert json.loads((out / "labels.json").read_text()) == {"label_names": LABEL_NAMES}

    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] is True
    assert metrics["expectations_evaluated"] == metrics["expectations_passed"] >= 10
    assert metrics["leakage_rows_dropped"] == 0 and metrics["leakage_share"] == 0
    assert metrics["train"]["rows"] == 240 and metrics["test"]["rows"] == 60
    assert metrics["train"]["class_counts"] == dict.fromkeys(LABEL_NAMES, 60)
    assert metrics["test"]["class_ratio"] == 1.0
    chars = metrics["train"]["text_chars"]
    assert 10 <= chars["min"] <= chars["median"] <= chars["max"] <= 5000


def test_crlf_bom_blank_lines_and_multiline_fields_pass(project: Path) -> None:
    raw = write_raw(project)
    text = (raw / "train.csv").read_text()
    lines = text.splitlines()
    lines[1] = '"2","A title with a\nline break","and a long enough description"'
    (raw / "train.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n\r\n").encode())
    validate.run(make_params(), Paths(project))
    assert len(pd.read_parquet(project / "data" / "validated" / "train.parquet")) == 240


def test_leakage_below_threshold_is_dropped_and_counted(project: Path) -> None:
    test = synthetic_rows(15, 1)
    write_raw(project, train=synthetic_rows(60, 0) + test[:2], test=test)
    summary = validate.run(make_params(max_leakage_share=0.01), Paths(project))
    assert summary["leakage_rows_dropped"] == 2 and summary["train_rows"] == 240
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["leakage_rows_dropped"] == 2
    assert metrics["leakage_share"] == pytest.approx(2 / 242, abs=1e-6)
    train = pd.read_parquet(project / "data" / "validated" / "train.parquet")
    assert not set(train["text"]) & {join_title_description(t, d) for _, t, d in test}


def test_leakage_above_threshold_fails(project: Path) -> None:
    test = synthetic_rows(15, 1)
    write_raw(project, train=synthetic_rows(60, 0) + test[:10], test=test)
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(max_leakage_share=0.01), Paths(project))
    message = str(info.value)
    assert "train.csv" in message and "leakage" in message
    assert "validate.max_leakage_share" in message and "line 241:" in message
    assert_no_outputs(project)


def replace_line(number: int, content: bytes) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[number - 1] = content
        return b"\n".join(lines)

    return mutate


def insert_line(number: int, content: bytes) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines.insert(number - 1, content)
        return b"\n".join(lines)

    return mutate


# (mutation of train.csv, substrings the error must contain besides the file name)
BAD_TRAIN = {
    "unbalanced_quote": (replace_line(5, b'"1","Title "quoted" badly","desc ok"'),
                         ["line 5", "quoting", '""']),
    "truncated": (lambda data: data[:-25], ["line 240", "unexpected end of data", "fetch"]),
    "two_columns": (replace_line(7, b'"2","only a title here"'),
                    ["line 7", "2 field(s), expected 3", "only a title"]),
    "label_5": (replace_line(3, b'"5","Some title","some description text"'),
                ["expect_column_values_to_be_in_set", "`label`", "line 3: 5",
                 "validate.label_names"]),
    "label_0": (replace_line(3, b'"0","Some title","some description text"'),
                ["expect_column_values_to_be_in_set", "line 3: 0"]),
    "label_text": (replace_line(3, b'"World","Some title","some description text"'),
                   ["expect_column_values_to_be_in_set", "line 3: 'World'"]),
    "blank_text": (replace_line(4, b'"1","  ",""'),
                   ["expect_column_value_lengths_to_be_between", "`text`", "line 4: ''",
                    "validate.min_text_chars"]),
    "too_long": (replace_line(6, b'"1","t","' + b"x" * 6000 + b'"'),
                 ["expect_column_value_lengths_to_be_between", "line 6: 't xxx",
                  "validate.max_text_chars"]),
    "nul_byte": (replace_line(8, b'"2","nul \x00 here","desc"'), ["line 8", "NUL"]),
    "invalid_utf8": (replace_line(9, b'"2","caf\xe9 latin-1","desc"'),
                     ["line 9", "not valid UTF-8", "byte offset"]),
    "header_in_middle": (insert_line(10, b'"class","title","description"'),
                         ["line 10", "header"]),
    "header_first": (insert_line(1, b'"Class Index","Title","Description"'),
                     ["line 1", "header"]),
    "wrong_delimiter": (lambda data: data.replace(b'","', b'";"'),
                        ["line 1", "separated by ';'", "delimiter"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_train_file_fails_cleanly(project: Path, case: str) -> None:
    mutate, needles = BAD_TRAIN[case]
    raw = write_raw(project)
    (raw / "train.csv").write_bytes(mutate((raw / "train.csv").read_bytes()))
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(), Paths(project))
    message = str(info.value)
    assert str(Path("data") / "raw" / "train.csv") in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert_no_outputs(project)


def test_line_numbers_count_physical_lines(project: Path) -> None:
    rows = synthetic_rows(60, 0)
    rows[1] = (rows[1][0], "A title\nover two lines", rows[1][2])
    rows[4] = ("9", rows[4][1], rows[4][2])
    write_raw(project, train=rows)
    with pytest.raises(TextclfError, match="line 6: 9"):
        validate.run(make_params(), Paths(project))


def test_missing_file(project: Path) -> None:
    (write_raw(project) / "test.csv").unlink()
    with pytest.raises(TextclfError, match=r"test\.csv not found.*textclf fetch"):
        validate.run(make_params(), Paths(project))
    assert_no_outputs(project)


def test_absent_class_fails(project: Path) -> None:
    write_raw(project, test=[row for row in synthetic_rows(15, 1) if row[0] != "4"])
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(), Paths(project))
    message = str(info.value)
    assert "test.csv" in message and "classes with no rows: [4]" in message
    assert_no_outputs(project)


def test_heavy_imbalance_fails(project: Path) -> None:
    rows = synthetic_rows(60, 0)
    rows = [row for row in rows if row[0] != "1"] + [row for row in rows if row[0] == "1"][:20]
    write_raw(project, train=rows)
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(max_class_ratio=1.5), Paths(project))
    message = str(info.value)
    assert "train.csv" in message and "class balance" in message and "ratio 3.00" in message
    assert "validate.max_class_ratio" in message
    assert_no_outputs(project)


def test_too_few_rows_and_every_failure_is_listed(project: Path) -> None:
    rows = synthetic_rows(60, 0)
    rows[0] = ("7", rows[0][1], rows[0][2])
    write_raw(project, train=rows)
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(min_rows=1000), Paths(project))
    message = str(info.value)
    assert "expect_table_row_count_to_be_between" in message and "validate.min_rows" in message
    assert "data/raw/test.csv" in message and "data/raw/train.csv" in message
    assert "line 1: 7" in message


@pytest.mark.slow
def test_real_data_fetch_and_validate(project: Path) -> None:
    if not (SHARED_DATA / "train.csv").exists():
        pytest.skip(f"real AG News data not found at {SHARED_DATA}")
    raw = params_dict()
    raw["fetch"]["source"] = str(SHARED_DATA)  # keep the pinned sha256 from params.yaml
    params = params_from_dict(raw)
    fetch.run(params, Paths(project))
    summary = validate.run(params, Paths(project))
    assert summary["test_rows"] == 3800
    # Leakage counted independently: cleaned train texts that also occur among the test texts.
    texts = {split: validate.read_raw(project / "data" / "raw" / f"{split}.csv")["text"]
             for split in ("train", "test")}
    assert summary["leakage_rows_dropped"] == int(texts["train"].isin(set(texts["test"])).sum())
    assert summary["train_rows"] == 20000 - summary["leakage_rows_dropped"]
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] and metrics["train"]["class_ratio"] <= 1.01
