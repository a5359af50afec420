"""`export` and `parity`: a checked, self-describing ONNX file that matches PyTorch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper

import textclf
from tests.conftest import LABEL_NAMES, tiny_params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.bundle import load_bundle
from textclf.predict import Predictor
from textclf.stages import parity
from textclf.stages.export import export_onnx


@pytest.fixture(scope="module")
def bundle(tiny_model_project: Paths):
    return load_bundle(tiny_model_project.model)


@pytest.fixture(scope="module")
def session(tiny_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def test_texts(tiny_model_project: Paths) -> list[str]:
    return pd.read_parquet(tiny_model_project.validated / "test.parquet")["text"].tolist()


@pytest.fixture(scope="module")
def test_labels(tiny_model_project: Paths) -> np.ndarray:
    return pd.read_parquet(tiny_model_project.validated / "test.parquet")["label"].to_numpy()


def test_export_is_valid_self_contained_and_self_describing(tiny_onnx: Path, bundle) -> None:
    model = onnx.load(tiny_onnx)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["label_names"]) == LABEL_NAMES
    assert meta["encoding"] == "cl100k_base"
    assert int(meta["max_length"]) == bundle.tokenizer.max_length
    assert int(meta["pad_id"]) == bundle.tokenizer.pad_id == 100257
    assert int(meta["n_vocab"]) == bundle.tokenizer.n_vocab
    assert meta["quantized"] == "none" and meta["ort_fusions"] == "true"
    assert meta["package_version"] == textclf.__version__
    # The raw-id map, token and position embeddings: three Gathers (ort_fusion rewrites the
    # exporter's Unsqueeze + GatherND for the map; the out-of-range test below checks it).
    ops = [node.op_type for node in model.graph.node]
    assert "GatherND" not in ops and ops.count("Gather") == 3

    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "seq"]
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out_dims = out.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == len(LABEL_NAMES)

    # One file: no weight lives outside it, and nothing else was left beside it.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    # One file: no external-data sidecar beside it (checkpoint/ is train's resume point).
    assert sorted(os.listdir(tiny_onnx.parent)) == ["checkpoint", "model.card.md", "model.onnx",
                                                   "model.pt"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [1, 7, 48])
def test_onnx_matches_torch_for_any_batch_and_length(bundle, session, batch: int,
                                                     seq: int) -> None:
    rng = np.random.default_rng(batch * 100 + seq)
    vocab = bundle.vocab_raw_ids.numpy()
    ids = rng.choice(vocab, size=(batch, seq))
    pad = bundle.tokenizer.pad_id
    ids[0, seq // 2 + 1:] = pad  # a right-padded row
    ids[-1, :] = pad  # an all-padding row (empty text)
    ids[:, 0] = -5  # outside the tokenizer's range: must map to "unknown", not crash
    if seq > 2:
        ids[:, 1] = bundle.tokenizer.n_vocab + 10
        ids[:, 2] = rng.integers(0, pad, size=batch)  # in range, mostly absent from the vocab
    with torch.inference_mode():
        expected = bundle.raw_id_model()(torch.from_numpy(ids)).numpy()
    (got,) = session.run(None, {"input_ids": ids})
    assert got.shape == (batch, len(LABEL_NAMES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_ids_outside_the_tokenizer_read_as_unknown_and_known_ids_as_their_row(bundle) -> None:
    from textclf.modeling.network import UNK_ROW, RawIdClassifier

    n_vocab = bundle.tokenizer.n_vocab
    # Every id in range maps to row 2, so only the out-of-range handling can yield UNK_ROW.
    raw = RawIdClassifier(bundle.model, torch.full((n_vocab,), 2, dtype=torch.int64)).eval()
    ids = torch.tensor([[0, n_vocab - 1, -5, -1, n_vocab, n_vocab + 10]])
    expected = torch.tensor([[2, 2] + [UNK_ROW] * 4])
    with torch.inference_mode():
        torch.testing.assert_close(raw(ids), bundle.model.eval()(expected), rtol=0, atol=0)


def test_fused_graph_has_one_attention_kernel_per_block_and_portable_graph_none(
        bundle, tiny_onnx: Path, tmp_path: Path, test_texts: list[str]) -> None:
    fused = onnx.load(tiny_onnx)
    ops = [(n.domain, n.op_type) for n in fused.graph.node]
    blocks = bundle.model.cfg.n_layers
    assert ops.count(("com.microsoft", "Attention")) == blocks
    assert ops.count(("com.microsoft", "BiasGelu")) == blocks
    assert not {"Softmax", "Transpose", "Erf"} & {op for _, op in ops}  # all inside the kernels

    portable = tmp_path / "portable.onnx"
    export_onnx(bundle, portable, opset=18, ort_fusions=False)
    plain = onnx.load(portable)
    assert {n.domain for n in plain.graph.node} == {""}  # standard ONNX ops only
    assert {p.key: p.value for p in plain.metadata_props}["ort_fusions"] == "false"
    assert len(plain.graph.node) > 2 * len(fused.graph.node)
    report = parity.check_parity(bundle, portable, test_texts, tiny_params().parity)
    assert report.passed and report.max_abs_diff < 1e-4


def test_predictor_keeps_ort_from_fusing_add_and_layernorm(bundle, tmp_path: Path) -> None:
    # SkipLayerNormalization is slower on CPU than Add + LayerNormalization at these shapes
    # (ort_fusion.py); ORT's default session fuses them where it can, the Predictor's must not.
    model = tmp_path / "portable.onnx"
    export_onnx(bundle, model, opset=18, ort_fusions=False)

    def optimized_ops(path: Path, make) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path)
        make(options)
        return {n.op_type for n in onnx.load(path).graph.node}

    default = optimized_ops(tmp_path / "default.onnx", lambda o: ort.InferenceSession(
        str(model), o, providers=["CPUExecutionProvider"]))
    served = optimized_ops(tmp_path / "served.onnx", lambda o: Predictor(
        model, ["CPUExecutionProvider"], o))
    assert "SkipLayerNormalization" in default
    assert "SkipLayerNormalization" not in served and "LayerNormalization" in served


def test_an_unmatched_fusion_names_the_param(bundle, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from textclf.modeling import ort_fusion

    monkeypatch.setattr(ort_fusion, "_pack_attention", lambda model: 0)
    with pytest.raises(TextclfError, match=r"\{'packed attention': 0\} times, not once per "
                                           r"block .* Set export\.ort_fusions to false"):
        export_onnx(bundle, tmp_path / "model.onnx", opset=18)
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_the_file_and_leaves_nothing_else(bundle, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the exporter must not drop reports or sidecars in the cwd either
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_text("an older export")
    export_onnx(bundle, target, opset=18)
    onnx.checker.check_model(onnx.load(target))
    assert os.listdir(target.parent) == ["model.onnx"]
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("quantize", [False, True])
def test_export_is_byte_identical_and_carries_no_source_paths(bundle, tmp_path: Path,
                                                              quantize: bool) -> None:
    # torch's exporter records stack traces with absolute paths per node; kept, they made the
    # same weights hash differently in another checkout, so `dvc repro` saw a changed file.
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(bundle, first, opset=18, quantize=quantize)
    export_onnx(bundle, second, opset=18, quantize=quantize)
    raw = first.read_bytes()
    assert raw == second.read_bytes()
    for path in (Path(textclf.__file__).parent, Path(torch.__file__).parent, tmp_path):
        assert str(path).encode() not in raw
    model = onnx.load_from_string(raw)
    entries = [*model.graph.node, *model.graph.input, *model.graph.output,
               *model.graph.value_info, *model.graph.initializer]
    assert not any(entry.metadata_props for entry in entries)
    assert not model.graph.metadata_props
    assert {p.key for p in model.metadata_props} >= {"label_names", "encoding", "quantized"}


def test_parity_passes_on_a_fresh_export(bundle, tiny_onnx: Path, test_texts: list[str]) -> None:
    cfg = tiny_params().parity
    report = parity.check_parity(bundle, tiny_onnx, test_texts, cfg)
    assert report.passed
    report.raise_if_failed()
    assert report.rows == len(test_texts) + report.edge_cases and report.edge_cases == 5
    assert report.max_abs_diff < 1e-4 and report.argmax_agreement == 1.0


def test_latency_times_each_engine_one_text_at_a_time(bundle, tiny_onnx: Path,
                                                      test_texts: list[str]) -> None:
    predictor = Predictor(tiny_onnx, providers=["CPUExecutionProvider"])
    onnx_logits, batch_rows = predictor.logits, []

    def slow_onnx(ids: np.ndarray) -> np.ndarray:
        batch_rows.append(len(ids))
        time.sleep(0.25)  # far above the tiny model's own time, even on a busy machine
        return onnx_logits(ids)

    predictor.logits = slow_onnx
    cfg = tiny_params(parity={"latency_runs": 7}).parity
    report = parity.check_parity(bundle, predictor, test_texts[:8], cfg)
    assert report.onnx_p50_ms >= 250 > report.torch_p50_ms
    assert batch_rows[-(cfg.latency_runs + 1):] == [1] * (cfg.latency_runs + 1)  # + warm-up


def test_int8_export_is_smaller_says_so_and_is_held_to_the_int8_limits(
        bundle, tiny_onnx: Path, tmp_path: Path, test_texts: list[str],
        test_labels: np.ndarray) -> None:
    target = tmp_path / "model.onnx"
    export_onnx(bundle, target, opset=18, quantize=True)
    model = onnx.load(target)
    assert {p.key: p.value for p in model.metadata_props}["quantized"] == "int8"
    # Every MatMul of the fused graph (QKV packing aside) carries int8 weights now.
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    assert target.stat().st_size < tiny_onnx.stat().st_size
    # The few-step test model moves more under int8 than the real one (max |dlogit| 0.093 on an
    # AVX2-only CPU, against 0.036 for the shipped model), so its logit limit is looser.
    cfg = tiny_params(parity={"int8_max_abs_diff": 0.2}).parity
    report = parity.check_parity(bundle, target, test_texts, cfg, test_labels)
    assert report.quantized
    # Not exact (the fp32 limit would fail it), yet within the int8 limits and accuracy.
    assert cfg.max_abs_diff < report.max_abs_diff <= report.limits[0]
    assert report.limits == (cfg.int8_max_abs_diff, cfg.int8_min_argmax_agreement)
    assert report.passed, report.metrics()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: ORT has one thread anyway")
def test_an_int8_model_answers_short_calls_on_one_thread(bundle, tiny_onnx: Path, tmp_path: Path,
                                                         test_texts: list[str]) -> None:
    import onnxruntime as ort

    from textclf.predict import Predictor

    target = tmp_path / "model.onnx"
    export_onnx(bundle, target, opset=18, quantize=True)
    predictor = Predictor(target, ["CPUExecutionProvider"])
    one_thread, default = predictor._small_calls, predictor.session
    assert one_thread is not None
    calls: list[str] = []
    for name, session in (("one thread", one_thread), ("default", default)):
        session.run = lambda *a, s=session.run, name=name: calls.append(name) or s(*a)
    short, long = predictor.encode(test_texts[:1])[:, :16], predictor.encode(test_texts[:8])
    assert long.size > 64
    short_logits, long_logits = predictor.logits(short), predictor.logits(long)
    assert calls == ["one thread", "default"]
    # Same file, same kernels: only the thread count differs.
    np.testing.assert_allclose(short_logits, default.run(None, {"input_ids": short})[0],
                               atol=1e-5)
    assert long_logits.shape == (8, len(bundle.label_names))
    # fp32 files, and callers who pass their own session options, get one session.
    assert Predictor(tiny_onnx)._small_calls is None
    assert Predictor(target, options=ort.SessionOptions())._small_calls is None


def test_a_failing_quantizer_names_the_param_and_leaves_no_file(
        bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op\nlong traceback detail")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", broken)
    with pytest.raises(TextclfError, match=r"int8 quantisation failed: RuntimeError: "
                                           r"unsupported op\. Set export\.quantize to false"):
        export_onnx(bundle, tmp_path / "model.onnx", opset=18, quantize=True)
    assert list(tmp_path.iterdir()) == []


def test_an_accuracy_drop_beyond_the_limit_fails_parity_with_its_figures(
        bundle, tiny_onnx: Path, test_texts: list[str], test_labels: np.ndarray) -> None:
    cfg = tiny_params().parity
    report = parity.check_parity(bundle, tiny_onnx, test_texts, cfg, test_labels)
    assert report.passed and report.accuracy_drop == 0.0  # fp32: the very same predictions
    worse = dataclasses.replace(report, accuracy_drop=0.01)
    assert not worse.passed
    with pytest.raises(TextclfError, match=r"accuracy drop 1\.00% exceeds "
                                           r"parity\.max_accuracy_drop 0\.30%"):
        worse.raise_if_failed()


def test_edge_cases_cover_empty_one_token_and_the_length_limits(tiny_onnx: Path) -> None:
    from textclf.predict import Predictor

    predictor = Predictor(tiny_onnx)
    empty, one, exact, beyond, _ = parity.edge_cases(predictor)
    lengths = [len(predictor.encoding.encode_ordinary(t)) for t in (empty, one, exact, beyond)]
    assert lengths[:3] == [0, 1, predictor.max_length]
    assert lengths[3] > 3 * predictor.max_length


def test_parity_stage_writes_metrics_and_finds_no_tokenization_skew(
        tiny_model_project: Paths, tiny_onnx: Path) -> None:
    metrics = parity.run(tiny_params(), tiny_model_project)
    written = json.loads((tiny_model_project.metrics / "parity.json").read_text())
    assert written["max_abs_diff"] < 1e-4 and written["argmax_agreement"] == 1.0
    assert written["serving_token_mismatch_rows"] == 0
    # Latency differs between identical runs: beside the metrics, not in them.
    latency = json.loads((tiny_model_project.runtime / "parity.json").read_text())
    assert written == {k: v for k, v in metrics.items() if k != "latency"}
    assert latency == metrics["latency"] and set(latency) == {"torch_p50_ms", "onnx_p50_ms"}


def _project_with_onnx(source: Paths, root: Path, model: onnx.ModelProto) -> Paths:
    """A project sharing ``source``'s data and model.pt, with ``model`` as its model.onnx."""
    paths = Paths(root)
    for name in ("data", "models"):
        (root / name).mkdir(parents=True)
    for link in (paths.validated, paths.tokens, paths.model):
        link.symlink_to(source.root / link.relative_to(root))
    onnx.save(model, paths.onnx)
    return paths


