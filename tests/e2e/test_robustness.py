"""`dvc repro` under abuse: a SIGKILLed run resumes to the uninterrupted result, and the same
seed on a CPU gives the same metrics and the same ONNX bytes in a fresh copy of the project.

Three copies of the project share one synthetic corpus and one set of params: `reference` (an
uninterrupted `dvc repro`, module-scoped), `rerun` (another fresh copy, for determinism) and the
killed-and-resumed copy. Every metrics and plots file must be byte-identical between them;
only metrics/runtime/ (speed, and whether the run resumed) may differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_corpus
from tests.e2e.conftest import Repo, copy_project, tool_env
from tests.e2e.test_pipeline import stages_ran
from tests.helpers import charcnn_data

pytestmark = pytest.mark.slow

# 600 rows per class (2,160 training rows) and a 2-layer model: an epoch takes 1-3 seconds
# on one core, long enough to kill the run in the middle of epoch 2. patience 0: all 4 epochs
# run, so the resumed run has epochs 2-4 left to get right.
N_PER_CLASS = 600
PARAMS: dict[str, dict[str, Any]] = {
    "tokenize": {"max_length": 64},
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128},
    "train": {"epochs": 4, "batch_size": 32, "lr": 1e-3, "patience": 0, "seed": 7,
              "device": "cpu", "precision": "fp32"},
    "validate": {"min_rows": 20},
    "parity": {"latency_runs": 5},
}
EPOCHS = PARAMS["train"]["epochs"]
# Every metrics or plots file the pipeline writes (metrics/train/plots/ is globbed).
RESULT_FILES = ["metrics/validation.json", "metrics/train/metrics.json", "metrics/eval.json",
                "metrics/eval/plots/sklearn/confusion_matrix.json",
                "metrics/eval/misclassified.csv", "metrics/parity.json"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def results(root: Path) -> dict[str, str]:
    """Every metric and plot file of a run, as text (per-epoch losses to the last digit)."""
    files = [root / name for name in RESULT_FILES]
    files += sorted((root / "metrics" / "train" / "plots").rglob("*.tsv"))
    return {path.relative_to(root).as_posix(): path.read_text() for path in files}


def model_state(root: Path) -> dict[str, Any]:
    """models/model.pt's contents: every tensor as bytes, every other field as is."""
    from textclf.modeling.bundle import safe_torch_load

    payload = safe_torch_load(root / "models" / "model.pt")
    payload["state_dict"] = {k: v.numpy().tobytes() for k, v in payload["state_dict"].items()}
    payload["vocab_raw_ids"] = payload["vocab_raw_ids"].numpy().tobytes()
    return payload


def final_training_state(root: Path) -> dict[str, Any]:
    """The last epoch's weights and optimiser moments, from models/checkpoint/last.pt."""
    from textclf.modeling.bundle import safe_torch_load

    payload = safe_torch_load(root / "models" / "checkpoint" / "last.pt")
    weights = {k: v.numpy().tobytes() for k, v in payload["model"].items()}
    moments = {(i, k): v.numpy().tobytes() for i, state in payload["optimizer"]["state"].items()
               for k, v in state.items()}
    return {"epoch": payload["epoch"], "weights": weights, "moments": moments}


