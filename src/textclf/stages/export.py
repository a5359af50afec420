"""Stage `export`: models/model.pt -> models/model.onnx, one self-describing file.

Reads  models/model.pt, metrics/eval.json, metrics/validation.json, data/raw/source.json
Writes models/model.onnx     (raw tiktoken ids in, logits out, self-describing metadata: the
                              contract in serving/contract.py, and the model card)
       models/model.card.md  (the same card, readable on a git host: card.py)

The graph is `Bundle.raw_id_model()`, so the compact-vocabulary map travels inside the file and
a client needs only tiktoken and onnxruntime. It is exported with the torch.export-based
("dynamo") exporter: on this model it gives a graph half the size of the TorchScript exporter's,
with named symbolic dims (`batch`, `seq`) and no deprecated code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

import textclf
from textclf.card import CARD_KEY, CardFacts, load_json, package_versions, render
from textclf.core.atomic import atomic_path, write_text
from textclf.core.config import Params
from textclf.core.errors import TextclfError
from textclf.core.paths import Paths
from textclf.modeling.bundle import Bundle, load_bundle
from textclf.modeling.ort_fusion import fuse_for_ort
from textclf.serving.contract import INPUT_NAME, OUTPUT_NAME, ModelMetadata

# onnx.save refuses a single protobuf above 2 GB; far beyond any model this project trains.
_PROTOBUF_LIMIT = 2**31


def run(params: Params, paths: Paths) -> dict[str, object]:
    bundle = load_bundle(paths.model)
    cfg = params.export
    evaluation = load_json(paths.eval_metrics, "the test metrics",
                           "Run `dvc repro evaluate` first.")
    with tempfile.TemporaryDirectory(dir=paths.onnx.parent) as scratch:
        # Exported once without the card, to ask the file itself what an empty text returns.
        plain = Path(scratch) / paths.onnx.name
        export_onnx(bundle, plain, cfg.opset, cfg.quantize, cfg.ort_fusions)
        empty = _empty_input_answer(plain)
        card = render(CardFacts(
            task=bundle.task, label_names=list(bundle.label_names),
            input_fields=bundle.input_fields, tokenizer=dataclasses.asdict(bundle.tokenizer),
            train_config=bundle.train_config, evaluation=evaluation,
            validation=load_json(paths.validation_metrics, "validation summary"),
            source=load_json(paths.raw_source, "data provenance"), export=cfg.model_dump(),
            parity=params.parity.model_dump(),
            empty_input=empty, versions=package_versions()))
        proto = onnx.load_model(plain)
        proto.metadata_props.add(key=CARD_KEY, value=card)
        with atomic_path(paths.onnx) as tmp:
            onnx.save_model(proto, tmp, save_as_external_data=False)
    write_text(paths.model_card, card)
    return {"onnx": str(paths.onnx), "bytes": paths.onnx.stat().st_size, "opset": cfg.opset,
            "quantized": cfg.quantize, "ort_fusions": cfg.ort_fusions,
            "card": str(paths.model_card)}


def _empty_input_answer(model: Path) -> dict[str, Any]:
    from textclf.serving.predictor import Predictor

    predictor = Predictor(model)
    answer = predictor.predict([""], [""] if predictor.task == "pair" else None)[0]
    if "labels" in answer:
        return {"labels": answer["labels"]}
    # Two decimals: the same answer on every CPU, so the card (and the file) is reproducible.
    return {"label": answer["label"],
            "probability": round(answer["probabilities"][answer["label"]], 2)}


def export_onnx(bundle: Bundle, target: Path | str, opset: int, quantize: bool = False,
                ort_fusions: bool = True) -> None:
    """Export ``bundle`` to ``target`` atomically as one checked, self-contained ONNX file."""
    proto = _to_onnx(bundle, opset)
    if ort_fusions:
        proto = fuse_for_ort(proto, bundle.model.cfg.n_layers)
    if quantize:
        proto = _int8_dynamic(proto)
    _strip_exporter_provenance(proto)
    described = ModelMetadata(label_names=list(bundle.label_names), tokenizer=bundle.tokenizer,
                              task=bundle.task, thresholds=bundle.thresholds,
                              input_fields=bundle.input_fields,
                              package_version=textclf.__version__, quantized=quantize,
                              ort_fusions=ort_fusions)
    for key, value in described.props().items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TextclfError(
            f"export: the exported graph is not valid ONNX ({exc}). Try another export.opset "
            "in params.yaml (17 or later) and re-run `dvc repro export`."
        ) from None
    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise TextclfError(
            f"export: the model is {proto.ByteSize() / 2**30:.1f} GB, above the 2 GB a single "
            "ONNX file can hold. Shrink it (model.d_model, tokenize.vocab_size) and re-train."
        )
    with atomic_path(target) as tmp:
        # Weights stay inside the protobuf: one file, no `.data` sidecar to lose.
        onnx.save_model(proto, tmp, save_as_external_data=False)


def _to_onnx(bundle: Bundle, opset: int) -> onnx.ModelProto:
    module = bundle.raw_id_model().eval()
    max_length = bundle.tokenizer.max_length
    # Batch 2 and seq >= 2: torch.export specialises any dim whose example size is 0 or 1.
    example = torch.full((2, min(max_length, 8)), bundle.tokenizer.pad_id, dtype=torch.int64)
    example[:, 0] = 0
    dynamic = {INPUT_NAME: {0: torch.export.Dim("batch"),
                            1: torch.export.Dim("seq", max=max_length)}}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (example,), None,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic, opset_version=opset,
                dynamo=True, external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; all mean the same
        raise TextclfError(
            f"export: torch.onnx.export failed with opset {opset}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Try export.opset 18 (the tested "
            "value) and check that torch, onnx and onnxscript match constraints.txt."
        ) from None
    return program.model_proto


def _strip_exporter_provenance(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata, in place.

    torch writes each node's Python stack trace (absolute source paths), FX node and module
    scopes into metadata_props: the same weights exported from two checkouts gave files of
    different md5, so `dvc repro` in a fresh clone reported models/model.onnx as changed.
    Nothing at run time reads them; the file's own metadata (model level) is kept.
    """
    graph = proto.graph
    for entries in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for entry in entries:
            del entry.metadata_props[:]
            entry.doc_string = ""
    del graph.metadata_props[:]


