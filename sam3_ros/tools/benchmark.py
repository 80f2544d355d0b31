"""Benchmark: bare model call vs. the segmenter node end to end, output building, dropping.

    python -m sam3_ros.tools.benchmark [--model CHECKPOINT] [--device cuda] [--dtype bfloat16]

Measures, in one run on the same frames:
  1. the bare call: transformers' processor + Sam3Model forward + post-processing, as a user
     would write it (`bare_transformers`), and the package's core path without ROS
     (`bare_core`: the same preprocessing, one backbone pass, cached text, post-processing);
  2. the node end to end: publish a sensor_msgs/Image, receive sam3_ros/DetectionArray, over
     real DDS with the node in its own process, one frame at a time (no queueing). 1 and 2
     alternate frame by frame, so both see the same load on a shared machine (the model is
     loaded twice: here and in the node; mind GPU memory);
  3. the time to build the output messages (DetectionArray with masks + label image) for
     20 instances at 1280x720, and the overlay;
  4. latest-frame behaviour: a camera publishing at --camera-rate for --rate-seconds; frames
     processed vs dropped and the latency of processed frames (must not grow).
Without --model it uses the tiny RANDOM checkpoint (plumbing and overhead figures only).
Prints a Markdown table (and writes it with --output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def p90(samples: list[float]) -> float:
    """90th percentile, linearly interpolated (never below the median: the index rounding
    used before picked the smaller of two samples)."""
    if len(samples) < 2:
        return float(samples[0])
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


def _ms(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples) * 1e3, p90(samples) * 1e3


def paired_stats(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Per-frame comparison of (bare_s, e2e_s) pairs measured on the same frame back to back.

    Pairing cancels the machine's drift (both samples of a pair see the same load), so these
    are steadier than a ratio of two medians.

    Returns:
        "ratio_median", "ratio_q1", "ratio_q3": e2e / bare per frame (median, quartiles);
        "overhead_ms_median": (e2e - bare) per frame, median, milliseconds.
    """
    if not pairs:
        raise ValueError("no (bare, e2e) pairs")
    ratios = [e2e / bare for bare, e2e in pairs]
    quartiles = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                 else [ratios[0]] * 3)
    return {"ratio_median": statistics.median(ratios), "ratio_q1": quartiles[0],
            "ratio_q3": quartiles[2],
            "overhead_ms_median": statistics.median(e2e - bare for bare, e2e in pairs) * 1e3}


def node_param_reader(node_params: dict[str, str] | None) -> Callable[[str], Any]:
    """Reads a model parameter as the node would: `--set` strings converted to the type of
    the parameter's default (`sam3_ros.ros.params.MODEL_PARAMS`), else that default."""
    from sam3_ros.ros.params import MODEL_PARAMS

    defaults = {spec.name: spec.default for spec in MODEL_PARAMS}
    given = dict(node_params or {})

    def param(name: str) -> Any:
        default = defaults[name]
        if name not in given:
            return default
        value = given[name]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--set {name}: expected true or false, got {value!r}")
            return value.lower() == "true"
        return type(default)(value) if isinstance(default, (int, float)) else value

    return param


