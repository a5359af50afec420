"""`predict`: the torch-free ONNX Runtime path, as a Python API and as `textclf predict`."""

from __future__ import annotations

import json
import queue
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import LABEL_NAMES
from textclf.cli import app
from textclf.core.errors import TextclfError
from textclf.predict import Predictor

SPORTS = "Coach praises team after league match victory, season goal record for the player"
BUSINESS = "Shares rise as investors cheer quarterly profit and bank merger, stock market up"


@pytest.fixture(scope="module")
def predictor(tiny_onnx: Path) -> Predictor:
    return Predictor(tiny_onnx)


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_predictions_are_distributions_over_the_label_names(predictor: Predictor) -> None:
    results = predictor.predict([SPORTS, BUSINESS, "", "   \t "])
    assert len(results) == 4
    for result in results:
        assert result["label"] in LABEL_NAMES
        assert list(result["probabilities"]) == LABEL_NAMES
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
        assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert [r["label"] for r in results[:2]] == ["Sports", "Business"]
    assert "empty" not in results[0] and results[2]["empty"] and results[3]["empty"]
    assert results[2]["probabilities"] == pytest.approx(results[3]["probabilities"])


def test_a_prediction_does_not_depend_on_its_batch(predictor: Predictor) -> None:
    alone = predictor.predict([SPORTS])[0]["probabilities"]
    long_text = " ".join([BUSINESS] * 20)  # pads SPORTS to the longest row, max_length
    together = predictor.predict([long_text, SPORTS, ""])[1]["probabilities"]
    assert together == pytest.approx(alone, abs=1e-5)
    assert predictor.encode([long_text]).shape == (1, predictor.max_length)


def test_length_sorted_chunks_keep_input_order(predictor: Predictor) -> None:
    # More texts than one sorted chunk, lengths shuffled: results must come back in input order.
    texts = [" ".join([SPORTS if i % 2 else BUSINESS] * (1 + (i * 7) % 5)) for i in range(70)]
    batched = predictor.predict(texts)
    for text, result in zip(texts[::9], batched[::9], strict=True):
        assert result["probabilities"] == pytest.approx(
            predictor.predict([text])[0]["probabilities"], abs=1e-5)


def test_cli_scores_arguments_in_order(tiny_onnx: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), SPORTS, BUSINESS])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [(r["line"], r["label"]) for r in lines] == [(1, "Sports"), (2, "Business")]


def test_undecodable_arguments_get_the_same_error_record_as_stdin_lines(tiny_onnx: Path) -> None:
    # Real argv bytes (a Latin-1 "é"): Python hands them over as lone surrogates.
    done = subprocess.run(
        [sys.executable, "-m", "textclf.cli", "predict", "-m", str(tiny_onnx),
         b"caf\xe9 au lait", SPORTS], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    first, second = _lines(done.stdout.decode())
    assert first == {"line": 1, "error": "invalid UTF-8 at byte 3: undecodable byte 0xe9"}
    assert (second["line"], second["label"]) == (2, "Sports")
    assert b"1 input(s) could not be read" in done.stderr


def test_cli_reads_stdin_lines_with_empty_and_undecodable_ones(tiny_onnx: Path) -> None:
    data = f"{SPORTS}\n\n".encode() + b"caf\xe9 \xff\xfe broken\r\n" + f"{BUSINESS}\r\n".encode()
    result = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), "--batch-size", "2"],
                                input=data)
    # Every line got its JSON line, the bad one an error: exit 0, with a count on stderr.
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [r["line"] for r in lines] == [1, 2, 3, 4]
    assert lines[0]["label"] == "Sports" and lines[3]["label"] == "Business"
    assert lines[1]["empty"] is True and lines[1]["label"] in LABEL_NAMES
    assert set(lines[2]) == {"line", "error"} and "invalid UTF-8" in lines[2]["error"]
    assert "1 input(s) could not be read" in result.stderr


def test_cli_reads_a_file_in_batches_and_dash_means_stdin(tiny_onnx: Path,
                                                          tmp_path: Path) -> None:
    texts = [SPORTS, BUSINESS] * 5 + ["", SPORTS]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    by_file = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), "-f", str(path),
                                       "--batch-size", "5"])
    by_dash = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), "-f", "-"],
                                 input=path.read_bytes())
    assert by_file.exit_code == 0 and by_dash.exit_code == 0
    lines = _lines(by_file.stdout)
    assert len(lines) == len(texts) and [r["line"] for r in lines] == list(range(1, 13))
    assert [r["label"] for r in lines[:2]] == ["Sports", "Business"]
    assert lines[10].get("empty") is True
    assert lines == _lines(by_dash.stdout)


def test_missing_model_or_input_file_exit_1_with_the_fix(tiny_onnx: Path,
                                                         tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "-m", str(tmp_path / "model.onnx"), "x"])
    assert result.exit_code == 1
    assert "dvc repro" in result.stderr and "dvc pull models/model.onnx" in result.stderr
    result = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), "-f",
                                      str(tmp_path / "none.txt")])
    assert result.exit_code == 1 and "cannot read" in result.stderr


