"""`textclf report`: the markdown a reviewer reads on a pull request, also runnable locally.

It compares the workspace with a git revision (``main`` by default). First the headline: is the
change in the task's headline metric (accuracy, or macro-F1 for multi-label) real or noise? Both
revisions' ``metrics/eval/predictions.json`` (git-tracked: every test row's key, true label(s)
and the model's and the baseline's decision) are paired on the test rows they share, and a paired
bootstrap gives a 95% interval of the change; for one label per row McNemar's exact test on the
rows only one side gets right must agree. The same is done for the model against the TF-IDF
baseline in the workspace. Then, folded away: ``dvc metrics diff <rev> --md``, ``dvc params diff
<rev> --md`` and the pipeline's plots. A pull request comment cannot show DVC's vega charts
without hosting images, so the plots come from ``dvc plots diff <rev> --json`` and are rendered
as small markdown tables: each curve as a column per revision, each confusion matrix as counts
with ``base → workspace`` where they differ.

The paired test is significance.py's; DVC runs as a subprocess (tools.py): the report is exactly
what a user gets from the dvc commands, and this module needs no DVC internals (nor torch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textclf.core.atomic import write_text
from textclf.core.errors import TextclfError
from textclf.significance import (
    ALPHA,
    CONFIDENCE,
    MIN_PAIRED_ROWS,
    PREDICTIONS,
    RESAMPLES,
    SEED,
    Change,
    Predictions,
    differing_rows,
    encode_rows,
    pair_rows,
    paired_change,
    read_predictions,
)
from textclf.tools import dvc, git

# The pull-request workflow finds its own earlier comment by this marker and edits it in place,
# so every push updates one comment instead of adding another.
MARKER = "<!-- textclf-report -->"
WORKSPACE = "workspace"  # DVC's name for the working tree in diffs
MAX_CURVE_ROWS = 20  # per curve table; longer curves are thinned evenly (first and last kept)

_INFERRED_Y, _SOURCE_FIELD = "dvc_inferred_y_value", "filename::field"  # dvc's multi-y plots


def run(rev: str = "main", root: Path | None = None, output: Path | None = None) -> str:
    """Return the markdown report for the workspace at ``root`` against ``rev``.

    Also writes it to ``output`` (atomically) when given. Raises ``TextclfError`` when ``rev`` is
    not a commit here, a dvc command fails, or a predictions file is malformed.
    """
    root = Path.cwd() if root is None else Path(root)
    if rev.startswith("-"):  # git and dvc would read it as an option, not a revision
        raise TextclfError(f"not a git revision: {rev!r}")
    base_sha = git(root, "rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}")
    if base_sha is None:
        raise TextclfError(
            f"unknown git revision {rev!r} in {root}: fetch it first (e.g. "
            f"`git fetch origin {rev}:{rev}`) or pass another one with --rev"
        )
    head_sha = git(root, "rev-parse", "--short", "HEAD") or "no commit"
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no"))

    # "./" makes the path relative to root, which need not be the git repository's top level.
    base_text = git(root, "show", f"{base_sha}:./{PREDICTIONS.as_posix()}")
    base = None if base_text is None else read_predictions(base_text, f"{rev}:{PREDICTIONS}")
    work_file = root / PREDICTIONS
    work = read_predictions(work_file.read_text(), str(PREDICTIONS)) if work_file.is_file() \
        else None

    metrics = dvc(root, "metrics", "diff", rev, "--md")
    params = dvc(root, "params", "diff", rev, "--md")
    plots = json.loads(dvc(root, "plots", "diff", rev, "--json", "--split") or "{}")

    head = f"{WORKSPACE} (`{head_sha}`{', with uncommitted changes' if dirty else ''})"
    plot_blocks = render_plots(plots, rev)
    parts = [
        MARKER,
        f"## textclf pipeline report: `{rev}` (`{base_sha}`) → {head}",
        headline_section(base, work, rev),
        _folded("Metrics that changed ({n})", _changed_rows(metrics), "No metric changed."),
        _folded("Params that changed ({n})", _changed_rows(params), "No param changed."),
        _details(f"Plots ({len(plot_blocks)})", "\n\n".join(plot_blocks)) if plot_blocks
        else "No plots.",
    ]
    text = "\n\n".join(part.strip() for part in parts) + "\n"
    if output is not None:
        write_text(output, text)
    return text


# --- The headline: a paired comparison of two revisions' per-row decisions. ---


def headline_section(base: Predictions | None, work: Predictions | None, rev: str) -> str:
    """The report's first section: the headline metric's change against ``rev`` and against the
    workspace's baseline, each with an interval and a verdict, or in words why there is none."""
    if work is None:
        return (f"### Headline\n\nThe workspace has no {PREDICTIONS} (the evaluate stage writes "
                "it), so there is no verdict on the change: run `dvc repro` and report again.")
    metric = work.headline
    compared: list[tuple[str, Change]] = []
    notes: list[str] = []
    if base is None:
        notes.append(f"`{rev}` has no {PREDICTIONS} (a commit from before the evaluate stage "
                     "wrote it), so there is no verdict against it: compare the metrics below.")
    elif base.headline != work.headline:
        notes.append(f"The task changed (`{rev}`: {base.task}, workspace: {work.task}), so "
                     "there is no paired comparison with it.")
    else:
        at_base, at_work = pair_rows(base, work)
        shared, total = len(at_work), len(work.keys)
        if shared < MIN_PAIRED_ROWS:
            notes.append(f"`{rev}` and the workspace share only {shared:,} of the workspace's "
                         f"{total:,} test rows (at least {MIN_PAIRED_ROWS} needed), so there is "
                         "no verdict against it: the test split changed.")
        else:
            names = list(dict.fromkeys([*base.label_names, *work.label_names]))
            truth_base, model_base, _ = encode_rows(base, at_base, names)
            truth_work, model_work, _ = encode_rows(work, at_work, names)
            change = paired_change(metric, (truth_base, model_base), (truth_work, model_work))
            compared.append((f"model: `{rev}` → workspace", change))
            notes.append(_paired_note(shared, total, len(base.keys), rev))
            if set(base.label_names) != set(work.label_names):
                union = ", macro-F1 over all of them" if work.multilabel else ""
                notes.append(f"The label names differ (`{rev}`: {', '.join(base.label_names)}; "
                             f"workspace: {', '.join(work.label_names)}): rows are compared by "
                             f"label name{union}.")
            relabelled = differing_rows(truth_base, truth_work)
            if relabelled:
                notes.append(f"The true labels differ on {relabelled:,} shared rows: each "
                             "revision is scored against its own.")
    rows = range(len(work.keys))
    if len(rows) >= MIN_PAIRED_ROWS:
        truth, model, baseline = encode_rows(work, rows, work.label_names)
        compared.append(("workspace: TF-IDF baseline → model",
                         paired_change(metric, (truth, baseline), (truth, model))))
    else:
        notes.append(f"The workspace has only {len(rows)} test rows (at least "
                     f"{MIN_PAIRED_ROWS} needed): no verdict on the model against the baseline.")
    return "\n\n".join([f"### Headline: {metric} on the test split",
                         *([_change_table(compared)] if compared else []),
                         *notes, *_footnotes(compared, work.multilabel)])


