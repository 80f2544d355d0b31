"""Per-stage segmenter benchmark for every backend and precision: where a frame's time goes.

    python -m sam3_ros.tools.stage_benchmark [--model CHECKPOINT | --full-size] [--device cpu]
        [--backends torch onnxruntime:fp32 onnxruntime:int8-dynamic] [--dtype float32]
        [--quantization none] [--prompts 1 4 16] [--frames 20] [--warmup 3]
        [--onnx-artifact-dir DIR] [--workdir DIR] [--threads N] [--output FILE]

For one checkpoint and one device, each backend/precision runs in its own child process (so
its peak memory is its own) through the package's own code path: `load_sam3`,
the model hub's `SharedModel` (backbone; torch ViT freed for other backends, as in the
nodes), `Sam3Segmenter` with a `VisionFeatureCache` over that backbone and a
`TextEmbeddingCache`, `SegmenterSession.process`, then the output messages the segmenter node
builds. Per prompt count (run in the order given, in the same process) and per frame:

* preprocess: uint8 frame -> pixel values (`Sam3Segmenter.preprocess`);
* backbone: the `VisionBackbone` call (no feature-cache hit: every frame is encoded);
* heads: DETR decoder + scoring for every prompt (chunks of `prompts_per_batch`), top-k;
* masks: upsampling the kept instances' masks to the image resolution, results to numpy;
* messages: what the node builds per frame (`base_node._publish`): mask crops, the
  DetectionArray with bit-packed masks and the label image as a sensor_msgs/Image (no
  overlay, no serialisation or DDS). Skipped, with the reason, when rclpy or the package's
  messages are not importable;
* text, not a per-frame cost (a prompt set is encoded once): `encode_prompts` with an empty
  text cache (first run: tokenise, encode, store) and again with the entries on disk
  (cached: read back); hashing the checkpoint for the cache key happens once before and is
  not counted.

The stage times come from `Sam3Segmenter.stage_timer` (`segmenter.StageTimer`: off in normal
use; on CUDA it synchronises around each stage). Per row: median (and p90 with >= 5 frames)
ms per stage, frames per second (timed frames / their summed wall time, all stages but text),
the process's peak RSS (VmHWM so far: rows of a backend run in order in one process) and, on
CUDA, the row's peak allocated CUDA memory.

Backends: `torch[:DTYPE][:QUANTIZATION]` (DTYPE float32, float16, bfloat16; QUANTIZATION a
torchao mode: int8_weight_only, int8_dynamic, nvfp4) and `onnxruntime[:PRECISION]
[:PROVIDER][:DTYPE]` (PRECISION fp32, int8-dynamic, int8-static; PROVIDER cpu, cuda,
tensorrt, default cuda on a CUDA device; DTYPE that of the torch heads), `torch_int8[:DTYPE]
[:static]` (static: activation ranges calibrated on `--int8-calibration`'s frames);
any of them with `:compiled-heads` sets the model's `compile_heads`. `--dtype` and
`--quantization` are the defaults for specs that do not name one. A backend that cannot run
here (missing provider, no CUDA, a quantisation the hardware lacks) is reported as
"not run: <reason>", never replaced by another.

ONNX artifacts: `--onnx-artifact-dir DIR` uses the artifacts there as they are (a missing one
is "not run" with the export command); without it, missing artifacts are exported once into
`<workdir>/onnx` by the export tool (`export_backbone`, in the parent process; logged) and
reused by later runs with the same `--workdir`.

Without --model: the tiny RANDOM checkpoint (overhead figures only). `--full-size` uses the
full-size RANDOM `Sam3Model` checkpoint of `backbone_benchmark checkpoint` in
`<workdir>/checkpoint` (written there first when absent; ~3.4 GB); speed does not depend on
the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sam3_ros.core.torch_int8_backbone import DEFAULT_CALIBRATION_FRAMES, MAX_CALIBRATION_FRAMES

STAGES = ("preprocess", "backbone", "text_first", "text_cached", "heads", "masks", "messages")
"""Stage keys of a row, in table order."""

STAGE_TITLES = {
    "preprocess": "preprocess", "backbone": "backbone", "text_first": "text first run",
    "text_cached": "text cached", "heads": "heads", "masks": "masks", "messages": "messages",
}

PROMPT_POOL = ("person", "car", "dog", "cup", "bottle", "chair", "laptop", "phone", "book",
               "ball", "bicycle", "cat", "table", "plant", "keyboard", "backpack")
"""Prompt texts (the first N are used; beyond the pool, numbered variants)."""


def _log(message: str) -> None:
    print(f"[stage_benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


# ------------------------------------------------------------------------------ pure helpers
@dataclass(frozen=True)
class BackendSpec:
    """One backend/precision to benchmark, parsed from a `--backends` entry."""

    text: str
    backend: str
    dtype: str
    quantization: str = "none"
    precision: str = ""
    provider: str = ""
    compile_heads: bool = False
    static: bool = False

    def label(self) -> str:
        if self.backend == "torch":
            parts = ["torch", self.dtype]
            if self.quantization != "none":
                parts.append(self.quantization)
        elif self.backend == "torch_int8":
            parts = ["torch_int8", *(["static"] if self.static else []), f"rest {self.dtype}"]
        else:
            parts = ["onnxruntime", self.precision, self.provider, f"heads {self.dtype}"]
        if self.compile_heads:
            parts.append("compiled heads")
        return " ".join(parts)


def parse_backend(text: str, dtype: str = "float32", quantization: str = "none",
                  device: str = "cpu") -> BackendSpec:
    """Parse `torch[:DTYPE][:QUANT]`, `torch_int8[:DTYPE][:static]` (the dtype of everything
    but the ViT's linears; static: activation ranges from `--int8-calibration`) or
    `onnxruntime[:PRECISION][:PROVIDER][:DTYPE]`, each optionally with `:compiled-heads` (the
    model's `compile_heads`).

    Raises:
        ValueError: an unknown backend or part.
    """
    from sam3_ros.core.model_loading import DTYPES, QUANTIZATIONS

    onnx_precisions = ("fp32", "int8-dynamic", "int8-static")
    onnx_providers = ("cpu", "cuda", "tensorrt")
    backend, *parts = text.split(":")
    if backend == "torch":
        fields = {"dtype": dtype, "quantization": quantization}
        choices = {"dtype": DTYPES, "quantization": QUANTIZATIONS}
    elif backend == "torch_int8":
        fields, choices = {"dtype": dtype}, {"dtype": DTYPES, "static": ("static",)}
    elif backend == "onnxruntime":
        fields = {"precision": "fp32", "dtype": dtype,
                  "provider": "cuda" if device.startswith("cuda") else "cpu"}
        choices = {"precision": onnx_precisions, "provider": onnx_providers, "dtype": DTYPES}
    else:
        raise ValueError(f"backend '{text}': expected torch[:...], torch_int8[:...] or "
                         "onnxruntime[:...]")
    choices["compile_heads"] = ("compiled-heads",)
    seen = set()
    for part in parts:
        name = next((n for n, values in choices.items() if part in values), None)
        if name is None or name in seen:
            allowed = sorted(v for values in choices.values() for v in values)
            raise ValueError(f"backend '{text}': '{part}' is not one of {allowed} (or is given "
                             "twice)")
        seen.add(name)
        fields[name] = True if name in ("compile_heads", "static") else part
    return BackendSpec(text=text, backend=backend, **fields)


def prompt_texts(count: int) -> list[str]:
    """`count` distinct prompt texts."""
    pool = list(PROMPT_POOL)
    return [pool[i] if i < len(pool) else f"{pool[i % len(pool)]} {i // len(pool)}"
            for i in range(count)]


def summarize(samples: Sequence[float]) -> dict[str, float | None]:
    """Median and, with at least 5 samples, p90 (linear interpolation) of seconds, in ms.

    Returns:
        {"median": ms, "p90": ms or None, "n": count}; median None without samples.
    """
    values = [float(s) * 1e3 for s in samples]
    if not values:
        return {"median": None, "p90": None, "n": 0}
    p90 = (statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) >= 5
           else None)
    return {"median": statistics.median(values), "p90": p90, "n": len(values)}


def format_stat(stat: dict[str, Any] | None) -> str:
    """A table cell: "median" or "median / p90" in ms ("-" when not measured)."""
    if not stat or stat.get("median") is None:
        return "-"
    cell = f"{stat['median']:.2f}"
    if stat.get("p90") is not None:
        cell += f" / {stat['p90']:.2f}"
    return cell


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(results: Sequence[dict[str, Any]], header: str, repeats: int) -> str:
    """The Markdown table of every backend's rows (a backend not run: one row with why)."""
    unit = "median / p90 ms" if repeats >= 5 else "median ms (p90 from 5 frames)"
    titles = [STAGE_TITLES[s] for s in STAGES]
    lines = [header, "", f"Stage and frame-total cells: {unit}.", "",
             f"| backend | prompts | instances | {' | '.join(titles)} | frame total | FPS | "
             f"peak RSS MB | peak CUDA MB |",
             "|---|---:|---:|" + "---:|" * (len(STAGES) + 4)]
    notes: list[str] = []
    for result in results:
        label = _cell(result["label"])
        if result.get("not_run"):
            prompts = ", ".join(str(p) for p in result.get("prompts", []))
            lines.append(f"| {label} | {prompts} | not run: {_cell(result['not_run'])} |"
                         + " - |" * (len(STAGES) + 4))
            continue
        for row in result["rows"]:
            cells = [format_stat(row["stages"].get(stage)) for stage in STAGES]
            if row.get("messages_skipped"):
                cells[STAGES.index("messages")] = "skipped"
            cuda = row.get("peak_cuda_mb")
            lines.append(
                f"| {label} | {row['prompts']} | {row['instances_median']:g} | "
                f"{' | '.join(cells)} | {format_stat(row['total'])} | {row['fps']:.2f} | "
                f"{row['peak_rss_mb']:.0f} | {'-' if cuda is None else f'{cuda:.0f}'} |")
        for note in result.get("notes", []):
            notes.append(f"- {label}: {note}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------- child side
def _message_builder() -> tuple[Any, str]:
    """(build(detections, generation) -> None, "") or (None, why the messages are skipped)."""
    try:
        import numpy as np
        from std_msgs.msg import Header

        from sam3_ros.core.render import label_image, mask_crops
        from sam3_ros.ros.detection_conversions import detections_to_msg
        from sam3_ros.ros.image_conversions import numpy_to_image_msg
    except ImportError as err:
        return None, f"rclpy / sam3_ros messages not importable ({err})"
    header = Header(frame_id="camera")

    def build(detections: Any, generation: int) -> None:
        # What base_node._publish builds per frame with publish_masks and publish_mask_image
        # on (overlay off): one pass of mask crops shared by the message and the label image.
        crops = mask_crops(detections) if detections.masks is not None else None
        detections_to_msg(detections, header, generation, include_masks=True, crops=crops)
        if detections.masks is not None:
            labels = label_image(detections, crops=crops)
            numpy_to_image_msg(labels, "mono8" if labels.dtype == np.uint8 else "mono16",
                               header)

    return build, ""


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    """Benchmark one backend (in this process) for every prompt count; see the module doc."""
    import torch

    from sam3_ros.core.errors import Sam3RosError
    from sam3_ros.core.model_hub import ModelKey, SharedModel
    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.text_cache import TextEmbeddingCache

    spec = BackendSpec(**config["spec"])
    result: dict[str, Any] = {"label": spec.label(), "prompts": config["prompts"], "rows": [],
                              "notes": []}
    threads = int(config["threads"])
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        loaded = load_sam3(config["model"], device=config["device"], dtype=spec.dtype,
                           quantization=spec.quantization)
        options: dict[str, Any] = {}
        if spec.backend == "onnxruntime":
            options = {"artifact_dir": config["onnx_artifact_dir"],
                       "precision": spec.precision, "provider": spec.provider,
                       "threads": threads}
        elif spec.backend == "torch_int8":
            options = {"int8_calibration": config["int8_calibration"] if spec.static else "",
                       "int8_calibration_frames": config["int8_calibration_frames"]}
        # As the nodes get it (the model hub's SharedModel): with another backend than torch
        # the unused torch ViT is freed, so the peak RSS is the node's.
        shared = SharedModel(ModelKey(config["model"], config["device"], spec.dtype,
                                      spec.quantization, spec.backend,
                                      tuple(sorted(options.items())), spec.compile_heads),
                             loaded, 1)
        # torch_int8 and compile_heads compile here, as in the node's configure
        shared.prepare(_log)
        backbone = shared.backbone
    except Sam3RosError as err:
        result["not_run"] = str(err)
        return result
    with tempfile.TemporaryDirectory(prefix="sam3_stage_bench_text_") as cache_dir:
        _measure(config, spec, loaded, backbone, TextEmbeddingCache(cache_dir), result)
    return result


def _measure(config: dict[str, Any], spec: BackendSpec, loaded: Any, backbone: Any,
             text_cache: Any, result: dict[str, Any]) -> None:
    """The rows of one backend (see `run_child`), appended to result["rows"]."""
    import torch

    from sam3_ros.core.prompts import PromptSpec
    from sam3_ros.core.segmenter import (
        Sam3Segmenter,
        SegmenterConfig,
        SegmenterSession,
        StageTimer,
    )
    from sam3_ros.core.vision_features import VisionFeatureCache
    from sam3_ros.tools.demo import synthetic_frames

    device = loaded.device
    segmenter = Sam3Segmenter(loaded, VisionFeatureCache(backbone, capacity=1),
                              text_cache=text_cache)
    timer = StageTimer(device)
    build_messages, skipped = _message_builder()
    result["notes"].append(f"backbone {backbone.describe()}; preprocessing "
                           f"{segmenter.preprocessing}; torch threads {torch.get_num_threads()}")
    if skipped:
        result["notes"].append(f"messages skipped: {skipped}")
    # Hash the checkpoint for the text-cache key now, not inside the first timed encode.
    if segmenter.text_cache_key() is None:
        result["notes"].append("text cache off (checkpoint files not found): 'text cached' "
                               "re-encodes")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warmup, repeats = int(config["warmup"]), int(config["frames"])
    frames = synthetic_frames(max(repeats, 1), int(config["height"]), int(config["width"]))
    max_prompts = max(config["prompts"])
    seg_config = SegmenterConfig(score_threshold=float(config["score_threshold"]),
                                 max_detections=int(config["max_detections"]),
                                 max_prompts=max(64, max_prompts))
    for n_prompts in config["prompts"]:
        specs = [PromptSpec(text) for text in prompt_texts(n_prompts)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        text_first, text_cached = [], []
        for i in range(warmup + repeats):
            for entry in text_cache.entries():
                entry.unlink()
            start = time.perf_counter()
            segmenter.encode_prompts(specs)
            sync()
            middle = time.perf_counter()
            segmenter.encode_prompts(specs)
            sync()
            if i >= warmup:
                text_first.append(middle - start)
                text_cached.append(time.perf_counter() - middle)
        session = SegmenterSession(segmenter, seg_config, specs)
        segmenter.stage_timer = timer
        samples: dict[str, list[float]] = {s: [] for s in ("preprocess", "backbone", "heads",
                                                           "masks", "messages")}
        totals, instances = [], []
        try:
            for i in range(warmup + repeats):
                rgb = frames[i % len(frames)]
                timer.clear()
                start = time.perf_counter()
                detections, prompts = session.process(rgb, track=False)
                core_end = time.perf_counter()
                if build_messages is not None:
                    build_messages(detections, prompts.generation)
                end = time.perf_counter()
                if i < warmup:
                    continue
                for stage in ("preprocess", "backbone", "heads", "masks"):
                    # masks does not run on a frame without instances: 0 ms there.
                    samples[stage].append(timer.times.get(stage, 0.0))
                if build_messages is not None:
                    samples["messages"].append(end - core_end)
                totals.append(end - start)
                instances.append(len(detections))
        finally:
            segmenter.stage_timer = None
        stages = {stage: summarize(values) for stage, values in samples.items()}
        stages["text_first"] = summarize(text_first)
        stages["text_cached"] = summarize(text_cached)
        result["rows"].append({
            "prompts": n_prompts,
            "stages": stages,
            "messages_skipped": build_messages is None,
            "total": summarize(totals),
            "fps": len(totals) / sum(totals) if totals and sum(totals) > 0 else 0.0,
            "instances_median": statistics.median(instances) if instances else 0,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_cuda_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                             if device.type == "cuda" else None),
        })
        _log(f"{spec.label()}: {n_prompts} prompt(s) done")


# ------------------------------------------------------------------------------ parent side
def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "(no output)"


def _ensure_checkpoint(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """(checkpoint folder or id, how the table names it)."""
    if args.model:
        return args.model, args.model
    if args.full_size:
        folder = workdir / "checkpoint"
        if not (folder / "config.json").is_file():
            _log(f"writing the full-size RANDOM Sam3Model checkpoint into {folder} (once; "
                 "~3.4 GB): python -m sam3_ros.tools.backbone_benchmark checkpoint --workdir "
                 f"{workdir}")
            subprocess.run([sys.executable, "-m", "sam3_ros.tools.backbone_benchmark",
                            "checkpoint", "--workdir", str(workdir)], check=True)
        return str(folder), "full-size RANDOM Sam3Model checkpoint (1008 px)"
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    folder = workdir / "tiny_checkpoint"
    if not (folder / "config.json").is_file():
        make_tiny_checkpoint(folder)
    return str(folder), "tiny RANDOM checkpoint (overhead figures only)"


def _model_image_size(model: str) -> int:
    """The checkpoint processor's input size (what its artifacts are keyed with)."""
    from sam3_ros.core.onnx_backbone import checkpoint_folder

    path = checkpoint_folder(model) / "preprocessor_config.json"
    try:
        return int(json.loads(path.read_text())["size"]["height"])
    except (OSError, ValueError, KeyError, TypeError):
        from transformers import Sam3Processor

        return int(Sam3Processor.from_pretrained(model).image_processor.size["height"])


def _onnx_refusal(spec: BackendSpec, model: str, artifact_dir: str, auto_export: bool,
                  exported: dict[str, str]) -> str:
    """Why an onnxruntime spec cannot run ("" when it can), exporting its artifact if asked.

    The provider is checked first with the backend's own check, so a missing provider costs
    no export and no child process.
    """
    from sam3_ros.core.errors import ModelLoadError
    from sam3_ros.core.onnx_backbone import current_key, find_artifact, provider_config

    try:
        provider_config(spec.provider, {})
    except ImportError as err:
        return f"backend 'onnxruntime' needs the onnxruntime package: {err}"
    except ModelLoadError as err:
        return str(err)
    if not auto_export:
        return ""  # the child's backend factory says what is missing, with the command
    if spec.precision in exported:
        return exported[spec.precision]
    from sam3_ros.core.errors import Sam3RosError
    from sam3_ros.tools.export_backbone import export_backbone

    try:
        size = _model_image_size(model)
        find_artifact(artifact_dir, current_key(model, size, spec.precision), model)
        _log(f"reusing the {spec.precision} ONNX backbone in {artifact_dir}")
        exported[spec.precision] = ""
        return ""
    except ModelLoadError:
        pass
    # In this (parent) process: its memory is not any backend's, and the export tool's own
    # function checks the artifact against torch before installing it.
    _log(f"exporting the {spec.precision} ONNX backbone of {model} into {artifact_dir} (once; "
         f"reused by later runs with this --workdir), as python -m "
         f"sam3_ros.tools.export_backbone --model {model} --out {artifact_dir} --precision "
         f"{spec.precision}")
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its report: a log, not the table
            export_backbone(model, artifact_dir, spec.precision)
    except Sam3RosError as err:
        exported[spec.precision] = (f"export of the {spec.precision} artifact failed: "
                                    f"{type(err).__name__}: {err}")
    else:
        _log(f"export done in {time.monotonic() - start:.0f} s")
        exported[spec.precision] = ""
    return exported[spec.precision]


def _run_in_child(config: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    config_path = workdir / f"child_{os.getpid()}_{time.monotonic_ns()}.json"
    result_path = config_path.with_suffix(".result.json")
    config_path.write_text(json.dumps(config))
    try:
        done = subprocess.run([sys.executable, "-m", "sam3_ros.tools.stage_benchmark",
                               "--child", str(config_path), "--child-result", str(result_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stderr.write(done.stdout)
        if done.returncode != 0 or not result_path.is_file():
            return {"label": label, "prompts": config["prompts"], "rows": [],
                    "not_run": f"failed: the benchmark process exited {done.returncode}: "
                               f"{_tail(done.stdout)}"}
        return json.loads(result_path.read_text())
    finally:
        config_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> str:
    """Run every backend (each in its own process) and return the Markdown table."""
    specs = []
    for text in args.backends:
        try:
            specs.append(parse_backend(text, args.dtype, args.quantization, args.device))
        except ValueError as err:
            raise SystemExit(f"stage_benchmark: {err}") from None
    if any(spec.static for spec in specs) and not args.int8_calibration:
        raise SystemExit("stage_benchmark: a torch_int8:...:static backend needs "
                         "--int8-calibration FOLDER (frames to calibrate on)")
    if args.int8_calibration and not any(spec.static for spec in specs):
        raise SystemExit("stage_benchmark: --int8-calibration is for torch_int8:...:static "
                         "backends; none was given")
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sam3_stage_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"work folder {workdir}")
    try:
        return _run_in(args, specs, workdir)
    finally:
        # Also on Ctrl-C: an own work folder holds a checkpoint and exported graphs
        # (gigabytes at full size).
        if own_workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(args: argparse.Namespace, specs: list[Any], workdir: Path) -> str:
    model, model_label = _ensure_checkpoint(args, workdir)
    artifact_dir = args.onnx_artifact_dir or str(workdir / "onnx")
    exported: dict[str, str] = {}
    results = []
    for spec in specs:
        _log(f"benchmarking {spec.label()}")
        if spec.backend == "onnxruntime":
            why = _onnx_refusal(spec, model, artifact_dir, not args.onnx_artifact_dir, exported)
            if why:
                _log(f"{spec.label()}: not run: {why}")
                results.append({"label": spec.label(), "prompts": args.prompts, "rows": [],
                                "not_run": why})
                continue
        config = {"spec": asdict(spec), "model": model, "device": args.device,
                  "prompts": args.prompts, "frames": args.frames, "warmup": args.warmup,
                  "threads": args.threads, "onnx_artifact_dir": artifact_dir,
                  "score_threshold": args.score_threshold,
                  "max_detections": args.max_detections, "width": args.width,
                  "height": args.height, "int8_calibration": args.int8_calibration,
                  "int8_calibration_frames": args.int8_calibration_frames}
        results.append(_run_in_child(config, workdir, spec.label()))
    if all(r.get("not_run") for r in results):
        raise SystemExit("stage_benchmark: no backend ran (reasons above)")
    header = (f"Model: {model_label}; device {args.device}; {args.width}x{args.height} "
              f"synthetic frames; {args.frames} timed frames after {args.warmup} warm-up per "
              f"row; score threshold {args.score_threshold:g}; threads "
              f"{args.threads or 'library default'}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f} at the end. Text is per prompt set, not per frame, "
              f"and not in the frame total or FPS; each backend ran in its own process (peak "
              f"RSS: that process's so far, its rows run in order).")
    return format_table(results, header, args.frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="checkpoint (default: tiny random)")
    parser.add_argument("--full-size", action="store_true",
                        help="the full-size random checkpoint in <workdir>/checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+",
                        default=["torch", "onnxruntime:fp32", "onnxruntime:int8-dynamic"])
    parser.add_argument("--dtype", default="float32", help="default torch dtype of a spec")
    parser.add_argument("--quantization", default="none",
                        help="default torchao mode of a torch spec")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--frames", type=int, default=20, help="timed frames per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per row first")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and onnxruntime threads (0: library defaults)")
    parser.add_argument("--onnx-artifact-dir", default="",
                        help="use these exported backbones (default: export into the workdir)")
    parser.add_argument("--int8-calibration", default="",
                        help="folder of png/jpeg frames for torch_int8:...:static specs")
    parser.add_argument("--int8-calibration-frames", type=int,
                        default=DEFAULT_CALIBRATION_FRAMES)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps the checkpoint and ONNX exports between runs (default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        result = run_child(json.loads(args.child.read_text()))
        args.child_result.write_text(json.dumps(result))
        return 0
    if args.frames < 1 or args.warmup < 0 or min(args.prompts) < 1:
        parser.error("--frames and --prompts must be >= 1, --warmup >= 0")
    if args.full_size and args.model:
        parser.error("--full-size and --model exclude each other")
    if args.full_size and args.workdir is None:
        parser.error("--full-size needs --workdir (where the ~3.4 GB checkpoint is kept)")
    if args.width < 1 or args.height < 1 or args.threads < 0:
        parser.error("--width and --height must be >= 1, --threads >= 0 (0: library default)")
    if not 1 <= args.int8_calibration_frames <= MAX_CALIBRATION_FRAMES:
        parser.error(f"--int8-calibration-frames must be in 1..{MAX_CALIBRATION_FRAMES}")
    table = run(args)
    print(table, flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
