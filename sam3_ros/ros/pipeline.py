"""`pipeline`: the segmenter and the tracker in one process, sharing one loaded model.

SAM3's detector and tracker share the vision backbone: the nodes get one `ModelHub` that loads
the video model once (its detector serves the segmenter), and a frame's backbone features are
computed once for both nodes (they subscribe to the same camera; the cache key is the image
stamp and frame id). Both run on one executor and take frames on their own worker threads;
their model calls queue on the process's compute thread. Each keeps its own lifecycle,
parameters (node names `segmenter` and `tracker`), topics and services, which are private to
each node exactly as when they run alone (`/segmenter/detections`, `/tracker/add_objects`).

    ros2 run sam3_ros pipeline --ros-args -p model:=facebook/sam3 -p autostart:=true
"""

from __future__ import annotations

from sam3_ros.core.model_hub import ModelHub
from sam3_ros.ros.base_node import Sam3LifecycleNode, run_nodes
from sam3_ros.ros.segmenter_node import SegmenterNode
from sam3_ros.ros.tracker_node import TrackerNode


def main(args: list[str] | None = None) -> int:
    hub = ModelHub(with_tracker=True)

    def make_nodes() -> list[Sam3LifecycleNode]:
        return [SegmenterNode("segmenter", model_hub=hub), TrackerNode("tracker", model_hub=hub)]

    return run_nodes(make_nodes, args)
