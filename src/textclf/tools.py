"""git and DVC as subprocesses, for the commands that read a project's history and outputs
(`textclf report`, `textclf plots`).

DVC runs as ``python -m dvc`` in this package's environment, so what these commands show is
exactly what a user gets from the dvc commands, and no DVC internals are imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from textclf.core.errors import TextclfError


def git(root: Path, *args: str) -> str | None:
    """stdout of a git command, or None when it fails (e.g. an unknown revision)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise TextclfError("git is not installed or not on PATH; textclf needs it here") from exc
    return done.stdout.strip() if done.returncode == 0 else None


def dvc(root: Path, *args: str) -> str:
    """stdout of a dvc command; a clear error with dvc's own message when it fails."""
    env = {**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")}
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env,
                              capture_output=True, text=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise TextclfError(f"no such project directory: {root}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise TextclfError(f"`dvc {' '.join(args)}` failed in {root}:\n{detail}")
    return done.stdout