def test_a_file_without_textclf_metadata_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    import onnx

    model = onnx.load(tiny_onnx)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(TextclfError, match="metadata lacks label_names"):
        Predictor(tmp_path / "bare.onnx")
    (tmp_path / "garbage.onnx").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(TextclfError, match="not a loadable ONNX model"):
        Predictor(tmp_path / "garbage.onnx")


def test_predicting_never_imports_torch(tiny_onnx: Path) -> None:
    # A fresh interpreter: this test process has torch loaded already.
    code = textwrap.dedent(f"""
        import sys
        from textclf.cli import app
        try:
            app(["predict", "-m", {str(tiny_onnx)!r}, "markets rally"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules, "torch was imported"
        from textclf.predict import Predictor
        Predictor({str(tiny_onnx)!r}).predict(["goal", ""])
        assert "torch" not in sys.modules, "torch was imported"
        print("NO TORCH")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "NO TORCH"
    assert json.loads(done.stdout.splitlines()[0])["label"] in LABEL_NAMES


def test_lowercase_models_fold_case_at_serving_time(tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(tiny_onnx)
    for prop in model.metadata_props:
        if prop.key == "lowercase":
            prop.value = "true"
    folded = tmp_path / "lower.onnx"
    onnx.save(model, folded)
    lower = Predictor(folded)
    assert lower.lowercase and not Predictor(tiny_onnx).lowercase
    assert (lower.encode(["OIL Prices RISE"]) == lower.encode(["oil prices rise"])).all()


# --- Robustness of the CLI contract: odd inputs, many lines, constant memory, streaming. ---

def _cli(model: Path, *args: str, input: bytes | None = None) -> list[dict]:
    """Run `textclf predict` in-process; assert exit 0 and return its JSON lines."""
    result = CliRunner().invoke(app, ["predict", "-m", str(model), *args], input=input)
    assert result.exit_code == 0, result.output
    return _lines(result.stdout)


def _assert_prediction(record: dict) -> None:
    assert record["label"] in LABEL_NAMES and list(record["probabilities"]) == LABEL_NAMES
    # The CLI rounds to 6 decimals: the sum is 1 up to 4 roundings.
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_answers_empty_and_whitespace_arguments_as_empty(tiny_onnx: Path) -> None:
    lines = _cli(tiny_onnx, "", "   ", " \t\u00a0\u2003 ", SPORTS)
    assert [r["line"] for r in lines] == [1, 2, 3, 4]
    for record in lines:
        _assert_prediction(record)
    # Whitespace of any kind (tab, no-break and em spaces) cleans to the empty text.
    assert [r.get("empty", False) for r in lines] == [True, True, True, False]
    assert lines[3]["label"] == "Sports"


def test_empty_stdin_prints_nothing_and_exits_0(tiny_onnx: Path) -> None:
    assert _cli(tiny_onnx, input=b"") == []


def test_one_megabyte_lines_are_truncated_not_choked_on(tiny_onnx: Path,
                                                        predictor: Predictor) -> None:
    words = " ".join([BUSINESS] * (2**20 // len(BUSINESS) + 1))[: 2**20]
    run_of_one_char = "x" * 2**20  # one 1 MB "word": the worst case for BPE pre-splitting
    data = "\n".join([SPORTS, words, run_of_one_char, BUSINESS]).encode() + b"\n"
    lines = _cli(tiny_onnx, input=data)  # tiktoken is linear here: ~0.5 s per MB
    assert [r["line"] for r in lines] == [1, 2, 3, 4]
    for record in lines:
        _assert_prediction(record)
        assert "empty" not in record
    # Only max_length tokens count (its head and its tail): the CLI scores the 1 MB line as
    # the Python API does, from exactly max_length ids.
    assert predictor.encode([words]).shape == (1, predictor.max_length)
    assert lines[1]["probabilities"] == pytest.approx(
        predictor.predict([words])[0]["probabilities"], abs=1e-5)
    assert [lines[0]["label"], lines[1]["label"], lines[3]["label"]] == [
        "Sports", "Business", "Business"]
    # The same 1 MB texts as arguments (no ARG_MAX in-process) give the same records.
    by_args = _cli(tiny_onnx, words, run_of_one_char)
    assert [r["probabilities"] for r in by_args] == [r["probabilities"] for r in lines[1:3]]


# Each a line that is not UTF-8, with the reason Python's decoder gives.
UNDECODABLE = {
    b"caf\xe9 au lait": "invalid continuation byte",  # Latin-1
    b"\x80 lone continuation byte": "invalid start byte",
    b"\xc0\xaf overlong slash": "invalid start byte",
    b"\xed\xa0\x80 encoded surrogate": "invalid continuation byte",
    b"\xf4\x90\x80\x80 above U+10FFFF": "invalid continuation byte",
    b"\xff\xfe UTF-16 BOM": "invalid start byte",
    b"cut short \xe2\x82": "unexpected end of data",
}


def test_undecodable_lines_get_an_error_record_in_place(tiny_onnx: Path) -> None:
    bad = list(UNDECODABLE)
    # Good and bad lines interleaved across batch boundaries, CRLF and LF, the last line
    # undecodable and without a final newline, a NUL byte (valid UTF-8) in a good line.
    raw = [SPORTS.encode(), bad[0], bad[1], b"nul\x00 byte " + BUSINESS.encode(), bad[2],
           b"", bad[3], bad[4], bad[5], SPORTS.encode(), bad[6]]
    data = b"\r\n".join(raw[:5]) + b"\r\n" + b"\n".join(raw[5:])
    result = CliRunner().invoke(app, ["predict", "-m", str(tiny_onnx), "--batch-size", "3"],
                                input=data)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [r["line"] for r in lines] == list(range(1, len(raw) + 1))
    for record, line in zip(lines, raw, strict=True):
        if line in UNDECODABLE:
            # Nothing but the line number and the reason: no label to mistake for a prediction.
            assert set(record) == {"line", "error"}, record
            assert record["error"].startswith("invalid UTF-8 at byte ")
            assert UNDECODABLE[line] in record["error"]
        else:
            _assert_prediction(record)
    assert [lines[i]["label"] for i in (0, 3, 9)] == ["Sports", "Business", "Sports"]
    assert lines[5].get("empty") is True
    assert "7 input(s) could not be read" in result.stderr


def test_thousands_of_lines_from_a_file_come_back_one_each_in_order(tiny_onnx: Path,
                                                                    tmp_path: Path) -> None:
    n = 5000
    texts = [SPORTS if i % 3 == 0 else BUSINESS if i % 3 == 1 else "" for i in range(n)]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    lines = _cli(tiny_onnx, "-f", str(path))
    assert [r["line"] for r in lines] == list(range(1, n + 1))
    expected = ["Sports", "Business", None] * (n // 3 + 1)
    assert [r["label"] if r.get("empty") is None else None for r in lines] == expected[:n]


def _corpus_lines(n: int) -> bytes:
    """``n`` distinct news-like lines of 20-40 words (~200 bytes each)."""
    rng = random.Random(n)
    words = (SPORTS + " " + BUSINESS).replace(",", "").split()
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(20, 40))) + "\n"
                   for _ in range(n)).encode()


# Runs `textclf predict` as a child and prints the child's peak RSS (kB on Linux): a fresh
# process per measurement, so nothing else this test session ran counts in RUSAGE_CHILDREN.
_PEAK_RSS = """
import resource, subprocess, sys
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as out:
    subprocess.run([sys.executable, "-m", "textclf.cli", "predict", "-m", sys.argv[3], "-f", "-"],
                   stdin=src, stdout=out, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mb(model: Path, data: bytes, workdir: Path) -> float:
    (workdir / "in.txt").write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(workdir / "in.txt"),
                           str(workdir / "out.jsonl"), str(model)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = (workdir / "out.jsonl").read_bytes()
    assert out.count(b"\n") == data.count(b"\n")
    return int(done.stdout.strip()) / 1024


def test_memory_stays_flat_when_the_input_grows_20_times(tiny_onnx: Path,
                                                         tmp_path: Path) -> None:
    small = _peak_rss_mb(tiny_onnx, _corpus_lines(2_000), tmp_path)
    large = _peak_rss_mb(tiny_onnx, _corpus_lines(40_000), tmp_path)  # ~8 MB of text
    print(f"peak RSS: 2,000 lines {small:.1f} MB, 40,000 lines {large:.1f} MB")
    # Measured: growth under 2 MB. Holding all input, or all output, grows it by 50-90 MB.
    assert large - small < 25, (small, large)


def test_results_stream_out_before_stdin_is_closed(tiny_onnx: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "textclf.cli", "predict", "-m", str(tiny_onnx),
         "--batch-size", "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    received: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [received.put(line) for line in proc.stdout],
                              daemon=True)
    reader.start()
    try:
        # One full batch in, the pipe left open: the answers must come without EOF.
        proc.stdin.write(f"{SPORTS}\n{BUSINESS}\n\n{SPORTS}\n".encode())
        proc.stdin.flush()
        first = [json.loads(received.get(timeout=60)) for _ in range(4)]
        assert proc.poll() is None  # still running, still waiting for input
        assert [r["line"] for r in first] == [1, 2, 3, 4]
        assert [first[0]["label"], first[1]["label"]] == ["Sports", "Business"]
        proc.stdin.write(f"{BUSINESS}\n".encode())
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=10)
        last = json.loads(received.get(timeout=1))
        assert (last["line"], last["label"]) == (5, "Business") and received.empty()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
