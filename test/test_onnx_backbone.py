"""ONNX Runtime backbone (no ROS): export, parity with torch, INT8 report, refusals.

Tolerances (fp32 artifact vs the torch backbone, tiny random checkpoint): every feature
output's cosine >= 0.99999 and max abs error <= 1e-4; through Sam3Segmenter and TrackerSession
the same detections (same count, class ids, object ids), scores within 1e-4, boxes within
0.01 px, every mask's IoU with its torch twin >= 0.99 (a pixel whose probability sits at the
mask threshold may flip).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_params import model_param_defaults
from parity import assert_same_detections, tracker_run

from sam3_ros.core.backbone import BACKENDS, backend_options, create_backbone
from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.model_hub import ModelHub, ModelKey
from sam3_ros.core.model_loading import load_sam3
from sam3_ros.core.onnx_backbone import (
    ARTIFACT_FORMAT,
    current_key,
    read_artifact,
    trt_engine_dir,
)
from sam3_ros.core.prompts import PromptSpec
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig
from sam3_ros.core.tracker import TrackerConfig, TrackerSession
from sam3_ros.core.vision_features import VisionFeatureCache
from sam3_ros.tools.export_backbone import (
    ExportRefusedError,
    export_backbone,
    main,
)

THRESHOLD = 0.25


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory):
    """One artifact folder: fp32, int8-dynamic and int8-static of the tiny checkpoint.

    int8-static needs an onnxruntime with QuantizeLinear at the graph's opset 23 (1.32 here;
    1.23, the newest for Python 3.10, has none): where it is missing the export must refuse
    with the reason, and `STATIC_REFUSALS` keeps it for the test that checks so.
    """
    out = tmp_path_factory.mktemp("onnx_artifacts")
    reports = {}
    for precision in ("fp32", "int8-dynamic", "int8-static"):
        try:
            reports[precision] = export_backbone(
                str(tiny_checkpoint), str(out), precision, check_frames=1,
                calibration_frames=2, prompts=["mug", "bottle"], score_threshold=THRESHOLD)
        except ModelLoadError as err:
            if precision != "int8-static" or "QuantizeLinear" not in str(err):
                raise
            STATIC_REFUSALS.append(str(err))
    return out, reports


STATIC_REFUSALS: list[str] = []


def test_int8_static_exports_or_is_refused_with_the_reason(artifacts):
    _, reports = artifacts
    if "int8-static" in reports:
        assert not STATIC_REFUSALS
        return
    import onnxruntime

    # The refusal names the reason (an onnxruntime without the calibration cache, or one
    # that cannot load QuantizeLinear at opset 23: then the artifact, the provider and ONNX
    # Runtime's own words), and nothing loadable is left behind.
    assert ("needs onnxruntime >= 1.32" in STATIC_REFUSALS[0]
            or "ONNX Runtime cannot load" in STATIC_REFUSALS[0]), STATIC_REFUSALS[0]
    assert "QuantizeLinear" in STATIC_REFUSALS[0], STATIC_REFUSALS[0]
    assert not list(artifacts[0].glob("sam3_backbone_112px_int8-static_mha.json")), (
        onnxruntime.__version__)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32", with_tracker=True)


@pytest.fixture(scope="module")
def onnx_backbone(loaded, artifacts):
    return create_backbone("onnxruntime", loaded, {"artifact_dir": str(artifacts[0])})


def _cosine(a, b) -> float:
    a, b = a.double().ravel(), b.double().ravel()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("parts", [1, 3])
def test_calibration_in_parts_equals_onnxruntimes_own(artifacts, tmp_path, parts):
    # The ranges the int8-static export hands to quantize_static: the same tensors and the
    # same min/max as onnxruntime's one-run calibrator, however the tensors are split.
    from onnxruntime.quantization.calibrate import CalibrationDataReader, create_calibrator

    from sam3_ros.tools.export_backbone import QUANT_OPS_STATIC
    from sam3_ros.tools.ort_calibration import calibrate_min_max, supports_calibration_cache

    if not supports_calibration_cache():
        pytest.skip("this onnxruntime has no calibration cache (int8-static is refused)")
    fp32 = artifacts[0] / "sam3_backbone_112px_fp32_mha.onnx"
    rng = np.random.default_rng(3)
    frames = [{"pixel_values": rng.standard_normal((1, 3, 112, 112)).astype(np.float32)}
              for _ in range(2)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(frames)

        def get_next(self):
            return next(self.items, None)

    reference = create_calibrator(fp32, QUANT_OPS_STATIC,
                                  augmented_model_path=str(tmp_path / "augmented.onnx"),
                                  use_external_data_format=True)
    reference.collect_data(Reader())
    expected = reference.compute_data().data
    lines = []
    found = calibrate_min_max(fp32, frames, QUANT_OPS_STATIC, parts, lines.append).data
    assert len(expected) > 10 and found.keys() == expected.keys()
    for name, data in expected.items():
        assert np.array_equal(found[name].range_value, data.range_value), name
    assert sum("frame 2/2" in line for line in lines) == parts  # every part saw every frame
    # A part with nothing to calibrate (the exported ViT has no Gemm) is no error.
    assert calibrate_min_max(fp32, frames[:1], ["Gemm"], 2).data == {}


def test_calibration_refuses_bad_arguments(artifacts):
    from sam3_ros.tools.ort_calibration import calibrate_min_max

    fp32 = artifacts[0] / "sam3_backbone_112px_fp32_mha.onnx"
    with pytest.raises(ModelLoadError, match="needs calibration frames"):
        calibrate_min_max(fp32, [], ["MatMul"], 2)
    with pytest.raises(ModelLoadError, match="parts must be >= 1, got 0"):
        calibrate_min_max(fp32, [{"pixel_values": np.zeros((1, 3, 112, 112), np.float32)}],
                          ["MatMul"], 0)


@pytest.mark.parametrize(("precision", "arguments", "reason"), [
    ("fp32", {"check_frames": 0}, "--check-frames must be >= 1, got 0"),
    ("int8-dynamic", {"check_frames": -1}, "--check-frames must be >= 1, got -1"),
    ("int8-static", {"calibration_frames": 0}, "--calibration-frames must be >= 1, got 0"),
    ("int8-static", {"calibration_parts": 0}, "--calibration-parts must be >= 1, got 0"),
    ("fp32", {"image_size": 0}, "--image-size must be >= 1, got 0"),
    ("fp32", {"image_size": -14}, "--image-size must be >= 1, got -14"),
])
def test_export_refuses_bad_counts_before_loading(tmp_path, precision, arguments, reason):
    # A missing checkpoint would fail the load: the argument's reason proves it came first.
    with pytest.raises(ModelLoadError, match=re.escape(reason)):
        export_backbone(str(tmp_path / "missing"), str(tmp_path / "out"), precision,
                        prompts=[], **arguments)
    assert not (tmp_path / "out").exists()
    flag, value = reason.split(" must")[0], reason.rsplit(" ", 1)[1]
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                 "--precision", precision, f"{flag}={value}"]) == 1


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)




def test_export_writes_keyed_fused_attention_artifacts(artifacts, tiny_checkpoint):
    import onnx

    out, reports = artifacts
    for precision, report in reports.items():
        artifact = read_artifact(out / f"sam3_backbone_112px_{precision}_mha.json")
        assert artifact.key == current_key(str(tiny_checkpoint), 112, precision, "mha")
        assert artifact.output_names == ("last_hidden_state", "fpn_0", "fpn_1", "fpn_2",
                                         "fpn_3")
        assert report["passed"] and (out / f"sam3_backbone_112px_{precision}_mha.report.json"
                                     ).is_file()
    ops = {n.op_type for n in onnx.load(str(out / "sam3_backbone_112px_fp32_mha.onnx"),
                                        load_external_data=False).graph.node}
    # Attention as ORT's MultiHeadAttention (flash kernel on the CPU), no score matrix.
    assert "MultiHeadAttention" in ops and "Attention" not in ops and "Softmax" not in ops


@pytest.mark.parametrize("form", ["explicit", "onnx"])
def test_other_attention_forms_export_and_are_keyed_apart(tiny_checkpoint, loaded, tmp_path,
                                                          form):
    import onnx

    report = export_backbone(str(tiny_checkpoint), str(tmp_path), "fp32", check_frames=1,
                             prompts=[], attention=form)
    assert report["passed"] and report["attention"] == form
    artifact = read_artifact(tmp_path / f"sam3_backbone_112px_fp32_{form}.json")
    assert artifact.key.attention == form
    ops = {n.op_type for n in onnx.load(str(artifact.onnx_path),
                                        load_external_data=False).graph.node}
    assert ("Softmax" in ops) == (form == "explicit")
    assert ("Attention" in ops) == (form == "onnx")
    # The CPU provider runs the mha form only: another form is refused with the reason.
    with pytest.raises(ModelLoadError, match=f"attention exported as '{form}', the provider "
                                             f"runs 'mha'") as err:
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    assert "--attention mha" in str(err.value)


def test_artifacts_of_the_previous_format_are_refused(loaded, artifacts, tmp_path):
    sidecar = _copy_fp32(artifacts, tmp_path)
    data = json.loads(sidecar.read_text())
    del data["key"]["attention"]  # what format 1 wrote (the ONNX Attention op inside)
    data["key"]["format"] = 1
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=f"artifact format 1, this package reads "
                                             f"{ARTIFACT_FORMAT}"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})


def test_features_match_torch(loaded, onnx_backbone):
    assert onnx_backbone.name == "onnxruntime"
    assert "CPUExecutionProvider" in onnx_backbone.describe()
    pixel_values = torch.randn(2, 3, 112, 112)  # a batch: the batch dimension is dynamic
    ref = create_backbone("torch", loaded)(pixel_values)
    got = onnx_backbone(pixel_values)
    pairs = [(ref.last_hidden_state, got.last_hidden_state),
             *zip(ref.fpn_hidden_states, got.fpn_hidden_states, strict=True)]
    for a, b in pairs:
        assert a.shape == b.shape and b.dtype == torch.float32
        assert _cosine(a, b) >= 0.99999
        assert float((a - b).abs().max()) <= 1e-4
    for a, b in zip(ref.fpn_position_encoding, got.fpn_position_encoding, strict=True):
        assert torch.equal(a, b)


def test_segmenter_detections_match_torch(loaded, onnx_backbone):
    image = _image()
    config = SegmenterConfig(score_threshold=THRESHOLD, max_detections=1000)
    torch_seg = Sam3Segmenter(loaded)
    onnx_seg = Sam3Segmenter(loaded, VisionFeatureCache(onnx_backbone, capacity=1))
    prompts = torch_seg.encode_prompts([PromptSpec("mug"), PromptSpec("bottle")])
    ref = torch_seg.segment(image, prompts, config)
    got = onnx_seg.segment(image, prompts, config)
    assert len(ref) > 0
    assert_same_detections(ref, got)


def test_tracker_session_matches_torch(loaded, onnx_backbone):
    ref = tracker_run(loaded, None, ["mug"], 4, base=_image(3))
    got = tracker_run(loaded, VisionFeatureCache(onnx_backbone, capacity=1), ["mug"], 4,
                      base=_image(3))
    assert any(len(d) for d in ref)
    for a, b in zip(ref, got, strict=True):
        assert_same_detections(a, b)


def test_int8_reports_are_sane(artifacts):
    _, reports = artifacts
    for precision in ("int8-dynamic", "int8-static"):
        if precision not in reports:
            continue  # refused by this onnxruntime (test above)
        report = reports[precision]
        assert report["file_size_mb"]["fp32"] > 0 and report["file_size_mb"]["artifact"] > 0
        features = report["features_vs_torch_fp32"]
        assert set(features) == {"last_hidden_state", "fpn_0", "fpn_1", "fpn_2", "fpn_3"}
        for m in features.values():
            assert 0.99 <= m["cosine"] <= 1.0 + 1e-6 and 0 < m["max_abs_error"] < 1.0
        det = report["detections_vs_torch_fp32"]
        assert det["detections_reference"] > 0 and det["matched"] > 0
        assert 0.0 <= det["mean_mask_iou"] <= 1.0 and 0.0 <= det["pixel_agreement"] <= 1.0
        assert det["max_box_delta_px"] >= 0 and det["max_score_delta"] >= 0
        assert "random weights flatter INT8 fidelity" in report["caveat"]
    # The dynamic quantiser stores int8 weights: the MatMul weights shrink 4x.
    assert reports["int8-dynamic"]["file_size_mb"]["artifact"] < \
        reports["int8-dynamic"]["file_size_mb"]["fp32"]


def test_int8_backend_loads_by_precision(loaded, artifacts):
    backbone = create_backbone("onnxruntime", loaded, {"artifact_dir": str(artifacts[0]),
                                                       "precision": "int8-dynamic"})
    assert "int8-dynamic" in backbone.describe()
    out = backbone(torch.randn(1, 3, 112, 112))
    assert out.last_hidden_state.shape == (1, 64, 32)


def _copy_fp32(artifacts, tmp_path):
    for path in artifacts[0].glob("sam3_backbone_112px_fp32_mha*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "sam3_backbone_112px_fp32_mha.json"


@pytest.mark.parametrize("other", ["[]", '"hello"', "null", "{bad json"])
def test_other_json_files_do_not_hide_the_artifact(loaded, artifacts, tmp_path, other):
    # data.get on a list raised AttributeError out of the search: configure failed although
    # the right artifact was there.
    _copy_fp32(artifacts, tmp_path)
    (tmp_path / "a_notes.json").write_text(other)
    backbone = create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    assert backbone.artifact.sidecar_path.name == "sam3_backbone_112px_fp32_mha.json"


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d.update(outputs=d["outputs"][:-1],
                        output_shapes_batch1=d["output_shapes_batch1"][:-1]), "outputs"),
    (lambda d: d.update(outputs=[d["outputs"][0], d["outputs"][2], d["outputs"][1],
                                 *d["outputs"][3:]]), "outputs"),
    (lambda d: d.update(outputs=[*d["outputs"][:-1], "fpn_zz"]), "outputs"),
    (lambda d: d.update(output_shapes_batch1=[[1, 2, 3], *d["output_shapes_batch1"][1:]]),
     "output last_hidden_state is"),
    (lambda d: d.update(files={"../escape": 1}), "not a sam3_ros backbone sidecar"),
    (lambda d: d.update(files=["x"]), "not a sam3_ros backbone sidecar"),
])
def test_a_sidecar_that_does_not_describe_its_graph_is_refused(loaded, artifacts, tmp_path,
                                                               edit, reason):
    # Same checkpoint hash, edited outputs: it loaded and the heads read the wrong FPN
    # levels (masks silently wrong) or every frame failed.
    sidecar = _copy_fp32(artifacts, tmp_path)
    data = json.loads(sidecar.read_text())
    edit(data)
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=reason):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})


def test_export_staging_is_unique_and_stale_staging_is_removed(tiny_checkpoint, tmp_path):
    import os
    import time

    out = tmp_path / "out"
    out.mkdir()
    mine = out / f".staging-{os.getpid()}"  # a killed export of a process with this pid
    mine.mkdir()
    (mine / "big.onnx.data").write_bytes(b"x" * 10)
    old = time.time() - 2 * 24 * 3600
    os.utime(mine, (old, old))
    fresh = out / ".staging-other"  # an export running now
    fresh.mkdir()
    old_umask = os.umask(0o022)
    try:
        export_backbone(str(tiny_checkpoint), str(out), "int8-dynamic", check_frames=1,
                        prompts=[])
    finally:
        os.umask(old_umask)
    assert not mine.exists() and fresh.exists()
    for path in out.glob("sam3_backbone_*"):
        assert path.stat().st_mode & 0o777 == 0o644, path  # the quantiser wrote 0600


def test_foreign_and_stale_artifacts_refused(loaded, artifacts, tmp_path, tmp_path_factory):
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    # Another checkpoint (other weights, same architecture).
    other = make_tiny_checkpoint(tmp_path_factory.mktemp("other_ckpt"), seed=1)
    other_loaded = load_sam3(str(other))
    with pytest.raises(ModelLoadError, match="another checkpoint") as err:
        create_backbone("onnxruntime", other_loaded, {"artifact_dir": str(artifacts[0])})
    assert "export_backbone --model" in str(err.value)

    sidecar = _copy_fp32(artifacts, tmp_path)
    # Another precision than the one asked for.
    with pytest.raises(ModelLoadError, match="precision fp32, int8-dynamic asked for"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path),
                                                "precision": "int8-dynamic"})
    # Edited onnxruntime version.
    data = json.loads(sidecar.read_text())
    data["key"]["onnxruntime_version"] = "1.0.0"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"checked with onnxruntime 1\.0\.0"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    # Weights changed after the export (size no longer the sidecar's).
    sidecar.write_text(json.dumps({**data, "key": {**data["key"],
                                                   "onnxruntime_version": _ort_version()}}))
    create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})  # valid again
    with (tmp_path / "sam3_backbone_112px_fp32_mha.onnx.data").open("ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="changed after export"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    # No artifact folder / none given.
    with pytest.raises(ModelLoadError, match="needs onnx_artifact_dir"):
        create_backbone("onnxruntime", loaded, {})
    with pytest.raises(ModelLoadError, match="holds no artifact"):
        create_backbone("onnxruntime", loaded,
                        {"artifact_dir": str(tmp_path_factory.mktemp("empty"))})


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


@pytest.mark.parametrize("provider, ort_name", [("cuda", "CUDAExecutionProvider"),
                                                ("tensorrt", "TensorrtExecutionProvider")])
def test_unavailable_provider_refused(loaded, artifacts, provider, ort_name):
    import onnxruntime

    if ort_name in onnxruntime.get_available_providers():
        pytest.skip(f"{ort_name} is available here")
    with pytest.raises(ModelLoadError, match=f"needs {ort_name}, which this onnxruntime") as err:
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(artifacts[0]),
                                                "provider": provider})
    assert "no fallback" in str(err.value)


def test_unknown_provider_and_options_refused(loaded, artifacts):
    with pytest.raises(ModelLoadError, match="unknown onnx_provider 'gpu'"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(artifacts[0]),
                                                "provider": "gpu"})
    with pytest.raises(ModelLoadError, match="unknown options"):
        create_backbone("onnxruntime", loaded, {"bogus": 1})


def test_export_refuses_below_threshold(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportRefusedError, match=r"< 1\.01"):
        export_backbone(str(tiny_checkpoint), str(tmp_path), "fp32", check_frames=1,
                        min_cosine=1.01, prompts=[])
    assert list(tmp_path.iterdir()) == []  # nothing the backend could load, no staging left
    assert main(["--model", str(tiny_checkpoint), "--out", str(tmp_path), "--min-cosine",
                 "1.01", "--check-frames", "1", "--prompts", ""]) == 2
    assert list(tmp_path.iterdir()) == []


def test_model_key_and_hub_with_onnxruntime(tiny_checkpoint, artifacts):
    assert "onnxruntime" in BACKENDS
    params = {**model_param_defaults(), "model": str(tiny_checkpoint), "device": "cpu",
              "dtype": "float32", "quantization": "none", "backend": "onnxruntime",
              "onnx_artifact_dir": str(artifacts[0]), "onnx_precision": "fp32",
              "onnx_provider": "cpu", "onnx_threads": 0, "onnx_trt_cache_dir": "",
              "onnx_trt_fp16": False, "onnx_trt_int8": False, "torch_compile": "none",
              "compile_heads": False}
    key = ModelKey.from_params(params.__getitem__)
    assert dict(key.backend_options)["artifact_dir"] == str(artifacts[0])
    assert backend_options("torch", params.__getitem__) == (("compile", "none"),)
    hub = ModelHub()
    shared = hub.acquire(key)
    try:
        assert shared.backbone.name == "onnxruntime"
    finally:
        hub.release(shared)


def test_int8_without_an_fp32_artifact_keeps_only_the_checked_int8(tiny_checkpoint, tmp_path):
    report = export_backbone(str(tiny_checkpoint), str(tmp_path), "int8-dynamic",
                             check_frames=1, prompts=[])
    assert report["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sam3_backbone_112px_int8-dynamic_mha.json",
        "sam3_backbone_112px_int8-dynamic_mha.onnx",
        "sam3_backbone_112px_int8-dynamic_mha.onnx.data",
        "sam3_backbone_112px_int8-dynamic_mha.report.json"]


def test_hub_releases_the_unused_torch_vit(tiny_checkpoint, artifacts):
    """With backend onnxruntime the torch ViT is freed; the heads still get the features."""
    params = {**model_param_defaults(), "model": str(tiny_checkpoint), "device": "cpu",
              "dtype": "float32", "quantization": "none", "backend": "onnxruntime",
              "onnx_artifact_dir": str(artifacts[0]), "onnx_precision": "fp32",
              "onnx_provider": "cpu", "onnx_threads": 0, "onnx_trt_cache_dir": "",
              "onnx_trt_fp16": False, "onnx_trt_int8": False, "torch_compile": "none",
              "compile_heads": False}
    hub = ModelHub(with_tracker=True)
    shared = hub.acquire(ModelKey.from_params(params.__getitem__))
    try:
        reference = load_sam3(str(tiny_checkpoint), device="cpu")
        vit_bytes = sum(p.numel() * p.element_size()
                        for p in reference.detector.vision_encoder.backbone.parameters())
        assert shared.released_bytes >= vit_bytes > 0
        encoder = shared.loaded.detector.vision_encoder
        assert not any(name.startswith("backbone.") for name, _ in encoder.named_parameters())
        with pytest.raises(RuntimeError, match="released: backend 'onnxruntime'"):
            encoder.backbone(torch.zeros(1, 3, 112, 112))
        # Segmenter and tracker run on the ONNX Runtime features, as before.
        image = _image()
        config = SegmenterConfig(score_threshold=THRESHOLD, max_detections=1000)
        seg = Sam3Segmenter(shared.loaded, shared.feature_cache)
        ref_seg = Sam3Segmenter(reference)
        prompts = [PromptSpec("mug"), PromptSpec("bottle")]
        assert_same_detections(
            ref_seg.segment(image, ref_seg.encode_prompts(prompts), config),
            seg.segment(image, seg.encode_prompts(prompts), config))
        session = TrackerSession(shared.loaded, TrackerConfig(score_threshold=0.0),
                                 feature_cache=shared.feature_cache)
        session.set_text_prompts(["mug"])
        session.process_frame(image, 0)
    finally:
        hub.release(shared)
    # A torch-backend load keeps its ViT.
    torch_params = {**params, "backend": "torch"}
    torch_hub = ModelHub()
    torch_shared = torch_hub.acquire(ModelKey.from_params(torch_params.__getitem__))
    try:
        assert torch_shared.released_bytes == 0
        assert any(True for _ in torch_shared.loaded.detector.vision_encoder.backbone.parameters())
    finally:
        torch_hub.release(torch_shared)


def test_backbone_benchmark_labels_a_graph_by_its_ops(artifacts):
    # `backbone_benchmark ort --graph FILE` reports what the file is, not --precision's value.
    import onnx

    from sam3_ros.tools.backbone_benchmark import graph_precision

    out, reports = artifacts
    for precision in reports:
        path = out / f"sam3_backbone_112px_{precision}_mha.onnx"
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert graph_precision(ops) == precision


def test_backbone_benchmark_torch_bf16_is_compared_with_fp32(tmp_path):
    # `backbone_benchmark torch --dtype bf16` times bfloat16 and judges it against the fp32
    # step's saved outputs (never overwriting them with its own).
    from sam3_ros.tools.backbone_benchmark import main

    common = ["torch", "--workdir", str(tmp_path), "--tiny", "--threads", "1", "--repeats", "1"]
    assert main(common) == 0
    reference = np.load(tmp_path / "torch_outputs.npz")["arr_0"].copy()
    assert main([*common, "--dtype", "bf16"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["backend"] for r in rows] == ["torch fp32 (sdpa)", "torch bf16 (sdpa)"]
    assert 0.99 < rows[1]["cosine_min"] < 1.0 and rows[1]["max_abs_error"] > 0.0
    np.testing.assert_array_equal(np.load(tmp_path / "torch_outputs.npz")["arr_0"], reference)


def test_cpu_session_workers_do_not_spin_after_a_run(onnx_backbone):
    # Torch runs the heads on the same cores right after the backbone: spinning ONNX Runtime
    # workers took cores from them (README, ONNX Runtime).
    options = onnx_backbone.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_check_frames_from_a_folder_cycle_and_keep_the_size_limits(tmp_path):
    """export's and quantization_report's --frames: files by name, cycled to the count; a
    file over the size limits is refused naming it, before anything of its size is allocated
    (read through image_codec.iter_image_folder)."""
    import struct
    import zlib

    import cv2

    from sam3_ros.tools.export_backbone import load_frames

    good = tmp_path / "good"
    good.mkdir()
    for i in range(2):
        cv2.imwrite(str(good / f"f{i}.png"), np.full((6, 8, 3), 10 * i, np.uint8))
    (good / "notes.txt").write_text("ignored")
    frames = load_frames(str(good), 5)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 10, 0, 10, 0]
    assert all(f.shape == (6, 8, 3) and f.dtype == np.uint8 for f in frames)
    assert len(load_frames(None, 3)) == 3  # synthetic without a folder

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(
        ">I", zlib.crc32(b"IHDR" + header))
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(ModelLoadError, match=re.escape(
            "a.png: image 100000x100000 (10000000000 pixels) exceeds the limit")):
        load_frames(str(tmp_path / "huge"), 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="--frames: no png/jpeg files in"):
        load_frames(str(tmp_path / "empty"), 1)


@pytest.mark.parametrize("spelling", ["/models/sam3/", "/models/./sam3", "/models//sam3"])
def test_a_folder_spelled_two_ways_is_one_model_key(spelling):
    """Two nodes whose onnx_artifact_dir / onnx_trt_cache_dir differ only in spelling load one
    model, not two; '' stays '' (the default)."""
    params = {**model_param_defaults(), "backend": "onnxruntime",
              "onnx_artifact_dir": "/models/sam3", "onnx_trt_cache_dir": "/cache/trt"}
    reference = backend_options("onnxruntime", params.__getitem__)
    assert dict(reference)["artifact_dir"] == "/models/sam3"
    spelled = {**params, "onnx_artifact_dir": spelling,
               "onnx_trt_cache_dir": "/cache/trt/" if spelling.endswith("/") else "/cache/trt"}
    assert backend_options("onnxruntime", spelled.__getitem__) == reference
    home = backend_options("onnxruntime", {**params, "onnx_trt_cache_dir": "~/trt"}.__getitem__)
    assert dict(home)["trt_cache_dir"] == str(Path("~/trt").expanduser())
    empty = backend_options("onnxruntime", {**params, "onnx_trt_cache_dir": ""}.__getitem__)
    assert dict(empty)["trt_cache_dir"] == ""


def test_a_folder_reached_through_a_link_is_one_model_key(tmp_path):
    """Resolved, not only normalised as text: `link/..` is the link target's parent, not `.`."""
    (tmp_path / "models" / "sam3").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link").symlink_to(tmp_path / "models" / "sam3")
    params = {**model_param_defaults(), "backend": "onnxruntime",
              "onnx_artifact_dir": str(tmp_path / "models" / "sam3")}

    def key(folder):
        return dict(backend_options("onnxruntime", {**params, "onnx_artifact_dir": folder}
                                    .__getitem__))["artifact_dir"]

    assert key(str(tmp_path / "other" / "link")) == str(tmp_path / "models" / "sam3")
    assert key(str(tmp_path / "other" / "link" / "..")) == str(tmp_path / "models")


