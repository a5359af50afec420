"""`textclf predict`: one JSON line per input text, from models/model.onnx, without torch.

The Python API is the same path: ``from textclf.predict import Predictor``;
``Predictor("models/model.onnx").predict(["some text"])``.

CLI contract (`run_cli`): one JSON line per input, in input order, streamed batch by batch:
  {"line": n, "label": name, "probabilities": {name: p, ...}}     (+ "empty": true when the
                                                                    cleaned text is empty)
  {"line": n, "labels": [name, ...], "scores": {name: p, ...}}    (a multi-label model: every
                                                                    label at its threshold)
  {"line": n, "error": "invalid UTF-8 ..."}                          (that input is skipped)
Inputs are plain lines (one text each), or with ``jsonl`` JSON objects: {"text": ...,
"text_pair": ...} or the dataset's own column names (the model's input_fields; several text
columns are joined by a space, as in training). A pair model needs JSON lines.
`line` counts inputs from 1. The exit status is 0 when every input got its JSON line, including
per-line errors (a count goes to stderr); problems that stop the run (missing model, unreadable
file) raise `TextclfError`, which the CLI turns into exit status 1.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from textclf.core.errors import TextclfError
from textclf.serving.predictor import Predictor, softmax

__all__ = ["Predictor", "run_cli", "softmax"]


# (line number, (text, text_pair or None) or None, error or None)
Item = tuple[int, tuple[str, str | None] | None, str | None]


def run_cli(texts: list[str], file: Path | None, model: Path, batch_size: int,
            jsonl: bool = False) -> int:
    """Print one JSON line per input (see the module docstring); return the exit status."""
    predictor = Predictor(model)  # first, so a missing model fails before stdin is read
    jsonl = jsonl or (file is not None and file.suffix in (".jsonl", ".ndjson"))
    if predictor.metadata.tokenizer.pairs and not jsonl:
        raise TextclfError(
            f"{model} classifies pairs of texts: give JSON lines (--jsonl), one object per "
            'line such as {"text": "...", "text_pair": "..."} (or the dataset\'s column names '
            f"{predictor.metadata.input_fields})."
        )
    if texts:
        items: Iterable[Item] = (_argument(n, t) for n, t in enumerate(texts, start=1))
        if jsonl:
            items = (_from_json(predictor, item) for item in items)
        return _emit(predictor, items, batch_size)
    if file is not None and str(file) != "-":
        try:
            with Path(file).open("rb") as fh:
                items = _read_lines(fh)
                if jsonl:
                    items = (_from_json(predictor, item) for item in items)
                return _emit(predictor, items, batch_size)
        except OSError as exc:
            raise TextclfError(
                f"{file}: cannot read ({exc.strerror}). Pass a text file with one text per "
                "line, or '-' for standard input."
            ) from None
    if sys.stdin.isatty():
        print("textclf: reading one text per line from stdin (Ctrl-D ends)", file=sys.stderr)
        batch_size = 1  # someone is typing: answer each line as it comes, not every 64th
    items = _read_lines(sys.stdin.buffer)
    if jsonl:
        items = (_from_json(predictor, item) for item in items)
    return _emit(predictor, items, batch_size)


def _read_lines(fh: BinaryIO) -> Iterator[Item]:
    # Bytes in, decoded per line: one bad line becomes an error record, not a crashed run.
    for n, raw in enumerate(fh, start=1):
        line = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield n, (line.decode("utf-8"), None), None
        except UnicodeDecodeError as exc:
            yield n, None, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"


def _from_json(predictor: Predictor, item: Item) -> Item:
    """A decoded line as a JSON object -> (text, text_pair), or that line's error record."""
    n, value, error = item
    if error is not None or value is None:
        return item
    try:
        record = json.loads(value[0])
    except json.JSONDecodeError as exc:
        return n, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return n, None, 'not a JSON object: give {"text": ...}'
    fields = predictor.metadata.input_fields
    own = fields.get("text") or []
    if "text" in record:
        text = record["text"]
    elif own and all(c in record for c in own):
        text = " ".join(str(record[c]) for c in own)
    else:
        return n, None, f'no "text" key (nor the dataset\'s text columns {own})'
    pair_keys = ["text_pair", *(fields.get("text_pair") or [])]
    pair = next((record[k] for k in pair_keys if k in record), None)
    if predictor.metadata.tokenizer.pairs and pair is None:
        return n, None, f"no second text: give one of the keys {pair_keys}"
    if not predictor.metadata.tokenizer.pairs:
        pair = None
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        return n, None, "the text values must be JSON strings"
    return n, (text, pair), None


def _argument(n: int, text: str) -> Item:
    # Python keeps undecodable argv bytes as lone surrogates (U+DC80..U+DCFF): the same error
    # record as an undecodable stdin line, rather than a score for replacement characters.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        at = len(text[: exc.start].encode("utf-8"))
        byte = ord(text[exc.start]) - 0xDC00
        reason = f"undecodable byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else exc.reason
        return n, None, f"invalid UTF-8 at byte {at}: {reason}"
    return n, (text, None), None


def _emit(predictor: Predictor, items: Iterable[Item], batch_size: int) -> int:
    out = sys.stdout
    errors = 0
    it = iter(items)
    try:
        while batch := list(itertools.islice(it, batch_size)):
            good = [value for _, value, err in batch if err is None and value is not None]
            pairs = ([pair or "" for _, pair in good] if predictor.metadata.tokenizer.pairs
                     else None)
            results = iter(predictor.predict([text for text, _ in good], pairs))
            for n, _, err in batch:
                if err is not None:
                    errors += 1
                    record: dict[str, Any] = {"line": n, "error": err}
                else:
                    result = next(results)
                    for key in ("probabilities", "scores"):
                        if key in result:
                            result[key] = {k: round(p, 6) for k, p in result[key].items()}
                    record = {"line": n, **result}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; further flushes go to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    if errors:
        print(f"textclf: {errors} input(s) could not be read; see their \"error\" lines",
              file=sys.stderr)
    return 0
