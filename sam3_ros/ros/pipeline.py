"""`pipeline`: several sam3_ros nodes in one process, one loaded model, one runtime.

By default the segmenter and the tracker of one camera (`/segmenter/...`, `/tracker/...`).
With `--cameras`, one node per camera and kind, each in the camera's namespace with its own
parameters, prompts, outputs, services and lifecycle (`/front/segmenter/detections`,
`/wrist/tracker/add_objects`); every node reads the relative topic `image` in its namespace.
A camera runs the `--nodes` kinds, or its own: `--cameras front wrist:tracker
base:segmenter+tracker`.
All nodes share one `ModelHub` (the video model is loaded once; its detector serves the
segmenters) and the process runtime: each cycle of the compute thread takes the newest frame
of every camera and encodes them in one batched backbone pass (`core.runtime`). A frame seen
by a segmenter and a tracker of the same camera costs one backbone pass.

    ros2 run sam3_ros pipeline --ros-args -p model:=facebook/sam3 -p autostart:=true
    ros2 run sam3_ros pipeline --cameras front wrist --nodes segmenter --max-batch 2 \\
        --ros-args -p autostart:=true -r image:=color/image_raw

A process-wide namespace (`-r __ns:=...`) or node name (`-r __node:=...`) would apply to every
node of the process: give namespaced camera names instead (`--cameras /robot/front ...`).
"""

from __future__ import annotations

import argparse
import re
import sys

from sam3_ros.core.model_hub import ModelHub
from sam3_ros.core.runtime import Runtime
from sam3_ros.launch_plan import STREAM_KINDS, split_camera
from sam3_ros.ros.base_node import (
    Sam3LifecycleNode,
    add_executor_argument,
    check_executor,
    own_arguments,
    run_nodes,
)
from sam3_ros.ros.segmenter_node import SegmenterNode
from sam3_ros.ros.tracker_node import TrackerNode

NODE_KINDS = STREAM_KINDS
MAX_CAMERAS = 16
MAX_BATCH_LIMIT = 16
_NAMESPACE = re.compile(r"^/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


class PipelineArgumentError(ValueError):
    """A command-line argument of `pipeline` that cannot be used (the message says why)."""


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse the non-ROS arguments of `pipeline`.

    Raises:
        PipelineArgumentError: unknown argument, bad camera name, duplicate camera, unknown
            node kind, too many cameras, or max_batch out of range.
    """
    parser = argparse.ArgumentParser(prog="pipeline", add_help=True, exit_on_error=False,
                                     allow_abbrev=False)
    parser.add_argument("--cameras", nargs="*", default=[],
                        help="camera namespaces, one node per camera and kind "
                             "(comma or space separated; CAMERA:tracker or "
                             "CAMERA:segmenter+tracker for a camera's own kinds); none: one "
                             "camera, no namespace")
    parser.add_argument("--nodes", default="segmenter,tracker",
                        help="node kinds per camera: segmenter, tracker or both (comma list)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help=f"most camera frames in one backbone pass (1..{MAX_BATCH_LIMIT})")
    add_executor_argument(parser)
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise PipelineArgumentError(str(err)) from None
    if unknown:
        raise PipelineArgumentError(f"unknown arguments: {' '.join(unknown)}")
    items = [c.strip() for item in args.cameras for c in item.split(",") if c.strip()]
    cameras, camera_kinds = [], {}
    for item in items:
        try:
            camera, own_kinds = split_camera(item)
        except ValueError as err:
            raise PipelineArgumentError(str(err)) from None
        cameras.append(camera)
        if own_kinds is not None:
            camera_kinds[camera] = own_kinds
    for camera in cameras:
        if not _NAMESPACE.match(camera):
            raise PipelineArgumentError(
                f"camera '{camera}' is not a valid namespace (letters, digits, _ and /)")
    if len({c.strip("/") for c in cameras}) != len(cameras):  # "front" is "/front"
        raise PipelineArgumentError(f"a camera is listed twice: {cameras}")
    if len(cameras) > MAX_CAMERAS:
        raise PipelineArgumentError(f"{len(cameras)} cameras, at most {MAX_CAMERAS}")
    kinds = [k.strip() for k in args.nodes.split(",") if k.strip()]
    if not kinds or any(k not in NODE_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise PipelineArgumentError(
            f"--nodes {args.nodes!r}: expected segmenter, tracker or segmenter,tracker")
    try:
        check_executor(args.executor)
    except ValueError as err:
        raise PipelineArgumentError(str(err)) from None
    if not 1 <= args.max_batch <= MAX_BATCH_LIMIT:
        raise PipelineArgumentError(f"--max-batch must be in 1..{MAX_BATCH_LIMIT}, "
                                    f"got {args.max_batch}")
    args.cameras, args.kinds, args.camera_kinds = cameras, kinds, camera_kinds
    # Every camera's node kinds (its own, or --nodes); None: one camera without a namespace.
    args.streams = [(c, camera_kinds.get(c, kinds)) for c in cameras] or [(None, kinds)]
    return args


def make_nodes(cameras: list[str], kinds: list[str], hub: ModelHub,
               runtime: Runtime | None = None,
               camera_kinds: dict[str, list[str]] | None = None) -> list[Sam3LifecycleNode]:
    """One node per camera and kind, sharing `hub` (and `runtime`); a camera in
    `camera_kinds` gets its own kinds instead of `kinds`.

    Raises:
        PipelineArgumentError: a camera's node did not get the camera's namespace (a
            process-wide namespace, `-r __ns:=` or a launch `PushRosNamespace`, replaces every
            camera's: their nodes would read one image topic); the nodes built are destroyed.
    """
    classes = {"segmenter": SegmenterNode, "tracker": TrackerNode}
    nodes: list[Sam3LifecycleNode] = []
    wrong = []
    for camera in cameras or [None]:
        for kind in (camera_kinds or {}).get(camera, kinds):
            extra = {"namespace": "/" + camera.strip("/")} if camera else {}
            nodes.append(classes[kind](kind, model_hub=hub, runtime=runtime, **extra))
            if camera and nodes[-1].get_namespace() != extra["namespace"]:
                wrong.append(f"{nodes[-1].get_fully_qualified_name()} (camera {camera})")
    if wrong:
        for node in nodes:
            node.destroy_node()
        raise PipelineArgumentError(
            f"the cameras' namespaces were replaced: {', '.join(wrong)}; a process-wide "
            "namespace (-r __ns:=..., or a launch file included in a PushRosNamespace group) "
            "replaces each camera's; give the namespace with namespace:= or in the camera "
            "names instead")
    return nodes


def main(args: list[str] | None = None) -> int:
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if args is None else args
    try:
        own = own_arguments("pipeline", argv, remove_ros_args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        options = parse_arguments(own)
    except PipelineArgumentError as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    Runtime.default().set_max_batch(options.max_batch)
    # With a segmenter and a tracker per camera, up to two frames per camera: the one a
    # lagging reader (a tracker behind the segmenter of its camera) still reads, and the
    # camera's newest; both can be encoded in one pass. Held only until both have read them.
    frames = sum(len(kinds) for _, kinds in options.streams)  # kinds: no duplicates
    hub = ModelHub(with_tracker=any("tracker" in kinds for _, kinds in options.streams),
                   feature_capacity=max(4, options.max_batch, frames),
                   max_batch=min(options.max_batch, frames))
    try:
        return run_nodes(lambda: make_nodes(options.cameras, options.kinds, hub,
                                            camera_kinds=options.camera_kinds), args,
                         executor=options.executor)
    except PipelineArgumentError as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
