"""Per-frame steps outside the model, timed on synthetic inputs of real sizes.

    python -m sam3_ros.tools.hot_path_benchmark [--repeats 7]

* the tracker's "does this detection overlap a tracked object" check (every detector frame),
  as the package does it (`tracker.MaskExtent`: pixels counted where two masks' boxes meet)
  and over whole frames (the straightforward version, kept here as the reference);
* mask upsampling to the frame (`segmenter.upsample_masks`) from SAM3-sized 288x288 logits.

Prints median milliseconds (and the range) per case. No model, no ROS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np


def _blob_masks(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), np.uint8)
    for mask in masks:
        centre = (int(rng.integers(100, width - 100)), int(rng.integers(100, height - 100)))
        axes = (int(rng.integers(20, 120)), int(rng.integers(20, 120)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return masks.astype(bool)


def overlap_whole_frames(tracked: np.ndarray, detections: np.ndarray, iou: float) -> int:
    """Reference: every detection against every tracked mask over the whole frame."""
    accepted = 0
    for mask in detections:
        inter = (tracked & mask).sum(axis=(1, 2))
        union = (tracked | mask).sum(axis=(1, 2))
        if (inter / np.maximum(union, 1)).max() > iou:
            continue
        tracked = np.concatenate([tracked, mask[None]])
        accepted += 1
    return accepted


def overlap_within_boxes(tracked: np.ndarray, detections: np.ndarray, iou: float) -> int:
    """What the tracker does (`MaskExtent`)."""
    from sam3_ros.core.tracker import MaskExtent

    known = [(mask, MaskExtent.of(mask)) for mask in tracked]
    accepted = 0
    for mask in detections:
        extent = MaskExtent.of(mask)
        if any(extent.iou(other, mask, other_mask) > iou for other_mask, other in known):
            continue
        known.append((mask, extent))
        accepted += 1
    return accepted


def _time(call: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), min(samples), max(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    import torch

    from sam3_ros.core.segmenter import upsample_masks

    print("| step | case | median ms | range ms |\n|---|---|---:|---:|")
    for height, width, count in ((720, 1280, 15), (480, 640, 15), (720, 1280, 5)):
        tracked = _blob_masks(count, height, width)
        detections = tracked.copy()  # the same objects detected again: none is new
        for name, check in (("whole frames (reference)", overlap_whole_frames),
                            ("within boxes (package)", overlap_within_boxes)):
            assert check(tracked, detections, 0.3) == 0
            median, low, high = _time(
                lambda c=check, t=tracked, d=detections: c(t, d, 0.3), args.repeats)
            print(f"| overlap check, {name} | {count} objects re-detected, {width}x{height} "
                  f"| {median:.1f} | {low:.1f}-{high:.1f} |")
    torch.manual_seed(0)
    for height, width, count in ((720, 1280, 20), (480, 640, 20), (720, 1280, 5)):
        logits = torch.rand(count, 288, 288)
        median, low, high = _time(
            lambda x=logits, h=height, w=width: upsample_masks(x, h, w, 0.5), args.repeats)
        print(f"| mask upsampling (package) | {count} instances, {width}x{height} "
              f"| {median:.1f} | {low:.1f}-{high:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