def _int8_dynamic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """int8 weights for MatMul/Gemm, activations quantised per call (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's value_info annotations trip the quantizer's shape inference ("Inferred
    # shape and existing shape differ"); without them it re-infers them cleanly.
    del proto.graph.value_info[:]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for calibrated (static) runs
    with tempfile.TemporaryDirectory() as tmp:
        plain, quantized = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, plain)
        try:
            # The fused graph's com.microsoft ops are opaque to ONNX shape inference; their
            # outputs are float activations. 7-bit weights (reduce_range): on x86 CPUs without
            # VNNI, ORT sums u8 x s8 pairs in int16, which full-range weights can saturate (the
            # test model's logits moved by 0.61 on an AVX2-only CPU, 0.093 with 7-bit weights).
            quantize_dynamic(plain, quantized, weight_type=QuantType.QInt8, reduce_range=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        except Exception as exc:  # the quantizer raises many unrelated types; all mean the same
            raise TextclfError(
                f"export: int8 quantisation failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Set export.quantize to false "
                "in params.yaml (the fp32 export needs no quantizer), or check that onnx and "
                "onnxruntime match constraints.txt."
            ) from None
        finally:
            root.setLevel(level)
        return onnx.load_model(quantized)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs a warning per missing optional torchvision op and torch.export emits
    # FutureWarnings about its own internals: irrelevant here and noisy in every `dvc repro` log.
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