def make_bare_calls(model: str, device: str, dtype: str, prompts: list[str],
                    score_threshold: float, node_params: dict[str, str] | None = None,
                    with_transformers: bool = True,
                    ) -> tuple[dict[str, Callable[[np.ndarray], None]], Callable[[], None]]:
    """The bare calls on one frame, keyed by name, and a function that frees the model.

    `bare_core`: the package's core path without ROS, with the backbone the node gets from
    the same `node_params` (`backend`, `onnx_*`, `torch_compile`: the model hub's load, as in
    the node). `bare_transformers` (torch backend only, unless `with_transformers` is False):
    transformers' processor + Sam3Model forward + post-processing, as a user would write it
    for N prompts.
    """
    import torch

    from sam3_ros.core.model_hub import ModelHub, ModelKey
    from sam3_ros.core.prompts import PromptSpec
    from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession

    read = node_param_reader(node_params)
    overrides = {"model": model, "device": device, "dtype": dtype}

    def param(name: str) -> Any:
        return overrides[name] if name in overrides else read(name)

    hub = ModelHub()
    shared = hub.acquire(ModelKey.from_params(param))
    shared.prepare()  # as the node's configure: torch_compile / torch_int8 compile here
    loaded = shared.loaded
    processor, detector = loaded.processor, loaded.detector

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    def transformers_call(rgb: np.ndarray) -> None:
        with torch.inference_mode():
            inputs = processor(images=[rgb] * len(prompts), text=prompts,
                               return_tensors="pt").to(loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            outputs = detector(**inputs)
            results = processor.post_process_instance_segmentation(
                outputs, threshold=score_threshold, mask_threshold=0.5,
                target_sizes=[rgb.shape[:2]] * len(prompts))
            for result in results:
                result["masks"].cpu()
        sync()

    session = SegmenterSession(Sam3Segmenter(loaded, shared.feature_cache),
                               SegmenterConfig(score_threshold=score_threshold),
                               [PromptSpec(p) for p in prompts])

    def core_call(rgb: np.ndarray) -> None:
        session.process(rgb)  # no frame key: the backbone runs on every call
        sync()

    calls = {"bare_core": core_call}
    if with_transformers and param("backend") == "torch":
        calls = {"bare_transformers": transformers_call, **calls}
    return calls, lambda: hub.release(shared)


def node_end_to_end(model: str, device: str, dtype: str, frames: list[np.ndarray],
                    prompts: list[str], score_threshold: float, camera_rate_hz: float,
                    rate_seconds: float, frame_timeout_s: float = 30.0, settle_s: float = 0.3,
                    node_params: dict[str, str] | None = None,
                    bare: dict[str, Callable[[np.ndarray], None]] | None = None,
                    executor: str = "single_threaded") -> dict[str, object]:
    """Latency publish->detections one frame at a time, then behaviour at a camera rate.

    `node_params` are extra node parameters (e.g. publish_masks=false). The `bare` calls, if
    given, run on each frame just before it is published, so the bare and end-to-end samples
    alternate and see the same machine load (a shared machine drifts during a run);
    `settle_s` is the pause after each bare call and after each end-to-end frame;
    `executor` is the node process's (`--executor`).
    """
    import rclpy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from sam3_ros.msg import DetectionArray
    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for

    ns = "/sam3_bench"
    node = NodeProcess(node_command("segmenter", {
        "model": model, "device": device, "dtype": dtype, "autostart": True, "prompts": prompts,
        "score_threshold": score_threshold, **(node_params or {}),
        # The node's default image QoS (sensor data: best effort, depth 1); full frames arrive
        # intact because both processes use the package's Fast DDS profile (see main()).
    }, remaps={"__ns": ns}, args=["--executor", executor]))
    client = Client("sam3_bench_camera")
    topic = f"{ns}/segmenter/detections"
    try:
        camera = client.node.create_publisher(Image, f"{ns}/image", 10)
        client.subscribe(DetectionArray, topic)
        # The overlay is the node's last output of a frame: once it is here the node is idle
        # and the next bare calls do not share the CPU with its drawing.
        overlay_topic = f"{ns}/segmenter/overlay"
        wait_overlay = str((node_params or {}).get("publish_overlay", "true")).lower() != "false"
        client.subscribe(Image, overlay_topic)
        wait_for(lambda: client.matched(topic, camera)
                 and (not wait_overlay or client.matched(overlay_topic)), 600,
                 "the node to subscribe", node)
        messages = []
        for i, rgb in enumerate(frames):
            msg = numpy_to_image_msg(rgb, "rgb8")
            msg.header.stamp.sec = i + 1
            messages.append(msg)
        def result_of(sec: int) -> list[float]:
            return [t for t, m in client.messages_with_times(topic) if m.header.stamp.sec == sec]

        # Warm-up, re-sent until answered: the first samples of a new best-effort publisher
        # can be lost while the match completes in both directions. Stamps of their own:
        # with the timed frames' stamps, the warm-up replies (and re-sent copies still in
        # flight) were taken for the timed frames' results (negative latencies).
        for i, rgb in enumerate(frames[:3]):
            warm = numpy_to_image_msg(rgb, "rgb8")
            warm.header.stamp.sec = 1_000_000 + i
            wait_for(lambda msg=warm: result_of(msg.header.stamp.sec) or camera.publish(msg),
                     120, "a warm-up result", node, poll_s=0.5)
        time.sleep(max(settle_s, 0.5))  # re-sent warm-up copies still in flight
        client.clear(topic)
        client.clear(overlay_topic)
        bare = bare or {}
        for call in bare.values():
            for rgb in frames[:3]:  # warm-up
                call(rgb)
        bare_times: dict[str, list[float]] = {name: [] for name in bare}
        pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in bare}
        latencies, lost, instances, message_bytes = [], 0, [], []
        serialize_s = []
        for rgb, msg in zip(frames, messages, strict=True):
            for name, call in bare.items():
                start = time.perf_counter()
                call(rgb)
                bare_times[name].append(time.perf_counter() - start)
                # This process's OpenMP workers spin on after a parallel region: the node's
                # frame would share the cores with them. Both samples start from a settled
                # machine.
                time.sleep(settle_s)
            sec = msg.header.stamp.sec
            # The camera hands DDS serialized bytes: rclpy's Python -> CDR conversion of the
            # image (~1 ms at 640x480 here) is this test camera's cost, which a C++ driver does
            # not pay; it is timed apart, outside the end-to-end span.
            started = time.monotonic()
            payload = serialize_message(msg)
            start = time.monotonic()
            serialize_s.append(start - started)
            camera.publish(payload)
            # Blocking wait (no polling): the measuring process must not steal CPU from the
            # node on a small machine. A frame lost in transport (best effort) is counted.
            received = client.wait_message(topic, lambda m, sec=sec: m.header.stamp.sec == sec,
                                           frame_timeout_s)
            if received is None:
                if not node.alive():
                    raise AssertionError(f"the node died:\n{node.output()[-2000:]}")
                lost += 1
                continue
            if received[0] <= start:
                raise AssertionError(f"frame {sec}: a result received before the frame was "
                                     "sent (a stale reply): the measurement is broken")
            latencies.append(received[0] - start)
            for name, samples in bare_times.items():
                pairs[name].append((samples[-1], latencies[-1]))
            instances.append(len(received[1].detections))
            message_bytes.append(len(serialize_message(received[1])))
            if wait_overlay:
                client.wait_message(overlay_topic,
                                    lambda m, sec=sec: m.header.stamp.sec == sec, 5.0)
                client.clear(overlay_topic)  # ~1 MB each: keep none
            # Let the node's threads settle (OpenMP workers spin after a parallel region, DDS
            # and drawing threads finish): 5 ms left the next bare call up to 1.9x slower than
            # back to back on a 2-core VM, 300 ms within 1.05x (core path).
            time.sleep(settle_s)
        if not latencies:
            raise AssertionError(f"no frame answered:\n{node.output()[-2000:]}")
        e2e = _ms(latencies)
        message_mb = statistics.median(message_bytes) / 1e6

        # Camera at a fixed rate: the node must skip frames, not queue them.
        client.clear(topic)
        client.node.destroy_subscription(client.subscriptions.pop(overlay_topic))
        period = 1.0 / camera_rate_hz
        count = int(rate_seconds * camera_rate_hz)
        sent_at = {}
        start = time.monotonic()
        for i in range(count):
            msg = messages[i % len(messages)]
            msg.header.stamp.sec = 10_000 + i
            sent_at[10_000 + i] = time.monotonic()
            camera.publish(msg)
            time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
        last = 10_000 + count - 1
        wait_for(lambda: any(m.header.stamp.sec == last for m in client.messages(topic)), 120,
                 "the last frame's result", node)
        timed = client.messages_with_times(topic)
        rate_latencies = [t - sent_at[m.header.stamp.sec] for t, m in timed]
        half = len(rate_latencies) // 2
        return {
            "e2e_ms": e2e,
            "bare_ms": {name: _ms(samples) for name, samples in bare_times.items()},
            "paired": {name: paired_stats(p) for name, p in pairs.items() if p},
            "e2e_lost": lost,
            "camera_serialize_ms": _ms(serialize_s),
            "instances_median": statistics.median(instances),
            "message_mb_median": message_mb,
            "rate_sent": count,
            "rate_processed": len(timed),
            "rate_dropped": count - len(timed),
            "rate_latency_ms": _ms(rate_latencies),
            "rate_latency_first_half_ms": _ms(rate_latencies[:max(half, 1)]),
            "rate_latency_second_half_ms": _ms(rate_latencies[half:]),
        }
    finally:
        client.close()
        node.stop()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    from sam3_ros.tools.cpu_latency import (
        CpuLatencyError,
        add_option,
        check_option,
        cpu_latency_limit,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint id or folder (default: tiny RANDOM model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", nargs="+", default=["mug", "bottle", "person"])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--camera-rate", type=float, default=30.0)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--settle-ms", type=float, default=300.0,
                        help="pause after each end-to-end frame before the next bare call")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra node parameters, e.g. publish_masks=false")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--executor", default="single_threaded",
                        help="the node's executor: single_threaded or events")
    add_option(parser)
    parser.add_argument("--skip-transformers", action="store_true",
                        help="no transformers bare call (it is skipped anyway with a backend "
                             "other than torch: not the same model path)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.camera_rate <= 0 or args.rate_seconds <= 0:
        parser.error("--frames must be >= 1, --camera-rate and --rate-seconds > 0")
    check_option(parser, args)
    node_params = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        node_params[name] = value
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sam3_ros.ros.fastdds import use_large_frames_profile

    profile = use_large_frames_profile()  # this process (the camera) and the node's

    model, model_note = args.model, args.model
    if model is None:
        from sam3_ros.tools.make_tiny_checkpoint import temporary_tiny_checkpoint

        model = temporary_tiny_checkpoint()
        model_note = "tiny random checkpoint (112 px, 32-wide)"
    from sam3_ros.tools.demo import synthetic_frames

    frames = synthetic_frames(args.frames, args.height, args.width)
    try:
        with cpu_latency_limit(args.cpu_latency_us):
            return _measure(args, model, model_note, frames, node_params, profile)
    except CpuLatencyError as err:
        print(f"benchmark: {err}", file=sys.stderr)
        return 1


def _measure(args: argparse.Namespace, model: str, model_note: str, frames: list[np.ndarray],
             node_params: dict[str, str], profile: object) -> int:
    from sam3_ros.core.errors import Sam3RosError
    from sam3_ros.tools.cpu_latency import describe

    try:
        calls, release = make_bare_calls(model, args.device, args.dtype, args.prompts,
                                         args.score_threshold, node_params,
                                         with_transformers=not args.skip_transformers)
    except (Sam3RosError, ValueError, KeyError) as err:
        print(f"benchmark: {err}", file=sys.stderr)
        return 1
    try:
        node = node_end_to_end(model, args.device, args.dtype, frames, args.prompts,
                               args.score_threshold, args.camera_rate, args.rate_seconds,
                               node_params=node_params, bare=calls,
                               settle_s=args.settle_ms / 1e3, executor=args.executor)
        # The same calls in a tight loop (no gaps, caches and threads hot): the best case a
        # bare call reaches, which a camera stream with gaps between frames does not.
        back_to_back = {}
        for name, call in calls.items():
            samples = []
            for rgb in frames:
                start = time.perf_counter()
                call(rgb)
                samples.append(time.perf_counter() - start)
            back_to_back[name] = _ms(samples)
    finally:
        release()
    bare = node["bare_ms"]
    from sam3_ros.ros.detection_conversions import build_outputs_benchmark

    outputs = build_outputs_benchmark(n_instances=20, height=720, width=1280, repeats=50)

    e2e_median = node["e2e_ms"][0]
    with_transformers = "bare_transformers" in bare
    rows = [
        *([("bare call, transformers (processor + forward + post-process)",
            *bare["bare_transformers"])] if with_transformers else []),
        ("bare call, sam3_ros core (no ROS)", *bare["bare_core"]),
        ("node end to end (publish Image -> receive DetectionArray)", *node["e2e_ms"]),
        *([("bare call, transformers, back to back (tight loop)",
            *back_to_back["bare_transformers"])] if with_transformers else []),
        ("bare call, sam3_ros core, back to back (tight loop)", *back_to_back["bare_core"]),
    ]
    compared = [("transformers", "bare_transformers")] if with_transformers else []
    compared.append(("the core path", "bare_core"))
    lines = [
        f"Model: {model_note}; device {args.device}, {args.dtype}; {args.width}x{args.height} "
        f"frames; prompts {args.prompts}; {args.frames} frames; image QoS best effort "
        f"(the node's default); Fast DDS profile {profile}"
        + (f"; node parameters {node_params}" if node_params else "")
        + f"; node executor {args.executor}; {describe(args.cpu_latency_us)}"
        + ". Bare calls and end-to-end frames alternate (same frame, same machine load).",
        "",
        "| measurement | median ms | p90 ms |",
        "|---|---:|---:|",
        *[f"| {name} | {median:.2f} | {p90:.2f} |" for name, median, p90 in rows],
        f"| output messages, 20 instances at 1280x720 (DetectionArray with masks + label "
        f"image) | {outputs['messages_ms'][0]:.2f} | {outputs['messages_ms'][1]:.2f} |",
        f"| same, mask crops computed once and shared (what the node does) | "
        f"{outputs['messages_shared_crops_ms'][0]:.2f} | "
        f"{outputs['messages_shared_crops_ms'][1]:.2f} |",
        f"| overlay, 20 instances at 1280x720 | {outputs['overlay_ms'][0]:.2f} | "
        f"{outputs['overlay_ms'][1]:.2f} |",
        "",
        "End-to-end / bare ratio (medians, alternated with the node): "
        + ", ".join(f"{e2e_median / bare[key][0]:.3f}x vs {label}" for label, key in compared)
        + f"; end-to-end overhead {e2e_median - bare['bare_core'][0]:.2f} ms. Against the "
        "back-to-back calls: "
        + ", ".join(f"{e2e_median / back_to_back[key][0]:.3f}x vs {label}"
                    for label, key in compared)
        + f"; {node['e2e_lost']} of {args.frames} frames lost in transport; "
        + "".join(
            f"per frame (paired) vs {label}: ratio median {p['ratio_median']:.3f}x "
            f"(quartiles {p['ratio_q1']:.3f}-{p['ratio_q3']:.3f}), overhead median "
            f"{p['overhead_ms_median']:.2f} ms; "
            for label, p in ((label, node["paired"][key]) for label, key in compared))
        +
        f"{node['instances_median']:g} instances per frame and "
        f"{node['message_mb_median']:.3f} MB per serialized DetectionArray (medians). "
        f"Not in the end-to-end span: the test camera's Python serialization of each image, "
        f"{node['camera_serialize_ms'][0]:.2f} ms median (it publishes the bytes).",
        "",
        f"Camera at {args.camera_rate:g} Hz for {args.rate_seconds:g} s: {node['rate_sent']} "
        f"frames sent, {node['rate_processed']} processed, {node['rate_dropped']} dropped "
        f"(never queued); latency median {node['rate_latency_ms'][0]:.1f} ms, p90 "
        f"{node['rate_latency_ms'][1]:.1f} ms; first half median "
        f"{node['rate_latency_first_half_ms'][0]:.1f} ms, second half "
        f"{node['rate_latency_second_half_ms'][0]:.1f} ms (flat = no latency build-up).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
