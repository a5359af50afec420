"""Shared fixtures: a tiny synthetic AG-News-shaped corpus, and the `slow` marker switch."""

from __future__ import annotations

import csv
import hashlib
import os
import random
from pathlib import Path

import pytest

# Tests never phone home; set before any test imports dvc or great_expectations.
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "agnews"
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]

# Each class draws most words from its own topic list, so a small model can learn it quickly.
_TOPIC_WORDS = [
    "government minister election war peace treaty embassy president capital rebels".split(),
    "match team season coach goal league championship player score victory".split(),
    "shares market profit earnings investors stock quarterly bank merger economy".split(),
    "software computer internet chip researchers space science network device wireless".split(),
]
_COMMON_WORDS = "the a of in on said today new after week report officials".split()


def synthetic_rows(n_per_class: int, seed: int) -> list[tuple[str, str, str]]:
    """(class 1..4, title, description) rows, shuffled, every text unique."""
    rng = random.Random(seed)
    rows = []
    for label, words in enumerate(_TOPIC_WORDS, start=1):
        for i in range(n_per_class):
            title = " ".join(rng.choice(words).capitalize() for _ in range(rng.randint(3, 6)))
            body = [rng.choice(words if rng.random() < 0.6 else _COMMON_WORDS)
                    for _ in range(rng.randint(8, 30))]
            rows.append((str(label), f"{title} {seed}-{label}-{i}", " ".join(body) + "."))
    rng.shuffle(rows)
    return rows


def write_charcnn_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    """Write rows the way the canonical AG News files are written: every field quoted."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)


def write_sha256sums(directory: Path, names: list[str]) -> None:
    lines = [f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (directory / "SHA256SUMS").write_text("".join(lines))


def make_corpus(directory: Path, n_train: int = 60, n_test: int = 15, seed: int = 0) -> Path:
    """A char-CNN corpus dir (train.csv, test.csv, SHA256SUMS); n_* are rows per class."""
    directory.mkdir(parents=True, exist_ok=True)
    write_charcnn_csv(directory / "train.csv", synthetic_rows(n_train, seed))
    write_charcnn_csv(directory / "test.csv", synthetic_rows(n_test, seed + 1))
    write_sha256sums(directory, ["train.csv", "test.csv"])
    return directory


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "source")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --- A tiny trained model on the synthetic corpus, for evaluate / export / parity / predict. ---
# Built once per session by the real stages (`tokenize.run`, then `train.run` with the repo's
# recipe at a tiny size), so those tests run on exactly what the pipeline makes.


def tiny_params(**overrides: dict) -> object:
    """``tests.helpers.small_params`` trained long enough to learn the synthetic topics, with
    small evaluate/parity batches; the device is pinned so weights compare bit for bit."""
    from tests.helpers import small_params

    sized = {"model": {"dropout": 0.0},
             "train": {"epochs": 6, "device": "cpu"},
             "evaluate": {"batch_size": 16, "n_misclassified": 5},
             "parity": {"batch_size": 32, "latency_runs": 5}}
    for section, values in overrides.items():
        sized.setdefault(section, {}).update(values)
    return small_params(**sized)


@pytest.fixture(scope="session")
def tiny_model_project(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Paths of a project holding data/validated, data/tokens and models/model.pt made by the
    tokenize and train stages (treat as read-only)."""
    from tests.helpers import write_validated
    from textclf.core.paths import Paths
    from textclf.stages import tokenize, train

    root = tmp_path_factory.mktemp("tiny_model_project")
    corpus = make_corpus(tmp_path_factory.mktemp("tiny_corpus"))
    write_validated(root, corpus)
    paths = Paths(root)
    params = tiny_params()
    tokenize.run(params, paths)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # dvclive looks for a DVC repo from the cwd: not this checkout's
        train.run(params, paths)
    return paths


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model_project: object) -> Path:
    """models/model.onnx exported from the tiny project's model (treat as read-only)."""
    from textclf.stages import evaluate, export

    evaluate.run(tiny_params(), tiny_model_project)  # the model card quotes its metrics
    export.run(tiny_params(), tiny_model_project)
    return tiny_model_project.onnx