def test_an_artifact_with_other_contents_of_the_same_size_is_refused(loaded, artifacts,
                                                                     tmp_path):
    # Another checkpoint's export of the same architecture has the same file sizes; so does
    # corruption in place. Sizes alone let it load.
    sidecar = _copy_fp32(artifacts, tmp_path)
    create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    data = tmp_path / "sam3_backbone_112px_fp32_mha.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})
    text = json.loads(sidecar.read_text())
    del text["sha256"]
    sidecar.write_text(json.dumps(text))
    with pytest.raises(ModelLoadError, match="no sha256"):
        create_backbone("onnxruntime", loaded, {"artifact_dir": str(tmp_path)})


def test_sidecars_are_written_whole_under_a_name_of_their_own_with_a_plain_mode(tmp_path):
    # A fixed `<stem>.json.tmp`: two exports of one stem collided; mkstemp's 0600 would hide
    # the sidecar from nodes running as other users.
    from sam3_ros.core.onnx_backbone import ArtifactKey, write_sidecar

    graph = tmp_path / "sam3_backbone_112px_fp32_mha.onnx"
    graph.write_bytes(b"graph")
    key = ArtifactKey("0" * 64, 112, "fp32", "1.0")
    previous = os.umask(0o027)
    try:
        sidecar = write_sidecar(graph, key, ["last_hidden_state"], [[1, 2]], {})
    finally:
        os.umask(previous)
    assert sidecar.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([graph.name, sidecar.name])
    artifact = read_artifact(sidecar)
    assert artifact.meta["sha256"] == {graph.name: hashlib.sha256(b"graph").hexdigest()}
    # A sidecar that does not list a file the graph reads is refused (an emptied `files`).
    (tmp_path / (graph.name + ".data")).write_bytes(b"weights")
    with pytest.raises(ModelLoadError, match=r"\.onnx\.data'\] are not listed"):
        read_artifact(sidecar)
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "files": {}}))
    with pytest.raises(ModelLoadError, match="are not listed"):
        read_artifact(sidecar)


