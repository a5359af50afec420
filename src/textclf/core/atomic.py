"""Atomic output writing: a crash never leaves a file DVC could mistake for a finished output.

Every stage writes into a temporary sibling and renames it into place only once it is complete.
A rename within one directory is atomic on POSIX, so readers see the old output or the new one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    with _naming(target, temp_too=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with _naming(target):
            yield tmp
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; swap it in for ``target`` on success."""
    target = Path(target)
    with _naming(target, temp_too=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        with _naming(target):
            yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _naming(target: Path, temp_too: bool = False) -> Iterator[None]:
    """Name ``target`` in a file-system error about writing it: the user needs the output, not
    the temporary name (``temp_too``), nor no name at all (numpy, torch and pandas write through
    open handles, and a full disk then names no file)."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and (temp_too or exc.filename is None):
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def _remove_leftovers(target: Path) -> None:
    # A run killed with SIGKILL cannot remove its temporary sibling; the next write of the same
    # output does (DVC runs one stage of a workspace at a time, so no other run is using it).
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(target: Path | str, data: Any) -> None:
    """Write ``data`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
