"""`textclf report`: the pull-request markdown, in a throw-away git repo with two commits.

The repo holds this project's real dvc.yaml and params.yaml, and metrics/plots/predictions files
written by hand at the paths dvc.yaml declares, so the tests run the real `dvc metrics/params/
plots diff` without running the pipeline. Those are marked slow (each report runs dvc three
times, ~1 s each); the headline's statistics and the rendering are tested on synthetic
predictions by plain unit tests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import PROJECT_ROOT
from textclf import report, significance
from textclf.cli import app
from textclf.core.errors import TextclfError

GIT = ["git", "-c", "user.name=textclf tests", "-c", "user.email=tests@textclf.invalid"]
LABELS = ["Business", "Sports"]
TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def key(i: int) -> str:
    return hashlib.sha256(f"text {i}".encode()).hexdigest()[:12]


def predictions(model_right: Sequence[bool], baseline_right: Sequence[bool] | None = None,
                names: Sequence[str] = TOPICS, keys: Sequence[str] | None = None) -> dict:
    """A single-label predictions file: row i is labelled i mod k; a wrong answer is the next
    label."""
    n, k = len(model_right), len(names)
    baseline_right = model_right if baseline_right is None else baseline_right
    keys = keys or [key(i) for i in range(n)]
    rows = [[keys[i], i % k, i % k if model_right[i] else (i + 1) % k,
             i % k if baseline_right[i] else (i + 1) % k] for i in range(n)]
    return {"format": 1, "task": "multiclass", "headline": "accuracy",
            "label_names": list(names), "columns": ["key", "actual", "model", "baseline"],
            "rows": rows}


def parsed(data: dict, source: str = "predictions.json") -> report.Predictions:
    return significance.read_predictions(json.dumps(data), source)


def hits(n: int, right: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of which a random ``right`` are right."""
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).choice(n, right, replace=False)] = True
    return out


