"""Segmenter node with `backend:=torch_int8` and `compile_heads:=true` over real DDS: it
compiles the INT8 ViT and then the detector heads during configure, publishes detections
matching the eager `backend:=torch` node's on the same frame (two node processes), and
refuses a torchao `quantization` on top with the reason (configure fails, the node stays
unconfigured and alive), then is reconfigured over `set_parameters` with static activation
ranges from a folder of calibration frames (`torch_int8_calibration`).

Tolerance as test_torch_int8_backbone.py: matched instances, scores within 0.02, boxes within
1.5 px, mask IoU >= 0.9 (INT8 against fp32, tiny random model). Tier `compile`."""

from __future__ import annotations

import platform

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")
pytest.importorskip("torchao")

from backend_nodes import segmenter_per_backend, send_until_detections  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from parity import assert_matched_detections  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402

from sam3_ros.ros.detection_conversions import msg_to_detections  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPUs only")]

BACKENDS = ("torch", "torch_int8")
NAMESPACES = {backend: f"/int8_test_{backend}" for backend in BACKENDS}


@pytest.fixture(scope="module")
def nodes(tiny_checkpoint):
    params = {backend: {"model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
                        "prompts": ["mug", "bottle"], "score_threshold": 0.25,
                        "max_detections": 1000, "backend": backend,
                        # The full-size measurement's configuration (README), over DDS.
                        "compile_heads": backend == "torch_int8"} for backend in BACKENDS}
    with segmenter_per_backend("torch_int8_node_test_client", NAMESPACES, params) as started:
        yield started


def _send_until_result(client, node, backend: str, rgb: np.ndarray, sec: int):
    # Two model loads and an inductor build share 2 cores: allow for a slow start.
    return send_until_detections(client, node, NAMESPACES[backend], rgb, sec, 400)


def test_int8_node_publishes_the_torch_nodes_detections(nodes):
    client, started = nodes
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = {b: msg_to_detections(_send_until_result(client, started[b], b, rgb, 100))
               for b in BACKENDS}
    ref, got = results["torch"], results["torch_int8"]
    assert len(ref) > 0, "the tiny model at threshold 0.25 should give instances"
    assert_matched_detections(ref, got, score_tol=0.02, box_tol_px=1.5, min_mask_iou=0.9)
    output = started["torch_int8"].output()
    assert "torch_int8: compiling the INT8 vision transformer for batch sizes [1]" in output
    assert "torch_int8 (cpu, int8 dynamic linears, fp32, neck eager)" in output
    assert "compile_heads: detector heads compiled in" in output
    assert "compile_heads" not in started["torch"].output()


def test_torchao_quantization_on_top_fails_configure_with_the_reason(nodes):
    client, started = nodes
    node, ns = started["torch_int8"], "/int8_test_torch_int8/segmenter"

    def transition(transition_id: int) -> bool:
        return client.call(ChangeState, f"{ns}/change_state", ChangeState.Request(
            transition=Transition(id=transition_id)), timeout_s=120.0).success

    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert transition(Transition.TRANSITION_CLEANUP)
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="int8_dynamic")
    result = client.call(SetParameters, f"{ns}/set_parameters", SetParameters.Request(
        parameters=[Parameter(name="quantization", value=value)])).results[0]
    assert result.successful, result.reason
    assert not transition(Transition.TRANSITION_CONFIGURE)
    state = client.call(GetState, f"{ns}/get_state", GetState.Request()).current_state.label
    assert state == "unconfigured"
    assert ("backend 'torch_int8' quantises the vision transformer itself; set quantization "
            "to 'none' (got 'int8_dynamic')") in node.output()
    assert node.alive()


def test_static_calibration_over_ros_parameters(nodes, calibration_frames_dir, tmp_path):
    """torch_int8_calibration set with `set_parameters` on the unconfigured node (after the
    refusal above): a folder without images fails configure with the reason; the frames
    folder configures a static INT8 backbone whose detections match the torch node's."""
    client, started = nodes
    node, ns = started["torch_int8"], "/int8_test_torch_int8/segmenter"

    def transition(transition_id: int) -> bool:
        return client.call(ChangeState, f"{ns}/change_state", ChangeState.Request(
            transition=Transition(id=transition_id)), timeout_s=300.0).success

    def set_params(**values) -> None:
        params = []
        for name, value in values.items():
            if isinstance(value, str):
                param_value = ParameterValue(type=ParameterType.PARAMETER_STRING,
                                             string_value=value)
            else:
                param_value = ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                             integer_value=value)
            params.append(Parameter(name=name, value=param_value))
        results = client.call(SetParameters, f"{ns}/set_parameters",
                              SetParameters.Request(parameters=params)).results
        assert all(r.successful for r in results), [r.reason for r in results]

    # Unconfigured after the refusal test above; on its own (-k) the node is still active.
    state = client.call(GetState, f"{ns}/get_state", GetState.Request()).current_state.label
    if state == "active":
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
    set_params(quantization="none", torch_int8_calibration=str(tmp_path))
    assert not transition(Transition.TRANSITION_CONFIGURE)
    assert (f"backend 'torch_int8': calibration frames: no png/jpeg files in "
            f"'{tmp_path}'") in node.output()
    set_params(torch_int8_calibration=str(calibration_frames_dir),
               torch_int8_calibration_frames=2)
    assert transition(Transition.TRANSITION_CONFIGURE)
    assert transition(Transition.TRANSITION_ACTIVATE)
    assert "int8 static linears calibrated on 2 frames" in node.output()
    rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    results = {b: msg_to_detections(_send_until_result(client, started[b], b, rgb, 200 + i))
               for i, b in enumerate(BACKENDS)}
    assert len(results["torch"]) > 0
    assert_matched_detections(results["torch"], results["torch_int8"], score_tol=0.02,
                              box_tol_px=1.5, min_mask_iou=0.9)
    assert node.alive()


def test_tracker_node_warms_up_on_the_int8_backbone(tiny_checkpoint):
    """The tracker's warm-up session read its features through a torch cache of its own,
    i.e. the released torch ViT: configure failed with backend torch_int8 (and onnxruntime)."""
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn

    from sam3_ros.ros.tracker_node import TrackerNode

    params = {"model": str(tiny_checkpoint), "device": "cpu", "backend": "torch_int8",
              "warmup": True}
    with in_process_node(TrackerNode, "tracker", "/int8_tracker_test", params,
                         spin=False) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node._model.backbone.name == "torch_int8"
        assert node._model.feature_cache.backbone_calls == 0  # the warm-up had its own cache
        assert node._model.backbone.prepared_batch_sizes == {1}
        node.trigger_cleanup()
