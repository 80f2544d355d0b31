"""Time the 3D outputs of one frame: per-object geometry, point cloud, markers and messages.

    python -m sam3_ros.tools.depth_benchmark [--objects 20] [--width 1280 --height 720]
        [--distortion] [--repeats 200] [--max-object-points 2000]

Synthetic but realistic frame: `random_blob_detections` (elliptic masks, radii 20-120 px, the
same instances as the 2D output benchmark), a 16UC1 depth image with a wall at 4 m, each
object at its own distance (0.5-3 m) with 3 mm noise, 5 % missing pixels and the later objects
occluding the earlier ones (so masks see mixed depth and the outlier rejection works). Mask
crops are computed before timing: the node already has them from the 2D outputs. Wall-clock
and thread CPU times are reported (the CPU time is less sensitive to other processes sharing
the machine); the load average is printed with them.

Stages: `objects_3d`, the cloud points (stride 2) and the marker plan (the pure core), each
message on its own (Detection3DArray and MarkerArray from a `MessagePool` as in the node, the
vision_msgs Detection3DArray when vision_msgs is installed, PointCloud2), then everything of
one frame together ("all 3D outputs"), and the same with freshly constructed messages. The
single-stage rows reuse one frame's objects (their box quaternions are computed once, as in a
frame); "all 3D outputs" computes everything anew each repeat.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from sam3_ros.core.camera_model import camera_model_from_fields, ray_grid
from sam3_ros.core.detections import Detections
from sam3_ros.core.objects3d import Depth3DConfig, cloud_points, marker_plan, objects_3d
from sam3_ros.core.render import mask_crops


def synthetic_depth(detections: Detections, seed: int = 0) -> np.ndarray:
    """(H, W) uint16 millimetres: wall at 4 m, objects at 0.5-3 m in mask order, 3 mm noise,
    5 % zeros (no return)."""
    rng = np.random.default_rng(seed)
    depth_mm = np.full((detections.image_height_px, detections.image_width_px), 4000.0)
    assert detections.masks is not None
    for mask in detections.masks:
        depth_mm[mask] = rng.uniform(500.0, 3000.0)
    depth_mm += rng.normal(0.0, 3.0, depth_mm.shape)
    depth_mm[rng.random(depth_mm.shape) < 0.05] = 0.0
    return np.clip(depth_mm, 0, 65535).astype(np.uint16)


def _timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    for _ in range(10):  # warm-up: caches, lazy imports, allocator
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return {"wall_median": float(np.median(wall)), "wall_p90": float(np.percentile(wall, 90)),
            "cpu_median": float(np.median(cpu))}


def run(n_objects: int, width: int, height: int, distortion: bool, repeats: int,
        seed: int = 0, max_object_points: int = 2000) -> dict[str, dict[str, float]]:
    """Time each stage; returns {stage: {wall_median, wall_p90, cpu_median}} in ms."""
    from sam3_ros.ros.detection_conversions import random_blob_detections

    detections = random_blob_detections(n_objects, height, width, seed)
    depth = synthetic_depth(detections, seed)
    coeffs = [-0.28, 0.09, 0.001, -0.0015, -0.015] if distortion else [0.0] * 5
    f = 0.9 * width
    camera = camera_model_from_fields(
        width, height, [f, 0, (width - 1) / 2, 0, f, (height - 1) / 2, 0, 0, 1], coeffs,
        "plumb_bob")
    rays = ray_grid(camera)
    crops = mask_crops(detections)
    cfg = Depth3DConfig(max_object_points=max_object_points)
    hw = (height, width)
    objects = objects_3d(crops, hw, depth, 0.001, rays, cfg)
    results = {
        "objects_3d": _timed(lambda: objects_3d(crops, hw, depth, 0.001, rays, cfg), repeats),
        "cloud (stride 2)": _timed(lambda: cloud_points(objects, detections, 2), repeats),
        "marker plan": _timed(lambda: marker_plan(objects, detections, frozenset()), repeats),
    }

    def core_all() -> None:
        objs = objects_3d(crops, hw, depth, 0.001, rays, cfg)
        cloud_points(objs, detections, 2)
        marker_plan(objs, detections, frozenset())

    results["core total"] = _timed(core_all, repeats)
    notes = []
    try:
        from std_msgs.msg import Header

        from sam3_ros.ros.depth_conversions import (
            MessagePool,
            cloud_to_msg,
            markers_to_msg,
            objects_to_msg,
            objects_to_vision_msgs,
        )
        from sam3_ros.ros.detection_conversions import _vision_msgs
    except ImportError:  # without ROS: the core figures only
        notes.append("no ROS messages importable: core stages only")
    else:
        header = Header(frame_id="camera")
        pool = MessagePool()
        vision = _vision_msgs() is not None
        cloud = cloud_points(objects, detections, 2)
        plan = marker_plan(objects, detections, frozenset())[0]
        results["Detection3DArray (pooled)"] = _timed(
            lambda: pool.objects_to_msg(objects, detections, header), repeats)
        if vision:
            results["vision_msgs Detection3DArray"] = _timed(
                lambda: objects_to_vision_msgs(objects, detections, header), repeats)
        results["PointCloud2"] = _timed(lambda: cloud_to_msg(cloud, header), repeats)
        results["MarkerArray (pooled)"] = _timed(
            lambda: pool.markers_to_msg(plan, header), repeats)

        def all_outputs(to_objects: Callable, to_markers: Callable) -> Callable[[], None]:
            def frame() -> None:
                objs = objects_3d(crops, hw, depth, 0.001, rays, cfg)
                to_objects(objs, detections, header)
                if vision:
                    objects_to_vision_msgs(objs, detections, header)
                cloud_to_msg(cloud_points(objs, detections, 2), header)
                to_markers(marker_plan(objs, detections, frozenset())[0], header)
            return frame

        results["all 3D outputs (core + messages)"] = _timed(
            all_outputs(pool.objects_to_msg, pool.markers_to_msg), repeats)
        results["all 3D outputs, messages not pooled"] = _timed(
            all_outputs(objects_to_msg, markers_to_msg), repeats)
        notes.append(
            "messages: sam3_ros Detection3DArray, "
            + ("vision_msgs Detection3DArray, " if vision else
               "(vision_msgs not installed: not built), ")
            + "PointCloud2, MarkerArray; 'pooled' = Detection3D / Marker objects of the "
            "previous frame refilled (depth_conversions.MessagePool, as the node does). "
            "Every output is built here; the node skips outputs without subscribers.")
    valid = int(objects.valid.sum())
    print(f"{n_objects} objects ({valid} valid, {int(objects.num_points.sum())} points, "
          f"{sum(c.area_px for c in crops)} mask pixels) at {width}x{height}, 16UC1 depth, "
          f"{'plumb_bob distortion' if distortion else 'no distortion'}, max_object_points "
          f"{max_object_points}; {repeats} repeats; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for note in notes:
        print(note)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--distortion", action="store_true")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--max-object-points", type=int, default=2000)
    args = parser.parse_args(argv)
    results = run(args.objects, args.width, args.height, args.distortion, args.repeats,
                  max_object_points=args.max_object_points)
    print("| stage | wall median ms | wall p90 ms | CPU median ms |")
    print("|---|---:|---:|---:|")
    for stage, t in results.items():
        print(f"| {stage} | {t['wall_median']:.2f} | {t['wall_p90']:.2f} | "
              f"{t['cpu_median']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
