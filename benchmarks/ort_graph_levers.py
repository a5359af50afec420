"""ONNX Runtime levers at batch 1 on the shipped graph, side by side: what is left to gain.

    python benchmarks/ort_graph_levers.py [--bundle models/model.pt] [--texts 400] [--rounds 30]

`serving_latency.py` puts ORT at ~2.7x eager at batch 1, under the 3x goal, and its `by_length`
fit says why: per token both engines do the same matrix work. This script asks the remaining
question, how much the ORT side could still gain from session settings and graph rewrites, with
`session.run` alone (ids -> logits, the real test texts' ids, no tokenization) timed for each
variant in rounds, the variants in a new shuffled order each round, one process. Reported: each
variant's median round p50, and its speed-up over the shipped session as the median of the
per-round ratios (the machine's drift moves all variants of a round together).

Variants: the session as `Predictor` opens it; the other graph optimisation levels; 1 and 3
intra-op threads; thread spinning off; `EmbedLayerNormalization` (onnxruntime's fused embedding
kernel: token + position lookups, their sum and the first LayerNorm in one kernel instead of
four, plus a Cast of the ids to int32; exact to float rounding); and an upper bound that is
not a model: the graph with its eight bias and residual `Add`s deleted, the most that folding
them into neighbouring kernels could save.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import ROOT, latencies, ort_options, real_texts, save
from onnx import helper

from textclf.modeling.bundle import load_bundle
from textclf.predict import Predictor
from textclf.serving.contract import SLOW_ORT_FUSIONS
from textclf.stages.export import export_onnx

Level = ort.GraphOptimizationLevel


def session(graph: bytes, level: Level = Level.ORT_ENABLE_ALL, threads: int = 0,
            config: dict[str, str] | None = None) -> ort.InferenceSession:
    """A CPU session over ``graph`` with the Predictor's disabled fusions and these options."""
    return ort.InferenceSession(graph, ort_options(level, threads, config),
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(SLOW_ORT_FUSIONS))


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if name in node.input]


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in renames:
                name = renames[name]
            node.input[i] = name


def embed_layer_norm(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Gather(tok) + Gather(pos, Range) + Add + the first LayerNorm -> one EmbedLayerNormalization.

    Its third output is the embeddings' sum, which the pre-norm blocks' residual stream starts
    from. The kernel takes int32 ids and positions 0..T-1, as the exporter's Range gives them.
    """
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = model.graph
    gathers = {node.input[0]: node for node in graph.node if node.op_type == "Gather"}
    tok, pos = gathers["model.tok_emb.weight"], gathers["model.pos_emb.weight"]
    (add,) = [n for n in _consumers(graph, tok.output[0]) if n.op_type == "Add"]
    assert pos.output[0] in add.input
    norm = next(n for n in _consumers(graph, add.output[0]) if n.op_type == "LayerNormalization")
    cast = helper.make_node("Cast", [tok.input[1]], ["ids_int32"], to=onnx.TensorProto.INT32)
    fused = helper.make_node(
        "EmbedLayerNormalization",
        ["ids_int32", "", tok.input[0], pos.input[0], "", norm.input[1], norm.input[2]],
        [norm.output[0], "", add.output[0]], domain="com.microsoft",
        epsilon=next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5))
    at = list(graph.node).index(tok)
    kept = [n for n in graph.node if n not in (tok, pos, add, norm)]
    kept[at:at] = [cast, fused]
    del graph.node[:]
    graph.node.extend(kept)  # the Range (and its Shape) stay: the padding mask uses them
    return model


def without_bias_and_residual_adds(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Timing only, wrong logits: each MatMul -> Add(bias) -> Add(residual) chain cut to MatMul."""
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    renames: dict[str, str] = {}
    dropped = []
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        bias = [n for n in _consumers(graph, matmul.output[0])
                if n.op_type == "Add" and set(n.input) & weights]
        residual = [n for b in bias for n in _consumers(graph, b.output[0]) if n.op_type == "Add"]
        for add in bias + residual:
            renames[add.output[0]] = matmul.output[0]
            dropped.append(add)
    kept = [n for n in graph.node if n not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(graph, renames)
    unused = {i.name for i in graph.initializer} - {x for n in graph.node for x in n.input}
    kept_weights = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "model.pt")
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    texts, _ = real_texts("test")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(load_bundle(args.bundle), path, opset=18)  # as `textclf export` ships it
        predictor = Predictor(path, ["CPUExecutionProvider"])
        proto = onnx.load(path)
    calls = [predictor.encode([text]) for text in texts[: args.texts]]
    shipped = proto.SerializeToString()
    graphs = {"embed_layer_norm": embed_layer_norm(proto),
              "upper_bound_no_bias_residual_adds": without_bias_and_residual_adds(proto)}
    sessions = {
        "shipped": predictor.session,
        "opt_extended": session(shipped, Level.ORT_ENABLE_EXTENDED),
        "opt_basic": session(shipped, Level.ORT_ENABLE_BASIC),
        "opt_none": session(shipped, Level.ORT_DISABLE_ALL),
        "threads_1": session(shipped, threads=1),
        "threads_3": session(shipped, threads=3),
        "no_spinning": session(shipped, config={"session.intra_op.allow_spinning": "0"}),
        **{variant: session(graph.SerializeToString()) for variant, graph in graphs.items()},
    }
    nodes = {variant: len(graphs.get(variant, proto).graph.node) for variant in sessions}
    name = predictor.input_name
    reference = [predictor.logits(ids) for ids in calls]
    max_diff = {variant: float(max(np.abs(s.run(None, {name: ids})[0] - ref).max()
                                   for ids, ref in zip(calls, reference, strict=True)))
                for variant, s in sessions.items()}

    per_round: dict[str, list[float]] = {variant: [] for variant in sessions}
    order = list(sessions)
    shuffle = random.Random(0)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for variant in order:
            run = sessions[variant].run
            per_round[variant].append(
                latencies(lambda ids, r=run: r(None, {name: ids}), calls)["p50_ms"])
    base = np.array(per_round["shipped"])
    save("ort_graph_levers", {
        "texts": len(calls),
        "mean_tokens": float(np.mean([ids.shape[1] for ids in calls])),
        "rounds": args.rounds,
        "results": {variant: {
            "p50_ms_median_round": float(np.median(rounds)),
            "speedup_vs_shipped_median_of_rounds": float(np.median(base / np.array(rounds))),
            "speedup_by_round": [round(float(x), 3) for x in base / np.array(rounds)],
            "max_abs_logit_diff_vs_shipped": max_diff[variant],
            "graph_nodes": nodes[variant],
        } for variant, rounds in per_round.items()},
    })


if __name__ == "__main__":
    main()
