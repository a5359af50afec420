"""Long work shows a live bar on a terminal and nothing in a log (CI, `dvc repro > file`)."""

from __future__ import annotations

import io
import sys

import pytest

from tests.conftest import make_corpus
from tests.helpers import small_params, write_validated
from textclf.core.paths import Paths
from textclf.stages import tokenize, train


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a user's shell does."""

    def isatty(self) -> bool:
        return True


def _tokenize_and_train(root, monkeypatch, stream: io.StringIO) -> str:
    """Run tokenize (encode + the teacher's fits) and a 2-epoch training with ``stream`` as
    stderr; return what was written to it."""
    monkeypatch.chdir(root)  # dvclive looks for a DVC repo from the cwd: not this checkout's
    monkeypatch.setattr(sys, "stderr", stream)
    params = small_params(tokenize={"teacher_folds": 2}, train={"epochs": 2})
    tokenize.run(params, Paths(root))
    train.run(params, Paths(root))
    return stream.getvalue()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    write_validated(root, make_corpus(tmp_path / "corpus"))
    return root


def test_bars_on_a_terminal(project, monkeypatch) -> None:
    shown = _tokenize_and_train(project, monkeypatch, Terminal())
    assert "\r" in shown  # a bar redraws its line
    for bar in ("tokenize", "teacher", "epoch 1/2", "epoch 2/2"):
        assert f"{bar}:" in shown, bar
    assert "sample/s" in shown and "text" in shown and "fit" in shown


def test_no_bars_when_not_a_terminal(project, monkeypatch) -> None:
    logged = _tokenize_and_train(project, monkeypatch, io.StringIO())
    assert "\r" not in logged and "%|" not in logged and "it/s" not in logged
    # What a log gets instead: one plain line per epoch.
    epochs = [line for line in logged.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