def test_checkpoint_files_replaced_after_loading_are_refused(tiny_checkpoint, artifacts,
                                                            tmp_path):
    # The key is hashed after the weights were loaded: new files would key the old weights.
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    model = load_sam3(str(folder))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same contents, a new file version
    with pytest.raises(ModelLoadError, match="changed after it was loaded"):
        create_backbone("onnxruntime", model, {"artifact_dir": str(artifacts[0])})


def test_tensorrt_engines_get_a_folder_per_artifact_precision_and_gpu(loaded):
    # ONNX Runtime names an engine after the graph's names and library versions, not its
    # weights: one folder for every checkpoint gave one checkpoint's engine to another.
    key = current_key(loaded.source, 112, "fp32", "explicit")
    other = dataclasses.replace(key, checkpoint_sha256="0" * 64)
    flags = {"trt_fp16": True, "trt_int8": False}
    base = trt_engine_dir("/cache", key, flags, "NVIDIA H200")
    assert base.startswith("/cache/sam3_backbone_112px_fp32_explicit_")
    assert trt_engine_dir("/cache", key, dict(flags), "NVIDIA H200") == base
    assert len({base, trt_engine_dir("/cache", other, flags, "NVIDIA H200"),
                trt_engine_dir("/cache", key, {**flags, "trt_fp16": False}, "NVIDIA H200"),
                trt_engine_dir("/cache", key, {**flags, "trt_int8": True}, "NVIDIA H200"),
                trt_engine_dir("/cache", key, flags, "Orin")}) == 5
    assert trt_engine_dir("", key, flags, "Orin") == ""
    assert trt_engine_dir("~/trt", key, flags, "Orin").startswith(os.path.expanduser("~/trt/"))


