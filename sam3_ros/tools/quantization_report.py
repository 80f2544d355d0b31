"""Fidelity report of a PyTorch INT8 backbone (backend `torch_int8`, or a torchao
`quantization` mode of backend torch) against the checkpoint's fp32 torch backbone.

`--backend torch --dtype bfloat16` alone reports what bf16 does (the heads too): compare it
with `--backend torch_int8 --dtype bfloat16` to tell INT8's share from bf16's.

    python -m sam3_ros.tools.quantization_report --model CKPT \\
        [--backend torch_int8 [--calibration IMAGE_DIR [--calibration-frames N]] |
         --backend torch --quantization int8_dynamic] \\
        [--dtype float32|bfloat16] [--check-frames N] [--frames IMAGE_DIR] \\
        [--prompts person cup] [--score-threshold 0.5] [--min-cosine 0.99] [--json OUT]

The ONNX Runtime INT8 artifacts get the same report from `export_backbone` when they are
made; this is its counterpart for the torch modes, which have no artifact (they quantise at
configure). Both models are loaded as the nodes load them (the model hub: the backend built,
prepared, i.e. compiled, the unused torch ViT released), on the CPU.

Reported: the ViT's weights before/after (serialised size of its tensors: fp32 checkpoint vs
what the quantised backbone holds), every backbone output's cosine similarity and max abs
error against fp32 on each frame (worst frame shown), and with prompts the segmenter's
detections on the same frames: matched one-to-one per class by mask IoU, mean IoU (unmatched
count as 0), lowest matched IoU, pixel agreement, largest box and score deltas. Exit status 1
when an output's cosine is below `--min-cosine`. Random-weight checkpoints flatter INT8
fidelity (no activation outliers): the report says so.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from sam3_ros.core.torch_int8_backbone import DEFAULT_CALIBRATION_FRAMES, MAX_CALIBRATION_FRAMES
from sam3_ros.tools.export_backbone import (
    RANDOM_WEIGHTS_CAVEAT,
    detection_agreement,
    feature_metrics,
    format_detection_agreement,
    load_frames,
    merge_worst,
)

BACKENDS = ("torch_int8", "torch")


def _log(message: str) -> None:
    print(f"[quantization_report {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def _serialized_mb(tensors: dict[str, Any]) -> float:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach() for k, v in tensors.items()}, buffer)
    return buffer.tell() / 1e6


def held_weights_mb(backbone: Any, loaded: Any) -> float:
    """Serialised size of the ViT weights the test backbone holds (int8 + float rest)."""
    graph = getattr(backbone, "_graph", None)
    if graph is not None:  # torch_int8: the quantised graph's own tensors
        return _serialized_mb(dict([*graph.named_parameters(), *graph.named_buffers()]))
    return _serialized_mb(loaded.detector.vision_encoder.backbone.state_dict())


def _outputs(features: Any) -> list[Any]:
    return [t.float().numpy() for t in (features.last_hidden_state, *features.fpn_hidden_states)]


def build_report(model: str, backend: str, quantization: str, dtype: str, frames: Sequence[Any],
                 prompts: Sequence[str], score_threshold: float,
                 min_cosine: float, options: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The report as a dict (see the module docstring). `options`: the backend's options
    as the node's parameters give them (torch_int8: `int8_calibration`, ...)."""
    import torch

    from sam3_ros.core.backbone import TorchBackbone
    from sam3_ros.core.model_hub import ModelKey, SharedModel
    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.prompts import PromptSpec
    from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig
    from sam3_ros.core.vision_features import VisionFeatureCache

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "torch" and quantization == "none" and dtype == "float32":
        raise ValueError("backend torch in float32 without --quantization is the reference "
                         "itself: name the torchao mode, or --dtype bfloat16")
    reference_loaded = load_sam3(model, device="cpu", dtype="float32")
    reference_backbone = TorchBackbone(reference_loaded.detector)
    fp32_mb = _serialized_mb(reference_loaded.detector.vision_encoder.backbone.state_dict())
    started = time.monotonic()
    loaded = load_sam3(model, device="cpu", dtype=dtype, quantization=quantization)
    options = (("compile", "none"),) if backend == "torch" else tuple(sorted(options))
    shared = SharedModel(ModelKey(model, "cpu", dtype, quantization, backend, options), loaded, 1)
    shared.prepare(_log)
    setup_s = time.monotonic() - started
    backbone = shared.backbone
    reference = Sam3Segmenter(reference_loaded, VisionFeatureCache(reference_backbone, 1))
    test = Sam3Segmenter(loaded, VisionFeatureCache(backbone, 1))
    names = ["last_hidden_state"] + [f"fpn_{i}" for i in range(
        len(reference_loaded.detector.vision_encoder.neck.fpn_layers))]
    per_frame = []
    for i, frame in enumerate(frames):
        ref = _outputs(reference_backbone(reference.preprocess(frame)))
        got = _outputs(backbone(test.preprocess(frame)))
        per_frame.append(feature_metrics(ref, got, names))
        _log(f"frame {i + 1}/{len(frames)}: lowest output cosine "
             f"{min(m['cosine'] for m in per_frame[-1].values()):.7f}")
    features = merge_worst(per_frame)
    detections = None
    if prompts:
        specs = [PromptSpec(p) for p in prompts]
        config = SegmenterConfig(score_threshold=score_threshold, max_detections=1000)
        ref_prompts, test_prompts = reference.encode_prompts(specs), test.encode_prompts(specs)
        with torch.inference_mode():
            ref_dets = [reference.segment(f, ref_prompts, config) for f in frames]
            test_dets = [test.segment(f, test_prompts, config) for f in frames]
        detections = detection_agreement(ref_dets, test_dets)
        detections.update(prompts=list(prompts), score_threshold=score_threshold)
    lowest = min(m["cosine"] for m in features.values())
    return {
        "model": model, "backend": backend, "quantization": quantization, "dtype": dtype,
        # describe() names the backbone, not the torchao mode the loader applied to it.
        "backbone": backbone.describe() + (f", torchao {quantization}"
                                           if quantization not in ("", "none") else ""),
        "setup_s": round(setup_s, 1),
        "check_frames": len(frames),
        "vit_weights_mb": {"fp32": round(fp32_mb, 1),
                           "quantised": round(held_weights_mb(backbone, loaded), 1)},
        "features_vs_torch_fp32": features, "detections_vs_torch_fp32": detections,
        "min_cosine": min_cosine, "passed": lowest >= min_cosine,
        "caveat": RANDOM_WEIGHTS_CAVEAT,
    }


