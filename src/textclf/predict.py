"""`textclf predict`: classify text with models/model.onnx through ONNX Runtime, without torch.

The ONNX file describes itself (label names, encoding, max length, pad id in its metadata), so
this module needs numpy, tiktoken and onnxruntime only, and a serving image needs no torch.
Text goes through the same cleaning (`text.model_input`) and tokenization (`tokenization.encode`,
`tokenization.pad`) as the training data; the parity stage checks this very path against torch.

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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnxruntime as ort

from textclf.errors import TextclfError
from textclf.ort_fusion import SLOW_ORT_FUSIONS
from textclf.text import model_input
from textclf.tokenization import encode, pad
from textclf.tokenizer import load_encoding

_REQUIRED_METADATA = ("label_names", "encoding", "max_length", "pad_id")
_SORTED_CHUNK = 32  # texts per ORT call inside one predict(): little padding, few calls
# An int8 model on a CPU answers a call of at most this many tokens (one short text) ~9% sooner
# on the calling thread alone than with ORT's second intra-op thread, which only pays off for
# longer calls (measured: 1.14x faster at 16 tokens, 1.09x at 64, 0.83x at 96).
_ONE_THREAD_MAX_TOKENS = 64
_MAKE_MODEL = "run `dvc repro`, or `dvc pull models/model.onnx`"


class Predictor:
    """One ONNX Runtime session over a textclf ONNX file, plus the text -> ids path before it."""

    def __init__(self, model_path: Path | str, providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise TextclfError(f"{path}: model not found. To create it, {_MAKE_MODEL}.")
        if providers is None:
            # CUDA first when this onnxruntime build has it; ORT falls back to CPU by itself.
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in available]
        self.session = _open_session(path, providers, options)
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in _REQUIRED_METADATA if key not in meta]
        if missing:
            raise TextclfError(
                f"{path}: not a textclf model: its metadata lacks {', '.join(missing)}. "
                "Export it with `textclf export` (or `dvc repro export`)."
            )
        try:
            self.label_names: list[str] = list(json.loads(meta["label_names"]))
            self.max_length = int(meta["max_length"])
            self.pad_id = int(meta["pad_id"])
        except (ValueError, TypeError) as exc:
            raise TextclfError(
                f"{path}: unreadable textclf metadata ({exc}). Re-export it with `textclf "
                "export` (or `dvc repro export`)."
            ) from None
        self.path = path
        self.encoding_name = meta["encoding"]
        self.lowercase = meta.get("lowercase", "false") == "true"
        self.quantized = meta.get("quantized", "none") == "int8"
        self.encoding = load_encoding(self.encoding_name)
        self.input_name = self.session.get_inputs()[0].name
        # Small calls of an int8 model go to a second, one-thread session (see
        # _ONE_THREAD_MAX_TOKENS); not when the caller chose the session options.
        self._small_calls: ort.InferenceSession | None = None
        if (self.quantized and options is None and (os.cpu_count() or 1) > 1
                and self.session.get_providers()[0] == "CPUExecutionProvider"):
            one_thread = ort.SessionOptions()
            one_thread.intra_op_num_threads = 1
            self._small_calls = _open_session(path, ["CPUExecutionProvider"], one_thread)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Raw ids int64 [B, T]: cleaned, truncated to max_length, right-padded to the longest."""
        cleaned = [model_input(t, self.lowercase) for t in texts]
        return pad(encode(self.encoding, cleaned, self.max_length), self.pad_id)

    def _sorted_logits(self, cleaned: Sequence[str]) -> np.ndarray:
        # Padding a whole batch to its longest text wastes most of the work (attention grows
        # with length squared): run length-sorted chunks, each trimmed to its own longest text.
        rows = encode(self.encoding, cleaned, self.max_length)
        order = np.argsort([len(r) for r in rows], kind="stable")
        out = np.empty((len(rows), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(order), _SORTED_CHUNK):
            chunk = order[start:start + _SORTED_CHUNK]
            out[chunk] = self.logits(pad([rows[i] for i in chunk], self.pad_id))
        return out

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 [B, K] for raw ids as ``encode`` returns them."""
        session = self.session
        if self._small_calls is not None and ids.size <= _ONE_THREAD_MAX_TOKENS:
            session = self._small_calls
        return session.run(None, {self.input_name: ids})[0]

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One {"label", "probabilities"} per text (plus "empty": True for empty cleaned text)."""
        if not texts:
            return []
        cleaned = [model_input(t, self.lowercase) for t in texts]
        probs = softmax(self._sorted_logits(cleaned))
        out = []
        for text, row in zip(cleaned, probs, strict=True):
            record: dict[str, Any] = {
                "label": self.label_names[int(row.argmax())],
                "probabilities": {n: float(p) for n, p in zip(self.label_names, row, strict=True)},
            }
            if not text:
                record["empty"] = True
            out.append(record)
        return out


def _open_session(path: Path, providers: Sequence[str],
                  options: ort.SessionOptions | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers),
                                    disabled_optimizers=list(SLOW_ORT_FUSIONS))
    except Exception as exc:  # ORT's pybind errors share no useful base class
        raise TextclfError(
            f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]}). It may be "
            f"truncated or a DVC pointer; {_MAKE_MODEL}."
        ) from None


def softmax(logits: np.ndarray) -> np.ndarray:
    # float64 and max-shift: rows sum to 1 to ~1e-15 and large logits never overflow.
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
