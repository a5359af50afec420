"""Stage `validate` on AG News's headerless CSV: parse errors name file and line, the GX suite,
leakage, opt-in limits, outputs on success (other formats and tasks: tests/test_datasets.py).

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
from tests.helpers import AGNEWS_RULES, charcnn_data, params_dict
from textclf.core.config import Params, params_from_dict
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.serving.text import normalize
from textclf.stages import fetch, validate


def join_title_description(title: str, description: str) -> str:
    return normalize(f"{title} {description}", AGNEWS_RULES)


Rows = list[tuple[str, str, str]]


def make_params(**validate_overrides: Any) -> Params:
    # The synthetic test split has 60 rows, under the real-data default of 100.
    return params_from_dict(params_dict(data=charcnn_data("corpus"),
                                        validate={"min_rows": 20, **validate_overrides}))


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
    assert list(frame.columns) == ["text", "label"]
    assert frame["label"].dtype == "int64" and sorted(frame["label"].unique()) == [0, 1, 2, 3]
    # Same order as the CSV; label i is the i-th mapped name; text is the normalised join of
    # title and description.
    assert frame["label"].tolist() == [int(c) - 1 for c, _, _ in train]
    assert frame["text"].iloc[0] == join_title_description(train[0][1], train[0][2])
    assert json.loads((out / "dataset.json").read_text()) == {
        "task": "multiclass", "label_names": LABEL_NAMES, "normalize": AGNEWS_RULES,
        "input_fields": {"text": ["title", "description"], "text_pair": []}}

    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] is True
    assert metrics["expectations_evaluated"] == metrics["expectations_passed"] >= 10
    assert metrics["leakage_rows_dropped"] == 0 and metrics["leakage_share"] == 0
    assert metrics["train"]["rows"] == 240 and metrics["test"]["rows"] == 60
    assert metrics["train"]["class_counts"] == dict.fromkeys(LABEL_NAMES, 60)
    assert metrics["test"]["class_ratio"] == 1.0
    chars = metrics["train"]["text_chars"]
    assert 10 <= chars["min"] <= chars["median"] <= chars["p95"] <= chars["max"] <= 5000


def test_crlf_blank_lines_and_multiline_fields_pass(project: Path) -> None:
    raw = write_raw(project)
    text = (raw / "train.csv").read_text()
    lines = text.splitlines()
    lines[1] = '"2","A title with a\nline break","and a long enough description"'
    (raw / "train.csv").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    validate.run(make_params(), Paths(project))
    assert len(pd.read_parquet(project / "data" / "validated" / "train.parquet")) == 240


def test_length_and_balance_limits_are_opt_in(project: Path) -> None:
    rows = synthetic_rows(60, 0)
    rows[5] = ("1", "t", "x" * 6000)  # a long article: truncated at tokenize, not rejected
    rows = [row for row in rows if row[0] != "1"] + [row for row in rows if row[0] == "1"][:20]
    write_raw(project, train=rows)
    validate.run(make_params(), Paths(project))
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["train"]["text_chars"]["max"] >= 6000
    assert metrics["train"]["class_ratio"] == 3.0
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(max_text_chars=5000), Paths(project))
    assert "expect_column_value_lengths_to_be_between" in str(info.value)
    assert "validate.max_text_chars" in str(info.value) and "'t xxx" in str(info.value)


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
                    ["line 7", "2 field(s)", "names 3 (class, title, description)",
                     "only a title"]),
    "label_5": (replace_line(3, b'"5","Some title","some description text"'),
                ["expect_column_values_to_be_in_set", "`class`", "line 3: '5'",
                 "data.details.label_names"]),
    "label_0": (replace_line(3, b'"0","Some title","some description text"'),
                ["expect_column_values_to_be_in_set", "line 3: '0'"]),
    "label_text": (replace_line(3, b'"World","Some title","some description text"'),
                   ["expect_column_values_to_be_in_set", "line 3: 'World'"]),
    "blank_text": (replace_line(4, b'"1","  ",""'),
                   ["expect_column_value_lengths_to_be_between", "`text`", "line 4: ''",
                    "validate.min_text_chars"]),
    "bom": (lambda data: b"\xef\xbb\xbf" + data, ["UTF-8 with a byte-order mark", "sed"]),
    "utf16": (lambda data: data.decode().encode("utf-16"), ["UTF-16", "iconv"]),
    "nul_byte": (replace_line(8, b'"2","nul \x00 here","desc"'), ["line 8", "NUL"]),
    "invalid_utf8": (replace_line(9, b'"2","caf\xe9 latin-1","desc"'),
                     ["line 9", "not valid UTF-8", "byte offset"]),
    "header_in_middle": (insert_line(10, b'"class","title","description"'),
                         ["line 10", "header"]),
    "header_first": (insert_line(1, b'"Class Index","Title","Description"'),
                     ["line 1", "header"]),
    "wrong_delimiter": (lambda data: data.replace(b'","', b'";"'),
                        ["line 1", "';'", "delimiter"]),
    "mixed_delimiters": (replace_line(12, b'2;Some title;some description text'),
                         ["line 12", "1 field(s)", "mixed delimiters"]),
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
    with pytest.raises(TextclfError, match="line 6: '9'"):
        validate.run(make_params(), Paths(project))


def test_missing_file(project: Path) -> None:
    (write_raw(project) / "test.csv").unlink()
    with pytest.raises(TextclfError, match=r"test\.<ext> not found.*textclf fetch"):
        validate.run(make_params(), Paths(project))
    assert_no_outputs(project)


def test_a_named_class_without_training_rows_fails(project: Path) -> None:
    write_raw(project, train=[row for row in synthetic_rows(60, 0) if row[0] != "4"])
    with pytest.raises(TextclfError) as info:
        validate.run(make_params(), Paths(project))
    message = str(info.value)
    assert "train.csv" in message and "values with no rows: ['4']" in message
    assert_no_outputs(project)


def test_a_test_label_never_seen_in_training_fails(project: Path) -> None:
    params = make_params()
    data = params_dict(data=charcnn_data("corpus"))["data"]
    data["details"]["label_names"] = None  # labels from the data: "1".."4" as seen in train
    write_raw(project, train=[row for row in synthetic_rows(60, 0) if row[0] != "4"])
    with pytest.raises(TextclfError) as info:
        validate.run(params_from_dict(params_dict(data=data, validate={"min_rows": 20})),
                     Paths(project))
    message = str(info.value)
    assert "test.csv" in message and "never seen in training" in message and "'4'" in message
    assert params.data.source_details().label_names["4"] == "Sci/Tech"
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
    assert "line 1: '7'" in message


@pytest.mark.slow
def test_real_data_fetch_and_validate(project: Path) -> None:
    if not (SHARED_DATA / "train.csv").exists():
        pytest.skip(f"real AG News data not found at {SHARED_DATA}")
    raw = params_dict()
    # The preset, pins included, with its source given absolutely.
    raw["data"]["source"] = raw["data"]["details"]["for_source"] = str(SHARED_DATA)
    params = params_from_dict(raw)
    fetch.run(params, Paths(project))
    summary = validate.run(params, Paths(project))
    assert summary["test_rows"] == 3800
    # Leakage counted independently: cleaned train texts that also occur among the test texts.
    texts = {split: validate.model_table(project / "data" / "raw" / f"{split}.csv",
                                         params.data,
                                         lambda t: normalize(t, AGNEWS_RULES))["text"]
             for split in ("train", "test")}
    assert summary["leakage_rows_dropped"] == int(texts["train"].isin(set(texts["test"])).sum())
    assert summary["train_rows"] == 20000 - summary["leakage_rows_dropped"]
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] and metrics["train"]["class_ratio"] <= 1.01