def format_report(report: dict[str, Any]) -> str:
    """The printed table of a report."""
    sizes = report["vit_weights_mb"]
    lines = [f"Fidelity of {report['backbone']} vs the fp32 torch backbone on "
             f"{report['check_frames']} frame(s) (setup: load, quantise, compile "
             f"{report['setup_s']} s):",
             f"  ViT weights: fp32 {sizes['fp32']:.1f} MB -> {sizes['quantised']:.1f} MB",
             f"  {'output':<20} {'cosine':>12} {'max abs err':>12} {'max |ref|':>12}"]
    for name, m in report["features_vs_torch_fp32"].items():
        lines.append(f"  {name:<20} {m['cosine']:>12.7f} {m['max_abs_error']:>12.3g} "
                     f"{m['max_abs_reference']:>12.3g}")
    det = report["detections_vs_torch_fp32"]
    if det:
        lines += format_detection_agreement(det, "fp32", "quantised")
    lines.append(f"  every output's cosine >= {report['min_cosine']}: "
                 f"{'yes' if report['passed'] else 'NO'}")
    lines.append(f"  NOTE: {report['caveat']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--backend", default="torch_int8", choices=BACKENDS)
    parser.add_argument("--quantization", default="none",
                        help="backend torch: the torchao mode (int8_dynamic, ...)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--check-frames", type=int, default=2)
    parser.add_argument("--frames", default=None, help="folder of png/jpg frames "
                        "(default: synthetic frames)")
    parser.add_argument("--calibration", default="",
                        help="backend torch_int8: folder of png/jpeg frames for static "
                             "activation ranges (parameter torch_int8_calibration; default: "
                             "dynamic). Not the --frames folder: the report would flatter it")
    parser.add_argument("--calibration-frames", type=int, default=None,
                        help="how many of them (parameter torch_int8_calibration_frames; "
                             f"default {DEFAULT_CALIBRATION_FRAMES})")
    parser.add_argument("--prompts", nargs="*", default=["person"])
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--min-cosine", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.check_frames < 1:
        parser.error("--check-frames must be >= 1")
    options: tuple[tuple[str, Any], ...] = ()
    if args.calibration_frames is not None and not args.calibration:
        parser.error("--calibration-frames needs --calibration")
    if args.calibration_frames is not None and not (
            1 <= args.calibration_frames <= MAX_CALIBRATION_FRAMES):
        # Before the two checkpoints load (minutes at full size), not after.
        parser.error(f"--calibration-frames must be in 1..{MAX_CALIBRATION_FRAMES}")
    if args.calibration:
        from pathlib import Path

        if args.backend != "torch_int8":
            parser.error("--calibration is for --backend torch_int8")
        if args.frames and Path(args.frames).resolve() == Path(args.calibration).resolve():
            parser.error("--frames and --calibration are the same folder: checked on the "
                         "frames it was calibrated on, the report would flatter INT8")
        options = (("int8_calibration", args.calibration),
                   ("int8_calibration_frames", DEFAULT_CALIBRATION_FRAMES
                    if args.calibration_frames is None else args.calibration_frames))
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from sam3_ros.core.errors import Sam3RosError

    if args.json:
        # Checked before the models load: a report lost at the end of a long run, and an
        # exit status of 1 (the fidelity failure's), said nothing of the real cause.
        import os

        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK) or (
                os.path.isdir(args.json)) or (
                os.path.exists(args.json) and not os.access(args.json, os.W_OK)):
            print(f"quantization_report: --json {args.json}: cannot write there",
                  file=sys.stderr)
            return 2
    try:
        report = build_report(args.model, args.backend, args.quantization, args.dtype,
                              load_frames(args.frames, args.check_frames), args.prompts,
                              args.score_threshold, args.min_cosine, options)
    except (Sam3RosError, ValueError) as err:
        print(f"quantization_report: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as err:
            print(f"quantization_report: --json {args.json}: {err.strerror}", file=sys.stderr)
            return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
