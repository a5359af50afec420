"""The README's commands run as written, on a copy of the project beside ../shared.

A fenced block whose info string carries `runnable` (```` ```bash runnable ````; GitHub shows
only the language) runs here, every line as a shell command in order, after the setup
command's `dvc repro` (at a small size: 5% of AG News, one epoch). The other bash blocks hold
placeholders (`<name>`, `/path/to/dir`) or minutes-long runs: each `dvc exp run` line among
them is at least composed with its `-S` overrides, so a renamed key or preset fails here too.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import SHARED_DATA
from tests.helpers import PROJECT_ROOT

pytestmark = pytest.mark.slow

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, set[str], str]]:
    """(language, tags, body) of every fenced block in README.md, in order."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    return [(lang, set(tags.split()), body) for lang, tags, body in FENCE.findall(text)]


def commands(body: str) -> list[str]:
    """One command per line, comments and blank lines dropped."""
    lines = (line.split("  #")[0].strip() for line in body.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_marks_what_it_runs() -> None:
    blocks = readme_blocks()
    runnable = [body for lang, tags, body in blocks if "runnable" in tags]
    assert len(runnable) >= 4  # predict (shell and Python), experiments, sharing
    setup = [body for lang, tags, body in blocks if "setup" in tags]
    assert len(setup) == 2 and "dvc repro" in setup[0] and "pytest --slow" in setup[1]
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    for step in setup[1].strip().split(" && "):  # CI runs the test command, step by step
        assert step.replace("pip install", "pip install -q").replace(
            "npm ci", "npm ci --no-audit --no-fund").replace("pytest --slow", "pytest --slow -ra"
                                                             ).split(" . ")[-1] in ci, step


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/agnews")
def test_readme_commands_run_as_written(make_repo) -> None:
    repo = make_repo(validate={"fraction": 0.05}, train={"epochs": 1})
    blocks = readme_blocks()
    setup = next(body for lang, tags, body in blocks if "setup" in tags)
    assert setup.strip().endswith("&& dvc update --recursive data/shared && dvc repro")
    repo.run("dvc", "repro")  # the setup command's last step (its install is this venv)

    ran = 0
    for lang, tags, body in blocks:
        if "runnable" not in tags:
            continue
        if lang == "python":
            repo.run("python", "-c", body)
            ran += 1
            continue
        for command in commands(body):
            done = repo.run("bash", "-euo", "pipefail", "-c", command)
            ran += 1
            if command.startswith("textclf predict"):
                assert '"label"' in done.stdout, command
    assert ran >= 10

    for lang, tags, body in blocks:
        if lang != "bash" or tags & {"runnable", "setup"}:
            continue
        for command in commands(body):
            if command.startswith("dvc exp run"):
                words = shlex.split(command)
                overrides = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
                # A sweep's comma list composes one value at a time, as the queue does.
                single = [o.split(",")[0] if "=" in o and "[" not in o else o
                          for o in overrides]
                repo.run("textclf", "compose", *single, "--params", "composed.yaml")
