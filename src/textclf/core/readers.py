"""Reading a split file of any supported format into one table, or one paragraph saying why not.

Formats, by extension: ``.csv`` (a header row, or the columns named in params for a headerless
file such as AG News's), ``.tsv``, ``.jsonl`` / ``.ndjson`` (one JSON object per line) and
``.parquet``. Every table comes back indexed by the place a user opens to fix a row: the line a
CSV record starts on, the JSONL line, or the Parquet row (from 1). CSV/TSV values are text;
JSONL and Parquet values keep their types (callers compare labels as text).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.core.errors import TextclfError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
         (codecs.BOM_UTF8, "UTF-8 with a byte-order mark"))


def format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TextclfError(
            f"{path}: unknown file type {path.suffix!r}. Use one of "
            f"{', '.join(FORMATS)} (the extension says the format), or name the files in "
            "data.files in params.yaml."
        )
    return fmt


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The file as a DataFrame; ``columns`` names a headerless CSV/TSV's columns in order."""
    if not path.is_file():
        raise TextclfError(f"{path} not found. Run `textclf fetch` (or `dvc repro`) first.")
    fmt = format_of(path)
    if fmt == "parquet":
        return _read_parquet(path)
    text = _decode(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text, _DELIMITERS[fmt], columns)


def require_columns(path: Path, frame: pd.DataFrame, wanted: Sequence[str], key: str) -> None:
    """Every column ``wanted`` (params key ``key``) is in ``frame``, or the nearest is named."""
    have = [str(c) for c in frame.columns]
    for name in wanted:
        if name not in have:
            near = difflib.get_close_matches(name, have, n=1, cutoff=0.5)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise TextclfError(
                f"{path}: has no column {name!r} (params data.{key}); its columns are "
                f"{', '.join(map(repr, have))}.{hint} Set data.{key} in params.yaml (or "
                f"`dvc exp run -S data.{key}=...`) to the right column."
            )


def _decode(path: Path) -> str:
    data = path.read_bytes()
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise TextclfError(
                f"{path}: the file is {name} (it starts with the bytes {bom!r}); textclf reads "
                "UTF-8 without a byte-order mark. Re-save it as plain UTF-8 (e.g. `iconv -f "
                f"{name.split()[0]} -t UTF-8 {path.name}`, or drop the mark with `sed -i "
                "'1s/^\\xEF\\xBB\\xBF//'`)."
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise TextclfError(
            f"{path} line {_line_at(data, nul)} (byte offset {nul}) contains a NUL byte: the "
            "file is binary, UTF-16 without a mark, or corrupt. Re-download it (`textclf fetch`) "
            "or re-save it as UTF-8 text."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextclfError(
            f"{path} line {_line_at(data, exc.start)} (byte offset {exc.start}) is not valid "
            f"UTF-8 (bytes {data[exc.start:exc.start + 4]!r}...). Re-encode the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or fix that line at the source."
        ) from None


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_delimited(path: Path, text: str, delimiter: str,
                    columns: Sequence[str] | None) -> pd.DataFrame:
    raw_lines: list[str] = []  # the physical lines of the record being read, to quote in errors

    def source() -> Iterator[str]:
        for physical in io.StringIO(text, newline=""):
            raw_lines.append(physical)
            yield physical

    reader = csv.reader(source(), delimiter=delimiter, strict=True)
    names = list(columns) if columns else None
    lines: list[int] = []
    records: list[list[str]] = []
    start = 1  # first physical line of the record being read (quoted fields may span lines)
    try:
        for row in reader:
            raw = "".join(raw_lines).rstrip("\r\n")
            raw_lines.clear()
            if row:
                if names is None:
                    names = [field.strip() for field in row]
                else:
                    _check_width(path, start, row, raw, names, delimiter, bool(columns))
                    lines.append(start)
                    records.append(row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raw_row = "".join(raw_lines).rstrip()
        raise TextclfError(
            f"{path} line {start}: broken quoting ({exc}, noticed at line {reader.line_num}); "
            f"the row starts {clip(raw_row)}. A field holding the delimiter {delimiter!r}, a "
            'quote or a line break must be wrapped in double quotes, with quotes inside doubled '
            '(""); a truncated file needs re-downloading (`textclf fetch`).'
            + _delimiter_hint(raw_row, delimiter)
        ) from None
    if names is None:
        raise TextclfError(f"{path}: the file is empty. Fetch it again or fix the source.")
    frame = pd.DataFrame(records, columns=names, dtype=object)
    frame.index = pd.Index(lines, name="line", dtype="int64")
    return frame


def _check_width(path: Path, line: int, row: list[str], raw: str, names: list[str],
                 delimiter: str, headerless: bool) -> None:
    if len(row) == len(names):
        # A header row names (most of) the columns: "Class Index","Title","Description".
        named = sum(f.strip().lower() == n.lower() for f, n in zip(row, names, strict=True))
        if headerless and named >= max(1, len(names) - 1):
            raise TextclfError(
                f"{path} line {line} looks like a header row ({clip(raw)}), but params "
                "data.details.columns says the file has none. Delete that line, or set "
                "data.details to null so the header is read."
            )
        return
    where = "the header" if not headerless else "params data.details.columns"
    raise TextclfError(
        f"{path} line {line}: {len(row)} field(s), but {where} names {len(names)} "
        f"({', '.join(names)}); the row starts {clip(raw)}. Quote any field holding "
        f"{delimiter!r} and double the quotes inside it, or remove the stray line."
        + _delimiter_hint(raw, delimiter)
    )


def _delimiter_hint(raw: str, delimiter: str) -> str:
    others = [d for d in (",", ";", "\t", "|") if d != delimiter and d in raw]
    if not others:
        return ""
    return (f" The row also holds {others[0]!r}: if some rows use another delimiter (mixed "
            f"delimiters), re-export the whole file with {delimiter!r}.")


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextclfError(
                f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); the "
                f"line starts {clip(line)}. A JSON lines file holds one JSON object per line: "
                "fix or remove that line."
            ) from None
        if not isinstance(record, dict):
            raise TextclfError(
                f"{path} line {number}: a JSON {type(record).__name__}, not an object; each "
                'line must be one object such as {"text": "...", "label": "..."}.'
            )
        records.append(record)
        lines.append(number)
    frame = pd.DataFrame.from_records(records)
    frame.index = pd.Index(lines, name="line", dtype="int64")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise TextclfError(
            f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}). Check that it "
            "really is Parquet (the extension says so) and was copied whole; re-fetch it or "
            "write it again (pandas: `df.to_parquet(path)`)."
        ) from None
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return frame


def clip(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
