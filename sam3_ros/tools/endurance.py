"""Endurance: lifecycle cycles of a node, and a long soak of the composed pipeline.

    python -m sam3_ros.tools.endurance lifecycle --node segmenter --cycles 100
    python -m sam3_ros.tools.endurance soak --processed 10000 --rate-hz 30 --change-every 300

`lifecycle` runs configure -> activate -> deactivate -> cleanup `--cycles` times on one node in
this process (model loaded and freed every cycle) and prints RSS, threads and open file
descriptors. `soak` starts the `pipeline` executable (segmenter + tracker, one model) in its
own process, streams frames over DDS and, every `--change-every` frames, replaces the prompts
of both nodes and adds or removes tracked objects (from another thread, so frames keep
flowing); it runs until the tracker has processed `--processed` frames and prints the
pipeline process's RSS and what each node processed. Both use the tiny random checkpoint
unless --model is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np


def _proc_status(pid: int | str = "self") -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.split(":", 1) for line in status if ":" in line)


def _rss_mb(pid: int | str = "self") -> float:
    return int(_proc_status(pid)["VmRSS"].split()[0]) / 1024


def _threads_and_fds(pid: int | str = "self") -> tuple[int, int]:
    return int(_proc_status(pid)["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def _model(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from sam3_ros.tools.make_tiny_checkpoint import temporary_tiny_checkpoint

    return temporary_tiny_checkpoint()


def lifecycle(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sam3_ros.ros.segmenter_node import SegmenterNode
    from sam3_ros.ros.tracker_node import TrackerNode

    model = _model(args)
    rclpy.init()
    cls = SegmenterNode if args.node == "segmenter" else TrackerNode
    node = cls(args.node, parameter_overrides=[Parameter("model", value=model),
                                               Parameter("device", value=args.device)])
    ok = TransitionCallbackReturn.SUCCESS
    rows = []
    try:
        for cycle in range(args.cycles + 1):
            if cycle in (0, 1, 10, args.cycles // 2, args.cycles):
                threads, fds = _threads_and_fds()
                rows.append((cycle, _rss_mb(), threads, fds))
                print(f"cycle {cycle:4d}: RSS {rows[-1][1]:8.1f} MB, threads {threads}, "
                      f"fds {fds}", flush=True)
            if cycle == args.cycles:
                break
            for step in (node.trigger_configure, node.trigger_activate,
                         node.trigger_deactivate, node.trigger_cleanup):
                if step() != ok:
                    raise SystemExit(f"cycle {cycle}: {step.__name__} failed")
    finally:
        node.stop_streaming()
        node.destroy_node()
        rclpy.shutdown()
    first, last = rows[1], rows[-1]
    print(f"{args.node}: {args.cycles} cycles; from cycle 1 to {args.cycles}: RSS "
          f"{first[1]:.1f} -> {last[1]:.1f} MB, threads {first[2]} -> {last[2]}, "
          f"fds {first[3]} -> {last[3]}")
    return 0


def soak(args: argparse.Namespace) -> int:
    from sensor_msgs.msg import Image

    from sam3_ros.msg import DetectionArray, ObjectPrompt, PointPrompt
    from sam3_ros.ros.fastdds import use_large_frames_profile
    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.srv import AddObjects, RemoveObjects, SetPrompts
    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for

    use_large_frames_profile()
    ns = "/sam3_soak"
    node = NodeProcess(node_command("pipeline", {
        "model": _model(args), "device": args.device, "autostart": True, "max_objects": 8},
        remaps={"__ns": ns, "image": f"{ns}/image"}))
    client = Client("sam3_soak_client")
    try:
        pub = client.node.create_publisher(Image, f"{ns}/image", 10)
        counts = {"segmenter": 0, "tracker": 0}
        for name in counts:
            client.node.create_subscription(
                DetectionArray, f"{ns}/{name}/detections",
                lambda msg, n=name: counts.__setitem__(n, counts[n] + 1), 10)
        base = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3),
                                                 dtype=np.uint8)
        frames = [numpy_to_image_msg(np.roll(base, i, axis=1), "rgb8") for i in range(16)]

        def send(i: int) -> None:
            msg = frames[i % len(frames)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(
                int(i * 1e9 / args.rate_hz), 1_000_000_000)
            pub.publish(msg)

        wait_for(lambda: (send(0), counts["tracker"])[1], 300, "pipeline streaming", node)
        phrases = [["mug"], ["bottle", "person"], ["cup", "plate", "fork"]]
        start_rss = _rss_mb(node.proc.pid)
        print(f"frame      0: pipeline RSS {start_rss:8.1f} MB", flush=True)
        tracked: list[int] = []
        changes = [0]
        failures: list[str] = []

        def change(i: int) -> None:
            try:
                change_once(i)
            except Exception as err:  # a refused or unanswered call fails the soak
                failures.append(f"change {changes[0]}: {type(err).__name__}: {err}")

        def change_once(i: int) -> None:
            # Off the camera loop, as a behaviour tree would call: frames keep flowing.
            changes[0] += 1
            texts = phrases[changes[0] % len(phrases)]
            for name in counts:
                answer = client.call(SetPrompts, f"{ns}/{name}/set_prompts",
                                     SetPrompts.Request(texts=texts))
                assert answer.success, answer.message
            if len(tracked) >= 3:
                answer = client.call(RemoveObjects, f"{ns}/tracker/remove_objects",
                                     RemoveObjects.Request(object_ids=tracked[:2]))
                if answer.success:
                    del tracked[:2]
            x, y = (float(v) for v in np.random.default_rng(i).uniform(
                [0, 0], [args.width, args.height]))
            answer = client.call(AddObjects, f"{ns}/tracker/add_objects", AddObjects.Request(
                objects=[ObjectPrompt(object_id=-1, points=[PointPrompt(
                    x=x, y=y, positive=True)])]))
            if answer.success:
                tracked.extend(answer.object_ids)

        changer: threading.Thread | None = None
        t0 = time.perf_counter()
        i = 0
        while counts["tracker"] < args.processed:
            if not node.alive():
                print(f"the pipeline died:\n{node.output()[-3000:]}", file=sys.stderr)
                return 1
            if failures:
                break
            i += 1
            send(i)
            if i % args.change_every == 0 and (changer is None or not changer.is_alive()):
                changer = threading.Thread(target=change, args=(i,), daemon=True)
                changer.start()
            if i % args.report == 0:
                print(f"frame {i:6d}: pipeline RSS {_rss_mb(node.proc.pid):8.1f} MB, processed "
                      f"segmenter {counts['segmenter']}, tracker {counts['tracker']}, "
                      f"{changes[0]} prompt/object changes", flush=True)
            # Pace the camera; never burst to catch up (a camera does not).
            delay = t0 + i / args.rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                t0 -= delay
        time.sleep(2.0)
        if changer is not None:
            changer.join(120)
        if not node.alive():
            print(f"the pipeline died:\n{node.output()[-3000:]}", file=sys.stderr)
            return 1
        print(f"{i} frames sent at {args.rate_hz:g} Hz; processed: segmenter "
              f"{counts['segmenter']}, tracker {counts['tracker']}; pipeline RSS "
              f"{start_rss:.1f} -> {_rss_mb(node.proc.pid):.1f} MB; resets logged: "
              f"{node.output().count('tracker reset')}")
        if failures:
            print("soak FAILED: " + "; ".join(failures), file=sys.stderr)
            return 1
    finally:
        client.close()
        node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: tiny random checkpoint)")
    parser.add_argument("--device", default="cpu")
    sub = parser.add_subparsers(dest="mode", required=True)
    cycles = sub.add_parser("lifecycle")
    cycles.add_argument("--node", choices=("segmenter", "tracker"), default="segmenter")
    cycles.add_argument("--cycles", type=int, default=100)
    run = sub.add_parser("soak")
    run.add_argument("--processed", type=int, default=10000,
                     help="run until the tracker has processed this many frames")
    run.add_argument("--rate-hz", type=float, default=30.0)
    run.add_argument("--change-every", type=int, default=300)
    run.add_argument("--report", type=int, default=1000)
    run.add_argument("--height", type=int, default=120)
    run.add_argument("--width", type=int, default=160)
    args = parser.parse_args(argv)
    if args.mode == "lifecycle" and args.cycles < 1:
        parser.error("--cycles must be >= 1")
    if args.mode != "lifecycle" and (args.processed < 1 or args.rate_hz <= 0
                                     or args.change_every < 1 or args.report < 1
                                     or args.height < 1 or args.width < 1):
        parser.error("--processed, --change-every, --report, --height and --width must be "
                     ">= 1, --rate-hz > 0")
    return lifecycle(args) if args.mode == "lifecycle" else soak(args)


if __name__ == "__main__":
    raise SystemExit(main())
