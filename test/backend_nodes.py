"""Segmenter node processes side by side, one per backend, for backend parity tests over DDS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


@contextmanager
def segmenter_per_backend(client_name: str, namespaces: dict[str, str],
                          params: dict[str, dict[str, Any]]) -> Iterator[tuple[Any, dict]]:
    """One segmenter process per backend (`params[backend]`), in `namespaces[backend]`, its
    camera input at `<ns>/camera/image`; yields (client subscribed to every node's
    detections, {backend: NodeProcess}); every node is stopped on exit."""
    from sam3_ros.msg import DetectionArray

    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command

    client = Client(client_name)
    started = {}
    try:
        for backend, node_params in params.items():
            ns = namespaces[backend]
            started[backend] = NodeProcess(node_command(
                "segmenter", node_params, remaps={"__ns": ns, "image": f"{ns}/camera/image"}))
            client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
        yield client, started
    finally:
        client.close()
        for node in started.values():
            node.stop()


def send_until_detections(client: Any, node: Any, ns: str, rgb: np.ndarray, sec: int,
                          timeout_s: float) -> Any:
    """Publish `rgb` (stamp `sec`) to `<ns>/camera/image` until the node in `ns` answers with
    detections of that stamp; returns the first such DetectionArray."""
    from sensor_msgs.msg import Image

    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.tools.ros_runner import wait_for

    publisher = client.node.create_publisher(Image, f"{ns}/camera/image", 10)
    msg = numpy_to_image_msg(rgb, "rgb8")
    msg.header.stamp.sec = sec
    msg.header.frame_id = "camera"

    def got():
        publisher.publish(msg)
        return [d for d in client.messages(f"{ns}/segmenter/detections")
                if d.header.stamp.sec == sec]

    return wait_for(got, timeout_s, f"detections from the node in {ns}", node, poll_s=0.2)[0]
