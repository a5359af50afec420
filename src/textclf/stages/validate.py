"""Stage `validate`: parse the raw CSVs, run a Great Expectations suite, drop train/test leakage.

Reads  data/raw/{train,test}.csv
Writes data/validated/{train,test}.parquet  (label int64 0-based, text, title, description)
       data/validated/labels.json           ({"label_names": [...]})
       metrics/validation.json              (rows, class counts and ratio, text lengths, ...)

Structural problems (missing file, bad encoding, NUL bytes, broken quoting, wrong field count, a
header row) stop the parse with the file and line. Content rules run as one GX suite per split;
every failed rule is listed with the offending CSV lines, and nothing is written on failure.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.core.atomic import atomic_dir, write_json
from textclf.core.config import Params, ValidateConfig
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.serving.text import join_title_description

SPLITS = ("train", "test")
FIELDS = ("class", "title", "description")
_HEADER_WORDS = {"class", "class index", "class_index", "label", "labels", "category", "target"}
_INTEGER = re.compile(r"\d+")


@dataclass
class Outcome:
    """One checked rule on one split, from GX or computed here, in one reporting shape."""

    split: str
    rule: str
    success: bool
    observed: str = ""
    rows: list[tuple[Any, Any]] = field(default_factory=list)  # (CSV line, offending value)
    fix: str = "fix the data at the source and re-run `textclf fetch`"


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Validate data/raw; on success write data/validated and metrics/validation.json."""
    cfg = params.validate
    files = {split: paths.raw / f"{split}.csv" for split in SPLITS}
    frames = {split: read_raw(files[split]) for split in SPLITS}
    train, test = frames["train"], frames["test"]

    # Exact duplicates across splits would score memorisation as accuracy.
    leaked = train["text"].isin(set(test["text"]))
    n_leaked = int(leaked.sum())
    share = n_leaked / len(train) if len(train) else 0.0
    leak = Outcome(
        "train", "train/test leakage (train texts also in test)", share <= cfg.max_leakage_share,
        f"{n_leaked} rows = {share:.2%} of train > validate.max_leakage_share "
        f"{cfg.max_leakage_share:.2%}",
        list(train.loc[leaked, "text"].head(cfg.report_rows).items()),
        "de-duplicate the source, or raise validate.max_leakage_share in params.yaml",
    )
    if leak.success:
        frames["train"] = train.loc[~leaked]

    outcomes = _run_suite(frames, cfg)
    for split, frame in frames.items():
        outcomes[split].append(_class_balance(split, frame, cfg))
    outcomes["train"].append(leak)
    failed = [o for split in SPLITS for o in outcomes[split] if not o.success]
    if failed:
        raise TextclfError(_report(failed, files, cfg))

    with atomic_dir(paths.validated) as tmp:
        for split, frame in frames.items():
            out = frame[["label", "text", "title", "description"]].reset_index(drop=True)
            out["label"] = out["label"].astype("int64") - 1  # the model's classes start at 0
            out.to_parquet(tmp / f"{split}.parquet", index=False)
        write_json(tmp / "labels.json", {"label_names": list(cfg.label_names)})
    checks = [o for split in SPLITS for o in outcomes[split]]
    metrics: dict[str, Any] = {split: _split_metrics(frames[split], cfg) for split in SPLITS}
    metrics.update(
        success=True,
        expectations_evaluated=len(checks),
        expectations_passed=sum(o.success for o in checks),
        leakage_rows_dropped=n_leaked,
        leakage_share=round(share, 6),
    )
    write_json(paths.validation_metrics, metrics)
    return {"train_rows": len(frames["train"]), "test_rows": len(frames["test"]),
            "leakage_rows_dropped": n_leaked, "expectations_passed": len(checks)}


