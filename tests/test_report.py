"""`textclf report`: the pull-request markdown, in a throw-away git repo with two commits.

The repo holds this project's real dvc.yaml and params.yaml, and metrics/plots files written by
hand at the paths dvc.yaml declares, so the tests run the real `dvc metrics/params/plots diff`
without running the pipeline. Those are marked slow (each report runs dvc three times, ~1 s each);
the rendering tests at the end are plain unit tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import PROJECT_ROOT
from textclf import report
from textclf.cli import app

GIT = ["git", "-c", "user.name=textclf tests", "-c", "user.email=tests@textclf.invalid"]
LABELS = ["Business", "Sports"]


def _run(root: Path, *args: str) -> None:
    subprocess.run(args, cwd=root, check=True, capture_output=True, text=True)


def _write_results(root: Path, accuracy: float, val_acc: list[float], wrong: int) -> None:
    """The evaluate/train outputs dvc.yaml declares, with the given figures."""
    plots = root / "metrics" / "eval" / "plots" / "sklearn"
    plots.mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval.json").write_text(
        json.dumps({"model": {"accuracy": accuracy}, "baseline": {"accuracy": 0.5}}))
    confusion = [{"actual": a, "predicted": a} for a in LABELS for _ in range(5)]
    confusion += [{"actual": "Business", "predicted": "Sports"}] * wrong
    (plots / "confusion_matrix.json").write_text(json.dumps(confusion))
    curves = root / "metrics" / "train" / "plots" / "metrics" / "val"
    curves.mkdir(parents=True, exist_ok=True)
    (curves / "acc.tsv").write_text(
        "step\tacc\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(val_acc)))


@pytest.fixture(scope="module")
def main_report(two_commits: Path) -> str:
    return report.run("main", root=two_commits)


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: lr 1e-3, accuracy 0.8125; branch `change` checked out: lr 3e-4, accuracy 0.9375."""
    root = tmp_path_factory.mktemp("report_repo")
    _run(root, "git", "init", "-q", "-b", "main")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    _write_results(root, 0.8125, [0.5, 0.75], wrong=3)
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-q", "-m", "base")

    _run(root, "git", "checkout", "-q", "-b", "change")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 3e-4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _write_results(root, 0.9375, [0.5, 0.875, 0.9375], wrong=1)
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-q", "-m", "lower lr")
    return root


@pytest.mark.slow
def test_report_holds_metrics_params_and_plot_diffs(main_report: str) -> None:
    text = main_report
    assert text.startswith(report.MARKER)
    # dvc metrics diff --md: both values and the change, on one row.
    row = next(line for line in text.splitlines() if "model.accuracy" in line)
    assert "0.8125" in row and "0.9375" in row and "0.125" in row
    assert "baseline.accuracy" not in text  # unchanged metrics are left out
    # dvc params diff --md
    row = next(line for line in text.splitlines() if "train.lr" in line)
    assert "0.001" in row and "0.0003" in row
    # The validation-accuracy curve, a column per revision (main first), "—" where a run ended.
    assert "metrics/train/plots/metrics/val/acc.tsv" in text
    assert "| step | `main` | `workspace` |" in text
    assert "| 1 | 0.75 | 0.875 |" in text
    assert "| 2 | — | 0.9375 |" in text
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


@pytest.mark.slow
def test_unknown_revision_is_a_clear_error(two_commits: Path, monkeypatch) -> None:
    monkeypatch.chdir(two_commits)
    result = CliRunner().invoke(app, ["report", "--rev", "no-such-branch"])
    assert result.exit_code == 1
    assert "unknown git revision 'no-such-branch'" in result.stderr
    assert "Traceback" not in result.output


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
