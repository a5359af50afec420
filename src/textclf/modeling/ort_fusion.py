"""ONNX Runtime's fused transformer kernels for the exported graph (`export.ort_fusions`).

At batch 1 most of this model's time goes to the ~110 small standard ONNX ops around its matrix
products: each attention block alone is a MatMul, an Add, a Split, Reshapes, Transposes, two
MatMuls, a Softmax and a masked bias. Rewritten, every block is one com.microsoft `Attention` (QKV
projection, masking and attention in one kernel), a MatMul + Add, two LayerNormalizations and
a `BiasGelu` feed-forward: ~45 ops in all. ORT-only ops, so the file then needs onnxruntime
(any execution provider with these kernels: CPU and CUDA have them).

Not fused on purpose: `SkipLayerNormalization` (Add + LayerNormalization). On this CPU its kernel
took ~40 us where Add + LayerNormalization took ~5 us at these shapes (a side run), and the
whole model was 2-4% slower where ORT fused one itself (benchmarks/serving_latency.py,
`..._skiplayernorm` rows); `Predictor` therefore disables ORT's `SkipLayerNormFusion`
(serving/contract.py).

Pattern rewriting is onnxscript's (the exporter's own library); only the last step, packing
Q, K and V into one `Attention`, is done here, on the exact subgraph the first steps leave.
"""

from __future__ import annotations

import onnx

from textclf.core.errors import TextclfError

# A bias at or below this hides a key: exp() of it underflows to exactly 0 in float32.
_HIDDEN_KEY_SCORE = -1e4


def fuse_for_ort(proto: onnx.ModelProto, n_layers: int) -> onnx.ModelProto:
    """The exported graph with every block's attention and GELU fused; fails unless all were."""
    import onnx_ir as ir
    from onnx_ir.passes.common import ShapeInferencePass
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions import shape_optimization
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa

    model = ir.serde.deserialize_model(proto)
    # Constant-fold and resolve the shape arithmetic first, as onnxscript's optimize_for_ort
    # does: the attention patterns only match once Reshape targets are constants.
    ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    fused = {
        "gelu": fuse_erfgelu(model),
        "scaled dot-product attention": fuse_sdpa(model, apply_shape_inference=True),
    }
    fused["multi-head attention"] = fuse_mha1(model) + fuse_mha2(model)
    fused["bias + gelu"] = fuse_bias_gelu(model)
    fused["packed attention"] = _pack_attention(model)
    _gather_from_table(model)
    optimize(model)
    missing = {name: count for name, count in fused.items() if count != n_layers}
    if missing:
        raise TextclfError(
            f"export: ONNX Runtime fusions matched {missing} times, not once per block "
            f"({n_layers} blocks). The model or exporter no longer has the shape "
            "ort_fusion.py expects. Set export.ort_fusions to false in params.yaml (a standard "
            "ONNX graph, slower at batch 1) and re-run `dvc repro export`."
        )
    fused_proto = ir.serde.serialize_model(model)
    del fused_proto.graph.value_info[:]  # stale after the rewrites; ORT re-infers them
    return fused_proto


def _pack_attention(model) -> int:
    """MultiHeadAttention(Split(Add(MatMul(x, W), b))) + key-mask bias -> Attention(x, W, b, mask).

    One kernel does the QKV projection too, and the additive mask bias built by Where + Expand
    becomes the (batch, seq) 0/1 key mask the kernel takes directly.
    """
    import onnx_ir as ir

    graph = model.graph
    int_masks: dict[object, object] = {}
    packed = 0
    for node in list(graph):
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
            continue
        split = node.inputs[0].producer()
        add = split.inputs[0].producer() if split is not None else None
        matmul = add.inputs[0].producer() if add is not None else None
        masking = _key_mask(node.inputs[5] if len(node.inputs) > 5 else None)
        if (split is None or split.op_type != "Split" or add is None or add.op_type != "Add"
                or matmul is None or matmul.op_type != "MatMul" or masking is None
                or any(node.inputs[i] is not split.outputs[i] for i in range(3))
                or matmul.inputs[1].const_value is None or add.inputs[1].const_value is None):
            continue
        key_mask, fill = masking
        if key_mask not in int_masks:
            cast = ir.node("Cast", [key_mask], attributes={"to": ir.DataType.INT32})
            graph.insert_after(key_mask.producer(), cast)
            int_masks[key_mask] = cast.outputs[0]
        heads = node.attributes["num_heads"].value
        attention = ir.node(
            "Attention", [matmul.inputs[0], matmul.inputs[1], add.inputs[1], int_masks[key_mask]],
            attributes={"num_heads": heads, "mask_filter_value": fill}, domain="com.microsoft")
        graph.insert_before(node, attention)
        node.outputs[0].replace_all_uses_with(attention.outputs[0])
        graph.remove(node, safe=True)
        packed += 1
    return packed


def _gather_from_table(model) -> int:
    """GatherND(table, Unsqueeze(ids, -1)) on a 1-D table -> Gather(table, ids).

    The same elements (torch exports ``table[ids]`` as GatherND), one kernel instead of two, and
    ORT's Gather is the cheaper one: the raw-id map runs first on every call.
    """
    import onnx_ir as ir

    graph = model.graph
    rewritten = 0
    for node in list(graph):
        if node.op_type != "GatherND" or node.domain not in ("", "ai.onnx"):
            continue
        table, indices = node.inputs[0], node.inputs[1]
        unsqueeze = indices.producer()
        axes = unsqueeze.inputs[1].const_value if unsqueeze is not None and \
            unsqueeze.op_type == "Unsqueeze" and len(unsqueeze.inputs) > 1 else None
        batch_dims = node.attributes.get("batch_dims")
        if (axes is None or axes.numpy().tolist() != [-1] or table.shape is None
                or len(table.shape) != 1 or (batch_dims is not None and batch_dims.value != 0)):
            continue
        gather = ir.node("Gather", [table, unsqueeze.inputs[0]], attributes={"axis": 0})
        graph.insert_before(node, gather)
        node.outputs[0].replace_all_uses_with(gather.outputs[0])
        graph.remove(node, safe=True)
        rewritten += 1
    return rewritten


def _key_mask(bias):
    """(bool (batch, seq) mask, fill) behind Expand(Where(Unsqueeze(mask), 0, fill)), else None.

    ``fill`` is the large negative score a hidden key gets (the exporter uses float32's lowest,
    not -inf); the Attention kernel is given the same value, so masking stays exact.
    """
    expand = bias.producer() if bias is not None else None
    where = expand.inputs[0].producer() if expand is not None and expand.op_type == "Expand" \
        else None
    if where is None or where.op_type != "Where":
        return None
    keep, drop = (v.const_value for v in where.inputs[1:])
    unsqueeze = where.inputs[0].producer()
    if (keep is None or drop is None or unsqueeze is None or unsqueeze.op_type != "Unsqueeze"
            or keep.numpy().size != 1 or drop.numpy().size != 1 or float(keep.numpy()) != 0.0
            or not float(drop.numpy()) <= _HIDDEN_KEY_SCORE):
        return None
    return unsqueeze.inputs[0], float(drop.numpy())
