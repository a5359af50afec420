"""A throw-away git copy of this repository, for running the real `dvc` commands in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PROJECT_ROOT

GIT_IDENTITY = ["-c", "user.name=textclf tests", "-c", "user.email=tests@textclf.invalid"]


def tool_env() -> dict[str, str]:
    """The environment for dvc/textclf subprocesses: this venv's scripts first, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    return env


class Repo:
    """A git + DVC copy of the project in a temp dir, with helpers to run commands in it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *args: str, check: bool = True, timeout: float = 900,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=self.root, env=tool_env(), text=True, input=input,
                              capture_output=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                f"\n--- stderr\n{done.stderr[-4000:]}"
            )
        return done

    def git(self, *args: str) -> str:
        return self.run("git", *GIT_IDENTITY, *args).stdout

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def update_params(self, **sections: dict[str, Any]) -> None:
        """Change the values where they live (conf/: `data` in the default dataset preset,
        the rest in conf/config.yaml) and compose params.yaml, as `dvc exp run` would."""
        from dvc.utils.hydra import compose_and_dump

        for path, names in ((self.root / "conf" / "dataset" / "agnews.yaml", {"data"}),
                            (self.root / "conf" / "config.yaml", set(sections) - {"data"})):
            raw = yaml.safe_load(path.read_text())
            for section in names & set(sections):
                raw[section].update(sections[section])
            header = "# @package _global_\n" if path.parent.name == "dataset" else ""
            path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
        compose_and_dump(self.root / "params.yaml", str(self.root / "conf"), None, "config", "",
                         [])


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return [f for f in listed if (PROJECT_ROOT / f).is_file()]


def copy_project(root: Path, **sections: dict[str, Any]) -> Repo:
    """Copy the project's tracked files to ``root``, apply params overrides, git init + commit.

    ../shared beside the copy is the real one (a symlink), as beside the checkout, so the
    presets' imports (data/shared/*.dvc) resolve as they do for a user.
    """
    shared = root.parent / "shared"
    if not shared.exists():
        shared.symlink_to((PROJECT_ROOT.parent / "shared").resolve())
    for name in tracked_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    repo = Repo(root)
    repo.update_params(**sections)
    repo.run("git", "init", "-q", "-b", "main")
    repo.commit("copy of the project")
    # As on a fresh clone (README): the presets' DVC imports of ../shared into this copy's cache.
    repo.run("dvc", "update", "--recursive", "data/shared")
    return repo


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repo]:
    """Factory: ``copy_project`` into this test's tmp_path/repo."""

    def make(**sections: dict[str, Any]) -> Repo:
        return copy_project(tmp_path / "repo", **sections)

    return make
