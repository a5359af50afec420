"""`textclf plots` (PNGs of the pipeline's plots) and the offline `dvc plots show` page.

The slow tests run the real `dvc plots show` in a throw-away git+dvc repo holding this project's
dvc.yaml, its .dvc/config and offline page, and plot files written by hand at paths dvc.yaml
declares (as tests/test_report.py does). The others draw specs DVC's own renderer fills in-process.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_render import VegaRenderer
from typer.testing import CliRunner

from tests.helpers import PROJECT_ROOT
from textclf import plots
from textclf.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVE_PX = (plots.CURVE_SIZE[0] * plots.SCALE, plots.CURVE_SIZE[1] * plots.SCALE)
SQUARE_PX = (plots.SQUARE_SIZE[0] * plots.SCALE, plots.SQUARE_SIZE[1] * plots.SCALE)
CONFUSION = "metrics/eval/plots/sklearn/confusion_matrix.json"
ROC = "metrics/eval/plots/sklearn/roc.json"
TRAIN_LOSS = "metrics/train/plots/metrics/train/loss.tsv"

# Runs a plots page's scripts in order in one global scope, as a browser does, with a recorder
# in place of vegaEmbed once the inline bundle has defined it; prints what each div passed.
PAGE_JS = """
const fs = require("node:fs"), vm = require("node:vm");
const html = fs.readFileSync(process.argv[1], "utf8");
const scripts = [...html.matchAll(/<script[^>]*>([\\s\\S]*?)<\\/script>/g)].map((m) => m[1]);
globalThis.window = globalThis;
globalThis.document = { querySelector: () => null };
vm.runInThisContext(scripts[0], { filename: "bundle.js" });
const bundled = typeof globalThis.vegaEmbed;
const calls = [];
globalThis.vegaEmbed = (id, spec) => calls.push([id, Object.keys(spec).length]);
for (const code of scripts.slice(1)) vm.runInThisContext(code, { filename: "div.js" });
console.log(JSON.stringify({ bundled, calls }));
"""


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first."""
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def _run(root: Path, *args: str) -> None:
    subprocess.run(args, cwd=root, check=True, capture_output=True, text=True)


def _project(root: Path) -> Path:
    """A git+dvc repo with this project's dvc.yaml, params, plots config and offline page."""
    root.mkdir(parents=True, exist_ok=True)
    _run(root, "git", "init", "-q", "-b", "main")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", str(plots.TEMPLATE)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, root / name)
    return root


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_plot_data(root: Path, wrong: int = 2) -> None:
    """A binary task's evaluate plots (confusion matrix, ROC) and the train loss curve."""
    confusion = [{"actual": a, "predicted": a} for a in ("neg", "pos") for _ in range(6)]
    confusion += [{"actual": "neg", "predicted": "pos"}] * wrong
    _write(root, CONFUSION, json.dumps(confusion))
    roc = [{"fpr": f, "tpr": t, "threshold": 1 - f} for f, t in [(0, 0), (0.1, 0.7), (1, 1)]]
    _write(root, ROC, json.dumps(roc))
    _write(root, TRAIN_LOSS, "step\tloss\n0\t1.2\n25\t0.8\n50\t0.55\n75\t0.5\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = _project(tmp_path / "project")
    _write_plot_data(root)
    return root


@pytest.mark.slow
def test_one_png_per_plot_with_data_at_the_predicted_size(project: Path, tmp_path: Path) -> None:
    written = plots.run(out=tmp_path / "pngs", root=project)
    # precision_recall and per-label F1 are declared but have no file: no picture, no error.
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "loss.png", "roc.png"]
    assert sorted(written) == sorted((tmp_path / "pngs").iterdir())  # no temporary file left
    sizes = {path.name: png_size(path.read_bytes()) for path in written}
    assert sizes == {"confusion_matrix.png": SQUARE_PX, "loss.png": CURVE_PX, "roc.png": CURVE_PX}
    # The size rule agrees with the pictures it promises, for the specs dvc gave.
    specs = plots.load_specs(project)
    names = plots.slugs(specs)
    assert {f"{names[i]}.png": plots.expected_png_size(s) for i, s in specs.items()} == sizes


@pytest.mark.slow
def test_the_pictures_follow_the_plot_files(project: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in plots.run(out=tmp_path / "a", root=project)}
    _write_plot_data(project, wrong=5)  # only the confusion matrix's counts change
    after = {p.name: p.read_bytes() for p in plots.run(out=tmp_path / "b", root=project)}
    assert after["confusion_matrix.png"] != before["confusion_matrix.png"]
    assert after["loss.png"] == before["loss.png"] and after["roc.png"] == before["roc.png"]