def _change_table(compared: list[tuple[str, Change]]) -> str:
    mcnemar = any(change.p_value is not None for _, change in compared)
    header = ["compared", "before", "after", "change", f"{CONFIDENCE:.0%} interval",
              *(["McNemar p"] if mcnemar else []), "verdict"]
    lines = [_row(header), _row(["---"] * len(header))]
    for number, (what, change) in enumerate(compared, start=1):
        # A mark ties a verdict the two tests disagreed on to its footnote.
        mark = f" ({number})" if change.interval_excludes_zero != change.beyond_noise else ""
        p_value = [_p(change.p_value) if change.p_value is not None else "—"] if mcnemar else []
        lines.append(_row([what, f"{change.before:.4f}", f"{change.after:.4f}",
                           f"{change.delta:+.4f}", f"{change.low:+.4f} to {change.high:+.4f}",
                           *p_value, f"**{change.verdict}**{mark}"]))
    return "\n".join(lines)


def _footnotes(compared: list[tuple[str, Change]], multilabel: bool) -> list[str]:
    if not compared:
        return []
    rule = ("the interval excludes 0" if multilabel else
            "the interval excludes 0 and McNemar's exact test on the rows only one side gets "
            f"right gives p < {ALPHA}")
    lines = [f"_Interval: paired bootstrap over the compared rows ({RESAMPLES:,} resamples, "
             f"seed {SEED}), percentiles of the change. Beyond noise when {rule}._"]
    for number, (_, change) in enumerate(compared, start=1):
        if change.interval_excludes_zero != change.beyond_noise:
            lines.append(f"_({number}) The interval excludes 0, but only {change.gained:,} rows "
                         f"were gained and {change.lost:,} lost (McNemar p = "
                         f"{_p(change.p_value)}): too few changed rows to call it._")
    return lines


def _paired_note(shared: int, total: int, base_total: int, rev: str) -> str:
    if shared == total == base_total:
        return f"Paired on {shared:,} of {total:,} test rows."
    return (f"Paired on {shared:,} of {total:,} test rows (`{rev}` has {base_total:,}): the test "
            "rows differ, so the values compared are on the shared rows only.")


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.2g}"


