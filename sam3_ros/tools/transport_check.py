"""Check how camera-sized images travel over this machine's DDS, with and without the
package's Fast DDS profile.

    python -m sam3_ros.tools.transport_check [--sizes 640x480 1280x720] [--frames 30]

For each profile (the package's `config/fastdds_large_frames.xml`, and Fast DDS's defaults)
and QoS (best effort = sensor data, reliable), a process publishes rgb8 sensor_msgs/Image
frames one at a time to an echo process, which answers each with the frame's header; it prints
the round-trip time (publish -> header back) and how many frames never arrived. Both processes
get the same profile: what matters is the publisher's (see the XML).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from sam3_ros.tools.benchmark import p90

NS = "/sam3_transport_check"
QOS_KINDS = ("best_effort", "reliable")


def _image_qos(kind: str):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = (ReliabilityPolicy.RELIABLE if kind == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)


WARMUP_STAMP_SEC = 2_000_000_000
"""Stamps (seconds) of the warm-up frames: far from the timed frames' 1, 2, 3, ..."""


def _echo(parent_pid: int) -> int:
    """Answer every image on the per-QoS topics with its header while `parent_pid` is this
    process's parent."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("sam3_transport_echo")
    answer = node.create_publisher(Header, f"{NS}/answer", 10)
    for kind in QOS_KINDS:
        node.create_subscription(Image, f"{NS}/image_{kind}",
                                 lambda msg: answer.publish(msg.header), _image_qos(kind))
    # Exit with the measuring process even when it is killed before it can stop this one
    # (an orphaned echo would answer the next run on the same domain).
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
        while rclpy.ok() and os.getppid() == parent_pid:
            rclpy.spin_once(node, timeout_sec=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _measure(sizes: list[tuple[int, int]], frames: int, timeout_s: float) -> int:
    """Round trips for every size and QoS against an echo process; prints one JSON line each."""
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from sam3_ros.ros.image_conversions import numpy_to_image_msg

    rclpy.init()
    node = rclpy.create_node("sam3_transport_check")
    answers: dict[int, float] = {}
    arrived = threading.Condition()

    def on_answer(header: Header) -> None:
        with arrived:
            answers[header.stamp.sec] = time.monotonic()
            arrived.notify_all()

    answer_sub = node.create_subscription(Header, f"{NS}/answer", on_answer, 10)
    pubs = {kind: node.create_publisher(Image, f"{NS}/image_{kind}", _image_qos(kind))
            for kind in QOS_KINDS}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    echo = subprocess.Popen([sys.executable, "-m", __spec__.name, "--echo", str(os.getpid())])
    try:
        deadline = time.monotonic() + 60
        while (any(p.get_subscription_count() == 0 for p in pubs.values())
               or answer_sub.get_publisher_count() == 0):
            if time.monotonic() > deadline or echo.poll() is not None:
                raise RuntimeError("the echo process did not connect within 60 s")
            time.sleep(0.05)
        # Matched here does not yet mean matched on the echo's side: over best effort the
        # first samples can be lost while the match completes (a discovery race, not the
        # transport's loss, which the timed frames measure). A small frame per QoS is re-sent
        # until answered first.
        warm = numpy_to_image_msg(np.zeros((8, 8, 3), np.uint8), "rgb8")
        for i, (kind, pub) in enumerate(pubs.items()):
            warm.header.stamp.sec = WARMUP_STAMP_SEC + i
            deadline = time.monotonic() + 60
            with arrived:
                while warm.header.stamp.sec not in answers:
                    if time.monotonic() > deadline or echo.poll() is not None:
                        raise RuntimeError(f"the echo process did not answer on {kind} "
                                           "within 60 s")
                    pub.publish(warm)
                    arrived.wait_for(lambda s=warm.header.stamp.sec: s in answers, 0.5)
        seq = 0
        for width, height in sizes:
            msg = numpy_to_image_msg(
                np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8), "rgb8")
            for kind, pub in pubs.items():
                round_trips, lost = [], 0
                for _ in range(frames):
                    seq += 1
                    msg.header.stamp.sec = seq
                    sent = time.monotonic()
                    pub.publish(msg)
                    with arrived:
                        if arrived.wait_for(lambda s=seq: s in answers, timeout_s):
                            round_trips.append(answers[seq] - sent)
                        else:
                            lost += 1
                    time.sleep(0.01)
                ordered = sorted(round_trips)
                print(json.dumps({
                    "image": f"{width}x{height}", "qos": kind, "sent": frames, "lost": lost,
                    "median_ms": statistics.median(ordered) * 1e3 if ordered else None,
                    "p90_ms": p90(ordered) * 1e3 if ordered else None,
                }), flush=True)
    finally:
        echo.terminate()  # first: a failure below must not leave it running
        try:
            echo.wait(10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
        spinner.join(5)  # exiting while it is still in rcl_wait aborts the process
    return 0


def run_check(profile: str, sizes: list[str], frames: int, timeout_s: float = 1.0
              ) -> list[dict]:
    """Measure with one profile ("package", "default" = Fast DDS's built-in transports, or a
    file) in fresh processes; returns one dict per (image size, QoS)."""
    from sam3_ros.ros.fastdds import PROFILE_ENV, large_frames_profile

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if profile == "default":
        env.pop(PROFILE_ENV, None)
    else:
        env[PROFILE_ENV] = str(large_frames_profile()) if profile == "package" else profile
    out = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--measure", "--frames", str(frames),
         "--timeout", str(timeout_s), "--sizes", *sizes],
        env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"transport check with profile {profile!r} failed:\n{out.stderr}")
    return [dict(json.loads(line), profile=profile) for line in out.stdout.splitlines()
            if line.startswith("{")]


def _parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"],
                        help="image sizes WIDTHxHEIGHT (rgb8)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--profiles", nargs="+", default=["package", "default"],
                        help="'package', 'default' (Fast DDS built-ins) or XML files")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to wait for a frame's answer before counting it lost")
    parser.add_argument("--echo", type=int, metavar="PARENT_PID", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        return _echo(args.echo)
    if args.measure:
        return _measure([_parse_size(s) for s in args.sizes], args.frames, args.timeout)

    rows = [row for profile in args.profiles
            for row in run_check(profile, args.sizes, args.frames, args.timeout)]
    print(f"rmw: {os.environ.get('RMW_IMPLEMENTATION', 'default (rmw_fastrtps_cpp)')}; "
          f"{args.frames} frames each, one at a time\n")
    print("| profile | QoS | image (rgb8) | round trip median ms | p90 ms | lost |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        median = f"{row['median_ms']:.2f}" if row["median_ms"] is not None else "-"
        p90 = f"{row['p90_ms']:.2f}" if row["p90_ms"] is not None else "-"
        print(f"| {row['profile']} | {row['qos']} | {row['image']} | {median} | {p90} | "
              f"{row['lost']}/{row['sent']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
