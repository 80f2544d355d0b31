"""`compile_heads` with real inductor builds on the CPU (tiny random checkpoint): configure-time
compilation of the DETR encoder and mask decoder (log lines, every prompt shape), no compile on
a later frame whatever the prompts (count, box exemplars, text cache, tracker), detections equal
to the eager model's, refusals, and the segmenter node compiling during configure.

Slow tier `compile` (test/conftest.py). Tolerances as test_torch_compile_inductor.py
(`parity.assert_same_detections`: scores 1e-4, boxes 0.01 px, mask IoU >= 0.99).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from model_params import model_param_defaults
from parity import assert_matched_detections, assert_same_detections, tracker_run

from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.heads_compile import COMPILED_HEAD_MODULES, compile_heads, heads_compiled
from sam3_ros.core.model_hub import ModelHub, ModelKey, SharedModel
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.core.text_cache import TextEmbeddingCache


def _key(checkpoint, compile_heads: bool) -> ModelKey:
    return ModelKey(str(checkpoint), "cpu", "float32", "none", "torch", (("compile", "none"),),
                    compile_heads)


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)
    return SharedModel(_key(tiny_checkpoint, False), loaded)


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint):
    # The video model: its detector serves the segmenter and the tracker's detection.
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)
    shared = SharedModel(_key(tiny_checkpoint, True), loaded)
    lines: list[str] = []
    shared.prepare(lines.append)
    shared.prepare_lines = lines
    return shared


_BOX_A = BoxExemplar(10, 12, 70, 60, True)
_BOX_B = BoxExemplar(40, 30, 120, 90, False)
_PROMPT_SETS = {
    "1 text": [PromptSpec("mug")],
    "3 text": [PromptSpec("mug"), PromptSpec("bottle"), PromptSpec("red chair")],
    "1 prompt, 3 boxes": [PromptSpec("mug", (_BOX_A, _BOX_B, BoxExemplar(0, 0, 30, 30)))],
    "box only": [PromptSpec("", (_BOX_B,))],
    "text and boxes mixed": [PromptSpec("mug"), PromptSpec("bottle", (_BOX_A,)),
                             PromptSpec("cup"), PromptSpec("plate", (_BOX_A, _BOX_B))],
}


def _segment_batched(shared: SharedModel, frames: list[np.ndarray],
                     then_one_frame: bool = False) -> list:
    """Detections of `frames` (same size) from one batched backbone pass of `shared`, as the
    runtime serves several cameras, for a text and a box prompt; `then_one_frame`: and of
    frames[0] alone. The heads run under `fail_on_recompile`."""
    config = SegmenterConfig(score_threshold=0.2, max_detections=1000)
    segmenter = Sam3Segmenter(shared.loaded, shared.feature_cache)
    prompts = segmenter.encode_prompts([PromptSpec("mug"), PromptSpec("bottle", (_BOX_A,))])
    height, width = frames[0].shape[:2]
    keys = [("batched camera", i) for i in range(len(frames))]
    shared.feature_cache.compute_batch(
        keys, torch.cat([segmenter.preprocess(frame) for frame in frames]))
    features = [shared.feature_cache.get(key, None) for key in keys]
    if then_one_frame:
        features.append(shared.feature_cache.get(None, segmenter.preprocess(frames[0])))
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            return [segmenter.segment_features(f, prompts, config, height, width)
                    for f in features]
    finally:
        shared.feature_cache.clear()


def test_configure_compiles_every_prompt_shape_and_logs_it(compiled):
    lines = compiled.prepare_lines
    assert lines[0].startswith("compile_heads: compiling the detector's detr_encoder, "
                               "mask_decoder for text and box prompts")
    steps = [line.split(" ready in ")[0] for line in lines[1:-1]]
    assert steps == ["compile_heads: 1 text prompt", "compile_heads: 2 text prompts",
                     "compile_heads: 1 prompt with a box", "compile_heads: 2 prompts with boxes"]
    assert "detector heads compiled in" in lines[-1]
    assert compiled.heads_prepared and heads_compiled(compiled.loaded.detector)
    again: list[str] = []
    compiled.prepare(again.append)  # a second node on the same model: nothing left to do
    assert again == []


@pytest.mark.parametrize("name", list(_PROMPT_SETS))
def test_detections_match_eager_without_compiling_on_the_frame(eager, compiled, name):
    """Any prompt count and exemplar count after configure reuses a prepared graph
    (fail_on_recompile raises if one needed compiling) and gives the eager model's result."""
    config = SegmenterConfig(score_threshold=0.2, max_detections=1000)
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = []
    for shared in (eager, compiled):
        session = SegmenterSession(Sam3Segmenter(shared.loaded, shared.feature_cache), config,
                                   _PROMPT_SETS[name])
        with torch.compiler.set_stance("fail_on_recompile"):
            results.append(session.process(rgb, track=False)[0])
    ref, got = results
    assert len(ref) > 0, "the tiny model at threshold 0.2 should give instances"
    assert_same_detections(ref, got)