def read_raw(path: Path) -> pd.DataFrame:
    """Parse one char-CNN CSV into label/title/description/text/text_chars, indexed by line.

    ``label`` holds the class as int where it is integer text and the raw string otherwise, so
    the suite can report bad values instead of the parse crashing on them.
    """
    if not path.is_file():
        raise TextclfError(f"validate: {path} not found. Run `textclf fetch` (or `dvc repro`) "
                           "first to create it.")
    data = path.read_bytes()
    skipped = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    nul = data.find(b"\x00")
    if nul >= 0:
        raise TextclfError(
            f"validate: {path} line {_line_at(data, nul)} (byte offset {nul}) contains "
            "a NUL byte: the file is binary or corrupt. Re-download it (`textclf fetch`) or "
            "remove the NUL bytes from the source."
        )
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skipped + exc.start
        raise TextclfError(
            f"validate: {path} line {_line_at(data, offset)} (byte offset {offset}) "
            f"is not valid UTF-8 (bytes {data[offset:offset + 4]!r}...). Re-encode the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or fix that line at the source."
        ) from None

    lines: list[int] = []
    records: list[tuple[str, str, str]] = []
    raw_lines: list[str] = []  # the physical lines of the record being read, to quote in errors

    def source() -> Iterator[str]:
        for physical in io.StringIO(text, newline=""):
            raw_lines.append(physical)
            yield physical

    reader = csv.reader(source(), strict=True)
    start = 1  # first physical line of the record being read (quoted fields may span lines)
    try:
        for row in reader:
            raw = "".join(raw_lines).rstrip("\r\n")
            raw_lines.clear()
            if row:
                _check_row(path, start, row, raw)
                lines.append(start)
                records.append((row[0], row[1], row[2]))
            start = reader.line_num + 1
    except csv.Error as exc:
        raw_row = "".join(raw_lines).rstrip()
        delimiter = next((d for d in (";", "\t", "|") if f'"{d}"' in raw_row), None)
        hint = (f" The fields look separated by {delimiter!r}: the char-CNN format separates "
                "them with commas; re-export the file with ',' as the delimiter."
                if delimiter else "")
        raise TextclfError(
            f"validate: {path} line {start}: broken CSV quoting ({exc}, noticed at line "
            f"{reader.line_num}); the row starts {_clip(raw_row)}. Every field must be "
            'wrapped in double quotes, with quotes inside a field doubled (""); a truncated file '
            f"needs re-downloading (`textclf fetch`).{hint}"
        ) from None

    # The CSV line is the index, so GX reports offending rows by the line a user can open.
    index = pd.Index(lines, name="line", dtype="int64")
    classes = [int(c) if _INTEGER.fullmatch(c) else c for c, _, _ in records]
    text = [join_title_description(t, d) for _, t, d in records]
    return pd.DataFrame({
        "label": pd.Series(classes, index=index, dtype=object),
        "title": pd.Series([t for _, t, _ in records], index=index, dtype=str),
        "description": pd.Series([d for _, _, d in records], index=index, dtype=str),
        "text": pd.Series(text, index=index, dtype=str),
        "text_chars": pd.Series([len(t) for t in text], index=index, dtype="int64"),
    })


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _check_row(path: Path, line: int, row: list[str], raw: str) -> None:
    if len(row) != len(FIELDS):
        raise TextclfError(
            f"validate: {path} line {line}: {len(row)} field(s), expected {len(FIELDS)} "
            f"({', '.join(FIELDS)}); the row starts {_clip(raw)}. Quote every field and double "
            'any quote inside one (""), or remove the stray line.'
        )
    label = row[0].strip().lower()
    if not _INTEGER.fullmatch(label) and (label in _HEADER_WORDS or row[1].lower() == "title"):
        raise TextclfError(
            f"validate: {path} line {line} looks like a header row ({_clip(raw)}): the char-CNN "
            "format has no header, and field `class` must be a class number. Delete that line."
        )