# --- The details: dvc's diffs and the plots, folded. ---


def render_plots(plots: dict[str, Any], base: str) -> list[str]:
    """One markdown block per plot in ``dvc plots diff --json --split`` output.

    A plot whose x and y values are all categorical (the confusion template) becomes a count
    matrix; any other becomes a curve table with one y column per revision (per source file and
    revision when a plot draws several files, as dvc.yaml's top-level loss plot does).
    """
    blocks = []
    for plot_id, entries in sorted(plots.get("data", {}).items()):
        for entry in entries:
            anchors = entry.get("anchor_definitions", {})
            rows = anchors.get("<DVC_METRIC_DATA>") or []
            x, y = anchors.get("<DVC_METRIC_X_LABEL>"), anchors.get("<DVC_METRIC_Y_LABEL>")
            label = y
            if rows and y not in rows[0] and _INFERRED_Y in rows[0]:
                # A plot whose y mapping names several fields: dvc puts every value under one
                # inferred name, and each row's source in "filename::field".
                y = _INFERRED_Y
                fields = dict.fromkeys(str(r.get(_SOURCE_FIELD, "")).rpartition("::")[2]
                                       for r in rows)
                label = ", ".join(field for field in fields if field) or label
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
                # The stroke-dash field tells apart the files (or fields) one plot draws.
                dash = anchors.get("<DVC_METRIC_STROKE_DASH>")
                series = dash.get("field") if isinstance(dash, dict) else None
                block = curve_table(plot_id, rows, x, y, [r for r in revs if r in present],
                                    series=series if series in rows[0] else None, label=label)
            missing = ", ".join(f"`{rev}`" for rev in revs if rev not in present)
            blocks.append(block + (f"\n\n_No data at {missing}._" if missing else ""))
    return blocks


def curve_table(plot_id: str, rows: list[dict[str, Any]], x: str, y: str,
                revs: Sequence[str], max_rows: int = MAX_CURVE_ROWS, series: str | None = None,
                label: str | None = None) -> str:
    """``x | y at rev1 | y at rev2 …``, x sorted numerically, at most ``max_rows`` rows.

    With ``series`` (a row field naming the curve's source) and more than one value of it in
    ``rows``, a column per source and revision. ``label`` names y in the title (default ``y``).
    """
    sources = list(dict.fromkeys(str(row.get(series)) for row in rows)) if series else []
    columns = [(source, rev) for source in sources for rev in revs] if len(sources) > 1 \
        else [(None, rev) for rev in revs]
    values: dict[tuple[str | None, str], dict[float, str]] = {column: {} for column in columns}
    for row in rows:
        column = (str(row.get(series)) if len(sources) > 1 else None, row.get("rev"))
        if column in values and _is_number(row[x]) and _is_number(row[y]):
            values[column][float(row[x])] = f"{float(row[y]):.4g}"
    # A file that one revision lacks (e.g. validation loss with refit on) is no column there.
    columns = [column for column in columns if values[column]] if len(sources) > 1 else columns
    xs = _thin(sorted({key for by_x in values.values() for key in by_x}), max_rows)
    header = [f"`{rev}`" if source is None else f"{source} `{rev}`" for source, rev in columns]
    lines = [f"**{plot_id}**: {label or y} by {x}", "",
             _row([x, *header]), _row(["---"] * (len(columns) + 1))]
    lines += [_row([f"{key:g}", *(values[column].get(key, "—") for column in columns)])
              for key in xs]
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


def _changed_rows(markdown: str) -> tuple[list[str], list[str]]:
    """A dvc ``--md`` diff table as (header lines, rows), without rows whose two values print
    the same: dvc lists a metric that moved below its display precision as ``0.0 → 0.0``."""
    lines = [line for line in markdown.splitlines() if line.strip()]
    header, rows = lines[:2], lines[2:]
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    names = [cell.strip() for cell in header[0].strip().strip("|").split("|")] if header else []
    # Columns: Path, Metric/Param, <rev>, workspace[, Change]; the values are the two revisions.
    values = slice(2, 4) if len(names) >= 4 else slice(0, 0)
    kept = [row for row, cell in zip(rows, cells, strict=True)
            if len(set(cell[values])) != 1]
    return header, kept


def _folded(summary: str, table: tuple[list[str], list[str]], empty: str) -> str:
    # DVC prints a header-only table when nothing changed; say so in words instead.
    header, rows = table
    if not rows:
        return empty
    return _details(summary.format(n=len(rows)), "\n".join([*header, *rows]))


def _details(summary: str, body: str) -> str:
    # GitHub renders markdown inside <details> only after a blank line.
    return f"<details><summary>{summary}</summary>\n\n{body.strip()}\n\n</details>"


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