def onnx_differences(a: Path, b: Path) -> list[str]:
    """What differs between two ONNX files, part by part (empty when they are equivalent)."""
    import onnx
    from onnx import numpy_helper

    ma, mb = onnx.load(a), onnx.load(b)
    diffs = [f"model.{field}" for field in ("ir_version", "producer_name", "producer_version",
                                            "domain", "model_version", "doc_string")
             if getattr(ma, field) != getattr(mb, field)]
    for name, pick in [("opset_import", lambda m: sorted((o.domain, o.version)
                                                         for o in m.opset_import)),
                       ("metadata_props", lambda m: sorted((p.key, p.value)
                                                           for p in m.metadata_props)),
                       ("functions", lambda m: [f.SerializeToString() for f in m.functions])]:
        if pick(ma) != pick(mb):
            diffs.append(name)
    ga, gb = ma.graph, mb.graph
    if len(ga.node) != len(gb.node):
        diffs.append(f"node count {len(ga.node)} != {len(gb.node)}")
    for i, (na, nb) in enumerate(zip(ga.node, gb.node, strict=False)):
        for field in ("op_type", "name", "input", "output", "attribute", "doc_string", "domain"):
            if getattr(na, field) != getattr(nb, field):
                diffs.append(f"node {i} ({na.op_type} {na.name!r}).{field}")
    inits_a = {t.name: numpy_helper.to_array(t) for t in ga.initializer}
    inits_b = {t.name: numpy_helper.to_array(t) for t in gb.initializer}
    if inits_a.keys() != inits_b.keys():
        diffs.append(f"initializer names: {sorted(inits_a.keys() ^ inits_b.keys())}")
    diffs += [f"initializer {k} values" for k in inits_a.keys() & inits_b.keys()
              if inits_a[k].tobytes() != inits_b[k].tobytes()]
    for field in ("input", "output", "value_info", "doc_string", "name"):
        if getattr(ga, field) != getattr(gb, field):
            diffs.append(f"graph.{field}")
    if not diffs and ma.SerializeToString() != mb.SerializeToString():
        diffs.append("serialized bytes (no field-level difference found)")
    return diffs


@dataclass
class Run:
    repo: Repo
    stdout: str


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One corpus for every copy: params.yaml (data.source) is then identical in all of them."""
    return make_corpus(tmp_path_factory.mktemp("robustness_corpus"), n_train=N_PER_CLASS,
                       n_test=20)


def project_params(source: Path) -> dict[str, dict[str, Any]]:
    return {"data": charcnn_data(source), **PARAMS}


def full_repro(root: Path, source: Path) -> Run:
    repo = copy_project(root, **project_params(source))
    done = repo.run("dvc", "repro")
    assert stages_ran(done.stdout) == {
        "fetch", "validate", "tokenize", "train", "evaluate", "export", "parity"}
    return Run(repo, done.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Run:
    """An uninterrupted `dvc repro` in a fresh copy of the project."""
    return full_repro(tmp_path_factory.mktemp("reference") / "repo", source)


@pytest.fixture(scope="module")
def rerun(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Run:
    """The same `dvc repro` in a second fresh copy: same seed, same data, same params.

    A fresh copy, not `dvc repro --force` in the same workspace: there train would find its
    finished checkpoint (models/checkpoint/last.pt, same fingerprint) and resume at epoch 4,
    i.e. not train at all, which proves nothing about determinism.
    """
    return full_repro(tmp_path_factory.mktemp("rerun") / "repo", source)


class Reader(threading.Thread):
    """Collects a process's merged output line by line while the test watches it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], reader: Reader,
             what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened (returncode {proc.poll()}); "
                                 f"dvc repro output:\n{reader.text()[-4000:]}")
        time.sleep(0.02)


