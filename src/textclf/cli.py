"""`textclf`: one command per pipeline stage, plus `predict`, `card`, `report` and `plots`.

Thin on purpose: load params.yaml once, call the stage's ``run(params, paths)``, and turn a
``TextclfError``, or a file-system fault (no space, read-only, permission denied, path too
long), into one paragraph on stderr and exit status 1. Stage modules are imported only when
their command runs, so `textclf predict` never imports torch.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from textclf.core.config import load_params
from textclf.core.errors import TextclfError, filesystem_error
from textclf.core.paths import Paths

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Reproducible transformer text classifier: DVC stages and ONNX prediction.",
)

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read.")


def _fail(exc: TextclfError) -> None:
    typer.echo(f"textclf: error: {exc}", err=True)
    raise typer.Exit(code=1)


def _run_stage(stage: str, params_path: Path, **options: Any) -> None:
    # Analytics are off for every tool this project drives (no network here, and no surprise
    # traffic for users); respected if a user has set them otherwise.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    started = time.perf_counter()
    try:
        params = load_params(params_path)
        module = importlib.import_module(f"textclf.stages.{stage}")
        summary = module.run(params, Paths(), **options)
    except TextclfError as exc:
        _fail(exc)
    except OSError as exc:
        known = filesystem_error(exc, stage)
        if known is None:
            raise
        _fail(known)
    if summary:
        typer.echo(json.dumps(summary, sort_keys=True))
    typer.echo(f"textclf {stage}: done in {time.perf_counter() - started:.1f} s", err=True)


@app.command()
def fetch(params: Path = PARAMS) -> None:
    """Download or copy the raw CSVs and verify their sha256 -> data/raw/."""
    _run_stage("fetch", params)


@app.command()
def validate(params: Path = PARAMS) -> None:
    """Run the Great Expectations suite -> data/validated/, metrics/validation.json."""
    _run_stage("validate", params)


@app.command()
def tokenize(params: Path = PARAMS) -> None:
    """Encode with tiktoken, split train/val, pad, build the compact vocabulary -> data/tokens/."""
    _run_stage("tokenize", params)


@app.command()
def train(
    params: Path = PARAMS,
    nnodes: int = typer.Option(1, "--nnodes", min=1, help=(
        "Machines training this model together; run the same command on each, "
        "train.nproc processes per machine.")),
    node_rank: int = typer.Option(0, "--node-rank", min=0,
                                  help="This machine's place, 0..nnodes-1 (0 writes the model)."),
    rdzv_endpoint: str = typer.Option("", "--rdzv-endpoint", help=(
        "HOST:PORT of node 0, reachable from every node (with --nnodes > 1).")),
    rdzv_timeout: int = typer.Option(120, "--rdzv-timeout", min=1, help=(
        "Seconds the nodes wait for each other before giving up.")),
) -> None:
    """Train the transformer (resumes from models/checkpoint/) -> models/model.pt, metrics/train."""
    from textclf.modeling.distributed import Nodes

    if nnodes > 1 and (not rdzv_endpoint or node_rank >= nnodes):
        _fail(TextclfError(
            f"train --nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address and a "
            f"free port, the same on every node) and --node-rank between 0 and {nnodes - 1} "
            f"(got {node_rank!r}, endpoint {rdzv_endpoint!r})."))
    _run_stage("train", params, nodes=Nodes(nnodes, node_rank, rdzv_endpoint, rdzv_timeout))


@app.command()
def evaluate(params: Path = PARAMS) -> None:
    """Score the model and a TF-IDF baseline on the test split -> metrics/eval*."""
    _run_stage("evaluate", params)


@app.command()
def export(params: Path = PARAMS) -> None:
    """Export to ONNX with vocabulary map, metadata and model card inside -> models/model.onnx."""
    _run_stage("export", params)


@app.command()
def parity(params: Path = PARAMS) -> None:
    """Compare PyTorch and ONNX Runtime on the test split and edge cases -> metrics/parity.json."""
    _run_stage("parity", params)


@app.command()
def predict(
    texts: list[str] = typer.Argument(None, help="Texts to classify (omit to read lines)."),
    file: Path = typer.Option(None, "--file", "-f", help="Read one text per line ('-': stdin)."),
    model: Path = typer.Option(Path("models/model.onnx"), "--model", "-m"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    jsonl: bool = typer.Option(False, "--jsonl", help=(
        'Inputs are JSON objects: {"text": ..., "text_pair": ...} or the dataset\'s columns '
        "(automatic for a .jsonl file; needed for a pair model).")),
) -> None:
    """Print one JSON line per text: label(s) and scores, from the ONNX model."""
    from textclf import predict as predict_module

    try:
        code = predict_module.run_cli(texts or [], file, model, batch_size, jsonl)
    except TextclfError as exc:
        _fail(exc)
    sys.stdout.flush()
    raise typer.Exit(code=code)


@app.command()
def card(model: Path = typer.Argument(Path("models/model.onnx"), help="An exported model.")
         ) -> None:
    """Print the model card inside an exported model (markdown): data, metrics, limits."""
    from textclf.card import read_card

    try:
        typer.echo(read_card(model), nl=False)
    except TextclfError as exc:
        _fail(exc)


@app.command()
def compose(
    overrides: list[str] = typer.Argument(
        None, help="Hydra overrides, as for `dvc exp run -S`: dataset=imdb train.lr=3e-4"),
    output: Path = PARAMS,
) -> None:
    """Compose params.yaml from conf/ (what `dvc exp run` does first), for `dvc repro`."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        compose_and_dump(output, str(Path("conf").resolve()), None, "config", "",
                         list(overrides or []))
        load_params(output)  # the composed file must pass the same checks a stage applies
    except (HydraException, OmegaConfBaseException) as exc:
        _fail(TextclfError(f"compose: {exc}. Check the override against conf/config.yaml "
                           "and conf/dataset/."))
    except TextclfError as exc:
        _fail(exc)
    typer.echo(f"textclf compose: wrote {output}", err=True)


@app.command()
def report(
    rev: str = typer.Option("main", "--rev", help="Git revision to compare the workspace with."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the markdown here."),
) -> None:
    """Print the pull-request report: metrics, params and plots diffs against --rev (markdown)."""
    from textclf import report as report_module

    try:
        text = report_module.run(rev, output=output)
    except TextclfError as exc:
        _fail(exc)
    typer.echo(text, nl=False)


@app.command()
def plots(
    out: Path = typer.Option(None, "--out", "-o", help="Folder for the PNGs (default: docs/plots "
                             "under --root)."),
    root: Path = typer.Option(Path("."), "--root", help="The DVC project to draw."),
    write_template: bool = typer.Option(False, "--write-template", help=(
        "Instead, regenerate .dvc/plots/offline.html, the page `dvc plots show` fills, with "
        "Vega inlined (after upgrading vl-convert-python).")),
) -> None:
    """Draw the pipeline's plots as PNGs, from `dvc plots show`'s specs -> docs/plots/."""
    from textclf import plots as plots_module

    try:
        if write_template:
            written = [plots_module.write_template(root)]
        else:
            written = plots_module.run(out, root)
    except TextclfError as exc:
        _fail(exc)
    for path in written:
        typer.echo(path)


if __name__ == "__main__":
    app()
