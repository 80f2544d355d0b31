"""Rewrite the exported backbone's attention into the form an ONNX Runtime provider runs best.

`torch.onnx.export` at opset 23 writes SAM3's `scaled_dot_product_attention` as the standard
ONNX `Attention` op (inputs Q, K, V in (B, N, S, H) layout). How a provider runs that op is
its own business, and measured here it is not good business on the CPU: onnxruntime 1.32's
CPU kernel for it materialises the (B, N, S, S) score matrix -- 1.7 GB per global-attention
layer of the full-size ViT (16 heads, 5184 tokens) -- and took 2.55 s per global layer where
the contrib `com.microsoft.MultiHeadAttention` op (MLAS flash attention, scores tiled to the
L2 cache) took 1.52 s with 46 MB of extra peak memory (single-op graphs of the global layer's
shape (1, 16, 5184, 64), 2 threads, on this project's shared 2-core CPU; outputs equal within
5e-7).

Forms (`ATTENTION_FORMS`):

* `mha`: `com.microsoft.MultiHeadAttention` (Q, K, V transposed to (B, S, N*H)); what the CPU
  and CUDA providers run (flash / memory-efficient kernels, no score matrix in memory).
* `explicit`: MatMul(Q, K^T) * scale -> Softmax -> MatMul(., V). What TensorRT gets: DART
  (SAM3 on TensorRT) measured fused attention exported to FP16 TensorRT breaking the features
  (cosine 0.06) while explicit attention kept them (0.999). It materialises the scores, so it
  is no form for the CPU.
* `onnx`: the exporter's standard op, unchanged (portable; slow and memory-hungry on ORT's CPU).

The rewrite only accepts what the exporter writes for SAM3 (three inputs, no mask, not causal,
no softcap); anything else is refused rather than rewritten into something different.
"""

from __future__ import annotations

from typing import Any

from sam3_ros.core.errors import ModelLoadError

ATTENTION_FORMS = ("mha", "explicit", "onnx")

MS_DOMAIN = "com.microsoft"


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _check_plain_attention(node: Any) -> float | None:
    """The node's `scale` (None: 1/sqrt(head size)) if it is plain SDPA, else ModelLoadError."""
    inputs = [name for name in node.input if name]
    problems = []
    if len(inputs) != 3 or len(node.input) != 3:
        problems.append(f"{len(inputs)} inputs (Q, K, V expected; a mask or past KV is not "
                        f"supported)")
    if len([name for name in node.output if name]) != 1:
        problems.append("more than one output")
    for name, wanted in (("is_causal", 0), ("softcap", 0.0), ("qk_matmul_output_mode", 0)):
        value = _attribute(node, name, wanted)
        if value != wanted:
            problems.append(f"{name}={value}")
    for name in ("q_num_heads", "kv_num_heads"):
        if _attribute(node, name, None) is not None:
            problems.append(f"{name} set (3-D inputs)")
    if problems:
        raise ModelLoadError(f"cannot rewrite attention node '{node.name}': "
                             + "; ".join(problems))
    scale = _attribute(node, "scale", None)
    return None if scale is None else float(scale)


def rewrite_attention(model: Any, form: str, num_heads: int) -> int:
    """Replace every ONNX `Attention` node of `model` (in place) by `form`.

    Args:
        model: An `onnx.ModelProto` (external weights need not be loaded).
        form: One of `ATTENTION_FORMS`.
        num_heads: Attention heads N of the (B, N, S, H) inputs (`mha` needs it as an
            attribute).

    Returns:
        How many nodes were rewritten.

    Raises:
        ModelLoadError: unknown form, bad `num_heads`, or an Attention node that is not plain
            scaled dot-product attention.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    if form not in ATTENTION_FORMS:
        raise ModelLoadError(f"unknown attention form '{form}' "
                             f"(supported: {', '.join(ATTENTION_FORMS)})")
    if not 1 <= int(num_heads) <= 4096:
        raise ModelLoadError(f"num_heads must be in [1, 4096], got {num_heads}")
    graph = model.graph
    targets = [n for n in graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if form == "onnx" or not targets:
        return 0
    scales = {id(n): _check_plain_attention(n) for n in targets}

    nodes: list[Any] = []
    constants: dict[str, Any] = {}

    def constant(name: str, values: list[int]) -> str:
        if name not in constants:
            constants[name] = numpy_helper.from_array(np.array(values, np.int64), name)
        return name

    for node in graph.node:
        if id(node) not in scales:
            nodes.append(node)
            continue
        q, k, v = node.input
        out = node.output[0]
        base = node.name or out
        scale = scales[id(node)]
        if form == "mha":
            to_bsd = constant("sam3_ros_attn_bsd_shape", [0, 0, -1])
            to_bsnh = constant(f"sam3_ros_attn_bsnh_shape_{num_heads}", [0, 0, num_heads, -1])
            flat = []
            for name in (q, k, v):
                t = f"{base}/{name}_bsnh"
                nodes.append(helper.make_node("Transpose", [name], [t], perm=[0, 2, 1, 3],
                                              name=f"{base}/transpose_{name}"))
                nodes.append(helper.make_node("Reshape", [t, to_bsd], [f"{t}_bsd"],
                                              name=f"{base}/reshape_{name}"))
                flat.append(f"{t}_bsd")
            attrs: dict[str, Any] = {"num_heads": int(num_heads)}
            if scale is not None:
                attrs["scale"] = scale
            nodes.append(helper.make_node("MultiHeadAttention", flat, [f"{base}/mha_bsd"],
                                          domain=MS_DOMAIN, name=f"{base}/mha", **attrs))
            nodes.append(helper.make_node("Reshape", [f"{base}/mha_bsd", to_bsnh],
                                          [f"{base}/mha_bsnh"], name=f"{base}/reshape_out"))
            nodes.append(helper.make_node("Transpose", [f"{base}/mha_bsnh"], [out],
                                          perm=[0, 2, 1, 3], name=f"{base}/transpose_out"))
        else:  # explicit
            nodes.append(helper.make_node("Transpose", [k], [f"{base}/k_t"], perm=[0, 1, 3, 2],
                                          name=f"{base}/transpose_k"))
            nodes.append(helper.make_node("MatMul", [q, f"{base}/k_t"], [f"{base}/qk"],
                                          name=f"{base}/qk"))
            scores = f"{base}/qk"
            if scale is not None:
                scale_name = f"{base}/scale"
                constants[scale_name] = numpy_helper.from_array(
                    np.array(scale, np.float32), scale_name)
                nodes.append(helper.make_node("Mul", [scores, scale_name], [f"{base}/qk_scaled"],
                                              name=f"{base}/scale_mul"))
                scores = f"{base}/qk_scaled"
            else:
                raise ModelLoadError(f"attention node '{node.name}' has no scale attribute: "
                                     f"the explicit form needs it (the exporter writes one)")
            nodes.append(helper.make_node("Softmax", [scores], [f"{base}/probs"], axis=-1,
                                          name=f"{base}/softmax"))
            nodes.append(helper.make_node("MatMul", [f"{base}/probs", v], [out],
                                          name=f"{base}/pv"))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants.values())
    if form == "mha" and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(targets)


def rewrite_attention_file(path: Any, form: str, num_heads: int) -> int:
    """`rewrite_attention` on an .onnx file in place; its external weights file is untouched.

    Returns:
        How many nodes were rewritten.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    count = rewrite_attention(model, form, num_heads)
    if count:
        onnx.save(model, str(path))
    return count