@pytest.mark.slow
def test_no_plot_data_is_a_clear_error(tmp_path: Path) -> None:
    root = _project(tmp_path / "empty")
    out = tmp_path / "pngs"
    result = CliRunner().invoke(app, ["plots", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 1
    assert "no plot to draw" in result.stderr and "`dvc repro`" in result.stderr
    assert CONFUSION in result.stderr  # names what it looked for
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.slow
def test_broken_plot_file_and_no_project_are_clear_errors(project: Path, tmp_path: Path) -> None:
    _write(project, CONFUSION, "[{not json")
    result = CliRunner().invoke(app, ["plots", "--root", str(project)])
    assert result.exit_code == 1
    assert "could not read some plot data" in result.stderr and CONFUSION in result.stderr

    elsewhere = tmp_path / "not_a_project"
    elsewhere.mkdir()
    result = CliRunner().invoke(app, ["plots", "--root", str(elsewhere)])
    assert result.exit_code == 1 and "is not in a DVC project" in result.stderr


@pytest.mark.slow
def test_dvc_plots_show_page_is_self_contained(project: Path) -> None:
    _run(project, sys.executable, "-m", "dvc", "plots", "show")
    page = (project / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)  # DVC's CDN tags
    assert not re.search(r"""src\s*=\s*["']?https?://""", page, re.IGNORECASE)
    bundle = _inline_script((PROJECT_ROOT / plots.TEMPLATE).read_text(encoding="utf-8"))
    assert len(bundle) > 100_000 and "window.vegaEmbed" in bundle
    assert _inline_script(page) == bundle
    # Each plot div calls vegaEmbed after the bundle (in <head>) has defined it.
    first_div = page.index("vegaEmbed('#")
    assert page.index(bundle) < first_div and "{plot_divs}" not in page

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's scripts were not run")
    done = subprocess.run([node, "-e", PAGE_JS, str(project / "dvc_plots" / "index.html")],
                          capture_output=True, text=True, timeout=120, check=True)
    ran = json.loads(done.stdout)
    assert ran["bundled"] == "function"
    drawn = {plot_id for plot_id, keys in ran["calls"] if keys}  # a plot without data gets {}
    assert drawn == {"#loss", "#metrics_eval_plots_sklearn_confusion_matrix_json",
                     "#metrics_eval_plots_sklearn_roc_json"}


def _inline_script(html: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert scripts, "no inline <script> in the page"
    return scripts[0]


def test_committed_offline_page_is_current_and_fillable() -> None:
    committed = (PROJECT_ROOT / plots.TEMPLATE).read_text(encoding="utf-8")
    assert committed == plots.offline_template(), (
        "stale .dvc/plots/offline.html: run `textclf plots --write-template`")
    assert "{plot_divs}" in committed and "{refresh_tag}" in committed
    assert "{scripts}" not in committed  # where DVC would put its CDN <script> tags
    config = (PROJECT_ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\n\s+html_template = plots/offline.html$", config, re.M)


def _spec(template: str, rows: list[dict], x: str, y: str) -> dict:
    """The spec DVC fills for one revision's rows, as `dvc plots show --json` returns it."""
    rows = [{**row, "rev": "workspace"} for row in rows]
    return VegaRenderer(rows, "plot", template=template, x=x, y=y).get_filled_template()


def test_pictures_have_the_size_the_rule_gives() -> None:
    matrix = _spec("confusion", [{"actual": a, "predicted": p} for a in "ab" for p in "ab"],
                   "predicted", "actual")
    curve = _spec("linear", [{"step": str(i), "loss": str(1 / (i + 1))} for i in range(5)],
                  "step", "loss")
    bars = _spec("bar_horizontal", [{"label": lab, "f1": "0.5"} for lab in "abc"], "f1", "label")
    stretchy = {**curve, "width": "container", "height": "container"}  # a browser-only size
    cases = {"matrix": (matrix, SQUARE_PX), "curve": (curve, CURVE_PX),
             "bars": (bars, CURVE_PX), "container": (stretchy, CURVE_PX)}
    for name, (spec, expected) in cases.items():
        assert plots.expected_png_size(spec) == expected, name
        assert png_size(plots.render(spec, name)) == expected, name
    assert "container" not in json.dumps(plots.prepare(stretchy))


def test_a_facet_by_revision_is_unwrapped_only_for_one_revision() -> None:
    rows = [{"actual": "a", "predicted": "b"}]
    one = _spec("confusion", rows, "predicted", "actual")
    assert "facet" not in plots.prepare(one) and "layer" in plots.prepare(one)
    two = {**one, "data": {"values": [{**r, "rev": rev} for r in rows for rev in ("x", "y")]}}
    assert plots.expected_png_size(two) is None and "facet" in plots.prepare(two)
    assert png_size(plots.render(two))[0] > 0  # drawn at Vega's own size


def test_slugs_are_file_stems_made_distinct() -> None:
    assert plots.slugs([CONFUSION, "Loss", "learning rate"]) == {
        CONFUSION: "confusion_matrix", "Loss": "loss", "learning rate": "learning_rate"}
    assert plots.slugs(["loss", "m/train/loss.tsv", "m/val/loss.tsv"]) == {
        "loss": "loss", "m/train/loss.tsv": "train_loss", "m/val/loss.tsv": "val_loss"}
    assert plots.slugs(["x/a b.json", "x/a-b.json"]) == {"x/a b.json": "x_a_b",
                                                         "x/a-b.json": "x_a_b_2"}
    assert plots.slugs(["v1.5"]) == {"v1.5": "v1_5"}  # only a data file's suffix is dropped