def test_a_perturbed_onnx_weight_fails_parity_and_writes_no_metrics(
        tiny_model_project: Paths, tiny_onnx: Path, bundle, tmp_path: Path) -> None:
    model = onnx.load(tiny_onnx)
    head = next(t for t in model.graph.initializer if "head.weight" in t.name)
    weights = numpy_helper.to_array(head).copy()
    weights[0] += 0.05
    head.CopyFrom(numpy_helper.from_array(weights, head.name))
    paths = _project_with_onnx(tiny_model_project, tmp_path / "project", model)

    report = parity.check_parity(bundle, paths.onnx, ["markets rally"], tiny_params().parity)
    assert not report.passed and report.max_abs_diff > 1e-3
    with pytest.raises(TextclfError, match=r"max_abs_diff .* exceeds parity\.max_abs_diff"):
        parity.run(tiny_params(), paths)
    assert not (paths.metrics / "parity.json").exists()


def test_an_onnx_file_of_another_model_is_named_as_such(
        tiny_model_project: Paths, tiny_onnx: Path, bundle, tmp_path: Path) -> None:
    model = onnx.load(tiny_onnx)
    for prop in model.metadata_props:
        if prop.key == "label_names":
            prop.value = json.dumps(list(reversed(LABEL_NAMES)))
    paths = _project_with_onnx(tiny_model_project, tmp_path / "project", model)
    with pytest.raises(TextclfError, match="describes another model"):
        parity.check_parity(bundle, paths.onnx, ["x"], tiny_params().parity)


