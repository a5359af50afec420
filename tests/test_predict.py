"""`predict`: the torch-free ONNX Runtime path, as a Python API and as `textclf predict`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import LABEL_NAMES
from textclf.cli import app
from textclf.errors import TextclfError
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
    assert "1 input line(s) could not be decoded" in result.stderr


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
