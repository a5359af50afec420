"""`textclf predict`: one JSON line per input text, from models/model.onnx, without torch.

The Python API is the same path: ``from textclf.predict import Predictor``;
``Predictor("models/model.onnx").predict(["some text"])``.

CLI contract (`run_cli`): one JSON line per input, in input order, streamed batch by batch:
  {"line": n, "label": name, "probabilities": {name: p, ...}}     (+ "empty": true when the
                                                                    cleaned text is empty)
  {"line": n, "error": "invalid UTF-8 ..."}                          (that input is skipped)
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


# (line number, text or None, error or None)
Item = tuple[int, str | None, str | None]


def run_cli(texts: list[str], file: Path | None, model: Path, batch_size: int) -> int:
    """Print one JSON line per input (see the module docstring); return the exit status."""
    predictor = Predictor(model)  # first, so a missing model fails before stdin is read
    if texts:
        items: Iterable[Item] = (_argument(n, t) for n, t in enumerate(texts, start=1))
        return _emit(predictor, items, batch_size)
    if file is not None and str(file) != "-":
        try:
            with Path(file).open("rb") as fh:
                return _emit(predictor, _read_lines(fh), batch_size)
        except OSError as exc:
            raise TextclfError(
                f"{file}: cannot read ({exc.strerror}). Pass a text file with one text per "
                "line, or '-' for standard input."
            ) from None
    if sys.stdin.isatty():
        print("textclf: reading one text per line from stdin (Ctrl-D ends)", file=sys.stderr)
        batch_size = 1  # someone is typing: answer each line as it comes, not every 64th
    return _emit(predictor, _read_lines(sys.stdin.buffer), batch_size)


def _read_lines(fh: BinaryIO) -> Iterator[Item]:
    # Bytes in, decoded per line: one bad line becomes an error record, not a crashed run.
    for n, raw in enumerate(fh, start=1):
        line = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield n, line.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield n, None, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"


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
    return n, text, None


def _emit(predictor: Predictor, items: Iterable[Item], batch_size: int) -> int:
    out = sys.stdout
    errors = 0
    it = iter(items)
    try:
        while batch := list(itertools.islice(it, batch_size)):
            good = [text for _, text, err in batch if err is None]
            results = iter(predictor.predict(good))
            for n, _, err in batch:
                if err is not None:
                    errors += 1
                    record: dict[str, Any] = {"line": n, "error": err}
                else:
                    result = next(results)
                    result["probabilities"] = {k: round(p, 6)
                                               for k, p in result["probabilities"].items()}
                    record = {"line": n, **result}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; further flushes go to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    if errors:
        print(f"textclf: {errors} input(s) could not be decoded; see their \"error\" lines",
              file=sys.stderr)
    return 0
