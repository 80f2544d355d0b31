"""The attention rewrite of exported backbones (pure ONNX graphs, run with ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from sam3_ros.core.errors import ModelLoadError  # noqa: E402
from sam3_ros.tools.onnx_attention import ATTENTION_FORMS, rewrite_attention  # noqa: E402

B, N, S, H = 3, 4, 20, 8


def _graph(mask: bool = False, **attrs):
    inputs = ["q", "k", "v"] + (["mask"] if mask else [])
    # A neighbour node on each side, so the rewrite must keep the graph's order intact.
    nodes = [helper.make_node("Identity", ["q_in"], ["q"]),
             helper.make_node("Attention", inputs, ["o"], **attrs),
             helper.make_node("Relu", ["o"], ["out"])]
    values = [helper.make_tensor_value_info("q_in", TensorProto.FLOAT, ["b", N, S, H]),
              *(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", N, S, H])
                for n in "kv")]
    if mask:
        values.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [S, S]))
    graph = helper.make_graph(nodes, "attention", values,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                             ["b", N, S, H])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((B, N, S, H)).astype(np.float32) for n in ("q_in", "k", "v")}


@pytest.mark.parametrize("form", ["mha", "explicit"])
def test_rewritten_attention_matches_the_onnx_op(feeds, form):
    reference = _run(_graph(scale=0.3), feeds)
    model = _graph(scale=0.3)
    assert rewrite_attention(model, form, num_heads=N) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Attention" not in ops
    assert ("MultiHeadAttention" in ops) == (form == "mha")
    assert ("Softmax" in ops) == (form == "explicit")
    onnx.checker.check_model(model)
    got = _run(model, feeds)
    assert got.shape == reference.shape == (B, N, S, H)
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_mha_without_a_scale_uses_the_default(feeds):
    reference = _run(_graph(), feeds)
    model = _graph()
    rewrite_attention(model, "mha", num_heads=N)
    np.testing.assert_allclose(_run(model, feeds), reference, atol=1e-5)


def test_onnx_form_leaves_the_graph_alone():
    model = _graph(scale=0.3)
    before = model.SerializeToString()
    assert rewrite_attention(model, "onnx", num_heads=N) == 0
    assert model.SerializeToString() == before
    assert "onnx" in ATTENTION_FORMS


@pytest.mark.parametrize(("model_kwargs", "form", "heads", "message"), [
    ({"mask": True, "scale": 0.3}, "mha", N, "a mask or past KV"),
    ({"is_causal": 1, "scale": 0.3}, "mha", N, "is_causal=1"),
    ({"softcap": 2.0, "scale": 0.3}, "explicit", N, "softcap=2.0"),
    ({}, "explicit", N, "no scale attribute"),
    ({"scale": 0.3}, "flash", N, "unknown attention form 'flash'"),
    ({"scale": 0.3}, "mha", 0, "num_heads must be in"),
    ({"scale": 0.3}, "mha", 2**31, "num_heads must be in"),
])
def test_refusals(model_kwargs, form, heads, message):
    model = _graph(**model_kwargs)
    with pytest.raises(ModelLoadError, match=message):
        rewrite_attention(model, form, num_heads=heads)
