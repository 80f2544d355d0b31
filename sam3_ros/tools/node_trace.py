"""Where a frame's time goes between a camera and a subscriber of the segmenter node.

    python -m sam3_ros.tools.node_trace [--model CKPT] [--frames 40] [--pause-s 0.3]
        [--cpu-latency-us 0]

Runs the real segmenter node in a child process with its frame path timestamped
(`time.perf_counter_ns`, which is CLOCK_MONOTONIC on Linux and so comparable across processes
of one machine): the executor callback, the runtime's prepare (decode), preprocessing + backbone,
heads, the hand-off to the output thread and the publish. This process plays the camera
(publishes a 640x480 rgb8 frame by default, one at a time, `--pause-s` apart, as serialized
bytes: the Python -> CDR conversion a C++ driver does not pay is timed apart) and the
subscriber (receives `detections`). Prints the median of every hop:

    camera publish -> node callback        DDS + rclpy (the image's serialized sample)
    callback -> compute thread prepare     executor -> compute thread hand-off
    prepare                                decode the message to an rgb array
    prepare end -> heads start             preprocessing + backbone (batched pass)
    heads                                  the session's heads, post-processing, ByteTrack
    heads end -> output thread publish     compute -> output thread hand-off
    publish                                building + publishing `detections`
    node publish -> subscriber callback    DDS + rclpy (the result)

The timestamps wrap the node's own methods (`_on_image`, `_prepare`, `_NodeStream.process`,
`_deliver`, `_publish`) from outside; the node's code is unchanged. Linux only (shared clock).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HOPS = (
    ("send", "cb_in", "camera publish -> node callback"),
    ("cb_in", "prep_in", "callback -> compute thread prepare"),
    ("prep_in", "prep_out", "prepare (decode)"),
    ("prep_out", "proc_in", "preprocessing + backbone"),
    ("proc_in", "proc_out", "heads + post-processing"),
    ("proc_out", "pub_in", "compute -> output thread hand-off"),
    ("pub_in", "pub_out", "publish detections"),
    ("pub_out", "recv", "node publish -> subscriber callback"),
)

_NODE_WRAPPER = """
import atexit, json, sys, time
from sam3_ros.core.image_cdr import read_stamp_sec
from sam3_ros.ros import base_node
from sam3_ros.ros.segmenter_node import main
events_path = sys.argv.pop(1)
events = []
def wrap(cls, name, event, stamp_of):
    original = getattr(cls, name)
    def timed(self, *args):
        sec = stamp_of(*args)
        events.append((sec, event + "_in", time.perf_counter_ns()))
        result = original(self, *args)
        events.append((sec, event + "_out", time.perf_counter_ns()))
        return result
    setattr(cls, name, timed)
