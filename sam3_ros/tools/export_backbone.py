"""Export a SAM3 checkpoint's vision backbone (ViT + FPN neck) to ONNX, check it, quantise it.

    python -m sam3_ros.tools.export_backbone --model CKPT --out DIR \\
        [--precision fp32|int8-dynamic|int8-static] [--calibration-frames N] \\
        [--calibration-parts P] \\
        [--image-size S] [--frames IMAGE_DIR] [--min-cosine C] [--attention mha|explicit|onnx]

Writes into DIR `sam3_backbone_<S>px_<precision>_<attention>.onnx` (+ `.onnx.data`, the
weights), its sidecar `.json` (the key the `onnxruntime` backend checks: checkpoint hash, image
size, precision, attention form, onnxruntime version) and a fidelity report `.report.json`
(also printed). INT8 is quantised from DIR's fp32 artifact of the same checkpoint when there
is one (export fp32 first), else from a temporary fp32 export that is not kept.

* fp32: `torch.onnx.export(dynamo=True, opset 23)`. At opset 23 the exporter writes SAM3's
  `scaled_dot_product_attention` as the ONNX `Attention` op, which is then rewritten into the
  form `--attention` names (`sam3_ros.tools.onnx_attention`): `mha` (default; the CPU and CUDA
  providers: contrib MultiHeadAttention, flash kernels, no score matrix in memory), `explicit`
  (TensorRT: MatMul/Softmax) or `onnx` (the standard op as exported). The backend loads the
  form its provider wants (`onnx_backbone.PROVIDER_ATTENTION`). The batch dimension is dynamic.
* int8-dynamic: `onnxruntime.quantization.quantize_dynamic`, per-channel int8 weights of the
  MatMul/Gemm layers (the ViT's linear layers), activations quantised at run time. Attention
  stays float in the `mha` and `onnx` forms (in the `explicit` form its two MatMuls are
  quantised like the others).
* int8-static: QDQ, per-channel int8 weights and int8 activations of MatMul/Gemm (convolutions
  stay float), with activation ranges calibrated (MinMax) on `--calibration-frames` frames,
  the calibrated tensors split over `--calibration-parts` runs to bound memory
  (`sam3_ros.tools.ort_calibration`; the full-size backbone needs 4 on a 24 GB machine).

Every artifact is checked against the checkpoint's torch backbone on `--check-frames` frames:
cosine similarity and max abs error of every output, plus detections through the package's
`Sam3Segmenter` (mask IoU, pixel agreement, box and score deltas vs the fp32 torch backbone).
Below `--min-cosine` (default 0.99999 for fp32, 0.99 for int8) the artifact is refused:
non-zero exit, nothing left in DIR that the backend would load.

Frames: images from `--frames` (png/jpg, sorted) or, without it, synthetic frames (gradients
and shapes, seeded). Random-weight checkpoints flatter INT8 fidelity (their activations lack
the outlier channels of trained ViTs): the report says so next to its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam3_ros.core.errors import ModelLoadError, Sam3RosError
from sam3_ros.tools.onnx_attention import ATTENTION_FORMS, rewrite_attention_file

DEFAULT_MIN_COSINE = {"fp32": 0.99999, "int8-dynamic": 0.99, "int8-static": 0.99}
RANDOM_WEIGHTS_CAVEAT = (
    "random weights flatter INT8 fidelity: a randomly initialised checkpoint (the tiny test "
    "checkpoint, the benchmark's full-size random model) lacks the activation outliers of "
    "trained ViT weights; re-check INT8 on the real checkpoint and real frames")
OPSET = 23
QUANT_OPS_DYNAMIC = ["MatMul", "Gemm"]
QUANT_OPS_STATIC = ["MatMul", "Gemm"]
# Conv is left float in int8-static: with Conv included, onnxruntime 1.32's QDQ quantiser
# writes a QuantizeLinear whose output_dtype (int8) contradicts its uint8 zero point on the
# patch-embedding input, and the session refuses the graph.


class ExportRefusedError(Sam3RosError):
    """The exported artifact does not reproduce the torch backbone closely enough."""


def _log(message: str) -> None:
    print(f"[export_backbone {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------- frames


def synthetic_frames(count: int, seed: int = 0, height: int = 480,
                     width: int = 640) -> list[np.ndarray]:
    """Deterministic RGB frames with smooth gradients, filled shapes and some noise."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(count):
        base = np.stack([
            (xx / width * rng.uniform(80, 255)),
            (yy / height * rng.uniform(80, 255)),
            np.full_like(xx, rng.uniform(0, 255)),
        ], axis=-1)
        frame = np.ascontiguousarray(base.astype(np.uint8))
        for _ in range(int(rng.integers(3, 8))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            x1 = x0 + int(rng.integers(30, width // 2))
            y1 = y0 + int(rng.integers(30, height // 2))
            if rng.random() < 0.5:
                cv2.rectangle(frame, (x0, y0), (x1, y1), color, -1)
            else:
                cv2.circle(frame, ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - x0) // 2, color, -1)
        noise = rng.normal(0, 6, frame.shape)
        frames.append(np.clip(frame + noise, 0, 255).astype(np.uint8))
    return frames


def load_frames(folder: str | None, count: int, seed: int = 0,
                cycle: bool = True) -> list[np.ndarray]:
    """`count` RGB frames: the first png/jpeg files of `folder` by name (cycled if fewer, or
    only those with `cycle` False; the size limits of `image_codec.iter_image_folder`), or
    synthetic ones without it.

    Raises:
        ModelLoadError: the folder, or an image in it, cannot be used (the file is named).
    """
    if not folder:
        return synthetic_frames(count, seed)
    from sam3_ros.core.errors import InvalidImageError
    from sam3_ros.core.image_codec import iter_image_folder

    try:
        files = [rgb for _, rgb in iter_image_folder(folder, count)]
    except InvalidImageError as err:
        raise ModelLoadError(f"--frames: {err}") from None
    return [files[i % len(files)] for i in range(count)] if cycle else files


# --------------------------------------------------------------------------------- metrics


def feature_metrics(reference: Sequence[Any], test: Sequence[Any],
                    names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per output: cosine similarity (whole tensor) and max abs error, test vs reference."""
    result = {}
    for name, ref, out in zip(names, reference, test, strict=True):
        a = np.asarray(ref, dtype=np.float64).ravel()
        b = np.asarray(out, dtype=np.float64).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
        result[name] = {"cosine": cosine, "max_abs_error": float(np.max(np.abs(a - b))),
                        "max_abs_reference": float(np.max(np.abs(a)))}
    return result


def merge_worst(per_frame: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Worst case over frames: lowest cosine, largest errors."""
    merged: dict[str, dict[str, float]] = {}
    for metrics in per_frame:
        for name, m in metrics.items():
            cur = merged.setdefault(name, dict(m))
            cur["cosine"] = min(cur["cosine"], m["cosine"])
            cur["max_abs_error"] = max(cur["max_abs_error"], m["max_abs_error"])
            cur["max_abs_reference"] = max(cur["max_abs_reference"], m["max_abs_reference"])
    return merged


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def detection_agreement(reference: Sequence[Any], test: Sequence[Any]) -> dict[str, Any]:
    """Agreement of two backbones' detections on the same frames (same prompts, same heads).

    Detections are matched one-to-one per class, greedily by mask IoU. `mean_mask_iou`
    counts every unmatched detection (on either side) as IoU 0.
    """
    ious, box_deltas, score_deltas, agreements = [], [], [], []
    n_ref = n_test = unmatched = 0
    for ref, out in zip(reference, test, strict=True):
        n_ref += len(ref)
        n_test += len(out)
        for cls in np.union1d(ref.class_ids, out.class_ids):
            ri = np.flatnonzero(ref.class_ids == cls)
            ti = np.flatnonzero(out.class_ids == cls)
            fg_ref = ref.masks[ri].any(axis=0) if len(ri) else None
            fg_out = out.masks[ti].any(axis=0) if len(ti) else None
            shape = (ref.image_height_px, ref.image_width_px)
            fg_ref = np.zeros(shape, bool) if fg_ref is None else fg_ref
            fg_out = np.zeros(shape, bool) if fg_out is None else fg_out
            agreements.append(float((fg_ref == fg_out).mean()))
            pairs = sorted(((_mask_iou(ref.masks[i], out.masks[j]), i, j)
                            for i in ri for j in ti), reverse=True)
            used_r, used_t = set(), set()
            for iou, i, j in pairs:
                if i in used_r or j in used_t:
                    continue
                used_r.add(i)
                used_t.add(j)
                ious.append(iou)
                box_deltas.append(float(np.max(np.abs(ref.xyxy[i] - out.xyxy[j]))))
                score_deltas.append(float(abs(ref.scores[i] - out.scores[j])))
            unmatched += len(ri) - len(used_r) + len(ti) - len(used_t)
    all_ious = ious + [0.0] * unmatched
    return {
        "detections_reference": n_ref,
        "detections_test": n_test,
        "matched": len(ious),
        "unmatched": unmatched,
        "mean_mask_iou": float(np.mean(all_ious)) if all_ious else None,
        "min_matched_mask_iou": float(np.min(ious)) if ious else None,
        "pixel_agreement": float(np.mean(agreements)) if agreements else None,
        "max_box_delta_px": float(np.max(box_deltas)) if box_deltas else None,
        "max_score_delta": float(np.max(score_deltas)) if score_deltas else None,
    }


# ---------------------------------------------------------------------------------- export


class _BackboneGraph:
    """Builds the exportable module lazily (torch imported on use)."""

    @staticmethod
    def module(vision_encoder: Any) -> Any:
        import torch

        class Backbone(torch.nn.Module):
            def __init__(self, encoder: Any) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, pixel_values: Any) -> tuple[Any, ...]:
                out = self.encoder(pixel_values)
                return (out.last_hidden_state, *out.fpn_hidden_states)

        return Backbone(vision_encoder).eval()


def output_names(vision_encoder: Any) -> list[str]:
    """Graph outputs of a `Sam3VisionModel`: last_hidden_state, fpn_0..fpn_{L-1}."""
    return ["last_hidden_state"] + [f"fpn_{i}" for i in range(len(vision_encoder.neck.fpn_layers))]


def export_fp32_onnx(vision_encoder: Any, path: Path, image_size: int,
                     log: Callable[[str], None] = _log) -> None:
    """`torch.onnx.export` (dynamo, opset 23, dynamic batch) of a `Sam3VisionModel` to `path`."""
    import torch

    module = _BackboneGraph.module(vision_encoder)
    # A batch of 2 as the example: a batch of 1 would specialise the batch dimension.
    example = torch.zeros(2, 3, image_size, image_size)
    names = output_names(vision_encoder)
    batch = torch.export.Dim("batch", min=1, max=64)
    log(f"torch.onnx.export (dynamo, opset {OPSET}) at {image_size} px: minutes at full size")
    start = time.monotonic()
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET,
            input_names=["pixel_values"], output_names=names,
            dynamic_shapes={"pixel_values": {0: batch}}, optimize=True, verbose=False)
    log(f"graph captured in {time.monotonic() - start:.0f} s; writing {path.name}")
    program.save(str(path), external_data=True)
    ops = sorted({node.op_type for node in program.model.graph})
    log(f"wrote {path.name} ({_size_mb(path):.1f} MB with weights); ops: {', '.join(ops)}")


def _size_mb(onnx_path: Path) -> float:
    data = onnx_path.with_name(onnx_path.name + ".data")
    return sum(p.stat().st_size for p in (onnx_path, data) if p.is_file()) / 1e6


def quantize(fp32_path: Path, out_path: Path, precision: str,
             calibration: Sequence[Any] = (), calibration_parts: int = 4) -> None:
    """INT8 `precision` of an fp32 artifact (see the module docstring for what is quantised).

    `calibration`: (1, 3, S, S) pixel tensors (int8-static); `calibration_parts`: how many
    runs the calibrated tensors are split over (memory; see `tools.ort_calibration`)."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    start = time.monotonic()
    if precision == "int8-dynamic":
        _log("quantize_dynamic: per-channel int8 weights of MatMul/Gemm")
        quantize_dynamic(str(fp32_path), str(out_path), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=QUANT_OPS_DYNAMIC,
                         use_external_data_format=True)
    elif precision == "int8-static":
        from sam3_ros.tools.ort_calibration import (
            calibrate_min_max,
            supports_calibration_cache,
            write_calibration_cache,
        )

        if not calibration:
            raise ModelLoadError("int8-static needs calibration frames (--calibration-frames)")
        if not supports_calibration_cache():
            raise ModelLoadError(
                "int8-static needs onnxruntime >= 1.32 (quantize_static's "
                "calibration_cache_path, and QuantizeLinear at the graph's opset 23); "
                "use int8-dynamic with this onnxruntime")
        _log(f"MinMax calibration on {len(calibration)} frames in {calibration_parts} part(s)")
        # In parts: onnxruntime's one-run calibration of the full-size backbone needs ~16 GB
        # per frame (see sam3_ros.tools.ort_calibration).
        ranges = calibrate_min_max(
            fp32_path, [{"pixel_values": px.numpy()} for px in calibration],
            QUANT_OPS_STATIC, calibration_parts, _log)
        cache = out_path.with_name(out_path.stem + ".calibration.json")
        write_calibration_cache(ranges, cache)
        _log(f"quantize_static (QDQ) with the ranges of {len(ranges.data)} tensors")
        try:
            quantize_static(str(fp32_path), str(out_path), None,
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=QUANT_OPS_STATIC,
                            use_external_data_format=True, calibration_cache_path=str(cache))
        finally:
            cache.unlink(missing_ok=True)
    else:
        raise ModelLoadError(f"unknown int8 precision '{precision}'")
    _log(f"quantised in {time.monotonic() - start:.0f} s: {_size_mb(out_path):.1f} MB")


# ------------------------------------------------------------------------------ the command


def _run_checks(loaded: Any, session: Any, artifact: Any, pixel_batches: Sequence[Any],
                frames: Sequence[np.ndarray], prompts: Sequence[str],
                score_threshold: float) -> dict[str, Any]:
    """Feature parity and detection agreement of the artifact vs the torch backbone."""
    import torch

    from sam3_ros.core.backbone import TorchBackbone
    from sam3_ros.core.onnx_backbone import OnnxRuntimeBackbone
    from sam3_ros.core.prompts import PromptSpec
    from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig
    from sam3_ros.core.vision_features import VisionFeatureCache

    names = list(artifact.output_names)
    torch_backbone = TorchBackbone(loaded.detector)
    per_frame = []
    for i, px in enumerate(pixel_batches):
        ref = torch_backbone(px)
        out = session.run(names, {"pixel_values": px.numpy()})
        ref_list = [ref.last_hidden_state, *ref.fpn_hidden_states]
        per_frame.append(feature_metrics([t.float().numpy() for t in ref_list], out, names))
        worst = min(m["cosine"] for m in per_frame[-1].values())
        _log(f"check frame {i + 1}/{len(pixel_batches)}: lowest output cosine {worst:.7f}")
    features = merge_worst(per_frame)
    detections = None
    if prompts:
        backbone = OnnxRuntimeBackbone(session, artifact,
                                       loaded.detector.vision_encoder.neck, loaded.device,
                                       loaded.dtype)
        reference = Sam3Segmenter(loaded, VisionFeatureCache(torch_backbone, capacity=1))
        test = Sam3Segmenter(loaded, VisionFeatureCache(backbone, capacity=1))
        encoded = reference.encode_prompts([PromptSpec(p) for p in prompts])
        config = SegmenterConfig(score_threshold=score_threshold, max_detections=1000)
        with torch.inference_mode():
            ref_dets = [reference.segment(f, encoded, config) for f in frames]
            test_dets = [test.segment(f, encoded, config) for f in frames]
        detections = detection_agreement(ref_dets, test_dets)
        detections["prompts"] = list(prompts)
        detections["score_threshold"] = score_threshold
        _log(f"segmenter on {len(frames)} frames: {detections['detections_reference']} torch / "
             f"{detections['detections_test']} onnx detections, mean mask IoU "
             f"{_fmt(detections['mean_mask_iou'])}")
    return {"features_vs_torch_fp32": features, "detections_vs_torch_fp32": detections}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def format_detection_agreement(det: dict[str, Any], reference: str, test: str) -> list[str]:
    """The report lines of a `detection_agreement` result (with its prompts and threshold)."""
    return [f"  segmenter (prompts {det['prompts']}, score > {det['score_threshold']}):"
            f" detections {reference} {det['detections_reference']}, {test} "
            f"{det['detections_test']}, matched {det['matched']}",
            f"    mean mask IoU {_fmt(det['mean_mask_iou'])}, min matched IoU "
            f"{_fmt(det['min_matched_mask_iou'])}, pixel agreement "
            f"{_fmt(det['pixel_agreement'])}, max box delta "
            f"{_fmt(det['max_box_delta_px'])} px, max score delta "
            f"{_fmt(det['max_score_delta'])}"]


def format_report(report: dict[str, Any]) -> str:
    """The printed table of a fidelity report."""
    lines = [f"Fidelity of {report['artifact']} ({report['precision']}) vs the fp32 torch "
             f"backbone on {report['check_frames']} frames ({report['frames']}):"]
    sizes = report["file_size_mb"]
    lines.append(f"  file size: fp32 {sizes['fp32']:.1f} MB -> {report['precision']} "
                 f"{sizes['artifact']:.1f} MB")
    lines.append(f"  {'output':<20} {'cosine':>12} {'max abs err':>12} {'max |ref|':>12}")
    for name, m in report["features_vs_torch_fp32"].items():
        lines.append(f"  {name:<20} {m['cosine']:>12.7f} {m['max_abs_error']:>12.3g} "
                     f"{m['max_abs_reference']:>12.3g}")
    det = report.get("detections_vs_torch_fp32")
    if det:
        lines += format_detection_agreement(det, "torch", "onnx")
    lines.append(f"  threshold: every output's cosine >= {report['min_cosine']} -> "
                 f"{'PASSED' if report['passed'] else 'REFUSED'}")
    if report["precision"] != "fp32":
        lines.append(f"  NOTE: {RANDOM_WEIGHTS_CAVEAT}")
    return "\n".join(lines)


def export_backbone(model: str, out: str, precision: str = "fp32",
                    image_size: int | None = None, calibration_frames: int = 8,
                    check_frames: int = 2, frames_dir: str | None = None,
                    min_cosine: float | None = None, prompts: Sequence[str] = ("person",),
                    score_threshold: float = 0.5, attention: str = "mha",
                    calibration_parts: int = 4) -> dict[str, Any]:
    """Export (and for int8 quantise), check and key one artifact; see the module docstring.

    Returns:
        The fidelity report (also written as `<stem>.report.json`).

    Raises:
        ExportRefusedError: an output's cosine similarity vs torch is below `min_cosine`.
        ModelLoadError: the checkpoint cannot be loaded or hashed, bad arguments.
    """
    import onnxruntime
    import torch

    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.onnx_backbone import (
        PRECISIONS,
        Artifact,
        artifact_stem,
        loaded_key,
        make_session,
        read_artifact,
        verify_contents,
        write_sidecar,
    )

    if precision not in PRECISIONS:
        raise ModelLoadError(f"--precision must be one of {PRECISIONS}, got '{precision}'")
    if attention not in ATTENTION_FORMS:
        raise ModelLoadError(f"--attention must be one of {ATTENTION_FORMS}, got '{attention}'")
    # Checked before the checkpoint loads: at full size a bad count would otherwise surface
    # only after minutes of export.
    counts = {"--check-frames": check_frames}
    if precision == "int8-static":
        counts |= {"--calibration-frames": calibration_frames,
                   "--calibration-parts": calibration_parts}
    for flag, value in counts.items():
        if int(value) < 1:
            raise ModelLoadError(f"{flag} must be >= 1, got {value}")
    if image_size is not None and int(image_size) < 1:
        raise ModelLoadError(f"--image-size must be >= 1, got {image_size}")
    threshold = DEFAULT_MIN_COSINE[precision] if min_cosine is None else float(min_cosine)
    if frames_dir and not Path(frames_dir).is_dir():
        raise ModelLoadError(f"--frames {frames_dir}: not a folder of images")
    out_dir = Path(out).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelLoadError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        # Before minutes of loading and hashing at full size, not at the staging folder.
        raise ModelLoadError(f"--out {out}: the folder is not writable by this user")
    # Frames before the model too (a folder that cannot serve is refused at once).
    calibration_source: list[np.ndarray] | None = None
    if precision == "int8-static" and frames_dir:
        # Checked on other frames than it was calibrated on (the first files would be both):
        # the check frames first, the calibration cycling over the rest.
        distinct = load_frames(frames_dir, check_frames + calibration_frames, cycle=False)
        if len(distinct) <= check_frames:
            raise ModelLoadError(
                f"--frames {frames_dir}: {len(distinct)} image(s); int8-static needs more "
                f"than --check-frames {check_frames}, so that the frames it is checked on are "
                f"not frames it was calibrated on")
        frames_before_load = distinct[:check_frames]
        rest = distinct[check_frames:]
        calibration_source = [rest[i % len(rest)] for i in range(calibration_frames)]
    else:
        frames_before_load = load_frames(frames_dir, check_frames, seed=0)
        if precision == "int8-static":
            calibration_source = load_frames(None, calibration_frames, seed=1)
    _log(f"loading {model} (cpu, float32)")
    loaded = load_sam3(model, device="cpu", dtype="float32")
    size = int(image_size if image_size is not None
               else loaded.processor.image_processor.size["height"])
    patch = loaded.detector.config.vision_config.backbone_config.patch_size
    if size % patch:
        raise ModelLoadError(f"--image-size {size} is not a multiple of the patch size {patch}")
    processor_size = int(loaded.processor.image_processor.size["height"])
    if size != processor_size:
        loaded.processor.image_processor.size = {"height": size, "width": size}
        _log(f"note: the checkpoint's processor runs at {processor_size} px; the backend loads "
             f"this {size} px artifact only for a model run at {size} px")
    _log("hashing the checkpoint's weights and config")
    key = loaded_key(loaded, size, precision, attention)
    names = output_names(loaded.detector.vision_encoder)
    frames = frames_before_load

    def preprocess(rgb: np.ndarray) -> Any:
        px = loaded.processor.image_processor(
            images=rgb, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        return px.to(torch.float32).contiguous()

    pixel_batches = [preprocess(f) for f in frames]
    _remove_stale_staging(out_dir)
    # A fresh name (not the pid: a container reuses pids, and a killed export's folder with
    # the same name made the next one fail).
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        fp32_stem = artifact_stem("fp32", size, attention)
        fp32_path = staging / f"{fp32_stem}.onnx"
        fp32_key = dataclasses.replace(key, precision="fp32")  # hashed once, checked
        existing = out_dir / f"{fp32_stem}.json"
        reuse = None
        if precision != "fp32" and existing.is_file():
            try:
                candidate = read_artifact(existing)
                reuse = candidate if not candidate.key.mismatches(fp32_key) else None
                if reuse is not None:
                    verify_contents(reuse)
            except ModelLoadError:
                reuse = None
        if reuse is not None:
            _log(f"quantising the existing fp32 artifact {reuse.onnx_path.name}")
            fp32_path = reuse.onnx_path
        else:
            if precision != "fp32":
                _log("no fp32 artifact of this checkpoint in DIR: exporting one to quantise "
                     "(not kept; export --precision fp32 first to keep a checked one)")
            export_fp32_onnx(loaded.detector.vision_encoder, fp32_path, size)
            heads = loaded.detector.config.vision_config.backbone_config.num_attention_heads
            count = rewrite_attention_file(fp32_path, attention, heads)
            _log(f"attention: {count} Attention nodes rewritten to the '{attention}' form")
        stem = artifact_stem(precision, size, attention)
        path = staging / f"{stem}.onnx"
        if precision != "fp32":
            calibration = []
            if precision == "int8-static":
                calibration = [preprocess(f) for f in calibration_source or ()]
            quantize(fp32_path, path, precision, calibration, calibration_parts)
        _log(f"checking {path.name} against the torch backbone on {len(frames)} frames")
        session = make_session(path, "cpu")
        with torch.inference_mode():
            first = loaded.detector.get_vision_features(pixel_values=pixel_batches[0])
        shapes = [list(t.shape) for t in (first.last_hidden_state, *first.fpn_hidden_states)]
        del first
        artifact = Artifact(path, path.with_suffix(".json"), key, tuple(names),
                            tuple(tuple(s) for s in shapes), {})
        checks = _run_checks(loaded, session, artifact, pixel_batches, frames, prompts,
                             score_threshold)
        lowest = min(m["cosine"] for m in checks["features_vs_torch_fp32"].values())
        passed = lowest >= threshold
        report = {
            "artifact": f"{stem}.onnx",
            "precision": precision,
            "attention": attention,
            "image_size": size,
            "checkpoint": model,
            "checkpoint_sha256": key.checkpoint_sha256,
            "onnxruntime_version": onnxruntime.__version__,
            "torch_version": torch.__version__,
            "exporter": f"torch.onnx.export(dynamo=True, opset_version={OPSET})",
            "check_frames": len(frames),
            "frames": frames_dir or "synthetic (seeded gradients and shapes)",
            "file_size_mb": {"fp32": _size_mb(fp32_path), "artifact": _size_mb(path)},
            "min_cosine": threshold,
            "lowest_cosine": lowest,
            "passed": passed,
            **checks,
            "caveat": RANDOM_WEIGHTS_CAVEAT,
        }
        if precision == "int8-static":
            report["calibration_frames"] = calibration_frames
            report["calibration_parts"] = calibration_parts
        print(format_report(report), flush=True)
        if not passed:
            raise ExportRefusedError(
                f"refused: lowest output cosine {lowest:.7f} < {threshold} "
                f"({precision} vs the torch backbone); nothing was written to {out_dir}")
        # Install: remove the old sidecar first (a half-replaced artifact is never keyed),
        # move graph + weights in, write the sidecar last.
        # Only the checked artifact is installed: an fp32 graph exported on the way to int8
        # (no fp32 artifact in DIR) was not checked itself and is dropped with the staging.
        from sam3_ros.core.text_cache import plain_file_mode

        installed = []
        for src in [path]:
            final = out_dir / src.name
            final.with_suffix(".json").unlink(missing_ok=True)
            for part in (src, src.with_name(src.name + ".data")):
                if part.is_file():
                    # onnxruntime's quantiser writes its weights owner-only (0600): a node
                    # running as another user could not load them.
                    os.chmod(part, plain_file_mode())
                    os.replace(part, out_dir / part.name)
            installed.append(final)
        meta = {"exporter": report["exporter"], "torch_version": torch.__version__,
                "lowest_cosine_vs_torch": lowest, "min_cosine": threshold,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for final in installed:
            write_sidecar(final, key, names, shapes, meta)
        report_path = out_dir / f"{stem}.report.json"
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {', '.join(p.name for p in installed)} (+ sidecars) and "
             f"{report_path.name} in {out_dir}")
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


STALE_STAGING_S = 24 * 3600
"""A staging folder untouched this long was left by an export that was killed (SIGKILL, the
out-of-memory killer): it is removed by the next export into the folder."""


def _remove_stale_staging(out_dir: Path) -> None:
    now = time.time()
    for folder in out_dir.glob(".staging-*"):
        try:
            stale = folder.is_dir() and now - folder.stat().st_mtime > STALE_STAGING_S
        except OSError:
            continue
        if stale:
            _log(f"removing {folder.name}, left by an export that did not finish")
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a SAM3 checkpoint's vision backbone to ONNX, check it against "
                    "torch, optionally quantise it to INT8.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--out", required=True, help="artifact folder (onnx_artifact_dir)")
    parser.add_argument("--precision", default="fp32",
                        choices=("fp32", "int8-dynamic", "int8-static"))
    parser.add_argument("--calibration-frames", type=int, default=8,
                        help="int8-static: frames to calibrate activation ranges on")
    parser.add_argument("--calibration-parts", type=int, default=4,
                        help="int8-static: runs the calibrated tensors are split over (peak "
                             "memory falls with more parts; each part runs every frame)")
    parser.add_argument("--check-frames", type=int, default=2,
                        help="frames to compare the artifact with torch on")
    parser.add_argument("--frames", default=None,
                        help="folder of png/jpg frames (default: synthetic frames)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: the checkpoint processor's, 1008)")
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="refuse when an output's cosine vs torch is below this "
                             "(default 0.99999 fp32, 0.99 int8)")
    parser.add_argument("--prompts", default="person",
                        help="comma-separated prompts for the segmenter check ('' = skip)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="segmenter check: detection score threshold")
    parser.add_argument("--attention", default="mha", choices=ATTENTION_FORMS,
                        help="attention form: mha for onnx_provider cpu and cuda (default), "
                             "explicit for tensorrt, onnx = the standard op as exported")
    args = parser.parse_args(argv)
    # SIGTERM (a supervisor, a memory watchdog) unwinds like Ctrl-C: the staging folder is
    # removed and nothing half-written is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        export_backbone(args.model, args.out, args.precision, args.image_size,
                        args.calibration_frames, args.check_frames, args.frames,
                        args.min_cosine, [p for p in args.prompts.split(",") if p],
                        args.score_threshold, args.attention, args.calibration_parts)
    except ExportRefusedError as err:
        print(f"export_backbone: {err}", file=sys.stderr, flush=True)
        return 2
    except Sam3RosError as err:
        print(f"export_backbone: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