def test_features_of_a_batched_backbone_pass_need_no_compile(eager, compiled):
    """Several cameras' frames share one backbone pass (the runtime's batch): each frame's
    features are split out of it, and its heads reuse the prepared graphs."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    results = [_segment_batched(shared, frames) for shared in (eager, compiled)]
    assert any(len(d) for d in results[0])
    for ref, got in zip(*results, strict=True):
        assert_same_detections(ref, got)


def test_prompts_read_from_the_text_cache_need_no_compile(compiled, tmp_path):
    """Embeddings read back from disk are ordinary tensors, encoded ones inference tensors:
    graphs guard on that, so a restart with a warm cache must not compile on a frame."""
    specs = [PromptSpec("mug"), PromptSpec("bottle", (_BOX_A,))]
    cache = TextEmbeddingCache(tmp_path)
    Sam3Segmenter(compiled.loaded, compiled.feature_cache, text_cache=cache).encode_prompts(specs)
    segmenter = Sam3Segmenter(compiled.loaded, compiled.feature_cache, text_cache=cache)
    session = SegmenterSession(segmenter, SegmenterConfig(score_threshold=0.2), specs)
    rgb = np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with torch.compiler.set_stance("fail_on_recompile"):
        session.process(rgb, track=False)
    assert cache.hits >= 2 and segmenter.text_encoder_runs == 0


def test_tracker_detection_matches_eager_without_compiling(eager, compiled):
    with torch.compiler.set_stance("fail_on_recompile"):
        ref, got = (tracker_run(shared.loaded, shared.feature_cache, ["mug", "bottle"])
                    for shared in (eager, compiled))
    assert any(len(d) for d in ref)
    for a, b in zip(ref, got, strict=True):
        assert_same_detections(a, b)


def test_onnxruntime_backbone_with_compiled_heads(tiny_checkpoint, tmp_path):
    """Another backend (its features are ordinary tensors made from numpy): prepared from its
    own features, then single and batched frames reuse the graphs, same detections as the
    same backbone with eager heads."""
    pytest.importorskip("onnxruntime")
    from sam3_ros.tools.export_backbone import export_backbone

    export_backbone(str(tiny_checkpoint), str(tmp_path), "fp32", check_frames=1,
                    prompts=["mug"], score_threshold=0.2)
    options = (("artifact_dir", str(tmp_path)), ("precision", "fp32"), ("provider", "cpu"),
               ("threads", 0), ("trt_cache_dir", ""), ("trt_fp16", False), ("trt_int8", False))
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    hub = ModelHub()
    results = []
    for compiled in (False, True):
        key = ModelKey(str(tiny_checkpoint), "cpu", "float32", "none", "onnxruntime", options,
                       compiled)
        shared = hub.acquire(key)
        try:
            shared.prepare(lambda line: None)
            results.append(_segment_batched(shared, frames, then_one_frame=True))
        finally:
            hub.release(shared)
    assert any(len(d) for d in results[0])
    for ref, got in zip(*results, strict=True):
        assert_same_detections(ref, got)


@pytest.mark.parametrize(("backend", "options", "dtype"), [
    ("torch", (("compile", "default"),), "float32"),
    ("torch_int8", (), "float32"),
    ("torch_int8", (), "bfloat16"),  # the configuration measured at full size (README)
], ids=["torch_compile", "torch_int8", "torch_int8-bf16"])
def test_with_a_compiled_backbone(eager, tiny_checkpoint, backend, options, dtype):
    """compile_heads on top of a compiled backbone (torch_compile, or torch_int8's INT8
    graph): configure prepares both, later frames (any prompt set, the tracker) compile
    nothing. fp32: detections as the eager model's, within each backbone's own parity
    tolerance (test_torch_compile_inductor.py, test_torch_int8_backbone.py); bf16 moves
    near-threshold masks of the random model, so only no-compile and instances are checked."""
    if backend == "torch_int8":
        pytest.importorskip("torchao")
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("torch_int8: x86 CPUs only")
    hub = ModelHub(with_tracker=True)
    shared = hub.acquire(ModelKey(str(tiny_checkpoint), "cpu", dtype, "none", backend, options,
                                  True))
    try:
        lines: list[str] = []
        shared.prepare(lines.append)
        assert any("compiled in" in line and not line.startswith("compile_heads")
                   for line in lines), lines  # the backbone's own compile step
        assert lines[-1].startswith("compile_heads: detector heads compiled in")
        config = SegmenterConfig(score_threshold=0.2, max_detections=1000)
        rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        results = {}
        for which, model in (("ref", eager), ("got", shared)):
            with torch.compiler.set_stance("fail_on_recompile"):
                results[which] = [
                    SegmenterSession(Sam3Segmenter(model.loaded, model.feature_cache), config,
                                     specs).process(rgb, track=False)[0]
                    for specs in _PROMPT_SETS.values()]
                results[which] += tracker_run(model.loaded, model.feature_cache, ["mug"])
        for ref, got in zip(results["ref"], results["got"], strict=True):
            if dtype != "float32":
                assert len(got) and set(got.labels) <= set(ref.labels) | {""}
            elif backend == "torch":
                assert_same_detections(ref, got)
            else:
                assert_matched_detections(ref, got, score_tol=0.02, box_tol_px=1.5,
                                          min_mask_iou=0.9)
    finally:
        hub.release(shared)


def test_a_failed_compile_fails_prepare_with_the_reason(tiny_checkpoint, monkeypatch):
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")
    shared = SharedModel(_key(tiny_checkpoint, True), loaded)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(Sam3Segmenter, "segment_features", broken)
    try:
        with pytest.raises(ModelLoadError, match=r"compile_heads: compiling the detector heads "
                                                 r"for 1 text prompt failed: .*no C\+\+ "
                                                 r"compiler"):
            shared.prepare(lambda line: None)
        assert not shared.heads_prepared
    finally:
        shared.release()


def test_a_detector_without_the_modules_is_refused():
    class NotSam3(torch.nn.Module):
        detr_encoder = torch.nn.Identity()

    with pytest.raises(ModelLoadError, match="has no \\['mask_decoder'\\]"):
        compile_heads(NotSam3())
    assert COMPILED_HEAD_MODULES == ("detr_encoder", "mask_decoder")


def test_the_key_separates_compiled_and_eager_models(tiny_checkpoint):
    params = {**model_param_defaults(), "model": str(tiny_checkpoint), "device": "cpu",
              "dtype": "float32", "quantization": "none", "backend": "torch",
              "torch_compile": "none", "compile_heads": True}
    key = ModelKey.from_params(params.__getitem__)
    assert key.compile_heads and key != _key(tiny_checkpoint, False)
    hub = ModelHub()
    a = hub.acquire(_key(tiny_checkpoint, False))
    b = hub.acquire(key)
    try:
        assert hub.loads == 2 and not heads_compiled(a.loaded.detector)
        assert heads_compiled(b.loaded.detector)
    finally:
        hub.release(a)
        hub.release(b)


def test_segmenter_node_compiles_the_heads_during_configure(tiny_checkpoint, capfd):
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("sam3_ros.msg")
    from rclpy.lifecycle import TransitionCallbackReturn

    from sam3_ros.ros.segmenter_node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = SegmenterNode("heads", context=context, namespace="/compile_heads_test",
                             parameter_overrides=[
                                 rclpy.parameter.Parameter("model", value=str(tiny_checkpoint)),
                                 rclpy.parameter.Parameter("device", value="cpu"),
                                 rclpy.parameter.Parameter("compile_heads", value=True)])
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node._model.heads_prepared
            node.set_parameters([rclpy.parameter.Parameter("compile_heads", value=False)])
            assert node.get_parameter("compile_heads").value is True  # needs a reload
            node.trigger_cleanup()
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    log = capfd.readouterr().err
    assert "compile_heads: compiling the detector's detr_encoder, mask_decoder" in log
    assert "compile_heads: detector heads compiled in" in log
