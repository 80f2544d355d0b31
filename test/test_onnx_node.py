"""Segmenter node with `backend:=onnxruntime` over real DDS: the same detections as the node
with `backend:=torch` on the same frame (two node processes, one exported tiny backbone), and
an unavailable ONNX Runtime provider fails configure with the reason.

Tolerance: same count, class ids and labels; scores within 1e-4, boxes within 0.01 px, every
mask's IoU with its torch twin >= 0.99 (see test_onnx_backbone.py)."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from backend_nodes import segmenter_per_backend, send_until_detections  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from parity import assert_same_detections  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402

from sam3_ros.ros.detection_conversions import msg_to_detections  # noqa: E402

pytestmark = pytest.mark.ros

SCORE_THRESHOLD = 0.25
BACKENDS = ("torch", "onnxruntime")
NAMESPACES = {backend: f"/onnx_test_{backend}" for backend in BACKENDS}


@pytest.fixture(scope="module")
def artifact_dir(tiny_checkpoint, tmp_path_factory):
    from sam3_ros.tools.export_backbone import export_backbone

    out = tmp_path_factory.mktemp("onnx_node_artifacts")
    export_backbone(str(tiny_checkpoint), str(out), "fp32", check_frames=1, prompts=[])
    return out


@pytest.fixture(scope="module")
def nodes(tiny_checkpoint, artifact_dir):
    params = {}
    for backend in BACKENDS:
        params[backend] = {"model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
                           "prompts": ["mug", "bottle"], "score_threshold": SCORE_THRESHOLD,
                           "max_detections": 1000, "backend": backend}
        if backend == "onnxruntime":
            params[backend]["onnx_artifact_dir"] = str(artifact_dir)
    with segmenter_per_backend("onnx_node_test_client", NAMESPACES, params) as started:
        yield started


def _send_until_result(client, node, backend: str, rgb: np.ndarray, sec: int):
    # Two model loads share 2 cores: allow for slow startup.
    return send_until_detections(client, node, NAMESPACES[backend], rgb, sec, 300)


def test_onnxruntime_node_publishes_the_torch_nodes_detections(nodes):
    client, started = nodes
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = {b: msg_to_detections(_send_until_result(client, started[b], b, rgb, 100))
               for b in BACKENDS}
    ref, got = results["torch"], results["onnxruntime"]
    assert len(ref) > 0, "the tiny model at threshold 0.25 should give instances"
    assert_same_detections(ref, got)
    assert "onnxruntime" in started["onnxruntime"].output()


def test_unavailable_provider_fails_configure_with_the_reason(nodes):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDAExecutionProvider is available here")
    client, started = nodes
    node, ns = started["onnxruntime"], "/onnx_test_onnxruntime/segmenter"

    def transition(transition_id: int) -> bool:
        return client.call(ChangeState, f"{ns}/change_state", ChangeState.Request(
            transition=Transition(id=transition_id)), timeout_s=120.0).success

    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert transition(Transition.TRANSITION_CLEANUP)
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="cuda")
    result = client.call(SetParameters, f"{ns}/set_parameters", SetParameters.Request(
        parameters=[Parameter(name="onnx_provider", value=value)])).results[0]
    assert result.successful, result.reason
    assert not transition(Transition.TRANSITION_CONFIGURE)
    state = client.call(GetState, f"{ns}/get_state", GetState.Request()).current_state.label
    assert state == "unconfigured"
    assert "needs CUDAExecutionProvider, which this onnxruntime" in node.output()


def test_tracker_node_warms_up_on_the_onnx_backbone(tiny_checkpoint, artifact_dir):
    """The tracker's warm-up session read its features through a torch cache of its own,
    i.e. the torch ViT the hub had released: configure failed with backend onnxruntime."""
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn

    from sam3_ros.ros.tracker_node import TrackerNode

    params = {"model": str(tiny_checkpoint), "device": "cpu", "backend": "onnxruntime",
              "onnx_artifact_dir": str(artifact_dir), "warmup": True}
    with in_process_node(TrackerNode, "tracker", "/onnx_tracker_test", params,
                         spin=False) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node._model.backbone.name == "onnxruntime"
        node.trigger_cleanup()