node_cls = base_node.Sam3LifecycleNode
wrap(node_cls, "_on_image", "cb", read_stamp_sec)  # the raw sample
wrap(node_cls, "_prepare", "prep", lambda fields, key: fields.stamp_sec)
wrap(base_node._NodeStream, "process", "proc", lambda frame: frame.context[0].stamp.sec)
wrap(node_cls, "_publish", "pub", lambda d, g, header, rgb: header.stamp.sec)
atexit.register(lambda: open(events_path, "w").write(json.dumps(events)))
sys.exit(main())
"""


def frame_hops(sent_ns: dict[int, int], received_ns: dict[int, int],
               events: list[tuple[int, str, int]]) -> dict[int, dict[str, float]]:
    """Milliseconds of every hop of every frame the camera sent in the timed loop.

    Args:
        sent_ns / received_ns: frame id -> perf_counter_ns at the camera's publish / the
            subscriber's callback.
        events: (frame id, event, perf_counter_ns) from the node.

    Returns:
        frame id -> {hop label: ms} for the hops that frame completed, in path order, plus
        "total" when the result came back. The hops are contiguous, so a frame that completed
        them all has hops summing to its total.
    """
    # Only frames the camera sent in the timed loop (not the warm-up frame).
    per_frame: dict[int, dict[str, int]] = {sec: {"send": t} for sec, t in sent_ns.items()}
    for sec, event, t in events:
        if int(sec) in per_frame:
            per_frame[int(sec)].setdefault(event, int(t))
    for sec, t in received_ns.items():
        if sec in per_frame:
            per_frame[sec]["recv"] = t
    result: dict[int, dict[str, float]] = {}
    for sec, stamps in per_frame.items():
        hops = {label: (stamps[end] - stamps[start]) / 1e6 for start, end, label in HOPS
                if start in stamps and end in stamps}
        if "recv" in stamps:
            hops["total"] = (stamps["recv"] - stamps["send"]) / 1e6
        result[sec] = hops
    return result


def hop_medians(sent_ns: dict[int, int], received_ns: dict[int, int],
                events: list[tuple[int, str, int]]) -> dict[str, tuple[float, int]]:
    """Median milliseconds of every hop over the frames that completed it (`frame_hops`).

    Returns:
        hop label -> (median ms, frames), in path order, plus "total".
    """
    per_frame = frame_hops(sent_ns, received_ns, events).values()
    result: dict[str, tuple[float, int]] = {}
    for label in [label for _, _, label in HOPS] + ["total"]:
        samples = [hops[label] for hops in per_frame if label in hops]
        if samples:
            result[label] = (statistics.median(samples), len(samples))
    return result


def run(model: str, frames: int, pause_s: float, prompts: list[str], width: int = 640,
        height: int = 480, executor: str = "single_threaded") -> dict[str, Any]:
    """Trace `frames` frames through a segmenter node; see the module docstring.

    Frames above Fast DDS's default 512 KiB shared-memory segment need the package's profile
    (`main` sets it) in both processes, or best-effort frames are lost.

    Returns:
        {"hops": `hop_medians(...)`, "frame_hops": `frame_hops(...)`, "frames": sent,
        "received": answered}.
    """
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from sam3_ros.msg import DetectionArray
    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for

    events_path = Path(tempfile.mkdtemp(prefix="sam3_trace_")) / "events.json"
    cmd = node_command("segmenter", {
        "model": model, "device": "cpu", "autostart": True, "prompts": prompts,
        "publish_overlay": False, "publish_mask_image": False}, remaps={"__ns": "/sam3_trace"},
        args=["--executor", executor])
    cmd[2:3] = [_NODE_WRAPPER, str(events_path)]  # python -c WRAPPER EVENTS_FILE <args>
    node = NodeProcess(cmd)
    client = Client("sam3_trace_camera")
    topic = "/sam3_trace/segmenter/detections"
    received: dict[int, int] = {}
    sent: dict[int, int] = {}
    serialize_ms: list[float] = []
    try:
        client.subscribe(DetectionArray, topic)
        camera = client.node.create_publisher(Image, "/sam3_trace/image", 10)
        wait_for(lambda: client.matched(topic, camera), 600, "the node to subscribe", node)
        frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        # Warm-up, re-sent until answered (the first samples of a new match can be lost).
        warm = numpy_to_image_msg(frame, "rgb8")
        warm.header.stamp.sec = 1_000_000
        wait_for(lambda: client.messages(topic) or camera.publish(warm), 120, "a warm-up result",
                 node, poll_s=0.5)
        for sec in range(1, frames + 1):
            msg = numpy_to_image_msg(frame, "rgb8")
            msg.header.stamp.sec = sec
            time.sleep(pause_s)
            # The camera hands DDS serialized bytes: rclpy's Python -> CDR conversion of a
            # 900 KiB image costs this process ~1 ms that a C++ camera driver does not pay
            # (reported apart, outside the traced span).
            started = time.perf_counter_ns()
            payload = serialize_message(msg)
            sent[sec] = time.perf_counter_ns()
            serialize_ms.append((sent[sec] - started) / 1e6)
            camera.publish(payload)
            got = client.wait_message(topic, lambda m, sec=sec: m.header.stamp.sec == sec, 30.0)
            if got is not None:
                # The receive time the client stored is monotonic seconds (same clock).
                received[sec] = int(got[0] * 1e9)
    finally:
        client.close()
        node.stop()
    if not events_path.is_file():
        raise RuntimeError(f"the node wrote no events:\n{node.output()[-3000:]}")
    events = json.loads(events_path.read_text())
    shutil.rmtree(events_path.parent, ignore_errors=True)
    return {"hops": hop_medians(sent, received, events),
            "frame_hops": frame_hops(sent, received, events), "frames": frames,
            "received": len(received),
            "camera_serialize_ms": statistics.median(serialize_ms) if serialize_ms else 0.0}


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):
        print("node_trace: Linux only (needs one monotonic clock across processes)",
              file=sys.stderr)
        return 1
    from sam3_ros.tools.cpu_latency import (
        CpuLatencyError,
        add_option,
        check_option,
        cpu_latency_limit,
        describe,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: tiny RANDOM checkpoint)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--pause-s", type=float, default=0.3)
    parser.add_argument("--prompts", nargs="+", default=["mug", "bottle", "person"])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--executor", default="single_threaded",
                        help="the node's executor: single_threaded or events")
    add_option(parser)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    check_option(parser, args)
    from sam3_ros.ros.fastdds import use_large_frames_profile

    use_large_frames_profile()  # this process (camera, subscriber) and the node's
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

            model = str(make_tiny_checkpoint(Path(tmp) / "tiny"))
        try:
            with cpu_latency_limit(args.cpu_latency_us):
                result = run(model, args.frames, args.pause_s, args.prompts, args.width,
                             args.height, args.executor)
        except CpuLatencyError as err:
            print(f"node_trace: {err}", file=sys.stderr)
            return 1
    print(f"{result['received']} of {result['frames']} frames answered (node executor: "
          f"{args.executor}; {describe(args.cpu_latency_us)}); median per hop:")
    print("| hop | median ms | frames |\n|---|---:|---:|")
    for label, (ms, n) in result["hops"].items():
        print(f"| {label} | {ms:.2f} | {n} |")
    print(f"(not traced: the camera's own Python serialization of each image, "
          f"{result['camera_serialize_ms']:.2f} ms median, before `camera publish`)")
    if result["received"] == 0:
        print("node_trace: no frame was answered: nothing measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
