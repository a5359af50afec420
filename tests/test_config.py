from __future__ import annotations

import json

import pydantic
import pytest
import yaml

from tests.helpers import PROJECT_ROOT, params_dict
from textclf.core.config import Params, load_params, params_from_dict
from textclf.core.errors import TextclfError


def test_repo_params_load_as_written() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert set(raw) == {field.alias or name for name, field in Params.model_fields.items()}
    for section, values in raw.items():
        loaded = getattr(params, section).model_dump()
        # JSON-equal: tuples read as lists, YAML's integer label keys as text.
        assert json.loads(json.dumps(loaded)) == json.loads(json.dumps(values))


@pytest.mark.parametrize("dataset", ["agnews", "imdb", "go_emotions", "mnli"])
def test_every_preset_composes_into_valid_params(dataset: str, tmp_path) -> None:
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(PROJECT_ROOT / "conf"), None, "config", "", [f"dataset={dataset}"])
    params = load_params(out)
    assert params.data.source == f"data/shared/{dataset}"
    assert params.data.source_details() is not None  # its facts apply to its own source
    expected = {"agnews": "multiclass", "imdb": "multiclass", "go_emotions": "multilabel",
                "mnli": "pair"}[dataset]
    assert params.data.resolved_task == expected
    if dataset == "agnews":  # the committed params.yaml is the default composition
        assert yaml.safe_load(out.read_text()) == yaml.safe_load(
            (PROJECT_ROOT / "params.yaml").read_text())


def test_source_details_belong_to_their_source_only() -> None:
    # `-S data.source=/elsewhere` alone: nothing known about AG News's files applies there.
    params = params_from_dict(params_dict(data={"source": "/elsewhere", "text": "review",
                                                "label": "sentiment"}))
    assert params.data.source_details() is None
    assert params_from_dict(params_dict()).data.source_details().label_names["1"] == "World"


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("train", "lr", "fast", "`train.lr` must be a number, got 'fast'"),
        ("train", "lr", -1.0, "`train.lr` must be > 0, got -1.0"),
        ("train", "precision", "fp8", "`train.precision` must be one of auto, fp32, bf16, fp16"),
        ("model", "d_model", 30, "`model.d_model` must be a multiple of n_heads (4), got 30"),
        ("tokenize", "val_fraction", 1.5, "`tokenize.val_fraction` must be in (0, 1), got 1.5"),
        ("validate", "fraction", 0, "`validate.fraction` must be in (0, 1], got 0"),
        ("train", "epochs", True, "`train.epochs` must be an integer, got True"),
        ("train", "epochs", 2.5, "`train.epochs` must be an integer, got 2.5"),
        ("train", "refit", "yes", "`train.refit` must be true or false"),
        ("train", "patience", 2, "`train.patience` must be 0 when train.refit is true"),
        ("tokenize", "teacher_folds", 1, "`tokenize.teacher_folds` must be 0 (off) or >= 2"),
        ("validate", "max_class_ratio", 0.5, "`validate.max_class_ratio` must be 0 (off) or >= 1"),
        ("data", "task", "multilabel", "`data.label` must be a list of 0/1 columns when "
                                       "data.task is multilabel"),
        ("data", "task", "pair", "`data.text_pair` must be a column when data.task is pair"),
        ("data", "task", "regression", "`data.task` must be one of auto, multiclass, "
                                       "multilabel, pair"),
        ("data", "files", {"dev": "dev.csv"}, "`data.files.dev` must be one of train, test"),
        ("data", "source", "  ", "`data.source` must be a non-blank string"),
        # A union-typed key: named once, with every form it may take.
        ("data", "text", 5, "`data.text` must be a string or a list of strings, got 5"),
        ("train", "nproc", 0, "`train.nproc` must be >= 1, got 0"),
    ],
)
def test_bad_value_names_key(section: str, key: str, value: object, needle: str) -> None:
    with pytest.raises(TextclfError, match=r"^params\.yaml: ") as err:
        params_from_dict(params_dict(**{section: {key: value}}))
    assert needle in str(err.value)
    assert "dvc exp run -S" in str(err.value)
    assert "\n" not in str(err.value)  # one paragraph


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(TextclfError) as err:
        params_from_dict(params_dict(train={"lr": 0, "epochs": "x"}, model={"dropout": 1.0}))
    message = str(err.value)
    for key in ("`train.lr` must be > 0", "`train.epochs` must be an integer",
                "`model.dropout` must be in [0, 1)"):
        assert key in message


def test_unknown_and_missing_keys() -> None:
    raw = params_dict(train={"learning_rate": 1e-3})
    with pytest.raises(TextclfError, match=r"unknown key `train\.learning_rate` \(known keys in "
                                           r"`train`: lr, weight_decay"):
        params_from_dict(raw)
    # params.yaml is the only source of values: a key missing from it is never defaulted.
    for section, key in (("data", "source"), ("train", "epochs"), ("train", "refit"),
                         ("model", "dropout")):
        raw = params_dict()
        del raw[section][key]
        with pytest.raises(TextclfError, match=rf"`{section}\.{key}` is missing from section "
                                               rf"`{section}`"):
            params_from_dict(raw)
    raw = params_dict()
    del raw["parity"]
    with pytest.raises(TextclfError, match=r"`parity` is missing from the top level"):
        params_from_dict(raw)
    with pytest.raises(TextclfError, match=r"unknown key `trian` \(known keys in `params.yaml`"):
        params_from_dict({**params_dict(), "trian": {}})


def test_no_section_has_defaults() -> None:
    for name, field in Params.model_fields.items():
        section = field.annotation
        defaulted = [key for key, f in section.model_fields.items() if not f.is_required()]
        assert not defaulted, f"{field.alias or name}: {defaulted} have code defaults"


def test_exponent_without_dot_is_a_number() -> None:
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; users and `dvc exp run -S` mean 0.0001.
    raw = yaml.safe_load("train: {lr: 1e-4, weight_decay: 5E-2}")
    assert raw["train"]["lr"] == "1e-4"
    params = params_from_dict(params_dict(train=raw["train"]))
    assert params.train.lr == 1e-4 and params.train.weight_decay == 0.05


def test_configs_are_frozen() -> None:
    params = params_from_dict(params_dict())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.train.lr = 1.0  # type: ignore[misc]


def test_missing_and_malformed_file(tmp_path) -> None:
    with pytest.raises(TextclfError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(TextclfError, match="not valid YAML"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n")
    with pytest.raises(TextclfError, match="top level must be a mapping of sections"):
        load_params(listed)