def _run_suite(frames: dict[str, pd.DataFrame], cfg: ValidateConfig) -> dict[str, list[Outcome]]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    classes = list(range(1, len(cfg.label_names) + 1))
    length_fix = ("fix those rows at the source, or adjust validate.min_text_chars / "
                  "validate.max_text_chars in params.yaml")
    rules = [
        (gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=["label", "title", "description", "text", "text_chars"], exact_match=True),
         "this is a bug in textclf.validate"),
        (gx.expectations.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
         "fetch more rows, or lower validate.min_rows in params.yaml"),
        (gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
         f"classes must be integers 1..{len(classes)}: fix those rows, or list every class "
         "in validate.label_names in params.yaml"),
        (gx.expectations.ExpectColumnDistinctValuesToContainSet(column="label",
                                                                value_set=classes),
         "every class needs rows in every split: fix the source or the fetch subsampling, or "
         "drop the class from validate.label_names"),
        (gx.expectations.ExpectColumnValuesToNotBeNull(column="text"), length_fix),
        # At least one character even if min_text_chars is 0: an empty text is never valid.
        (gx.expectations.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=max(1, cfg.min_text_chars), max_value=cfg.max_text_chars),
         length_fix),
    ]
    context = gx.get_context(mode="ephemeral")
    # GX draws tqdm bars on stderr for every metric; noise in a pipeline log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("raw").add_dataframe_asset("csv")
             .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(gx.ExpectationSuite(name="agnews"))
    fixes = {}
    for expectation, fix in rules:
        fixes[suite.add_expectation(expectation).id] = fix
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="agnews", data=batch, suite=suite))
    outcomes = {}
    for split, frame in frames.items():
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "SUMMARY",
                           "partial_unexpected_count": cfg.report_rows},
        )
        outcomes[split] = [_outcome(split, r, fixes.get(r.expectation_config.id, ""))
                           for r in result.results]
    return outcomes


def _outcome(split: str, result: Any, fix: str) -> Outcome:
    config, res = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    rule = f"{config.type}" + (f" (column `{column}`)" if column else "")
    # GX 1.x puts a flat dict here, or one dict per metric ID when a metric raised.
    info = result.exception_info or {}
    raised = [i.get("exception_message") for i in (info, *info.values())
              if isinstance(i, dict) and i.get("raised_exception")]
    if raised:
        observed = f"GX could not evaluate it: {raised[0]}"
    elif "unexpected_count" in res and "element_count" in res:
        observed = (f"{res['unexpected_count']} of {res['element_count']} rows unexpected; "
                    f"expected {_expected(config.kwargs)}")
    elif "partial_missing_list" in res:
        observed = f"classes with no rows: {res['partial_missing_list']}"
    else:
        observed = f"observed {res.get('observed_value')}; expected {_expected(config.kwargs)}"
    rows = [(item.get("line"), item.get(column))
            for item in res.get("partial_unexpected_index_list") or []]
    return Outcome(split, rule, bool(result.success), observed, rows, fix)


def _expected(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("batch_id", "column"))


def _class_balance(split: str, frame: pd.DataFrame, cfg: ValidateConfig) -> Outcome:
    counts = _class_counts(frame, cfg)
    present = [n for n in counts.values() if n]
    ratio = max(present) / min(present) if present else 1.0
    return Outcome(
        split, "class balance (largest / smallest class count)", ratio <= cfg.max_class_ratio,
        f"ratio {ratio:.2f} > validate.max_class_ratio {cfg.max_class_ratio} (counts {counts})",
        fix="rebalance the source, or raise validate.max_class_ratio in params.yaml",
    )


def _class_counts(frame: pd.DataFrame, cfg: ValidateConfig) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {name: int(counts.get(i, 0)) for i, name in enumerate(cfg.label_names, start=1)}


def _split_metrics(frame: pd.DataFrame, cfg: ValidateConfig) -> dict[str, Any]:
    counts = _class_counts(frame, cfg)
    chars = frame["text_chars"]
    return {
        "rows": len(frame),
        "class_counts": counts,
        "class_ratio": round(max(counts.values()) / min(counts.values()), 4),
        "text_chars": {"min": int(chars.min()), "median": float(chars.median()),
                       "max": int(chars.max())},
        "duplicate_texts": int(frame["text"].duplicated().sum()),
    }


def _report(failed: list[Outcome], files: dict[str, Path], cfg: ValidateConfig) -> str:
    out = [f"validate: {len(failed)} check(s) failed; nothing was written."]
    for o in failed:
        out.append(f"- {files[o.split]}: {o.rule}: {o.observed}.")
        for line, value in o.rows[: cfg.report_rows]:
            out.append(f"    line {line}: {_clip(value)}")
        out.append(f"  To fix: {o.fix}.")
    return "\n".join(out)


def _clip(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