def test_missing_onnx_names_the_fix(bundle, tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match=re.escape("dvc pull models/model.onnx")):
        parity.check_parity(bundle, tmp_path / "nope.onnx", ["x"], tiny_params().parity)


def test_the_model_card_travels_inside_the_model(tiny_onnx: Path,
                                                 tiny_model_project: Paths) -> None:
    from typer.testing import CliRunner

    from textclf.card import read_card
    from textclf.cli import app

    card = read_card(tiny_onnx)
    assert card == tiny_model_project.model_card.read_text(encoding="utf-8")
    printed = CliRunner().invoke(app, ["card", str(tiny_onnx)])
    assert printed.exit_code == 0 and printed.output == card
    evaluation = json.loads(tiny_model_project.eval_metrics.read_text())
    rows = {line.split(" | ")[0].strip("| "): line for line in card.splitlines()
            if line.startswith("| ")}
    for key in ("accuracy", "macro_f1"):  # the same figures as metrics/eval.json, model|baseline
        assert rows[key] == (f"| {key} | {evaluation['model'][key]} | "
                             f"{evaluation['baseline'][key]} |")
    for label in LABEL_NAMES:
        figures = evaluation["model"]["per_class"][label]
        assert rows[label] == (f"| {label} | {figures['precision']} | {figures['recall']} | "
                               f"{figures['f1']} |")
    assert f"{len(LABEL_NAMES)} labels): {', '.join(LABEL_NAMES)}" in card
    assert "An empty text (or one that normalises to nothing) returns label '" in card
    assert f"textclf {textclf.__version__}" in card and "onnxruntime " in card


def test_card_errors_name_the_file_and_the_fix(tiny_model_project: Paths, bundle,
                                               tmp_path: Path) -> None:
    from textclf.card import read_card

    without = tmp_path / "old.onnx"
    export_onnx(bundle, without, opset=18, ort_fusions=False)  # no card: as before #19
    with pytest.raises(TextclfError, match=r"old\.onnx: holds no model card.*dvc repro export"):
        read_card(without)
    with pytest.raises(TextclfError, match=r"missing\.onnx: no such model file.*dvc pull"):
        read_card(tmp_path / "missing.onnx")
    from textclf.stages import export

    bare = Paths(tmp_path / "bare")
    (bare.root / "models").mkdir(parents=True)
    (bare.root / "models" / "model.pt").write_bytes(tiny_model_project.model.read_bytes())
    with pytest.raises(TextclfError, match=r"eval\.json \(the test metrics\) not found.*"
                                           r"dvc repro evaluate"):
        export.run(tiny_params(), bare)
    assert not bare.onnx.exists() and not bare.model_card.exists()
