"""`torch_compile` with real inductor builds on the CPU (tiny random checkpoint): compiled vs
eager parity of the backbone features and of the detections (segmenter and tracker sessions),
batch sizes 1..3, and a segmenter node that compiles during configure (log lines) or refuses
torch_compile with another backend.

Slow tier `compile` (test/conftest.py): the first build takes minutes on a cold inductor cache
(about 2 min for batch sizes 1 and 2 on 2 shared cores), seconds on a warm one.

Tolerances: the compiled backbone's features against eager on the same input, every output
tensor: max |difference| <= 1e-4 and cosine similarity >= 0.99999 (measured: ~5e-7, i.e.
float32 rounding of reordered reductions). Detections through `SegmenterSession` and
`TrackerSession`: the same count, class ids, object ids and labels; scores within 1e-4,
boxes within 0.01 px, every mask's IoU with its eager twin >= 0.99 (as the ONNX backend's
tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import assert_same_detections, tracker_run

from sam3_ros.core.backbone import create_backbone
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.core.vision_features import VisionFeatureCache

MAX_ABS = 1e-4
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    # The video model: its detector serves the segmenter and the tracker (one compile).
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)


@pytest.fixture(scope="module")
def backbones(loaded):
    eager = create_backbone("torch", loaded, {"compile": "none"})
    compiled = create_backbone("torch", loaded, {"compile": "default"})
    lines: list[str] = []
    compiled.prepare([1, 2], lines.append)
    return eager, compiled, lines


def _tensors(features) -> list[torch.Tensor]:
    return [features.last_hidden_state, *features.fpn_hidden_states,
            *features.fpn_position_encoding]


def _assert_close(got, ref) -> None:
    for a, b in zip(_tensors(got), _tensors(ref), strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= MAX_ABS
        cosine = torch.nn.functional.cosine_similarity(
            a.flatten().double(), b.flatten().double(), dim=0).item()
        assert cosine >= MIN_COSINE


def test_prepare_logs_each_batch_size_and_the_total(backbones):
    _, compiled, lines = backbones
    assert "torch_compile 'default': compiling the vision backbone for batch sizes [1, 2]" \
        in lines[0]
    assert [line.split(" ready")[0] for line in lines[1:3]] == [
        "torch_compile: batch size 1", "torch_compile: batch size 2"]
    assert "vision backbone compiled in" in lines[3] and len(lines) == 4
    assert compiled.prepared_batch_sizes == {1, 2}
    assert "compiled default" in compiled.describe()
    again: list[str] = []
    compiled.prepare([1, 2], again.append)
    assert len(again) == 1 and "already compiled" in again[0]


@pytest.mark.parametrize("batch", [1, 2])
def test_compiled_features_match_eager(backbones, loaded, batch):
    eager, compiled, _ = backbones
    size = int(loaded.processor.image_processor.size["height"])
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    _assert_close(compiled(pixels), eager(pixels))


def test_an_inference_mode_frame_runs_on_the_prepared_graph(backbones, loaded):
    """A frame made under inference_mode has other dispatch keys than `prepare`'s ordinary
    tensor; it is run as an ordinary copy instead of compiling again on a streamed frame."""
    _, compiled, _ = backbones
    size = int(loaded.processor.image_processor.size["height"])
    with torch.inference_mode():
        pixels = torch.randn(1, 3, size, size)
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(pixels)


def test_a_larger_batch_reuses_the_dynamic_graph(backbones, loaded):
    """Batch 2 compiled a graph with a dynamic batch dimension: batch 3 runs without a
    recompile (fail_on_recompile raises if it needed one)."""
    eager, compiled, _ = backbones
    size = int(loaded.processor.image_processor.size["height"])
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    compiled.prepared_batch_sizes.add(3)  # no "not compiled during configure" warning
    with torch.compiler.set_stance("fail_on_recompile"):
        got = compiled(pixels)
    _assert_close(got, eager(pixels))




def test_detections_match_eager(backbones, loaded):
    eager, compiled, _ = backbones
    prompts = [PromptSpec("mug"), PromptSpec("bottle", (BoxExemplar(10, 12, 70, 60, True),))]
    config = SegmenterConfig(score_threshold=0.25, max_detections=1000)
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = []
    for backbone in (eager, compiled):
        session = SegmenterSession(
            Sam3Segmenter(loaded, VisionFeatureCache(backbone, capacity=1)), config, prompts)
        results.append(session.process(rgb, track=False)[0])
    ref, got = results
    assert len(ref) > 0, "the tiny model at threshold 0.25 should give instances"
    assert_same_detections(ref, got)


def test_tracker_session_matches_eager(backbones, loaded):
    eager, compiled, _ = backbones

    ref, got = (tracker_run(loaded, VisionFeatureCache(backbone, capacity=1), ["mug"], 4)
                for backbone in (eager, compiled))
    assert any(len(d) for d in ref)
    for a, b in zip(ref, got, strict=True):
        assert_same_detections(a, b)


def test_torchao_int8_weight_only_compiles(tiny_checkpoint):
    pytest.importorskip("torchao")
    quantized = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32",
                          quantization="int8_weight_only")
    eager = create_backbone("torch", quantized, {"compile": "none"})
    compiled = create_backbone("torch", quantized, {"compile": "default"})
    compiled.prepare([1], lambda line: None)
    size = int(quantized.processor.image_processor.size["height"])
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    _assert_close(compiled(pixels), eager(pixels))


def test_segmenter_node_compiles_during_configure_and_refuses_other_backends(
        tiny_checkpoint, capfd):
    """In-process node: configure compiles (log lines before and after), a frame of the
    node's own warm-up runs on it; with backend onnxruntime configure fails with the reason;
    an invalid mode is refused as a parameter and fails configure."""
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("sam3_ros.msg")
    from rclpy.lifecycle import TransitionCallbackReturn

    from sam3_ros.ros.segmenter_node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context)

    def node(name: str, **params):
        overrides = [rclpy.parameter.Parameter("model", value=str(tiny_checkpoint)),
                     rclpy.parameter.Parameter("device", value="cpu")]
        overrides += [rclpy.parameter.Parameter(k, value=v) for k, v in params.items()]
        return SegmenterNode(name, context=context, namespace="/compile_test",
                             parameter_overrides=overrides)

    try:
        compiled = node("compiled", torch_compile="default")
        try:
            assert compiled.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert "compiled default" in compiled._model.backbone.describe()
            assert compiled._model.backbone.prepared_batch_sizes == {1}  # private hub: 1 camera
            compiled.set_parameters([rclpy.parameter.Parameter("torch_compile", value="none")])
            assert compiled.get_parameter("torch_compile").value == "default"  # needs reload
            compiled.trigger_cleanup()
            assert compiled.set_parameters([rclpy.parameter.Parameter(
                "backend", value="onnxruntime")])[0].successful
            assert compiled.trigger_configure() == TransitionCallbackReturn.FAILURE
        finally:
            compiled.destroy_node()
        invalid = node("invalid", torch_compile="fast")
        try:
            assert invalid.trigger_configure() == TransitionCallbackReturn.FAILURE
        finally:
            invalid.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    log = capfd.readouterr().err
    assert "torch_compile 'default': compiling the vision backbone for batch sizes [1]" in log
    assert "torch_compile 'default': vision backbone compiled in" in log
    assert ("configure failed: torch_compile 'default' applies to backend 'torch' only; with "
            "backend 'onnxruntime' set torch_compile to 'none'") in log
    assert "torch_compile must be one of ['none', 'default', 'reduce-overhead', " \
           "'max-autotune'], got 'fast'" in log
