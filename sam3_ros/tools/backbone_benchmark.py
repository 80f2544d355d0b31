"""Vision-backbone timing on this machine: torch vs ONNX Runtime fp32 vs ONNX Runtime INT8.

The full-size SAM3 vision backbone (transformers' `Sam3Config()` defaults: ViT 1024 wide,
32 layers, 1008 px, FPN 256) with RANDOM weights (seeded; nothing downloaded), one synthetic
640x480 frame preprocessed by `Sam3ImageProcessor`. Each step runs in its own process, so its
peak RSS is its own; run them one after another:

    W=/tmp/bb; python -m sam3_ros.tools.backbone_benchmark torch  --workdir $W --threads 2
    python -m sam3_ros.tools.backbone_benchmark export --workdir $W
    python -m sam3_ros.tools.backbone_benchmark ort --workdir $W --precision fp32 --threads 2
    python -m sam3_ros.tools.backbone_benchmark ort --workdir $W --precision int8-dynamic \\
        --threads 2
    python -m sam3_ros.tools.backbone_benchmark table --workdir $W

`torch` builds the model (seed 0) and saves its weights to the workdir (later steps and runs
load them), times `Sam3VisionModel` forward (sdpa attention) and saves its outputs; `export` writes
the fp32 ONNX graph (the export tool's exporter) and its int8-dynamic quantisation; `ort` times
an ONNX Runtime session and compares its outputs with torch's (cosine, max abs error). Seconds
per frame are the median of `--repeats` runs after one warm-up run. Random weights flatter
INT8 fidelity (no activation outliers): the cosine figures say nothing about the real model.
`--tiny` uses the tiny test configuration instead (for a smoke test). `torch --torch-compile
MODE` times the `torch.compile`d encoder (as the torch backend's `torch_compile`), its first
call (the compile) apart, and compares its outputs with the eager step's. `torch --dtype bf16`
times the encoder with bfloat16 weights and activations (fast where the CPU has AMX or
AVX512-BF16), compared with the fp32 step's outputs when that ran first. `torch --int8
[--dtype bf16]` times backend `torch_int8` (the ViT's linears INT8, compiled; export, weight
pass and compile timed apart as compile_s).

`checkpoint` writes a full-size random `Sam3Model` checkpoint folder (`<workdir>/checkpoint`,
~3.4 GB; the tiny test tokenizer) for the export tool's own checks at full size:
`python -m sam3_ros.tools.export_backbone --model <workdir>/checkpoint --out DIR ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sam3_ros.core.torch_int8_backbone import DEFAULT_CALIBRATION_FRAMES, MAX_CALIBRATION_FRAMES


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _log(message: str) -> None:
    print(f"[backbone_benchmark {time.strftime('%H:%M:%S')}] {message} "
          f"(peak RSS {_peak_rss_gb():.2f} GB)", flush=True)


def _vision_config(tiny: bool) -> Any:
    if tiny:
        from sam3_ros.tools.make_tiny_checkpoint import tiny_sam3_config

        return tiny_sam3_config(0, 1).vision_config
    from transformers import Sam3Config

    return Sam3Config().vision_config


def _model(workdir: Path, tiny: bool, build: bool) -> Any:
    import torch
    from safetensors.torch import load_model, save_model
    from transformers import Sam3VisionModel

    torch.manual_seed(0)
    model = Sam3VisionModel(_vision_config(tiny)).eval()
    weights = workdir / "vision.safetensors"
    if build:
        save_model(model, str(weights))
    else:
        load_model(model, str(weights))
    return model


def _pixel_values(image_size: int) -> Any:
    import torch
    from transformers import Sam3ImageProcessor

    from sam3_ros.tools.export_backbone import synthetic_frames

    frame = synthetic_frames(1, seed=0)[0]
    processor = Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    px = processor(images=frame, return_tensors="pt")["pixel_values"]
    return px.to(torch.float32).contiguous()


def _time(call: Any, repeats: int) -> tuple[float, list[float]]:
    call()
    _log("warm-up run done")
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
        _log(f"run {i + 1}/{repeats}: {samples[-1]:.2f} s")
    return statistics.median(samples), samples


def _record(workdir: Path, row: dict[str, Any]) -> None:
    row["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    # The machine is shared: the 1/5/15-minute load averages when the step ended.
    row["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    with (workdir / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def step_torch(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # Weights built (seed 0) and saved on the first run; later runs load them.
    model = _model(args.workdir, args.tiny,
                   build=not (args.workdir / "vision.safetensors").is_file())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = model.to(dtype)
    _log(f"model built ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, "
         f"attention {model.config.backbone_config._attn_implementation})")
    px = _pixel_values(args.image_size).to(dtype)
    outputs: list[Any] = []
    forward, mode, compile_s = model, args.torch_compile, None
    if args.int8:
        # As backend torch_int8: the ViT quantised (PT2E, X86InductorQuantizer, dynamic) and
        # compiled, the neck eager in `dtype`; the torch ViT freed as the model hub does.
        from sam3_ros.core.torch_int8_backbone import TorchInt8Backbone, quantize_vit

        calibration = []
        if args.int8_calibration:
            from transformers import Sam3ImageProcessor

            from sam3_ros.core.torch_int8_backbone import calibration_pixels

            size = {"height": args.image_size, "width": args.image_size}
            calibration = calibration_pixels(Sam3ImageProcessor(size=size),
                                             args.int8_calibration, args.int8_calibration_frames)
        start = time.monotonic()
        graph = quantize_vit(model.backbone, args.image_size, in_place=True,
                             calibration=calibration)
        _log(f"torch_int8: exported and quantised in {time.monotonic() - start:.1f} s "
             f"({len(calibration)} calibration frames)")
        forward = TorchInt8Backbone(graph, model.neck, model.config.backbone_config.patch_size,
                                    args.image_size, dtype, calibration_frames=len(calibration))
        del model.backbone
        start = time.monotonic()
        forward.prepare([1], _log)
        compile_s, mode = time.monotonic() - start, "int8"
    elif mode != "none":
        # As the torch backend's torch_compile: fullgraph, the first call compiles.
        forward = torch.compile(model, fullgraph=True, mode=None if mode == "default" else mode)
        start = time.monotonic()
        with torch.inference_mode():
            forward(px)
        compile_s = time.monotonic() - start
        _log(f"torch.compile '{mode}': first call (compile) took {compile_s:.1f} s")

    def call() -> None:
        with torch.inference_mode():
            out = forward(px)
        outputs[:] = [t.float() for t in (out.last_hidden_state, *out.fpn_hidden_states)]

    median, samples = _time(call, args.repeats)
    row: dict[str, Any] = {"backend": f"torch {args.dtype} (sdpa)", "threads": args.threads,
                           "image_size": args.image_size, "s_per_frame_median": median,
                           "samples_s": samples, "cosine_min": 1.0, "max_abs_error": 0.0}
    reference = args.workdir / "torch_outputs.npz"
    if mode == "none" and args.dtype == "fp32":
        np.savez(reference, *[t.numpy() for t in outputs])
    else:
        from sam3_ros.tools.export_backbone import feature_metrics

        if args.int8:
            kind = (f"static int8 linears calibrated on {len(calibration)} frames"
                    if calibration else "dynamic int8 linears")
            row["backend"] = f"torch_int8 (PT2E x86 {kind}, compiled; the rest {args.dtype})"
            row["compile_s"] = round(compile_s, 1)
        elif mode != "none":
            row["backend"] = f"torch {args.dtype} (sdpa, torch.compile {mode})"
            row["compile_s"] = round(compile_s, 1)
        row["cosine_min"] = row["max_abs_error"] = None
        if reference.is_file():  # vs the fp32 eager step's outputs, when it ran first
            saved = np.load(reference)
            names = [f"out_{i}" for i in range(len(outputs))]
            metrics = feature_metrics([saved[f"arr_{i}"] for i in range(len(outputs))],
                                      [t.numpy() for t in outputs], names)
            row["cosine_min"] = min(m["cosine"] for m in metrics.values())
            row["max_abs_error"] = max(m["max_abs_error"] for m in metrics.values())
    _record(args.workdir, row)


def step_export(args: argparse.Namespace) -> None:
    from sam3_ros.tools.export_backbone import export_fp32_onnx, quantize
    from sam3_ros.tools.onnx_attention import rewrite_attention_file

    model = _model(args.workdir, args.tiny, build=False)
    path = args.workdir / "backbone_fp32.onnx"
    start = time.monotonic()
    export_fp32_onnx(model, path, args.image_size)
    _log(f"fp32 export took {time.monotonic() - start:.0f} s")
    heads = model.config.backbone_config.num_attention_heads
    count = rewrite_attention_file(path, args.attention, heads)
    _log(f"{count} Attention nodes rewritten to the '{args.attention}' form")
    del model
    start = time.monotonic()
    quantize(path, args.workdir / "backbone_int8-dynamic.onnx", "int8-dynamic")
    _log(f"int8-dynamic quantisation took {time.monotonic() - start:.0f} s")


def graph_precision(ops: set[str]) -> str:
    """What a graph's op types say it is (a `--graph` file need not be `--precision`'s)."""
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8-static"
    if ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}:
        return "int8-dynamic"
    return "fp32"


def step_ort(args: argparse.Namespace) -> None:
    from sam3_ros.core.onnx_backbone import make_session
    from sam3_ros.tools.export_backbone import feature_metrics

    path = args.workdir / (args.graph or f"backbone_{args.precision}.onnx")
    session = make_session(path, "cpu", {"threads": args.threads})
    _log(f"session created for {path.name}")
    px = _pixel_values(args.image_size).numpy()
    names = [o.name for o in session.get_outputs()]
    outputs: list[Any] = []

    def call() -> None:
        outputs[:] = session.run(names, {"pixel_values": px})

    median, samples = _time(call, args.repeats)
    reference = np.load(args.workdir / "torch_outputs.npz")
    metrics = feature_metrics([reference[f"arr_{i}"] for i in range(len(names))], outputs, names)
    files = [path, path.with_name(path.name + ".data")]
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    attention = ("mha" if "MultiHeadAttention" in ops else
                 "explicit" if "Softmax" in ops else "onnx")
    _record(args.workdir, {
        "backend": f"onnxruntime {graph_precision(ops)} (attention {attention})",
        "threads": args.threads,
        "image_size": args.image_size, "s_per_frame_median": median, "samples_s": samples,
        "cosine_min": min(m["cosine"] for m in metrics.values()),
        "max_abs_error": max(m["max_abs_error"] for m in metrics.values()),
        "per_output": metrics,
        "file_mb": round(sum(p.stat().st_size for p in files if p.is_file()) / 1e6, 1)})


def step_checkpoint(args: argparse.Namespace) -> None:
    """A full-size RANDOM `Sam3Model` checkpoint folder (for the export tool's own checks)."""
    import torch
    from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from sam3_ros.tools.make_tiny_checkpoint import _tokenizer_vocab_and_merges

    folder = args.workdir / "checkpoint"
    # Written beside and renamed at the end: save_pretrained writes config.json first, and
    # a run killed during the 3.4 GB of weights left a folder later runs took as complete.
    partial = args.workdir / "checkpoint.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)  # rewritten anyway: not twice 3.4 GB on disk
    vocab, merges = _tokenizer_vocab_and_merges()
    torch.manual_seed(0)
    config = Sam3Config(text_config={"bos_token_id": vocab["<|startoftext|>"],
                                     "eos_token_id": vocab["<|endoftext|>"],
                                     "pad_token_id": vocab["<|endoftext|>"]})
    model = Sam3Model(config).eval()
    _log(f"Sam3Model built ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M "
         f"parameters)")
    model.save_pretrained(partial)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tokenizer).save_pretrained(
        partial)
    os.replace(partial, folder)
    _log(f"wrote {folder}")


