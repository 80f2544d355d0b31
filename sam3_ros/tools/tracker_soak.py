"""Soak test: process memory of a long tracking stream (RSS must stay flat).

    python -m sam3_ros.tools.tracker_soak --frames 5000 --objects 4 [--model CHECKPOINT]
        [--device cpu] [--text mug]

Feeds synthetic frames (a random scene scrolling sideways) through `TrackerSession` with several
point-prompted objects (and, with --text, every detected instance of a phrase, which exercises
the detector, new-object and lost-object paths) and prints the resident set size (VmRSS, from
/proc/self/status) at the start, every --report frames, and at the end, with frames/s and the
session's `memory_stats()`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: tiny random checkpoint)")
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--report", type=int, default=500)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text", action="append", default=[],
                        help="also track every detected instance of this phrase (repeatable)")
    args = parser.parse_args(argv)
    for name in ("frames", "report", "height", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.objects < (0 if args.text else 1):
        parser.error(f"--objects must be >= {0 if args.text else 1} (0 only with --text), got "
                     f"{args.objects}")

    from sam3_ros.core.errors import Sam3RosError
    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.tracker import ObjectPromptSpec, TrackerConfig, TrackerSession

    model = args.model
    if model is None:
        from sam3_ros.tools.make_tiny_checkpoint import temporary_tiny_checkpoint

        model = temporary_tiny_checkpoint()
    try:
        loaded = load_sam3(model, device=args.device, with_tracker=True)
    except Sam3RosError as err:
        print(f"tracker_soak: {err}", file=sys.stderr)
        return 2
    # With --text the random tiny detector needs a zero threshold to detect anything.
    session = TrackerSession(loaded, TrackerConfig(
        max_objects=args.objects + 4 * bool(args.text), score_threshold=0.0 if args.text else 0.5,
        max_lost_frames=5))
    if args.text:
        session.set_text_prompts(args.text)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    points = rng.uniform([0, 0], [args.width, args.height], (args.objects, 2))
    if args.objects:
        session.add_objects([ObjectPromptSpec(i, f"obj{i}", ((float(x), float(y), True),))
                             for i, (x, y) in enumerate(points)])
    start_rss = rss_mb()
    print(f"frame      0: RSS {start_rss:8.1f} MB (model loaded, before the first frame)")
    started = lap = time.perf_counter()
    lap_frame = 0
    for frame_idx in range(1, args.frames + 1):
        frame = np.roll(base, frame_idx % args.width, axis=1)
        detections = session.process_frame(frame, stamp_ns=frame_idx * 33_000_000)
        if frame_idx % args.report == 0 or frame_idx == args.frames:
            now = time.perf_counter()
            stats = session.memory_stats()
            held = ", ".join(f"{k} {v}" for k, v in stats.items())
            print(f"frame {frame_idx:6d}: RSS {rss_mb():8.1f} MB, "
                  f"{(frame_idx - lap_frame) / (now - lap):5.1f} frames/s, tracked "
                  f"{len(detections)}; {held}", flush=True)
            lap, lap_frame = now, frame_idx
    elapsed = time.perf_counter() - started
    print(f"{args.frames} frames in {elapsed:.1f} s ({args.frames / elapsed:.1f} frames/s); "
          f"RSS start {start_rss:.1f} MB, end {rss_mb():.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