def table_row(text: str, starts: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {starts}"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def against_main(text: str) -> list[str]:
    """compared, before, after, change, interval, McNemar p, verdict."""
    return table_row(text, "model: `main` → workspace")


def _run(root: Path, *args: str) -> None:
    subprocess.run(args, cwd=root, check=True, capture_output=True, text=True)


def _write_results(root: Path, accuracy: float, val_acc: list[float], wrong: int,
                   val_loss: bool = False) -> None:
    """The evaluate/train outputs dvc.yaml declares, with the given figures."""
    plots = root / "metrics" / "eval" / "plots" / "sklearn"
    plots.mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval.json").write_text(
        json.dumps({"model": {"accuracy": accuracy}, "baseline": {"accuracy": 0.5}}))
    confusion = [{"actual": a, "predicted": a} for a in LABELS for _ in range(5)]
    confusion += [{"actual": "Business", "predicted": "Sports"}] * wrong
    (plots / "confusion_matrix.json").write_text(json.dumps(confusion))
    curves = root / "metrics" / "train" / "plots" / "metrics"
    (curves / "val").mkdir(parents=True, exist_ok=True)
    (curves / "train").mkdir(parents=True, exist_ok=True)
    (curves / "val" / "acc.tsv").write_text(
        "step\tacc\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(val_acc)))
    (curves / "train" / "loss.tsv").write_text("step\tloss\n0\t2.0\n1\t1.0\n")
    if val_loss:  # two files on one plot (dvc.yaml's top-level `loss`)
        (curves / "val" / "loss.tsv").write_text("step\tloss\n1\t1.5\n")
    # 400 test rows, the model right on accuracy * 400 of them, the baseline on half.
    right = round(accuracy * 400)
    (root / "metrics" / "eval" / "predictions.json").write_text(json.dumps(
        predictions([i < right for i in range(400)], [i % 2 == 0 for i in range(400)], LABELS)))


@pytest.fixture(scope="module")
def main_report(two_commits: Path) -> str:
    return report.run("main", root=two_commits)


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: lr 1e-3, accuracy 0.8125; branch `change` checked out: lr 3e-4, accuracy 0.9375.
    Tag `old`, before main, has no predictions file (as a commit from before evaluate wrote it).
    """
    root = tmp_path_factory.mktemp("report_repo")
    _run(root, "git", "init", "-q", "-b", "main")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    _write_results(root, 0.8125, [0.5, 0.75], wrong=3)
    (root / "metrics" / "eval" / "predictions.json").unlink()
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-q", "-m", "before predictions")
    _run(root, "git", "tag", "old")
    _write_results(root, 0.8125, [0.5, 0.75], wrong=3)
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-q", "-m", "base")

    _run(root, "git", "checkout", "-q", "-b", "change")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 3e-4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _write_results(root, 0.9375, [0.5, 0.875, 0.9375], wrong=1, val_loss=True)
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-q", "-m", "lower lr")
    return root


@pytest.mark.slow
def test_report_puts_the_headline_first_and_folds_the_details(main_report: str) -> None:
    text = main_report
    lines = text.splitlines()
    assert lines[0] == report.MARKER
    assert lines[2].startswith("## textclf pipeline report: `main` (")
    assert lines[4] == "### Headline: accuracy on the test split"
    order = [text.index(part) for part in (
        "### Headline", "<details><summary>Metrics that changed (1)</summary>",
        "<details><summary>Params that changed (1)</summary>", "<details><summary>Plots (")]
    assert order == sorted(order)
    assert text.count("<details>") == text.count("</details>") == 3

    # 325 → 375 of 400 rows right, every change a gain: beyond noise, by both tests.
    _, before, after, change, _, p_value, verdict = against_main(text)
    assert (before, after, change) == ("0.8125", "0.9375", "+0.1250")
    assert p_value == "< 0.0001" and verdict == "**beyond noise (better)**"
    assert "Paired on 400 of 400 test rows." in text
    baseline = table_row(text, "workspace: TF-IDF baseline → model")
    assert baseline[1:3] == ["0.5000", "0.9375"] and baseline[-1] == "**beyond noise (better)**"


@pytest.mark.slow
def test_report_details_hold_metrics_params_and_plot_diffs(main_report: str) -> None:
    text = main_report
    # dvc metrics diff --md: both values and the change, on one row.
    row = next(line for line in text.splitlines() if "model.accuracy" in line)
    assert "0.8125" in row and "0.9375" in row and "0.125" in row
    assert "baseline.accuracy" not in text  # unchanged metrics are left out
    # dvc params diff --md
    row = next(line for line in text.splitlines() if "train.lr" in line)
    assert "0.001" in row and "0.0003" in row
    # The validation-accuracy curve, a column per revision (main first), "—" where a run ended.
    assert "**validation_score**: acc by step" in text
    assert "| step | `main` | `workspace` |" in text
    assert "| 1 | 0.75 | 0.875 |" in text
    assert "| 2 | — | 0.9375 |" in text
    # Two files on one plot: a column per file and revision.
    assert ("| step | train/loss.tsv `main` | train/loss.tsv `workspace` "
            "| val/loss.tsv `workspace` |") in text
    assert "| 1 | 1 | 1 | 1.5 |" in text
    # The confusion matrix: counts, "before → after" where they changed.
    assert "metrics/eval/plots/sklearn/confusion_matrix.json" in text
    assert "| Business | 5 | 3 → 1 |" in text
    assert "| Sports | 0 | 5 |" in text


@pytest.mark.slow
def test_cli_prints_and_writes_the_same_report(two_commits: Path, main_report: str,
                                               monkeypatch) -> None:
    monkeypatch.chdir(two_commits)
    out = two_commits.parent / "report.md"
    result = CliRunner().invoke(app, ["report", "--rev", "main", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == out.read_text() == main_report


@pytest.mark.slow
def test_nothing_changed_is_said_in_words(two_commits: Path) -> None:
    text = report.run("change", root=two_commits)
    assert "No metric changed." in text and "No param changed." in text
    assert against_main(text.replace("`change`", "`main`"))[-1] == "**within noise**"


@pytest.mark.slow
def test_a_base_without_predictions_gets_no_verdict(two_commits: Path) -> None:
    text = report.run("old", root=two_commits)
    assert "`old` has no metrics/eval/predictions.json" in text
    assert "model: `old`" not in text
    # The workspace's own comparison with its baseline still stands.
    assert table_row(text, "workspace: TF-IDF baseline → model")[-1] == "**beyond noise (better)**"


@pytest.mark.slow
def test_unknown_revision_is_a_clear_error(two_commits: Path, monkeypatch) -> None:
    monkeypatch.chdir(two_commits)
    result = CliRunner().invoke(app, ["report", "--rev", "no-such-branch"])
    assert result.exit_code == 1
    assert "unknown git revision 'no-such-branch'" in result.stderr
    assert "Traceback" not in result.output


# --- The headline on synthetic predictions. ---


def test_identical_predictions_are_within_noise() -> None:
    same = parsed(predictions(hits(1000, 800)))
    text = report.headline_section(same, same, "main")
    _, before, after, change, interval, p_value, verdict = against_main(text)
    assert (before, after, change, interval) == ("0.8000", "0.8000", "+0.0000",
                                                 "+0.0000 to +0.0000")
    assert p_value == "1" and verdict == "**within noise**"
    assert text == report.headline_section(same, same, "main")  # a fixed seed: the same report


@pytest.mark.parametrize(("base_right", "work_right", "verdict"),
                         [(700, 900, "better"), (900, 700, "worse")])
def test_a_model_right_on_many_more_rows_is_beyond_noise(base_right: int, work_right: int,
                                                          verdict: str) -> None:
    base = parsed(predictions(hits(1000, base_right, seed=1)))
    work = parsed(predictions(hits(1000, work_right, seed=2)))
    _, before, after, _, interval, p_value, shown = against_main(
        report.headline_section(base, work, "main"))
    assert (before, after) == (f"{base_right / 1000:.4f}", f"{work_right / 1000:.4f}")
    low, high = (float(bound) for bound in interval.split(" to "))
    assert low < (work_right - base_right) / 1000 < high and (low > 0 or high < 0)
    assert p_value == "< 0.0001" and shown == f"**beyond noise ({verdict})**"


@pytest.mark.parametrize(("gained", "lost"), [(5, 0), (4, 3), (2, 0)])
def test_a_handful_of_changed_rows_is_within_noise(gained: int, lost: int) -> None:
    base_right = hits(1000, 800)
    work_right = base_right.copy()
    work_right[np.flatnonzero(~base_right)[:gained]] = True
    work_right[np.flatnonzero(base_right)[:lost]] = False
    text = report.headline_section(parsed(predictions(base_right)),
                                   parsed(predictions(work_right)), "main")
    assert against_main(text)[-1].startswith("**within noise**")
    change = significance.paired_change("accuracy", (np.zeros(1000), ~base_right),
                                  (np.zeros(1000), ~work_right))
    assert (change.gained, change.lost) == (gained, lost)
    if change.interval_excludes_zero:
        # 5 gains and no loss: the bootstrap alone would call it, McNemar (p = 0.06) does not,
        # and a footnote says so.
        assert against_main(text)[-1] == "**within noise** (1)"
        assert "_(1) The interval excludes 0, but only 5 rows were gained and 0 lost" in text


def test_the_model_is_compared_with_the_baseline_in_the_workspace() -> None:
    work = parsed(predictions(hits(1000, 900, seed=1), baseline_right=hits(1000, 700, seed=2)))
    text = report.headline_section(None, work, "main")
    row = table_row(text, "workspace: TF-IDF baseline → model")
    assert row[1:4] == ["0.7000", "0.9000", "+0.2000"]
    assert row[-1] == "**beyond noise (better)**"
    assert "Beyond noise when the interval excludes 0 and McNemar's exact test" in text


def multilabel(truth: np.ndarray, model: np.ndarray, baseline: np.ndarray,
               names: Sequence[str], keys: Sequence[str] | None = None) -> dict[str, Any]:
    def labels(matrix: np.ndarray) -> list[list[int]]:
        return [np.flatnonzero(row).tolist() for row in matrix]

    keys = keys or [key(i) for i in range(len(truth))]
    return {"format": 1, "task": "multilabel", "headline": "macro_f1",
            "label_names": list(names), "columns": ["key", "actual", "model", "baseline"],
            "rows": [list(row) for row in zip(keys, labels(truth), labels(model),
                                              labels(baseline), strict=True)]}


def test_multilabel_compares_macro_f1_by_label_name() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    n, names = 2000, [f"emotion {i}" for i in range(12)]
    truth = rng.random((n, 12)) < 0.15
    noisy = truth ^ (rng.random((n, 12)) < 0.10)
    better = truth ^ (rng.random((n, 12)) < 0.04)
    base = parsed(multilabel(truth, noisy, noisy, names))
    # The workspace lists its labels in another order: compared by name, it is the same data.
    order = rng.permutation(12)
    work = parsed(multilabel(truth[:, order], better[:, order], noisy[:, order],
                             [names[i] for i in order]))
    text = report.headline_section(base, work, "main")
    assert text.startswith("### Headline: macro_f1 on the test split")
    _, before, after, _, _, verdict = against_main(text)  # no McNemar column for multi-label
    assert float(before) == pytest.approx(f1_score(truth, noisy, average="macro"), abs=1e-4)
    assert float(after) == pytest.approx(f1_score(truth, better, average="macro"), abs=1e-4)
    assert verdict == "**beyond noise (better)**"
    assert "McNemar" not in text and "The label names differ" not in text

    same = report.headline_section(base, parsed(multilabel(truth, noisy, better, names)), "main")
    assert against_main(same)[-1] == "**within noise**"


def test_multilabel_macro_f1_spans_the_union_of_both_label_sets() -> None:
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]] * 10, dtype=bool)
    base = parsed(multilabel(truth[:, :2], truth[:, :2], truth[:, :2], ["a", "b"]))
    work = parsed(multilabel(truth, truth, truth, ["a", "b", "c"]))
    text = report.headline_section(base, work, "main")
    # `main` knows no "c": its F1 there is 0, its macro-F1 over a, b, c is 2/3.
    assert against_main(text)[1:3] == ["0.6667", "1.0000"]
    assert "The label names differ (`main`: a, b; workspace: a, b, c)" in text
    assert "The true labels differ on 10 shared rows" in text


def test_different_test_rows_are_paired_on_the_shared_keys() -> None:
    right = hits(1000, 800)
    base = parsed(predictions(right, keys=[key(i) for i in range(1000)]))
    # The workspace holds rows 400..1199: 600 shared, in another order, 200 new (all wrong).
    keys = [key(i) for i in range(400, 1200)][::-1]
    work_right = np.concatenate([right[400:], np.zeros(200, dtype=bool)])[::-1]
    text = report.headline_section(base, parsed(predictions(work_right, keys=keys)), "main")
    assert "Paired on 600 of 800 test rows (`main` has 1,000)" in text
    before, after, change = against_main(text)[1:4]
    assert before == after == f"{right[400:].mean():.4f}" and change == "+0.0000"


def test_a_repeated_text_pairs_occurrence_by_occurrence() -> None:
    keys = [key(i) for i in range(40)] + [key(0)]
    base = parsed(predictions([True] * 40 + [False], keys=keys))
    work = parsed(predictions([True] * 40 + [False], keys=keys))
    assert "Paired on 41 of 41 test rows." in report.headline_section(base, work, "main")


def test_too_few_shared_rows_get_no_verdict() -> None:
    base = parsed(predictions(hits(100, 80), keys=[key(i) for i in range(100)]))
    work = parsed(predictions(hits(100, 50), keys=[key(i) for i in range(80, 180)]))
    text = report.headline_section(base, work, "main")
    assert ("`main` and the workspace share only 20 of the workspace's 100 test rows (at least "
            "30 needed), so there is no verdict against it") in text
    assert "model: `main`" not in text


def test_missing_predictions_are_said_in_words() -> None:
    work = parsed(predictions(hits(100, 80)))
    text = report.headline_section(None, work, "v1.0")
    assert "`v1.0` has no metrics/eval/predictions.json" in text
    assert "model: `v1.0`" not in text
    text = report.headline_section(work, None, "main")
    assert "The workspace has no metrics/eval/predictions.json" in text and "|" not in text


def test_a_changed_task_gets_no_paired_comparison() -> None:
    truth = np.eye(4, dtype=bool)[np.arange(100) % 4]
    base = parsed(predictions(hits(100, 80)))
    work = parsed(multilabel(truth, truth, truth, TOPICS))
    text = report.headline_section(base, work, "main")
    assert "The task changed (`main`: multiclass, workspace: multilabel)" in text


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "it is not JSON"),
    ("[]", "the top level is not a JSON object"),
    ('{"format": 2}', "it is format 2; this textclf reads format 1"),
    ('{"format": 1, "task": "regression"}', "unknown task 'regression'"),
    ('{"format": 1, "task": "multilabel", "headline": "accuracy"}',
     "headline 'accuracy' for task 'multilabel'"),
    ('{"format": 1, "task": "pair", "headline": "accuracy", "label_names": ["a", "a"]}',
     "label_names is not a non-empty list of distinct strings"),
    ('{"format": 1, "task": "pair", "headline": "accuracy", "label_names": ["a", "b"], '
     '"columns": ["key", "actual", "model"], "rows": []}',
     "columns is ['key', 'actual', 'model'], not a list holding key, actual, model, baseline"),
    ('{"format": 1, "task": "pair", "headline": "accuracy", "label_names": ["a", "b"], '
     '"columns": ["key", "actual", "model", "baseline"], "rows": [["k", 0, 2, 1]]}',
     "row 1's model 2 is not a label index below 2"),
    ('{"format": 1, "task": "multilabel", "headline": "macro_f1", "label_names": ["a"], '
     '"columns": ["key", "actual", "model", "baseline"], "rows": [["k", [0], 0, []]]}',
     "row 1's model 0 is not a list of label indices below 1"),
    ('{"format": 1, "task": "pair", "headline": "accuracy", "label_names": ["a", "b"], '
     '"columns": ["key", "actual", "model", "baseline"], "rows": [["k", 0, 1]]}',
     "row 1 is not a list of 4 values"),
])
def test_a_malformed_predictions_file_is_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(TextclfError) as caught:
        significance.read_predictions(text, "main:metrics/eval/predictions.json")
    message = str(caught.value)
    assert message.startswith("cannot read main:metrics/eval/predictions.json: ")
    assert problem in message and "dvc repro evaluate" in message


def test_vectorised_macro_f1_equals_sklearn_over_many_rows_and_labels() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    truth = rng.random((5000, 28)) < 0.05
    before, after = (truth ^ (rng.random(truth.shape) < rate) for rate in (0.03, 0.01))
    change = significance.paired_change("macro_f1", (truth, before), (truth, after))
    for value, predicted in ((change.before, before), (change.after, after)):
        assert value == pytest.approx(f1_score(truth, predicted, average="macro",
                                               zero_division=0), abs=1e-6)
    assert 0 < change.low < change.delta < change.high and change.verdict.startswith("beyond")


# --- Rendering. ---


def test_dvc_rows_that_print_the_same_are_left_out() -> None:
    table = ("| Path | Metric | main | workspace | Change |\n|---|---|---|---|---|\n"
             "| metrics/parity.json | max_abs_diff | 0.0 | 0.0 | -0.0 |\n"
             "| metrics/eval.json | model.accuracy | 0.9 | 0.91 | 0.01 |\n")
    header, rows = report._changed_rows(table)
    assert len(header) == 2
    assert rows == ["| metrics/eval.json | model.accuracy | 0.9 | 0.91 | 0.01 |"]
    assert report._changed_rows("") == ([], [])


def test_long_curves_are_thinned_keeping_both_ends() -> None:
    rows = [{"step": str(i), "loss": str(1 / (i + 1)), "rev": "workspace"} for i in range(100)]
    table = report.curve_table("loss.tsv", rows, "step", "loss", ["workspace"], max_rows=5)
    body = table.splitlines()[4:]
    assert [line.split(" | ")[0] for line in body] == ["| 0", "| 25", "| 50", "| 74", "| 99"]


def test_plot_kinds_are_told_apart_by_their_values() -> None:
    def entry(rows: list[dict[str, str]], x: str, y: str) -> list[dict]:
        anchors = {"<DVC_METRIC_DATA>": rows, "<DVC_METRIC_X_LABEL>": x,
                   "<DVC_METRIC_Y_LABEL>": y}
        return [{"revisions": ["workspace", "main"], "anchor_definitions": anchors}]

    plots = {"data": {
        "curve.tsv": entry([{"step": "0", "acc": "0.5", "rev": "main"}], "step", "acc"),
        "cm.json": entry([{"actual": "A|B", "predicted": "C", "rev": "main"}], "predicted",
                         "actual"),
        "empty.csv": [],
    }}
    matrix, curve = report.render_plots(plots, "main")  # sorted by plot id
    assert "| step | `main` |\n" in curve and "| 0 | 0.5 |" in curve
    assert "_No data at `workspace`._" in curve
    assert "| A\\|B | 0 | 1 |" in matrix  # a "|" in a label is escaped, not a new cell