def step_table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (args.workdir / "results.jsonl").read_text().splitlines()
            if line.strip()]
    print("| backbone | s/frame (median of the runs) | runs (s) | min output cosine vs torch | "
          "max abs error | peak RSS (GB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        runs = ", ".join(f"{s:.2f}" for s in r["samples_s"])
        cosine = "n/a" if r["cosine_min"] is None else f"{r['cosine_min']:.6f}"
        error = "n/a" if r["max_abs_error"] is None else f"{r['max_abs_error']:.3g}"
        print(f"| {r['backend']} | {r['s_per_frame_median']:.2f} | {runs} | {cosine} | "
              f"{error} | {r['peak_rss_gb']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("torch", "export", "ort", "table", "checkpoint"))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=None,
                        help="default 1008 (112 with --tiny)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8-dynamic"))
    parser.add_argument("--tiny", action="store_true", help="tiny test configuration")
    parser.add_argument("--graph", default=None,
                        help="ort: another .onnx file in the workdir (default "
                             "backbone_<precision>.onnx)")
    parser.add_argument("--attention", default="mha", choices=("mha", "explicit", "onnx"),
                        help="export: attention form (see sam3_ros.tools.onnx_attention)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                        help="step torch: weights and activations in this dtype (bf16 is "
                             "compared with the fp32 step's outputs when that ran first)")
    parser.add_argument("--torch-compile", default="none",
                        choices=("none", "default", "reduce-overhead", "max-autotune"),
                        help="step torch: torch.compile mode (first call timed apart as "
                             "compile_s; run the eager step first to compare outputs)")
    parser.add_argument("--int8", action="store_true",
                        help="step torch: as backend torch_int8 (the ViT's linears INT8 via "
                             "torchao PT2E, compiled; --dtype is the rest's dtype)")
    parser.add_argument("--int8-calibration", default="",
                        help="step torch --int8: folder of png/jpeg frames; static activation "
                             "ranges calibrated on them (default: dynamic)")
    parser.add_argument("--int8-calibration-frames", type=int,
                        default=DEFAULT_CALIBRATION_FRAMES,
                        help="how many of the folder's frames (sorted by name)")
    args = parser.parse_args(argv)
    if args.int8_calibration and not args.int8:
        parser.error("--int8-calibration is for --int8")
    if not 1 <= args.int8_calibration_frames <= MAX_CALIBRATION_FRAMES:
        parser.error(f"--int8-calibration-frames must be in 1..{MAX_CALIBRATION_FRAMES}")
    if args.int8 and args.torch_compile != "none":
        parser.error("--int8 compiles the quantised ViT itself; leave --torch-compile none")
    if args.image_size is None:
        args.image_size = 112 if args.tiny else 1008
    args.workdir.mkdir(parents=True, exist_ok=True)
    {"torch": step_torch, "export": step_export, "ort": step_ort, "table": step_table,
     "checkpoint": step_checkpoint}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
