from __future__ import annotations

import os
import stat

import pytest

from textclf.core.atomic import atomic_dir, atomic_path, write_json


def test_failed_write_leaves_target_and_no_temp(tmp_path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_failed_dir_keeps_old_dir(tmp_path) -> None:
    target = tmp_path / "tokens"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_outputs_get_umask_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_killed_runs_temporary_siblings_are_cleared_by_the_next_write(tmp_path) -> None:
    # SIGKILL leaves the temporary sibling behind; the next write of that output removes it.
    (tmp_path / ".tokens.k1ll3d.tmp").mkdir()
    (tmp_path / ".tokens.k1ll3d.tmp" / "train.npz").write_bytes(b"half")
    (tmp_path / ".eval.json.x9.tmp").write_text("{")
    (tmp_path / ".tokens.keep").write_text("not ours")
    with atomic_dir(tmp_path / "tokens") as out:
        (out / "vocab.json").write_text("{}")
    write_json(tmp_path / "eval.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tokens.keep", "eval.json", "tokens"]
