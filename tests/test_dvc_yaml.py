"""dvc.yaml against the code: each stage's deps cover every file it runs and no layer it does not
import, it lists the params sections it reads, and its outputs are the ones `Paths` names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT_ROOT, covers
from textclf.core.codedeps import import_closure
from textclf.core.paths import STAGE_OUTPUTS, Paths

DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def code_deps(stage_spec: dict) -> list[Path]:
    return [PROJECT_ROOT / d for d in stage_spec["deps"] if d.startswith("src/")]


def uncovered_files(stage: str, stage_spec: dict) -> list[str]:
    """Files the stage's code runs that none of its deps (file or folder) covers."""
    deps = code_deps(stage_spec)
    return [str(path.relative_to(PROJECT_ROOT))
            for path in import_closure(f"textclf.stages.{stage}")
            if not any(covers(dep, path) for dep in deps)]


def unused_deps(stage: str, stage_spec: dict) -> list[str]:
    """Code deps that cover no file the stage runs (they would re-run it for nothing)."""
    closure = import_closure(f"textclf.stages.{stage}")
    return [str(dep.relative_to(PROJECT_ROOT)) for dep in code_deps(stage_spec)
            if not any(covers(dep, path) for path in closure)]


def test_the_seven_stages_in_order() -> None:
    assert list(STAGE_OUTPUTS) == STAGES
    for stage, spec in DVC_YAML["stages"].items():
        assert spec["cmd"] == f"textclf {stage}"
        assert f"src/textclf/stages/{stage}.py" in spec["deps"]


@pytest.mark.parametrize("stage", STAGES)
def test_deps_cover_everything_the_stage_imports(stage: str) -> None:
    missing = uncovered_files(stage, DVC_YAML["stages"][stage])
    assert not missing, (
        f"dvc.yaml stage `{stage}` runs {', '.join(missing)} but its deps list neither the file "
        "nor its folder: DVC would not re-run it when that code changes. Add the layer's folder "
        "(src/textclf/<layer>) to the stage's deps.")


@pytest.mark.parametrize("stage", STAGES)
def test_deps_list_no_layer_the_stage_does_not_import(stage: str) -> None:
    assert not unused_deps(stage, DVC_YAML["stages"][stage])


def test_the_check_names_the_stage_and_the_file_it_misses() -> None:
    spec = dict(DVC_YAML["stages"]["evaluate"])
    spec["deps"] = [d for d in spec["deps"] if d != "src/textclf/modeling"]
    missing = uncovered_files("evaluate", spec)
    assert "src/textclf/modeling/bundle.py" in missing
    assert "src/textclf/modeling/baseline.py" in missing
    spec["deps"] = [*DVC_YAML["stages"]["fetch"]["deps"], "src/textclf/modeling"]
    assert unused_deps("fetch", spec) == ["src/textclf/modeling"]


def test_the_closure_follows_imports_inside_functions() -> None:
    # evaluate imports pandas and sklearn lazily; train imports dvclive inside run(): the
    # closure is read from the source, so a lazy `from textclf...` import counts too.
    closure = {p.relative_to(PROJECT_ROOT).as_posix() for p in import_closure("textclf.cli")}
    assert "src/textclf/core/config.py" in closure
    assert "src/textclf/predict.py" in closure  # imported inside the `predict` command
    assert "src/textclf/stages/train.py" not in closure  # importlib by name: not an import


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_layers_never_each_other(stage: str) -> None:
    own = PROJECT_ROOT / "src" / "textclf" / "stages" / f"{stage}.py"
    others = [p for p in import_closure(f"textclf.stages.{stage}")
              if p.parent.name == "stages" and p != own]
    assert not others


def test_serving_and_predict_stay_torch_free() -> None:
    for module in ("textclf.predict", "textclf.serving.predictor"):
        layers = {p.parent.name for p in import_closure(module)}
        assert layers <= {"textclf", "core", "serving"}, (module, layers)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, textclf.predict; "
         "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
        capture_output=True, text=True, check=True, cwd=PROJECT_ROOT).stdout.split()
    assert "onnxruntime" in loaded and "tiktoken" in loaded  # the check sees real imports
    assert not {"torch", "sklearn"} & set(loaded)


def _params_sections_read(stage: str) -> set[str]:
    source = PROJECT_ROOT / "src" / "textclf" / "stages" / f"{stage}.py"
    tree = ast.parse(source.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "params"}


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_the_sections_the_stage_reads(stage: str) -> None:
    listed = set(DVC_YAML["stages"][stage]["params"])
    assert listed == _params_sections_read(stage)


@pytest.mark.parametrize("stage", STAGES)
def test_outputs_are_the_paths_the_stage_writes(stage: str) -> None:
    spec = DVC_YAML["stages"][stage]
    declared = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            declared.add(Path(next(iter(entry)) if isinstance(entry, dict) else entry))
    paths = Paths(Path())
    expected = {getattr(paths, name) for name in STAGE_OUTPUTS[stage]}
    # dvclive's folder (metrics/train) is declared as the files and plots it holds.
    assert all(any(covers(e, d) for e in expected) for d in declared), declared
    assert all(any(covers(e, d) for d in declared) for e in expected), expected
