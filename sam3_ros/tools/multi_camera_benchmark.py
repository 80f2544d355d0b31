"""Benchmark: N cameras in one process (one model, one runtime) vs. N separate node processes.

    python -m sam3_ros.tools.multi_camera_benchmark [--model CHECKPOINT] [--cameras 1 2 4]
        [--rate 30] [--seconds 20] [--modes shared separate] [--output FILE]

For each camera count and mode, every camera publishes its own 640x480 rgb8 frames at --rate
Hz for --seconds (after a warm-up that waits for every camera's first result); each camera's
detections are collected over real DDS. Reported per configuration: processed frames per
second per camera and in total, latency (publish -> detections received) median and p90 per
camera, the spread of the per-camera rates, the processes' summed RSS (VmRSS at the end and
peak VmHWM), and for the shared process its batching (backbone passes, mean batch) from
`/diagnostics`. Label image and overlay are off (model throughput is measured).

Without --model it uses the tiny RANDOM checkpoint; speed does not depend on the weights, so a
full-size random checkpoint gives the full-size figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_HW = (480, 640)


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB (0 when it is gone)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


def _start(mode: str, cameras: list[str], model: str, device: str, max_batch: int,
           params: dict[str, Any]) -> list[Any]:
    from sam3_ros.tools.ros_runner import NodeProcess, node_command

    common = {"model": model, "device": device, "autostart": True, **params}
    if mode == "shared":
        return [NodeProcess(node_command(
            "pipeline", common,
            args=["--cameras", *cameras, "--nodes", "segmenter", "--max-batch",
                  str(max_batch)]))]
    return [NodeProcess(node_command("segmenter", common, remaps={"__ns": f"/{camera}"}))
            for camera in cameras]


def run_config(mode: str, count: int, model: str, device: str, rate_hz: float,
               seconds: float, prompts: list[str], max_batch: int,
               warmup_timeout_s: float, grace_s: float = 2.0) -> dict[str, Any]:
    """Run one configuration; returns its figures (see the module docstring)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from sam3_ros.msg import DetectionArray
    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.tools.ros_runner import Client, wait_for

    cameras = [f"bench_cam{i}" for i in range(count)]
    params = {"prompts": prompts, "publish_overlay": False, "publish_mask_image": False,
              "publish_masks": True}
    processes = _start(mode, cameras, model, device, max_batch, params)
    client = Client(f"multi_camera_benchmark_{mode}_{count}")
    sent: dict[tuple[str, int], float] = {}
    received: dict[str, list[tuple[int, float]]] = {c: [] for c in cameras}
    lock = threading.Lock()
    try:
        pubs = {c: client.node.create_publisher(Image, f"/{c}/image", 10) for c in cameras}
        for camera in cameras:
            def on_result(msg: Any, camera: str = camera) -> None:
                now = time.monotonic()
                with lock:
                    received[camera].append((msg.header.stamp.sec, now))

            client.node.create_subscription(DetectionArray, f"/{camera}/segmenter/detections",
                                            on_result, 100)
        client.subscribe(DiagnosticArray, "/diagnostics")
        rng = np.random.default_rng(0)
        frames = {c: numpy_to_image_msg(
            rng.integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8), "rgb8") for c in cameras}
        for camera, msg in frames.items():
            msg.header.frame_id = camera

        def publish(camera: str, seq: int) -> None:
            msg = frames[camera]
            msg.header.stamp.sec = seq
            with lock:
                sent[(camera, seq)] = time.monotonic()
            pubs[camera].publish(msg)

        # Warm-up: until every camera has answered once. Its stamps count up from 1 for as
        # long as it takes (a full-size warm-up polls thousands of times); the measured
        # frames' stamps start above all of them, so no late warm-up result is counted.
        warm_seq = [0]

        def all_answered() -> bool:
            for process in processes:
                if not process.alive():
                    raise AssertionError(f"a node died during the warm-up:\n"
                                         f"{process.output()[-4000:]}")
            warm_seq[0] += 1
            for camera in cameras:
                publish(camera, warm_seq[0])
            with lock:
                return all(received[c] for c in cameras)

        wait_for(all_answered, warmup_timeout_s, "every camera's first result",
                 processes[0], poll_s=max(0.5, 1.0 / rate_hz))
        time.sleep(1.0)
        rss_before = sum(_rss_kb(p.proc.pid)[0] for p in processes)
        start = time.monotonic()
        first_seq = seq = warm_seq[0] + 1000
        period = 1.0 / rate_hz
        next_t = start
        while time.monotonic() - start < seconds:
            for camera in cameras:
                publish(camera, seq)
            seq += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        end = time.monotonic()
        time.sleep(max(grace_s, 3 * period))  # results of the frames still in flight
        rss = [_rss_kb(p.proc.pid) for p in processes]
        diag: dict[str, str] = {}
        for msg in reversed(client.messages("/diagnostics")):
            for status in msg.status:
                if status.name.startswith(f"/{cameras[-1]}/segmenter") and any(
                        kv.key == "runtime_cycles" for kv in status.values):
                    diag = {kv.key: kv.value for kv in status.values}
                    break
            if diag:
                break
    finally:
        client.close()
        for process in processes:
            process.stop()
    per_camera = {}
    for camera in cameras:
        with lock:
            results = [(s, t) for s, t in received[camera] if s >= first_seq]
        latencies = [(t - sent[(camera, s)]) * 1e3 for s, t in results if (camera, s) in sent]
        per_camera[camera] = {
            "processed": len(results),
            "processed_fps": len(results) / (end - start),
            "latency_ms_median": statistics.median(latencies) if latencies else float("nan"),
            "latency_ms_p90": _percentile(latencies, 0.9),
        }
    rates = [v["processed_fps"] for v in per_camera.values()]
    return {
        "mode": mode, "cameras": count,
        "sent_fps_per_camera": (seq - first_seq) / (end - start),
        "window_s": end - start,
        "per_camera": per_camera, "total_fps": sum(rates),
        "rate_spread": (max(rates) - min(rates)) / max(rates) if max(rates) > 0 else 0.0,
        "rss_mb": sum(r[0] for r in rss) / 1024, "peak_rss_mb": sum(r[1] for r in rss) / 1024,
        "rss_before_mb": rss_before / 1024, "diagnostics": diag,
    }


