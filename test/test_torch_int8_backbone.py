"""Backend `torch_int8` (PT2E X86 Inductor INT8 vision transformer) on the tiny random
checkpoint: features and detections against the torch backend's eager fp32/bf16 features,
batch sizes 1..3 on one dynamic graph, the node's configure, and every refusal.

Slow tier `compile` (test/conftest.py): inductor builds, ~10 s per graph on the tiny model.

Tolerances (INT8 against the same model's eager features, random weights: they flatter INT8,
trained ViTs have outlier channels): every feature tensor's cosine similarity >= 0.999 with
fp32 activations, >= 0.99 under bf16 autocast. Detections: the same count, class ids and
labels, scores within 0.02, boxes within 1.5 px, mask IoU >= 0.9. The feature checks are also
what fails if the weight pass before convert is dropped (cosine ~0.07, see the backend).
"""

from __future__ import annotations

import platform
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from parity import assert_matched_detections, tracker_run

from sam3_ros.core.backbone import create_backbone, release_torch_vit
from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.prompts import BoxExemplar, PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.core.vision_features import VisionFeatureCache

pytest.importorskip("torchao")
pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPUs only")

MIN_COSINE_FP32 = 0.999
MIN_COSINE_BF16 = 0.99


def _pair(tiny_checkpoint, dtype: str):
    """(eager torch backbone, torch_int8 backbone prepared for 1 and 2), separate loads: the
    INT8 backend's model serves that backend only (its ViT is released by the model hub)."""
    reference = load_sam3(str(tiny_checkpoint), device="cpu", dtype=dtype, with_tracker=True)
    quantized = load_sam3(str(tiny_checkpoint), device="cpu", dtype=dtype, with_tracker=True)
    eager = create_backbone("torch", reference, {"compile": "none"})
    int8 = create_backbone("torch_int8", quantized, {})
    # As the model hub does: anything that bypassed the backbone would now raise instead of
    # quietly running the float ViT.
    release_torch_vit(quantized.detector, "torch_int8")
    lines: list[str] = []
    int8.prepare([1, 2], lines.append)
    return SimpleNamespace(reference=reference, quantized=quantized, eager=eager, int8=int8,
                           lines=lines)


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint):
    return _pair(tiny_checkpoint, "float32")


@pytest.fixture(scope="module")
def bf16(tiny_checkpoint):
    return _pair(tiny_checkpoint, "bfloat16")


@pytest.fixture(scope="module")
def static(tiny_checkpoint, calibration_frames_dir):
    """fp32 eager reference and torch_int8 with static activations calibrated on 2 of the
    folder's 3 frames (the frames compared on are others)."""
    reference = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)
    quantized = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)
    eager = create_backbone("torch", reference, {"compile": "none"})
    int8 = create_backbone("torch_int8", quantized, {
        "int8_calibration": str(calibration_frames_dir), "int8_calibration_frames": 2})
    release_torch_vit(quantized.detector, "torch_int8")
    int8.prepare([1, 2], lambda line: None)
    return SimpleNamespace(reference=reference, quantized=quantized, eager=eager, int8=int8)


def _tensors(features) -> list[torch.Tensor]:
    return [features.last_hidden_state, *features.fpn_hidden_states,
            *features.fpn_position_encoding]


