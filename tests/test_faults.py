"""The machine's faults are errors like any other: a full disk, a read-only file system and a
directory the user may not write each end a stage with one paragraph naming the stage, the path
and the fix, exit status 1, and no half-written output. The faults are real (a small tmpfs filled
up, a read-only remount, an unprivileged user), not mocked messages."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_corpus
from tests.helpers import charcnn_data, params_dict, write_validated

SMALL = {"tokenize": {"max_length": 32, "teacher_folds": 2}, "validate": {"min_rows": 10}}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def run_stage(stage: str, cwd: Path, *prefix: str,
              max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "PYTHONDONTWRITEBYTECODE": "1"}

    def limit_file_size() -> None:  # `ulimit -f` in the child (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([*prefix, sys.executable, "-m", "textclf.cli", stage], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size if max_file_bytes else None)


def write_params(root: Path, source: Path) -> None:
    raw = params_dict(data=charcnn_data(source), **SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def assert_one_paragraph(done: subprocess.CompletedProcess, stage: str, reason: str,
                         path: str, fix: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("textclf: error:")]
    assert len(error) == 1, done.stderr
    assert f"textclf {stage}: {reason}: " in error[0] and path in error[0]
    assert fix in error[0] and f"`dvc repro {stage}`" in error[0]


def fill(directory: Path) -> None:
    with (directory / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


def test_full_disk_leaves_nothing_half_written(tmpfs: Path, tmp_path: Path) -> None:
    write_validated(tmpfs, make_corpus(tmp_path / "corpus"))
    write_params(tmpfs, tmp_path / "corpus")
    before = sorted(p.relative_to(tmpfs) for p in (tmpfs / "data").rglob("*"))
    fill(tmpfs)
    done = run_stage("tokenize", tmpfs)
    assert_one_paragraph(done, "tokenize", "No space left on device", ": data/tokens.",
                         "free space on the disk that holds it")
    assert sorted(p.relative_to(tmpfs) for p in (tmpfs / "data").rglob("*")) == before


def test_read_only_file_system(tmpfs: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    (tmpfs / "data" / "raw").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        shutil.copy(corpus / name, tmpfs / "data" / "raw" / name)
    write_params(tmpfs, corpus)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    done = run_stage("validate", tmpfs)
    assert_one_paragraph(done, "validate", "Read-only file system", ": data/validated.",
                         "remount that file system read-write")
    assert sorted(p.name for p in (tmpfs / "data").iterdir()) == ["raw"]


def test_file_size_limit(tmp_path: Path) -> None:
    write_validated(tmp_path, make_corpus(tmp_path / "corpus"))
    write_params(tmp_path, tmp_path / "corpus")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    # The validated parquet files are a few KiB; the token arrays are larger.
    done = run_stage("tokenize", tmp_path, max_file_bytes=16 * 1024)
    assert_one_paragraph(done, "tokenize", "File too large", ": data/tokens.", "ulimit -f")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to drop the permission override")
def test_permission_denied(tmp_path: Path) -> None:
    # Root writes anywhere: the stage runs without CAP_DAC_OVERRIDE, in a project whose data/
    # it may read but not write, as any other user would.
    corpus = make_corpus(tmp_path / "corpus")
    root = tmp_path / "project"
    (root / "data" / "raw").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        shutil.copy(corpus / name, root / "data" / "raw" / name)
    write_params(root, corpus)
    (root / "data").chmod(0o555)
    try:
        done = run_stage("validate", root, "setpriv",
                         "--bounding-set=-dac_override,-dac_read_search", "--")
        assert_one_paragraph(done, "validate", "Permission denied", ": data/validated.",
                             "give your user write access to")
        assert sorted(p.name for p in (root / "data").iterdir()) == ["raw"]
    finally:
        (root / "data").chmod(0o755)