def format_table(results: list[dict[str, Any]], model_label: str) -> str:
    lines = [f"Model: {model_label}; {IMAGE_HW[1]}x{IMAGE_HW[0]} rgb8 per camera", "",
             "| cameras | mode | sent Hz/cam | processed Hz (frames) per camera | total Hz | "
             "rate spread | latency median/p90 ms (per camera) | RSS MB (peak) | "
             "backbone passes / mean batch | stages ms: wait / decode / encode / heads / "
             "publish |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cams = r["per_camera"].values()
        # Three significant digits: a full-size model on a CPU processes ~0.01 frames/s.
        rates = " / ".join(f"{c['processed_fps']:.3g} ({c['processed']})" for c in cams)
        lat = " / ".join(f"{c['latency_ms_median']:.0f}-{c['latency_ms_p90']:.0f}" for c in cams)
        diag = r["diagnostics"]
        batching = (f"{diag.get('runtime_backbone_passes', '?')} / "
                    f"{float(diag.get('runtime_mean_batch', 'nan')):.2f}"
                    if r["mode"] == "shared" and diag else "-")
        stages = " / ".join(
            f"{float(diag.get(key, 'nan')):.1f}" for key in (
                "mean_waiting_ms", "mean_decode_ms", "runtime_mean_encode_ms", "mean_heads_ms",
                "mean_publish_ms")) if diag else "-"
        lines.append(
            f"| {r['cameras']} | {r['mode']} | {r['sent_fps_per_camera']:.1f} | {rates} | "
            f"{r['total_fps']:.3g} | {100 * r['rate_spread']:.0f} % | {lat} | "
            f"{r['rss_mb']:.0f} ({r['peak_rss_mb']:.0f}) | {batching} | {stages} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="checkpoint (default: tiny random)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["shared", "separate"],
                        choices=["shared", "separate"])
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--prompts", nargs="+", default=["person"])
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--warmup-timeout", type=float, default=600.0)
    parser.add_argument("--grace", type=float, default=2.0,
                        help="seconds to wait after the last frame for results in flight "
                             "(raise it for models that take longer per frame)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if not args.cameras or min(args.cameras) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--cameras must be counts >= 1, --rate and --seconds > 0")
    if not 1 <= args.max_batch <= 16:
        parser.error("--max-batch must be in 1..16")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)  # before, not after the run
    import rclpy

    from sam3_ros.ros.fastdds import use_large_frames_profile

    # Before rclpy.init: this process and the nodes it starts use the package's profile, so
    # full frames arrive intact over the default (best-effort) image QoS, as with the launch
    # files.
    use_large_frames_profile()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model, label = args.model, args.model
    if not model:
        from sam3_ros.tools.make_tiny_checkpoint import temporary_tiny_checkpoint

        model = temporary_tiny_checkpoint()
        label = "tiny RANDOM checkpoint"
    rclpy.init()
    results = []
    try:
        for count in args.cameras:
            for mode in args.modes:
                if mode == "separate" and count == 1 and "shared" in args.modes:
                    continue  # one camera: the same single process
                result = run_config(mode, count, model, args.device, args.rate, args.seconds,
                                    args.prompts, args.max_batch, args.warmup_timeout,
                                    args.grace)
                results.append(result)
                print(format_table([result], label).splitlines()[-1], flush=True)
    finally:
        rclpy.shutdown()
    table = format_table(results, label)
    print("\n" + table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