def _assert_close(got, ref, min_cosine: float) -> None:
    for a, b in zip(_tensors(got), _tensors(ref), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        cosine = torch.nn.functional.cosine_similarity(
            a.flatten().double(), b.flatten().double(), dim=0).item()
        assert cosine >= min_cosine, f"feature cosine {cosine:.5f} < {min_cosine}"


def _pixels(loaded, batch: int, seed: int) -> torch.Tensor:
    size = int(loaded.processor.image_processor.size["height"])
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_prepare_logs_each_batch_size_and_describes_itself(fp32):
    assert "compiling the INT8 vision transformer for batch sizes [1, 2]" in fp32.lines[0]
    assert [line.split(" ready")[0] for line in fp32.lines[1:3]] == [
        "torch_int8: batch size 1", "torch_int8: batch size 2"]
    assert "vision transformer compiled in" in fp32.lines[3]
    assert fp32.int8.describe() == "torch_int8 (cpu, int8 dynamic linears, fp32, neck eager)"
    again: list[str] = []
    fp32.int8.prepare([2, 1], again.append)
    assert len(again) == 1 and "already compiled" in again[0]


@pytest.mark.parametrize("batch", [1, 2])
def test_features_match_eager_fp32(fp32, batch):
    pixels = _pixels(fp32.reference, batch, batch)
    _assert_close(fp32.int8(pixels), fp32.eager(pixels), MIN_COSINE_FP32)


def test_a_larger_batch_reuses_the_dynamic_graph(fp32):
    pixels = _pixels(fp32.reference, 3, 3)
    fp32.int8.prepared_batch_sizes.add(3)
    with torch.compiler.set_stance("fail_on_recompile"):
        got = fp32.int8(pixels)
    _assert_close(got, fp32.eager(pixels), MIN_COSINE_FP32)


@pytest.mark.parametrize("inference_tensor", [False, True])
def test_frames_run_on_the_graph_prepared_in_configure(bf16, inference_tensor):
    """No compile on a streamed frame: bf16 frames (the model's dtype, as preprocessed) and
    frames made under inference_mode run on the graph `prepare` compiled (a mismatch of
    dtype or dispatch keys recompiled: 68 s on the first full-size frame)."""
    with torch.inference_mode(inference_tensor):
        pixels = _pixels(bf16.reference, 1, 9).to(torch.bfloat16)
    assert pixels.is_inference() == inference_tensor
    with torch.compiler.set_stance("fail_on_recompile"):
        bf16.int8(pixels)


def test_bfloat16_runs_under_autocast_and_hands_bf16_features(bf16):
    assert "bf16 autocast" in bf16.int8.describe()
    pixels = _pixels(bf16.reference, 1, 7).to(torch.bfloat16)
    got = bf16.int8(pixels)
    assert got.last_hidden_state.dtype == torch.bfloat16
    _assert_close(got, bf16.eager(pixels), MIN_COSINE_BF16)


def test_segmenter_detections_match_eager(fp32):
    prompts = [PromptSpec("mug"), PromptSpec("bottle", (BoxExemplar(10, 12, 70, 60, True),))]
    config = SegmenterConfig(score_threshold=0.25, max_detections=1000)
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = []
    for loaded, backbone in ((fp32.reference, fp32.eager), (fp32.quantized, fp32.int8)):
        session = SegmenterSession(
            Sam3Segmenter(loaded, VisionFeatureCache(backbone, capacity=1)), config, prompts)
        results.append(session.process(rgb, track=False)[0])
    ref, got = results
    assert len(ref) > 0, "the tiny model at threshold 0.25 should give instances"
    assert_matched_detections(ref, got, score_tol=0.02, box_tol_px=1.5,
                              min_mask_iou=0.9)


def test_tracker_session_runs_on_the_int8_features(fp32):
    ref, got = (tracker_run(loaded, VisionFeatureCache(backbone, capacity=1), ["mug"])
                for loaded, backbone in ((fp32.reference, fp32.eager),
                                         (fp32.quantized, fp32.int8)))
    assert any(len(d) for d in ref)
    for a, b in zip(ref, got, strict=True):
        assert len(a) == len(b)
        np.testing.assert_array_equal(a.object_ids, b.object_ids)


def _camera_pixels(loaded, seeds) -> torch.Tensor:
    from sam3_ros.tools.export_backbone import synthetic_frames

    processor = loaded.processor.image_processor
    frames = [synthetic_frames(1, seed=seed, height=120, width=160)[0] for seed in seeds]
    return processor(images=frames, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("batch", [1, 2])
def test_static_features_match_eager_fp32_on_other_frames(static, batch):
    pixels = _camera_pixels(static.reference, range(20, 20 + batch))
    _assert_close(static.int8(pixels), static.eager(pixels), MIN_COSINE_FP32)


def test_static_graph_has_fixed_activation_ranges_and_says_so(static, fp32):
    """Dynamic quantisation computes each activation's range on every frame (choose_qparams
    nodes); static has none: the ranges are constants from calibration."""
    def range_passes(backbone) -> int:
        return sum("choose_qparams" in str(node.target) for node in backbone._graph.graph.nodes)

    def fixed_quantisations(backbone) -> int:
        return sum("quantize_per_tensor.default" in str(node.target)
                   for node in backbone._graph.graph.nodes)

    assert range_passes(fp32.int8) > 0
    assert range_passes(static.int8) == 0
    # ... and static still quantises: activations with constant scales (not none at all).
    assert fixed_quantisations(static.int8) > 0
    assert static.int8.describe() == ("torch_int8 (cpu, int8 static linears calibrated on 2 "
                                      "frames, fp32, neck eager)")


def test_static_under_bf16_autocast_matches_eager_bf16(tiny_checkpoint, calibration_frames_dir,
                                                       bf16):
    """The README's configuration: static ranges with dtype bfloat16 (int8 linears, the rest
    under bf16 autocast)."""
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    int8 = create_backbone("torch_int8", loaded, {
        "int8_calibration": str(calibration_frames_dir), "int8_calibration_frames": 2})
    release_torch_vit(loaded.detector, "torch_int8")
    int8.prepare([1], lambda line: None)
    assert int8.describe() == ("torch_int8 (cpu, int8 static linears calibrated on 2 frames, "
                               "bf16 autocast, neck eager)")
    pixels = _camera_pixels(bf16.reference, [30]).to(torch.bfloat16)
    with torch.compiler.set_stance("fail_on_recompile"):
        got = int8(pixels)
    assert got.last_hidden_state.dtype == torch.bfloat16
    _assert_close(got, bf16.eager(pixels), MIN_COSINE_BF16)


def test_static_segmenter_detections_match_eager(static):
    config = SegmenterConfig(score_threshold=0.25, max_detections=1000)
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = []
    for loaded, backbone in ((static.reference, static.eager), (static.quantized, static.int8)):
        session = SegmenterSession(
            Sam3Segmenter(loaded, VisionFeatureCache(backbone, capacity=1)), config,
            [PromptSpec("mug")])
        results.append(session.process(rgb, track=False)[0])
    assert len(results[0]) > 0
    assert_matched_detections(*results, score_tol=0.02, box_tol_px=1.5, min_mask_iou=0.9)


def test_calibration_reads_the_first_frames_by_name_through_the_processor(
        tiny_checkpoint, calibration_frames_dir):
    import cv2

    from sam3_ros.core.torch_int8_backbone import calibration_pixels

    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")
    processor = loaded.processor.image_processor
    pixels = calibration_pixels(processor, str(calibration_frames_dir), 5)
    assert len(pixels) == 3  # fewer images than asked for: all of them; notes.txt ignored
    size = int(loaded.processor.image_processor.size["height"])
    assert all(p.shape == (1, 3, size, size) and p.dtype == torch.float32 for p in pixels)
    first = cv2.imread(str(calibration_frames_dir / "frame_0.png"))[:, :, ::-1]
    expected = loaded.processor.image_processor(images=first.copy(),
                                                return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], expected)
    assert len(calibration_pixels(processor, str(calibration_frames_dir), 1)) == 1


def test_the_graph_keeps_int8_weights_not_the_fp32_originals(tiny_checkpoint):
    """convert_pt2e leaves each fp32 weight on the module beside its int8 constant; the
    backend drops them (the whole fp32 ViT was held twice, 1.8 GB at full size)."""
    from sam3_ros.core.torch_int8_backbone import quantize_vit

    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")
    vit = loaded.detector.vision_encoder.backbone
    graph = quantize_vit(vit, int(loaded.processor.image_processor.size["height"]))
    held: dict[torch.dtype, int] = {}
    for _, tensor in [*graph.named_parameters(), *graph.named_buffers()]:
        held[tensor.dtype] = held.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
    # The quantiser takes the linears and the patch embedding's convolution.
    weight_bytes = sum(m.weight.numel() * 4 for m in vit.modules()
                       if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    assert held[torch.int8] == weight_bytes // 4  # every such weight, once, in int8
    assert held[torch.float32] < weight_bytes / 4  # biases, norms, embeddings, scales only


def test_no_fp32_copy_of_the_weights_outlives_the_quantisation(tiny_checkpoint, monkeypatch):
    """A bf16 model is exported from an fp32 copy; library caches keyed by module (torchao's
    and torch.ao's `assert_and_get_unique_device`) kept that copy alive for good (1.8 GB at
    full size)."""
    import copy
    import gc
    import weakref

    from sam3_ros.core import torch_int8_backbone

    copies = []
    real_deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        result = real_deepcopy(obj, *args, **kwargs)
        if isinstance(result, torch.nn.Module):  # the quantised weights' fp32 originals
            copies.extend(weakref.ref(m.weight) for m in result.modules()
                          if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
        return result

    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    monkeypatch.setattr(torch_int8_backbone.copy, "deepcopy", recording_deepcopy)
    graph = torch_int8_backbone.quantize_vit(loaded.detector.vision_encoder.backbone,
                                             int(loaded.processor.image_processor.size["height"]))
    monkeypatch.undo()
    gc.collect()
    assert copies, "the bf16 ViT should have been copied to fp32 for the export"
    alive = [ref() for ref in copies if ref() is not None]
    assert alive == []
    assert graph is not None


def test_the_backend_converts_a_bf16_vit_in_place_and_nothing_of_it_outlives_the_release(
        tiny_checkpoint, monkeypatch):
    """The backend exports a bf16 model's ViT converted to fp32 in place, not a copy: the copy
    beside the bf16 original was configure's memory peak (0.9 + 1.8 GB at full size). Once the
    model hub releases the torch ViT, none of its weights stays alive."""
    import copy
    import gc
    import weakref

    from sam3_ros.core import torch_int8_backbone

    real_deepcopy = copy.deepcopy

    def no_vit_copy(obj, *args, **kwargs):  # torch.export deep-copies small things itself
        assert id(obj) != vit_id, "the ViT was copied"
        return real_deepcopy(obj, *args, **kwargs)

    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="bfloat16")
    vit = loaded.detector.vision_encoder.backbone
    vit_id = id(vit)
    weights = [weakref.ref(m.weight) for m in vit.modules()
               if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    assert {ref().dtype for ref in weights} == {torch.bfloat16}
    monkeypatch.setattr(torch_int8_backbone.copy, "deepcopy", no_vit_copy)
    backbone = create_backbone("torch_int8", loaded, {})
    monkeypatch.undo()
    assert {ref().dtype for ref in weights} == {torch.float32}  # the same weights, converted
    del vit
    release_torch_vit(loaded.detector, "torch_int8")
    gc.collect()
    assert [ref for ref in weights if ref() is not None] == []
    assert backbone.describe().startswith("torch_int8")


def test_the_hub_frees_the_float_vit_when_the_backend_is_created(tiny_checkpoint,
                                                                   monkeypatch):
    """The export's graphs keep the float weights in reference cycles; the model hub collects
    them before it trims the heap, not whenever the cyclic collector next runs."""
    import gc
    import weakref

    from sam3_ros.core import model_hub

    weights = []
    real_create = model_hub.create_backbone

    def recording_create(backend, loaded, options):
        weights.extend(weakref.ref(m.weight)
                       for m in loaded.detector.vision_encoder.backbone.modules()
                       if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
        return real_create(backend, loaded, options)

    monkeypatch.setattr(model_hub, "create_backbone", recording_create)
    hub = model_hub.ModelHub()
    key = model_hub.ModelKey(str(tiny_checkpoint), "cpu", "bfloat16", "none", "torch_int8")
    was_enabled = gc.isenabled()
    gc.disable()  # only the hub's own collection may free them
    try:
        shared = hub.acquire(key)
        alive = [ref for ref in weights if ref() is not None]
    finally:
        if was_enabled:
            gc.enable()
    try:
        assert weights and alive == []
    finally:
        hub.release(shared)


def _fake_loaded(**overrides):
    loaded = SimpleNamespace(device=torch.device("cpu"), quantization="none",
                             dtype=torch.float32,
                             processor=SimpleNamespace(image_processor=None))
    for key, value in overrides.items():
        setattr(loaded, key, value)
    return loaded


@pytest.mark.parametrize(("overrides", "options", "machine", "reason"), [
    ({"device": torch.device("cuda", 0)}, {}, "x86_64",
     "backend 'torch_int8' runs on the CPU only (x86 oneDNN int8 kernels); the model is on "
     "cuda:0. On a GPU use backend onnxruntime with onnx_provider tensorrt and onnx_trt_int8"),
    ({}, {}, "aarch64", "backend 'torch_int8' needs an x86 CPU (X86InductorQuantizer, oneDNN "
     "int8); this machine is aarch64"),
    ({"quantization": "int8_dynamic"}, {}, "x86_64",
     "backend 'torch_int8' quantises the vision transformer itself; set quantization to "
     "'none' (got 'int8_dynamic')"),
    ({}, {"compile": "default"}, "x86_64",
     "backend 'torch_int8': unknown options ['compile'] (known: ['int8_calibration', "
     "'int8_calibration_frames'])"),
    ({}, {"int8_calibration": "{dir}", "int8_calibration_frames": 0}, "x86_64",
     "backend 'torch_int8': int8_calibration_frames must be in [1, 64], got 0"),
    ({}, {"int8_calibration": "{dir}", "int8_calibration_frames": 65}, "x86_64",
     "backend 'torch_int8': int8_calibration_frames must be in [1, 64], got 65"),
    ({}, {"int8_calibration": "{dir}/missing"}, "x86_64",
     "backend 'torch_int8': calibration frames: '{dir}/missing' is not a folder"),
    ({}, {"int8_calibration": "{dir}/empty"}, "x86_64",
     "backend 'torch_int8': calibration frames: no png/jpeg files in '{dir}/empty'"),
    ({}, {"int8_calibration": "{dir}/corrupt"}, "x86_64",
     "backend 'torch_int8': calibration frames: {dir}/corrupt/a.png: png without an IHDR "
     "header: cannot read its size"),
    ({}, {"int8_calibration": "{dir}/huge"}, "x86_64",
     "backend 'torch_int8': calibration frames: {dir}/huge/a.png: image 100000x100000 "
     "(10000000000 pixels) exceeds the limit of 16777216 pixels (image files' limit)"),
])
def test_refusals(monkeypatch, tmp_path, overrides, options, machine, reason):
    import struct
    import zlib

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "frame.txt").write_text("not an image")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    # A 100000 x 100000 png header: refused from the header, nothing that size allocated.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(
        ">I", zlib.crc32(b"IHDR" + header))
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    options = {k: v.replace("{dir}", str(tmp_path)) if isinstance(v, str) else v
               for k, v in options.items()}
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(ModelLoadError) as err:
        create_backbone("torch_int8", _fake_loaded(**overrides), options)
    assert str(err.value) == reason.replace("{dir}", str(tmp_path))


def test_a_failed_export_is_a_load_error_with_the_reason():
    from sam3_ros.core.torch_int8_backbone import quantize_vit

    class NotExportable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, pixel_values):
            if pixel_values.sum() > 0:  # data-dependent control flow: export refuses it
                return self.linear(pixel_values)
            return pixel_values

    with pytest.raises(ModelLoadError, match="backend 'torch_int8': quantising the vision "
                                             "transformer failed: "):
        quantize_vit(NotExportable(), 4)
    # Converted in place for the export: a failure gives the ViT back in its own dtype.
    vit = NotExportable().to(torch.bfloat16)
    with pytest.raises(ModelLoadError):
        quantize_vit(vit, 4, in_place=True)
    assert vit.linear.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(("args", "backbone"), [
    (["--backend", "torch_int8"], "torch_int8 (cpu, int8 dynamic linears, fp32, neck eager)"),
    (["--backend", "torch_int8", "--calibration", "{calibration}", "--calibration-frames", "2"],
     "torch_int8 (cpu, int8 static linears calibrated on 2 frames, fp32, neck eager)"),
    (["--backend", "torch", "--quantization", "int8_weight_only"],
     "torch (cpu, float32), torchao int8_weight_only"),
])
def test_quantization_report_for_the_torch_modes(tiny_checkpoint, calibration_frames_dir,
                                                 tmp_path, capsys, args, backbone):
    import json

    from sam3_ros.tools.quantization_report import main

    args = [a.replace("{calibration}", str(calibration_frames_dir)) for a in args]
    out = tmp_path / "report.json"
    assert main(["--model", str(tiny_checkpoint), *args, "--check-frames", "2", "--prompts",
                 "mug", "--score-threshold", "0.25", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backbone"] == backbone and report["check_frames"] == 2
    assert set(report["features_vs_torch_fp32"]) == {"last_hidden_state", "fpn_0", "fpn_1",
                                                     "fpn_2", "fpn_3"}
    assert all(m["cosine"] >= 0.99 for m in report["features_vs_torch_fp32"].values())
    sizes = report["vit_weights_mb"]
    assert sizes["quantised"] < sizes["fp32"]
    det = report["detections_vs_torch_fp32"]
    assert det["detections_reference"] > 0 and det["matched"] == det["detections_reference"]
    assert det["mean_mask_iou"] >= 0.9
    printed = capsys.readouterr().out
    assert "ViT weights: fp32" in printed and "random weights flatter INT8" in printed


def test_quantization_report_exits_1_below_the_threshold(tiny_checkpoint):
    from sam3_ros.tools.quantization_report import main

    assert main(["--model", str(tiny_checkpoint), "--check-frames", "1", "--prompts",
                 "--min-cosine", "1.0000001"]) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "torch"], "backend torch in float32 without --quantization is the "
     "reference itself: name the torchao mode, or --dtype bfloat16"),
    (["--backend", "torch_int8", "--quantization", "int8_dynamic"],
     "set quantization to 'none' (got 'int8_dynamic')"),
])
def test_quantization_report_refusals_exit_2(tiny_checkpoint, capsys, args, message):
    from sam3_ros.tools.quantization_report import main

    assert main(["--model", str(tiny_checkpoint), *args, "--check-frames", "1"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "torch", "--quantization", "int8_dynamic", "--calibration", "{dir}"],
     "--calibration is for --backend torch_int8"),
    (["--calibration", "{dir}", "--frames", "{dir}/."],
     "--frames and --calibration are the same folder"),
    (["--calibration-frames", "2"], "--calibration-frames needs --calibration"),
    # Refused before the checkpoints load, not minutes later by the calibration.
    (["--calibration", "{dir}", "--calibration-frames", "0"],
     "--calibration-frames must be in 1..64"),
    (["--calibration", "{dir}", "--calibration-frames", "65"],
     "--calibration-frames must be in 1..64"),
])
def test_quantization_report_refuses_calibration_misuse(tiny_checkpoint, calibration_frames_dir,
                                                        capsys, args, message):
    from sam3_ros.tools.quantization_report import main

    args = [a.replace("{dir}", str(calibration_frames_dir)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_checkpoint), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_calibration_folder_with_another_backend_is_refused(backend):
    from sam3_ros.core.backbone import backend_options
    from sam3_ros.core.errors import ConfigError

    params = {"torch_compile": "none", "torch_int8_calibration": "/frames",
              "torch_int8_calibration_frames": 4, "onnx_artifact_dir": "", "onnx_precision":
              "fp32", "onnx_provider": "cpu", "onnx_threads": 0, "onnx_trt_cache_dir": "",
              "onnx_trt_fp16": False, "onnx_trt_int8": False}
    with pytest.raises(ConfigError, match="torch_int8_calibration '/frames' applies to backend "
                                          f"'torch_int8' only; with backend '{backend}' set "
                                          "torch_int8_calibration to ''"):
        backend_options(backend, params.__getitem__)
    assert dict(backend_options("torch_int8", params.__getitem__)) == {
        "int8_calibration": "/frames", "int8_calibration_frames": 4}
    # One model per distinct configuration: a folder spelled two ways is one key, and the
    # frame count means nothing without a folder.
    for spelling in ("/frames/", "/frames/.", "/x/../frames"):
        assert backend_options("torch_int8", {**params, "torch_int8_calibration": spelling}
                               .__getitem__) == backend_options("torch_int8", params.__getitem__)
    dynamic = [backend_options("torch_int8", {**params, "torch_int8_calibration": "",
                                              "torch_int8_calibration_frames": n}.__getitem__)
               for n in (4, 8)]
    assert dynamic[0] == dynamic[1] == (("int8_calibration", ""),)


def test_a_failed_quantisation_clears_the_library_caches(tiny_checkpoint, monkeypatch):
    """The module caches are filled by prepare_pt2e: a convert that fails must not leave the
    exported module (and its fp32 weights) cached, one more per failed configure."""
    import torchao.utils

    from sam3_ros.core import torch_int8_backbone

    real = torch_int8_backbone._quantizer

    def failing_convert(is_dynamic=True):
        quantizer, prepare, _ = real(is_dynamic)

        def convert(model):
            raise RuntimeError("convert failed")

        return quantizer, prepare, convert

    monkeypatch.setattr(torch_int8_backbone, "_quantizer", failing_convert)
    loaded = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")
    with pytest.raises(ModelLoadError, match="quantising the vision transformer failed: "
                                             "RuntimeError: convert failed"):
        torch_int8_backbone.quantize_vit(loaded.detector.vision_encoder.backbone,
                                         int(loaded.processor.image_processor.size["height"]))
    assert torchao.utils._assert_and_get_unique_device.cache_info().currsize == 0


def test_the_hubs_last_release_frees_the_int8_model(tiny_checkpoint):
    """After the last user's release nothing (compiled code, caches) keeps the quantised
    graph or the model alive: a configure after cleanup must not hold two."""
    import gc
    import weakref

    from sam3_ros.core.model_hub import ModelHub, ModelKey

    hub = ModelHub()
    shared = hub.acquire(ModelKey(str(tiny_checkpoint), "cpu", "bfloat16", "none",
                                  "torch_int8", ()))
    shared.prepare(lambda line: None)
    session = SegmenterSession(Sam3Segmenter(shared.loaded, shared.feature_cache),
                               SegmenterConfig(), [PromptSpec("mug")])
    session.process(np.zeros((48, 64, 3), np.uint8), frame_key=("frame", 1))
    graph = weakref.ref(shared.backbone._graph)
    detector = weakref.ref(shared.loaded.detector)
    del session
    hub.release(shared)
    gc.collect()
    assert detector() is None
    assert graph() is None
