from __future__ import annotations

import pytest
import yaml

from tests.helpers import PROJECT_ROOT, params_dict
from textclf.config import load_params, params_from_dict
from textclf.errors import TextclfError


def test_repo_params_load() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.train.lr > 0
    assert params.tokenize.encoding == "cl100k_base"
    assert len(params.validate.label_names) == 4


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("train", "lr", "fast", "`train.lr` must be a number"),
        ("train", "lr", -1.0, "`train.lr` must be > 0"),
        ("train", "precision", "fp8", "`train.precision` must be one of auto, fp32, bf16, fp16"),
        ("model", "d_model", 30, "`model.d_model` must be a multiple of n_heads"),
        ("tokenize", "val_fraction", 1.5, "`tokenize.val_fraction` must be in (0, 1)"),
        ("fetch", "fraction", 0, "`fetch.fraction` must be in (0, 1]"),
        ("train", "epochs", True, "`train.epochs` must be an integer"),
        ("train", "refit", "yes", "`train.refit` must be true or false"),
        ("train", "patience", 2, "`train.patience` must be 0 when train.refit is true"),
    ],
)
def test_bad_value_names_key(section: str, key: str, value: object, needle: str) -> None:
    with pytest.raises(TextclfError, match=r"params\.yaml") as err:
        params_from_dict(params_dict(**{section: {key: value}}))
    assert needle in str(err.value)
    assert "dvc exp run -S" in str(err.value)


def test_unknown_and_missing_keys() -> None:
    raw = params_dict(train={"learning_rate": 1e-3})
    with pytest.raises(TextclfError, match=r"unknown key `train\.learning_rate`"):
        params_from_dict(raw)
    raw = params_dict()
    del raw["fetch"]["source"]
    with pytest.raises(TextclfError, match=r"`fetch\.source` is missing"):
        params_from_dict(raw)


def test_exponent_without_dot_is_a_number() -> None:
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; users and `dvc exp run -S` mean 0.0001.
    raw = yaml.safe_load("train: {lr: 1e-4, weight_decay: 5E-2}")
    params = params_from_dict(params_dict(train=raw["train"]))
    assert params.train.lr == 1e-4 and params.train.weight_decay == 0.05


def test_configs_are_frozen() -> None:
    params = params_from_dict(params_dict())
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_missing_and_malformed_file(tmp_path) -> None:
    with pytest.raises(TextclfError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(TextclfError, match="not valid YAML"):
        load_params(bad)
    assert yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["lr"]