def test_int8_static_is_checked_on_frames_it_was_not_calibrated_on(tiny_checkpoint, tmp_path,
                                                                   monkeypatch):
    # Both took the folder's first files: the fidelity gate was passed on calibration frames.
    import cv2

    from sam3_ros.tools import export_backbone as tool

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, value in enumerate((0, 100, 200)):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), value, np.uint8))
    seen = {}

    def stop(fp32_path, out_path, precision, calibration, parts):
        seen["calibration"] = [round(float(t.mean()), 2) for t in calibration]
        raise ModelLoadError("stopped by the test")

    monkeypatch.setattr(tool, "quantize", stop)
    with pytest.raises(ModelLoadError, match="stopped by the test"):
        tool.export_backbone(str(tiny_checkpoint), str(tmp_path / "out"), "int8-static",
                             check_frames=1, calibration_frames=3, frames_dir=str(folder),
                             prompts=[])
    # Normalised (x / 255 - 0.5) / 0.5: file 0 (checked) is -1.0, files 1 and 2 calibrate.
    assert seen["calibration"] == [-0.22, 0.57, -0.22]
    (folder / "1.png").unlink()
    (folder / "2.png").unlink()
    with pytest.raises(ModelLoadError, match="needs more than --check-frames 1"):
        tool.export_backbone(str(tiny_checkpoint), str(tmp_path / "out"), "int8-static",
                             check_frames=1, calibration_frames=3, frames_dir=str(folder),
                             prompts=[])
