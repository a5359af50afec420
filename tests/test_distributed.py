"""Data-parallel training (train.nproc, textclf train --nnodes): the same steps as one process,
one writer, resume, two "nodes" over loopback, and bounded, one-paragraph failures.

The multi-process tests start real workers through torchrun's launcher (gloo on this CPU).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import (
    charcnn_data,
    copy_tokens,
    free_ports,
    params_dict,
    small_params,
    write_validated,
)
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.bundle import load_bundle
from textclf.modeling.distributed import Nodes, World
from textclf.stages import tokenize, train

# Same batches, same seed; the processes' shares of a batch are summed in another order than one
# process sums its rows, and Adam's normalised update turns last-bit gradient differences on
# near-zero gradients into small weight differences: allowed up to 1% of one step (lr 3e-3),
# where another batch size moves the weights by whole steps (checked below).
WEIGHT_TOLERANCE = 0.01 * 3e-3
# No dropout of either kind: with it, each process draws its own masks (its own RNG stream).
EXACT = {"model": {"dropout": 0.0},
         "train": {"token_dropout": 0.0, "epochs": 2, "refit": False, "batch_size": 16}}
SHARED_SECONDS = 120  # bound on a failed distributed run: it must stop, not hang


def _sections(**train_overrides: object) -> dict[str, dict]:
    return {"model": EXACT["model"], "train": {**EXACT["train"], **train_overrides}}


@pytest.fixture
def project(tmp_path: Path, corpus_dir: Path, monkeypatch) -> Path:
    """data/tokens of the synthetic corpus and a params.yaml for the CLI, in tmp_path/project."""
    root = tmp_path / "project"
    write_validated(root, corpus_dir)
    tokenize.run(small_params(), Paths(root))
    monkeypatch.chdir(root)  # dvclive looks for a DVC repo from the cwd: not this checkout
    return root


def _write_params(root: Path, **train_overrides: object) -> None:
    sections = _sections(**train_overrides)
    raw = params_dict(data=charcnn_data(root / "unused"), tokenize={"max_length": 48},
                      model={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
                             **sections["model"]},
                      train={"lr": 3e-3, "precision": "fp32", "device": "cpu",
                             **sections["train"]})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_bundle(root / "models" / "model.pt").model.state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _cli_train(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "textclf.cli", "train", *args], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _worker_pids(launcher_pid: int) -> list[int]:
    """The worker processes the launcher spawned (multiprocessing children), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        parent = int(status.split("PPid:")[1].split()[0])
        if parent == launcher_pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


