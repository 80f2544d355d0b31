"""Demo: the segmenter node over real DDS on generated camera frames.

Starts the `segmenter` node in its own process, publishes frames as a camera topic at a given
rate, prints per-frame results (objects, latency, dropped frames) and writes the node's overlay
images to an output folder.

    python -m sam3_ros.tools.demo --model CHECKPOINT [--prompts mug bottle] [--device cuda]

Without --model it builds the project's tiny checkpoint, whose weights are RANDOM: boxes and
masks are meaningless, only the plumbing is real. Use a real checkpoint with
--model facebook/sam3 (or a downloaded folder).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np


def synthetic_frames(count: int, height: int = 480, width: int = 640) -> list[np.ndarray]:
    """Frames of a simple moving scene (a table, a mug-like cylinder, a bottle, a ball), RGB."""
    frames = []
    for i in range(count):
        t = i / max(count - 1, 1)
        frame = np.full((height, width, 3), (200, 210, 220), np.uint8)
        cv2.rectangle(frame, (0, int(height * 0.65)), (width, height), (120, 90, 60), -1)
        mug_x = int(width * (0.15 + 0.5 * t))
        cv2.rectangle(frame, (mug_x, int(height * 0.45)), (mug_x + 70, int(height * 0.68)),
                      (200, 40, 40), -1)
        cv2.ellipse(frame, (mug_x + 75, int(height * 0.55)), (18, 28), 0, -90, 90,
                    (200, 40, 40), 8)
        bottle_x = int(width * 0.75)
        cv2.rectangle(frame, (bottle_x, int(height * 0.3)), (bottle_x + 40, int(height * 0.68)),
                      (40, 150, 60), -1)
        ball = (int(width * (0.9 - 0.6 * t)), int(height * 0.8))
        cv2.circle(frame, ball, 30, (240, 200, 30), -1)
        frames.append(frame)
    return frames


def run_demo(model: str, prompts: list[str], device: str, frames: int, rate_hz: float,
             output: Path, score_threshold: float) -> int:
    import rclpy
    from sensor_msgs.msg import Image

    from sam3_ros.msg import DetectionArray
    from sam3_ros.ros.image_conversions import image_msg_to_numpy, numpy_to_image_msg
    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for

    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("overlay_*.png"):  # an earlier run's frames would mix with these
        old.unlink()
    ns = "/sam3_demo"
    node = NodeProcess(node_command("segmenter", {
        "model": model, "device": device, "autostart": True, "prompts": prompts,
        "score_threshold": score_threshold,
    }, remaps={"__ns": ns}))
    client = Client("sam3_demo_camera")
    try:
        camera = client.node.create_publisher(Image, f"{ns}/image", 10)
        client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
        client.subscribe(Image, f"{ns}/segmenter/overlay")
        print(f"[demo] starting the segmenter node (model {model}, device {device}) ...")
        wait_for(lambda: client.matched(f"{ns}/segmenter/detections", camera), 300,
                 "the segmenter to load its model and subscribe", node)
        images = synthetic_frames(frames)
        sent_at: dict[int, float] = {}
        print(f"[demo] publishing {frames} frames at {rate_hz:g} Hz on {ns}/image")
        period = 1.0 / rate_hz
        start = time.monotonic()
        for i, rgb in enumerate(images):
            msg = numpy_to_image_msg(rgb, "rgb8")
            msg.header.frame_id = "demo_camera"
            msg.header.stamp.sec = i + 1  # the stamp identifies the frame in the results
            sent_at[i + 1] = time.monotonic()
            camera.publish(msg)
            time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
        # Results for the last frame always come (latest-frame semantics); wait for it.
        wait_for(lambda: any(d.header.stamp.sec == frames
                             for d in client.messages(f"{ns}/segmenter/detections")), 120,
                 "the result of the last frame", node)
        time.sleep(0.5)
        timed = client.messages_with_times(f"{ns}/segmenter/detections")
        results = [msg for _, msg in timed]
        overlays = {m.header.stamp.sec: m for m in client.messages(f"{ns}/segmenter/overlay")}
        for received_at, result in timed:
            sec = result.header.stamp.sec
            latency_ms = (received_at - sent_at[sec]) * 1e3
            shown = [f"{d.label}#{d.object_id} {d.score:.2f}" for d in result.detections[:6]]
            if len(result.detections) > 6:
                shown.append(f"+{len(result.detections) - 6} more")
            listing = f" ({', '.join(shown)})" if shown else ""
            print(f"[demo] frame {sec:3d}: {latency_ms:7.1f} ms, "
                  f"{len(result.detections):2d} objects{listing}")
            if sec in overlays:
                overlay = image_msg_to_numpy(overlays[sec])
                cv2.imwrite(str(output / f"overlay_{sec:04d}.png"), overlay[..., ::-1])
        processed = {r.header.stamp.sec for r in results}
        print(f"[demo] {len(processed)} of {frames} frames processed, "
              f"{frames - len(processed)} dropped (latest-frame semantics: a slow model skips "
              f"frames instead of queueing them)")
        print(f"[demo] overlays written to {output}/")
        return 0
    finally:
        client.close()
        node.stop()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint id or folder (default: tiny RANDOM model)")
    parser.add_argument("--prompts", nargs="+", default=["mug", "bottle", "ball"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--output", type=Path, default=Path("out/demo"))
    parser.add_argument("--depth", action="store_true",
                        help="3D outputs with real depth (see sam3_ros.tools.depth_demo)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if not args.rate > 0:
        parser.error(f"--rate must be > 0 Hz, got {args.rate}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from sam3_ros.ros.fastdds import use_large_frames_profile

    # Full 640x480 frames over the node's best-effort image QoS need a larger Fast DDS
    # shared-memory segment in the camera's (this) process; the node inherits it too.
    print(f"[demo] Fast DDS profile: {use_large_frames_profile()}")
    model = args.model
    threshold = args.score_threshold
    if model is None:
        from sam3_ros.tools.make_tiny_checkpoint import temporary_tiny_checkpoint

        model = temporary_tiny_checkpoint()
        threshold = 0.25 if threshold is None else threshold
        print("[demo] NOTE: using the project's tiny checkpoint with RANDOM weights - boxes and "
              "masks are meaningless; only the plumbing is real.\n"
              "[demo]       For real results: --model facebook/sam3 --device cuda")
    if args.depth:
        from sam3_ros.tools.depth_demo import run_depth_demo

        return run_depth_demo(model, args.prompts, args.device, args.frames, args.rate,
                              args.output, 0.5 if threshold is None else threshold)
    return run_demo(model, args.prompts, args.device, args.frames, args.rate, args.output,
                    0.5 if threshold is None else threshold)


if __name__ == "__main__":
    raise SystemExit(main())
