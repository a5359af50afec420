"""`textclf report`: the markdown a reviewer reads on a pull request, also runnable locally.

It compares the workspace with a git revision (``main`` by default) and holds three parts:
``dvc metrics diff <rev> --md``, ``dvc params diff <rev> --md``, and the pipeline's plots. A pull
request comment cannot show DVC's vega charts without hosting images, so the plots come from
``dvc plots diff <rev> --json`` and are rendered as small markdown tables: each curve as a column
per revision, each confusion matrix as counts with ``base → workspace`` where they differ.

DVC runs as a subprocess (``python -m dvc``, the same environment as this package): the report is
exactly what a user gets from the dvc commands, and this module needs no DVC internals (nor torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textclf.core.atomic import write_text
from textclf.core.errors import TextclfError

# The pull-request workflow finds its own earlier comment by this marker and edits it in place,
# so every push updates one comment instead of adding another.
MARKER = "<!-- textclf-report -->"
WORKSPACE = "workspace"  # DVC's name for the working tree in diffs
MAX_CURVE_ROWS = 20  # per curve table; longer curves are thinned evenly (first and last kept)


def run(rev: str = "main", root: Path | None = None, output: Path | None = None) -> str:
    """Return the markdown report for the workspace at ``root`` against ``rev``.

    Also writes it to ``output`` (atomically) when given. Raises ``TextclfError`` when ``rev`` is
    not a commit here or a dvc command fails.
    """
    root = Path.cwd() if root is None else Path(root)
    if rev.startswith("-"):  # git and dvc would read it as an option, not a revision
        raise TextclfError(f"not a git revision: {rev!r}")
    base_sha = _git(root, "rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}")
    if base_sha is None:
        raise TextclfError(
            f"unknown git revision {rev!r} in {root}: fetch it first (e.g. "
            f"`git fetch origin {rev}:{rev}`) or pass another one with --rev"
        )
    head_sha = _git(root, "rev-parse", "--short", "HEAD") or "no commit"
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))

    metrics = _dvc(root, "metrics", "diff", rev, "--md")
    params = _dvc(root, "params", "diff", rev, "--md")
    plots = json.loads(_dvc(root, "plots", "diff", rev, "--json", "--split") or "{}")

    head = f"{WORKSPACE} (`{head_sha}`{', with uncommitted changes' if dirty else ''})"
    parts = [
        MARKER,
        f"## textclf pipeline report: `{rev}` (`{base_sha}`) → {head}",
        "### Metrics that changed",
        _table_or(metrics, "No metric changed."),
        "### Params that changed",
        _table_or(params, "No param changed."),
        "### Plots",
        *(render_plots(plots, rev) or ["No plots."]),
    ]
    text = "\n\n".join(part.strip() for part in parts) + "\n"
    if output is not None:
        write_text(output, text)
    return text


def render_plots(plots: dict[str, Any], base: str) -> list[str]:
    """One markdown block per plot in ``dvc plots diff --json --split`` output.

    A plot whose x and y values are all categorical (the confusion template) becomes a count
    matrix; any other becomes a curve table with one y column per revision.
    """
    blocks = []
    for plot_id, entries in sorted(plots.get("data", {}).items()):
        for entry in entries:
            anchors = entry.get("anchor_definitions", {})
            rows = anchors.get("<DVC_METRIC_DATA>") or []
            x, y = anchors.get("<DVC_METRIC_X_LABEL>"), anchors.get("<DVC_METRIC_Y_LABEL>")
            # Labels equal field names unless dvc.yaml sets x_label/y_label; skip what we can't map.
            if not rows or x not in rows[0] or y not in rows[0]:
                continue
            # A plot new on this branch (or removed) has no rows at one revision: show the
            # others, and say so, rather than an empty column or a matrix of zeros.
            present = {r.get("rev") for r in rows}
            revs = _ordered_revs(entry.get("revisions") or sorted(present), base)
            if all(not _is_number(r[x]) and not _is_number(r[y]) for r in rows):
                block = confusion_table(plot_id, rows, x, y, [r for r in revs if r in present])
            else:
                block = curve_table(plot_id, rows, x, y, [r for r in revs if r in present])
            missing = ", ".join(f"`{rev}`" for rev in revs if rev not in present)
            blocks.append(block + (f"\n\n_No data at {missing}._" if missing else ""))
    return blocks


def curve_table(plot_id: str, rows: list[dict[str, Any]], x: str, y: str,
                revs: Sequence[str], max_rows: int = MAX_CURVE_ROWS) -> str:
    """``x | y at rev1 | y at rev2 …``, x sorted numerically, at most ``max_rows`` rows."""
    values: dict[str, dict[float, str]] = {rev: {} for rev in revs}
    for row in rows:
        if row.get("rev") in values and _is_number(row[x]) and _is_number(row[y]):
            values[row["rev"]][float(row[x])] = f"{float(row[y]):.4g}"
    xs = _thin(sorted({key for by_x in values.values() for key in by_x}), max_rows)
    lines = [f"**{plot_id}**: {y} by {x}", "",
             _row([x, *(f"`{rev}`" for rev in revs)]), _row(["---"] * (len(revs) + 1))]
    lines += [_row([f"{key:g}", *(values[rev].get(key, "—") for rev in revs)]) for key in xs]
    return "\n".join(lines)


def confusion_table(plot_id: str, rows: list[dict[str, Any]], x: str, y: str,
                    revs: Sequence[str]) -> str:
    """Counts of (y, x) pairs: rows are y (actual), columns x (predicted); ``a → b`` if changed."""
    counts: dict[str, dict[tuple[str, str], int]] = {rev: {} for rev in revs}
    for row in rows:
        if row.get("rev") in counts:
            pair = (str(row[y]), str(row[x]))
            counts[row["rev"]][pair] = counts[row["rev"]].get(pair, 0) + 1
    labels = sorted({label for by_pair in counts.values() for pair in by_pair for label in pair})
    shown = " → ".join(f"`{rev}`" for rev in revs)
    lines = [f"**{plot_id}**: counts of {y} (rows) by {x} (columns) at {shown}", "",
             _row([f"{y} \\ {x}", *labels]), _row(["---"] * (len(labels) + 1))]
    for actual in labels:
        cells = []
        for predicted in labels:
            per_rev = [str(counts[rev].get((actual, predicted), 0)) for rev in revs]
            cells.append(" → ".join(per_rev) if len(set(per_rev)) > 1 else per_rev[0])
        lines.append(_row([actual, *cells]))
    return "\n".join(lines)


def _ordered_revs(revs: Sequence[str], base: str) -> list[str]:
    # Base first, then the workspace: a reviewer reads each row as "before → after".
    unique = list(dict.fromkeys(revs))
    return sorted(unique, key=lambda rev: (rev != base, rev == WORKSPACE, rev))


def _thin(xs: list[float], limit: int) -> list[float]:
    if len(xs) <= limit:
        return xs
    step = (len(xs) - 1) / (limit - 1)
    return [xs[round(i * step)] for i in range(limit)]


def _table_or(markdown: str, empty: str) -> str:
    # DVC prints a header-only table when nothing changed; say so in words instead.
    lines = [line for line in markdown.splitlines() if line.strip()]
    return markdown.strip() if len(lines) > 2 else empty


def _row(cells: Sequence[str]) -> str:
    # A "|" inside a label would split the cell; markdown tables escape it with a backslash.
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _git(root: Path, *args: str) -> str | None:
    """stdout of a git command, or None when it fails (e.g. an unknown revision)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise TextclfError("git is not installed or not on PATH; the report needs it") from exc
    return done.stdout.strip() if done.returncode == 0 else None


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise TextclfError(f"`dvc {' '.join(args)}` failed in {root}:\n{detail}")
    return done.stdout