def test_world_shares_batches_by_stride_and_alone_is_rank_0(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    alone = World.from_env()
    assert (alone.rank, alone.size, alone.writer, alone.launched) == (0, 1, True, False)
    rows = torch.arange(7).numpy()
    shares = [World(rank=r, size=3).share(rows).tolist() for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    under_torchrun = World.from_env()
    assert (under_torchrun.rank, under_torchrun.writer, under_torchrun.launched) == (1, False, True)


def test_more_processes_than_cores_is_refused_before_starting(project) -> None:
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(TextclfError, match=rf"train.nproc is {cores + 1} .* at most {cores}"):
        train.run(small_params(train={"nproc": cores + 1}), Paths(project))
    assert not (project / "models" / "model.pt").exists()


def test_a_batch_smaller_than_the_processes_is_refused_before_starting(project) -> None:
    with pytest.raises(TextclfError, match=r"train.batch_size \(1\) is the batch all 2 proc"):
        train.run(small_params(train={"nproc": 2, "batch_size": 1}), Paths(project))


def test_nodes_need_an_endpoint(project) -> None:
    done = subprocess.run([sys.executable, "-m", "textclf.cli", "train", "--nnodes", "2"],
                          cwd=project, capture_output=True, text=True)
    assert done.returncode == 1
    assert "--rdzv-endpoint HOST:PORT" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(project, tmp_path) -> None:
    """2 processes x half of each batch = 1 process x the whole batch (same averaged gradient)."""
    alone = copy_tokens(project, tmp_path / "alone")
    other_batches = copy_tokens(project, tmp_path / "other_batches")
    train.run(small_params(**_sections(nproc=1)), Paths(alone))
    train.run(small_params(**_sections(nproc=1, batch_size=8)), Paths(other_batches))
    summary = train.run(small_params(**_sections(nproc=2)), Paths(project))

    assert summary["epochs_run"] == 2
    assert _max_difference(_weights(alone), _weights(project)) < WEIGHT_TOLERANCE
    assert _max_difference(_weights(alone), _weights(other_batches)) > 30 * WEIGHT_TOLERANCE
    runtime = json.loads((project / "metrics" / "runtime" / "train.json").read_text())
    assert runtime["processes"] == 2
    assert load_bundle(project / "models" / "model.pt").train_config["processes"] == 2
    # The metrics rank 0 logs are the whole batch's: in line with the lone run's.
    a, b = (json.loads((root / "metrics" / "train" / "metrics.json").read_text())
            for root in (alone, project))
    assert abs(a["best/val_loss"] - b["best/val_loss"]) < 1e-4
    assert abs(a["best/train_loss"] - b["best/train_loss"]) < 1e-4
    assert a["best/val_acc"] == b["best/val_acc"]


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_a_rerun_resumes_identically(project, tmp_path) -> None:
    reference = copy_tokens(project, tmp_path / "reference")
    # Many short epochs: the kill lands mid-run; token dropout: per-rank RNG must resume too.
    config = {"nproc": 2, "epochs": 30, "token_dropout": 0.1}
    train.run(small_params(**_sections(**config)), Paths(reference))
    _write_params(project, **config)

    launcher = _cli_train(project)
    checkpoint = project / "models" / "checkpoint" / "last.pt"
    deadline = time.monotonic() + SHARED_SECONDS
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _worker_pids(launcher.pid)
    assert checkpoint.exists() and len(workers) == 2
    killed_at = time.monotonic()
    os.kill(workers[-1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=SHARED_SECONDS)

    assert launcher.returncode == 1
    assert time.monotonic() - killed_at < 60
    assert re.search(r"rank [01] \(pid \d+\) on this machine was killed by SIGKILL", stderr)
    lines = stderr.strip().splitlines()  # the epoch lines before the kill, then one paragraph
    assert lines[-1].startswith("textclf: error: train: rank"), stderr
    assert all(line.startswith("epoch ") for line in lines[:-1]), stderr
    assert not (project / "models" / "model.pt").exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)

    rerun = _cli_train(project)
    stdout, stderr = rerun.communicate(timeout=SHARED_SECONDS)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["resumed"] is True
    assert _max_difference(_weights(reference), _weights(project)) == 0


@pytest.mark.slow
def test_two_nodes_over_loopback_train_one_model(project, tmp_path) -> None:
    """Two `textclf train --nnodes 2` (one process each), as on two machines; node 0 writes."""
    node1 = copy_tokens(project, tmp_path / "node1")
    standalone = copy_tokens(project, tmp_path / "standalone")
    train.run(small_params(**_sections(nproc=2)), Paths(standalone))
    port = str(free_ports(1)[0])
    for root in (project, node1):
        _write_params(root, nproc=1)
    nodes = [_cli_train(root, "--nnodes", "2", "--node-rank", str(rank),
                        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "60")
             for rank, root in enumerate((project, node1))]
    outputs = [node.communicate(timeout=SHARED_SECONDS) for node in nodes]

    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert json.loads(outputs[1][0].splitlines()[-1]) == {"node_rank": 1, "nnodes": 2}
    assert not (node1 / "models" / "model.pt").exists()  # rank 0 is the only writer
    # Same steps as two processes on one machine (thread counts differ: 2 each here, 1 there).
    assert _max_difference(_weights(standalone), _weights(project)) < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_an_unreachable_rendezvous_fails_within_its_timeout(project) -> None:
    _write_params(project, nproc=1)
    started = time.monotonic()
    node = _cli_train(project, "--nnodes", "2", "--node-rank", "1",
                      "--rdzv-endpoint", f"127.0.0.1:{free_ports(1)[0]}", "--rdzv-timeout", "5")
    _, stderr = node.communicate(timeout=SHARED_SECONDS)
    assert node.returncode == 1
    assert time.monotonic() - started < 60
    assert "could not meet" in stderr and "rendezvous endpoint 127.0.0.1:" in stderr
    assert "Traceback" not in stderr
    assert not (project / "models" / "model.pt").exists()


def test_nodes_dataclass_defaults_to_one_machine() -> None:
    assert Nodes() == Nodes(count=1, rank=0, endpoint="", timeout_s=120)
