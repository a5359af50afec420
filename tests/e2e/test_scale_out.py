"""Scaling out through DVC as users type it: a sweep through the queue with the default params
(the data reaches each queued copy of the repo through DVC: data/shared/*.dvc), its results equal
to the same settings run in the workspace, the best shared through a git remote + the DVC remote
to a teammate's clone; and the train stage in two data-parallel processes (train.nproc)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA
from tests.e2e.conftest import Repo
from tests.e2e.test_pipeline import stages_ran

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")]

# The default preset (AG News, from data/shared/agnews) on 5% of its rows with a tiny model.
QUICK = {"validate": {"fraction": 0.05, "min_rows": 50},
         "tokenize": {"teacher_folds": 2},
         "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
         "train": {"epochs": 1},
         "parity": {"latency_runs": 3}}
SWEEP = ("1e-3", "3e-3")


def experiments(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> {"lr", "eval"} for each experiment in `dvc exp show --json`."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "lr": data["params"]["params.yaml"]["data"]["train"]["lr"],
                    "eval": data["metrics"]["metrics/eval.json"]["data"],
                    "status": data.get("status"),
                }
    return found


def wait_for_queue(repo: Repo, timeout: float = 1200) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = repo.run("dvc", "queue", "status").stdout
        if not any(word in status for word in ("Running", "Queued")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def test_a_queued_sweep_equals_workspace_runs_and_travels_to_a_teammate(make_repo,
                                                                        tmp_path: Path) -> None:
    repo = make_repo(**QUICK)
    queued = repo.run("dvc", "exp", "run", "--queue", "-S", f"train.lr={','.join(SWEEP)}")
    assert queued.stdout.count("Queued experiment") == len(SWEEP)
    repo.run("dvc", "queue", "start", "-j", "2")
    status = wait_for_queue(repo)
    assert status.count("Success") == len(SWEEP), status

    found = experiments(json.loads(repo.run("dvc", "exp", "show", "--json").stdout))
    by_lr = {float(exp["lr"]): name for name, exp in found.items()}
    assert set(by_lr) == {float(lr) for lr in SWEEP}
    for name in by_lr.values():  # each queued copy trained: nothing came from the run-cache
        assert "Running stage 'train'" in repo.run("dvc", "queue", "logs", name).stdout

    # The same settings in the workspace, every stage forced to run (no run-cache restore).
    lr = float(SWEEP[-1])
    workspace = repo.run("dvc", "exp", "run", "--force", "-S", f"train.lr={SWEEP[-1]}")
    assert {"fetch", "train", "parity"} <= stages_ran(workspace.stdout)
    evaluated = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert found[by_lr[lr]]["eval"] == evaluated

    # Share the best one: git refs to a bare remote, its DVC outputs to the DVC remote.
    best = max(found, key=lambda name: found[name]["eval"]["model"]["accuracy"])
    remote = tmp_path / "remote.git"
    repo.run("git", "init", "-q", "--bare", "-b", "main", str(remote))
    repo.git("remote", "add", "origin", str(remote))
    repo.git("push", "-q", "origin", "main")
    repo.run("dvc", "exp", "push", "origin", best)

    teammate = Repo(tmp_path / "teammate")
    repo.run("git", "clone", "-q", str(remote), str(teammate.root))
    teammate.run("dvc", "exp", "pull", "origin", best)
    teammate.run("dvc", "exp", "apply", best)
    teammate.run("dvc", "pull", "models/model.onnx")
    assert json.loads((teammate.root / "metrics" / "eval.json").read_text()) == found[best]["eval"]
    predicted = teammate.run("textclf", "predict", "Stocks rally as the central bank holds rates")
    assert json.loads(predicted.stdout)["label"] in {"World", "Sports", "Business", "Sci/Tech"}


def test_the_train_stage_in_two_processes_matches_one(make_repo) -> None:
    """`dvc exp run -S train.nproc=2` on AG News rows: the metrics of the same run in one process
    (dropout off, so both take the same steps up to float summation order)."""
    repo = make_repo(**QUICK)
    same_steps = ["-S", "model.dropout=0", "-S", "train.token_dropout=0"]
    repo.run("dvc", "exp", "run", "-S", "train.nproc=1", *same_steps)
    one = {name: json.loads((repo.root / "metrics" / name).read_text())
           for name in ("eval.json", "train/metrics.json")}
    two_procs = repo.run("dvc", "exp", "run", "-S", "train.nproc=2", *same_steps)
    assert stages_ran(two_procs.stdout) == {"train", "evaluate", "export", "parity"}
    two = {name: json.loads((repo.root / "metrics" / name).read_text())
           for name in ("eval.json", "train/metrics.json")}
    runtime = json.loads((repo.root / "metrics" / "runtime" / "train.json").read_text())
    assert runtime["processes"] == 2
    accuracy_one, accuracy_two = (m["eval.json"]["model"]["accuracy"] for m in (one, two))
    assert abs(accuracy_one - accuracy_two) <= 0.01
    loss_one, loss_two = (m["train/metrics.json"]["best/train_loss"] for m in (one, two))
    assert abs(loss_one - loss_two) <= 1e-3 * loss_one
