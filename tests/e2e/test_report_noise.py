"""`textclf report`'s headline on real runs: it marks a real change (a model trained on half the
rows) as beyond noise, and a same-params re-run as within it.

AG News, a fifth of it (4,000 train, 760 test rows) and a small model, in a throw-away git copy
of the repo. Half the rows: with `train.refit` off the model trains on 1 - `tokenize.val_fraction`
of the train split, so 0.1 → 0.55 halves its training rows (and the baseline's) while the test
rows stay the same ones. (`validate.fraction` would not do: it subsamples the test split too.)
On the CPU a same-params re-run is bit-identical (seeded), so its change is exactly 0.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import SHARED_DATA
from tests.e2e.test_pipeline import stages_ran

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/agnews")]

SIZED = {
    "validate": {"fraction": 0.2},
    "tokenize": {"max_length": 64, "teacher_folds": 2},
    "model": {"d_model": 64, "n_layers": 1, "n_heads": 2, "d_ff": 128},
    # Two epochs: on half the rows that is also half the steps, so the gap is wide (0.86 → 0.79
    # when sized: interval about -0.09 to -0.04), where three left it at the edge of noise (-0.02).
    "train": {"epochs": 2, "refit": False, "device": "cpu"},
    "parity": {"latency_runs": 3},
}


def headline(text: str) -> dict[str, list[str]]:
    """The headline table's rows by their first cell: before, after, change, interval, p,
    verdict."""
    rows = {}
    for line in text.split("<details>")[0].splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if line.startswith("| ") and cells[0] not in ("compared", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_report_tells_a_real_change_from_a_rerun(make_repo) -> None:
    repo = make_repo(**SIZED)
    assert stages_ran(repo.run("dvc", "repro", "evaluate").stdout) >= {"train", "evaluate"}
    repo.commit("base run")

    # The same params, trained and evaluated again: whatever moved is noise.
    assert stages_ran(repo.run("dvc", "repro", "-f", "-s", "train").stdout) == {"train"}
    assert stages_ran(repo.run("dvc", "repro", "-f", "-s", "evaluate").stdout) == {"evaluate"}
    rerun = repo.run("textclf", "report", "--rev", "main").stdout
    print(rerun.split("<details>")[0])  # the intervals, in the log of a run with -s
    against_main = headline(rerun)["model: `main` → workspace"]
    assert against_main[-1] == "**within noise**"
    assert re.search(r"Paired on (\d[\d,]*) of \1 test rows\.", rerun)

    # The model (and its baseline) on half the training rows, the same test rows.
    repo.update_params(tokenize={"val_fraction": 0.55})
    assert stages_ran(repo.run("dvc", "repro", "evaluate").stdout) >= {"tokenize", "train",
                                                                        "evaluate"}
    half = repo.run("textclf", "report", "--rev", "main").stdout
    print(half.split("<details>")[0])
    # before, after, change, interval, McNemar p, verdict (which needs p < 0.05 too)
    before, after, _, interval, _, verdict = headline(half)["model: `main` → workspace"]
    assert float(after) < float(before)
    assert float(interval.split(" to ")[1]) < 0 and verdict == "**beyond noise (worse)**"
    assert re.search(r"Paired on (\d[\d,]*) of \1 test rows\.", half)
    # The details are still there, folded: the param that changed is one of them.
    assert "<details><summary>Params that changed" in half and "tokenize.val_fraction" in half