def test_sigkilled_repro_resumes_training_and_ends_as_if_never_killed(
        make_repo: Callable[..., Repo], source: Path, reference: Run) -> None:
    repo = make_repo(**project_params(source))
    checkpoint = repo.root / "models" / "checkpoint" / "last.pt"
    # Its own process group (session), so one killpg reaches dvc, the shell it runs the stage
    # command in, and `textclf train`: everything a Ctrl-C or an OOM killer would hit.
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo.root, env=tool_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    reader = Reader(proc.stdout)
    reader.start()
    try:
        # train prints "epoch 1/4: ... N samples/s", then writes the checkpoint (atomically).
        wait_for(lambda: "epoch 1/" in reader.text(), proc, reader, "epoch 1's end")
        wait_for(checkpoint.exists, proc, reader, "epoch 1's checkpoint")
        rate = float(re.search(r"epoch 1/\d+: .* (\d+) samples/s", reader.text()).group(1))
        epoch_s = 4 * N_PER_CLASS * 0.9 / rate  # train rows / throughput: an epoch's length
        time.sleep(min(max(0.3 * epoch_s, 0.1), 5))  # about a third into epoch 2
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    reader.join(timeout=30)
    killed_output = reader.text()

    # It really died mid-epoch 2: killed by the signal, epoch 2 neither reported nor
    # checkpointed, no model written.
    assert proc.returncode == -signal.SIGKILL, killed_output[-3000:]
    assert "epoch 2/" not in killed_output, "the kill landed after epoch 2: make epochs longer"
    from textclf.modeling.bundle import safe_torch_load

    assert safe_torch_load(checkpoint)["epoch"] == 1
    assert not (repo.root / "models" / "model.pt").exists()
    # DVC's lock on the stage's paths names the dead dvc process: a stale entry is left behind
    # (.dvc/tmp/lock itself is an fcntl lock, which the kernel released with the process).
    rwlock = json.loads((repo.root / ".dvc" / "tmp" / "rwlock").read_text())
    assert str(proc.pid) in json.dumps(rwlock), rwlock

    # A user just runs `dvc repro` again: DVC sees the pid is gone, drops the stale entry with a
    # warning, skips the stages that finished, and train picks up at epoch 2.
    resumed = repo.run("dvc", "repro")
    assert "had been killed. Auto removed it from the lock file" in resumed.stdout + resumed.stderr
    assert stages_ran(resumed.stdout) == {"train", "evaluate", "export", "parity"}
    log = resumed.stdout + resumed.stderr
    assert "epoch 1/" not in log and all(f"epoch {e}/" in log for e in range(2, EPOCHS + 1))
    summary = json.loads((repo.root / "metrics" / "train" / "metrics.json").read_text())
    assert summary["epochs_run"] == EPOCHS
    runtime = json.loads((repo.root / "metrics" / "runtime" / "train.json").read_text())
    assert runtime["resumed"] is True and len(runtime["samples_per_s"]) == EPOCHS

    # Same metrics (per-epoch losses to the last bit, best epoch, eval, parity) and the same
    # weights and ONNX as the run nobody killed. The best epoch may be epoch 1, from before the
    # kill, so compare the last epoch's weights and optimiser state (the checkpoint's) too.
    assert results(repo.root) == results(reference.repo.root)
    assert model_state(repo.root) == model_state(reference.repo.root)
    assert final_training_state(repo.root) == final_training_state(reference.repo.root)
    assert md5(repo.root / "models" / "model.onnx") == md5(
        reference.repo.root / "models" / "model.onnx")
    # And the workspace is consistent again: nothing left to run, and the temporary folder the
    # killed run's dvclive was writing (metrics/.train.*.tmp) was cleared by the resumed run.
    assert stages_ran(repo.run("dvc", "repro").stdout) == set()
    leftovers = [p for folder in ("data", "models", "metrics")
                 for p in (repo.root / folder).rglob(".*.tmp")]
    assert not leftovers


def test_same_seed_gives_identical_metrics_weights_and_onnx(reference: Run, rerun: Run) -> None:
    # (`dvc repro` running nothing on an unchanged workspace: test_pipeline.py asserts that.)
    assert results(rerun.repo.root) == results(reference.repo.root)
    assert model_state(rerun.repo.root) == model_state(reference.repo.root)
    onnx_a = reference.repo.root / "models" / "model.onnx"
    onnx_b = rerun.repo.root / "models" / "model.onnx"
    assert onnx_differences(onnx_a, onnx_b) == []
    assert md5(onnx_a) == md5(onnx_b)  # the exporter is deterministic byte for byte


def test_same_seed_gives_byte_identical_model_pt(reference: Run, rerun: Run) -> None:
    assert md5(rerun.repo.root / "models" / "model.pt") == md5(
        reference.repo.root / "models" / "model.pt")
