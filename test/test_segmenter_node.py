"""Segmenter node over real DDS: the node runs in its own process, this test publishes frames,
calls its services and parameters, and checks the outputs against a direct model call."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from parity import clipped_xyxy  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically  # noqa: E402
from rclpy.node import Node as RclpyNode  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sam3_ros.msg import BoxPrompt, DetectionArray, LabelInfo, Prompt  # noqa: E402
from sam3_ros.srv import SetPrompts  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from sam3_ros.ros.detection_conversions import msg_to_detections  # noqa: E402
from sam3_ros.ros.image_conversions import (  # noqa: E402
    image_msg_to_numpy,
    numpy_to_compressed_msg,
    numpy_to_image_msg,
)
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros

SCORE_THRESHOLD = 0.25  # the tiny random model scores ~0.25: some instances pass, some don't
LABEL_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _frame(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _image_msg(rgb: np.ndarray, sec: int, frame_id: str = "camera") -> Image:
    msg = numpy_to_image_msg(rgb, "rgb8")
    msg.header.stamp.sec = sec
    msg.header.frame_id = frame_id
    return msg


def _param(name: str, value: object) -> Parameter:
    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    elif isinstance(value, float):
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    elif isinstance(value, list):
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    return Parameter(name=name, value=pv)


class Harness:
    def __init__(self, node: NodeProcess, client: Client, ns: str):
        self.node, self.client, self.ns = node, client, ns
        self.image_pub = client.node.create_publisher(Image, f"{ns}/camera/image", 10)
        self.compressed_pub = client.node.create_publisher(
            CompressedImage, f"{ns}/camera/image/compressed", 10)
        client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
        client.subscribe(Image, f"{ns}/segmenter/mask")
        client.subscribe(Image, f"{ns}/segmenter/overlay")
        client.subscribe(LabelInfo, f"{ns}/segmenter/label_info", LABEL_QOS)

    def detections(self) -> list[DetectionArray]:
        return self.client.messages(f"{self.ns}/segmenter/detections")

    def send_until_result(self, rgb: np.ndarray, sec: int, what: str = "detections",
                          timeout_s: float = 60.0) -> DetectionArray:
        """Publish the frame (again, until the node is subscribed) and wait for its result."""
        msg = _image_msg(rgb, sec)

        def got():
            self.image_pub.publish(msg)
            return [d for d in self.detections() if d.header.stamp.sec == sec]

        return wait_for(got, timeout_s, what, self.node, poll_s=0.2)[0]

    def set_params(self, **values) -> list:
        request = SetParameters.Request(parameters=[_param(k, v) for k, v in values.items()])
        return self.client.call(SetParameters, f"{self.ns}/segmenter/set_parameters",
                                request).results

    def lifecycle(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.client.call(ChangeState, f"{self.ns}/segmenter/change_state",
                                request).success

    def state(self) -> str:
        return self.client.call(GetState, f"{self.ns}/segmenter/get_state",
                                GetState.Request()).current_state.label


@pytest.fixture(scope="module")
def harness(tiny_checkpoint):
    ns = "/seg_test"
    cmd = node_command("segmenter", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug", "bottle"], "score_threshold": SCORE_THRESHOLD,
        "max_detections": 1000,
    }, remaps={"__ns": ns, "image": f"{ns}/camera/image",
               "image/compressed": f"{ns}/camera/image/compressed"})
    node = NodeProcess(cmd)
    client = Client("segmenter_test_client")
    try:
        yield Harness(node, client, ns)
    finally:
        client.close()
        node.stop()


def _direct_reference(checkpoint, rgb: np.ndarray, texts: list[str]):
    """What transformers gives for a direct Sam3Model call with the same image and prompts."""
    import torch
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(checkpoint)
    model = Sam3Model.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        # One forward per prompt: the documented single-image, single-prompt call.
        scores, boxes, masks = [], [], []
        for text in texts:
            inputs = processor(images=rgb, text=text, return_tensors="pt")
            outputs = model(**inputs)
            result = processor.post_process_instance_segmentation(
                outputs, threshold=SCORE_THRESHOLD, mask_threshold=0.5,
                target_sizes=[rgb.shape[:2]])[0]
            scores.append(result["scores"])
            boxes.append(result["boxes"])
            masks.append(result["masks"].bool())
    return torch.cat(scores).numpy(), torch.cat(boxes).numpy(), torch.cat(masks).numpy()


def test_outputs_match_direct_model_call_over_dds(harness, tiny_checkpoint):
    rgb = _frame(1)
    result = harness.send_until_result(rgb, sec=100)
    assert result.header.frame_id == "camera"
    assert (result.image_width, result.image_height) == (160, 120)
    got = msg_to_detections(result)
    assert len(got) > 0, "the tiny model at threshold 0.25 should give instances"

    # Parity per prompt (the node batches prompts; each prompt alone is the reference call).
    harness.set_params(prompts=["mug"])
    single = msg_to_detections(harness.send_until_result(rgb, sec=101))
    ref_scores, ref_boxes, ref_masks = _direct_reference(tiny_checkpoint, rgb, ["mug"])
    order = np.argsort(-ref_scores, kind="stable")
    np.testing.assert_array_equal(single.scores, ref_scores[order])
    np.testing.assert_array_equal(single.xyxy, clipped_xyxy(ref_boxes[order], *rgb.shape[:2]))
    np.testing.assert_array_equal(single.masks, ref_masks[order])
    assert set(single.class_ids.tolist()) == {0}
    assert single.labels[0] == "mug"
    harness.set_params(prompts=["mug", "bottle"])


def test_mask_and_overlay_images_follow_the_input_frame(harness):
    harness.client.clear("/seg_test/segmenter/detections")
    rgb = _frame(2)
    result = harness.send_until_result(rgb, sec=200)
    mask = wait_for(lambda: [m for m in harness.client.messages("/seg_test/segmenter/mask")
                             if m.header.stamp.sec == 200], 20, "mask image", harness.node)[0]
    overlay = wait_for(lambda: [m for m in harness.client.messages(
        "/seg_test/segmenter/overlay") if m.header.stamp.sec == 200], 20, "overlay",
        harness.node)[0]
    assert (mask.width, mask.height) == (160, 120) and mask.encoding in ("mono8", "mono16")
    assert (overlay.width, overlay.height, overlay.encoding) == (160, 120, "rgb8")
    labels = image_msg_to_numpy(mask)
    assert labels.max() <= len(result.detections)
    label_info = wait_for(lambda: harness.client.messages("/seg_test/segmenter/label_info"), 20,
                          "label_info", harness.node)[-1]
    assert list(label_info.class_names) == ["mug", "bottle"]


def test_set_prompts_service_live_and_bad_requests_refused(harness):
    srv = "/seg_test/segmenter/set_prompts"
    ok = harness.client.call(SetPrompts, srv, SetPrompts.Request(
        texts=["cup"], prompts=[Prompt(text="box", exemplar_boxes=[
            BoxPrompt(x_min=10.0, y_min=10.0, x_max=60.0, y_max=50.0, positive=True)])]))
    assert ok.success, ok.message
    assert list(ok.class_ids) == [0, 1]
    result = harness.send_until_result(_frame(3), sec=300)
    assert {d.label for d in result.detections} <= {"cup", "box"}

    bad_requests = {
        "empty": SetPrompts.Request(),
        "blank": SetPrompts.Request(texts=["   "]),
        "duplicate": SetPrompts.Request(texts=["cup", "Cup"]),
        "too long": SetPrompts.Request(texts=["x" * 500]),
        "too many tokens": SetPrompts.Request(texts=["mug " * 40]),
        "too many": SetPrompts.Request(texts=[f"thing {i}" for i in range(100)]),
        "nan box": SetPrompts.Request(prompts=[Prompt(text="a", exemplar_boxes=[
            BoxPrompt(x_min=float("nan"), y_min=0.0, x_max=5.0, y_max=5.0)])]),
        "outside": SetPrompts.Request(prompts=[Prompt(text="a", exemplar_boxes=[
            BoxPrompt(x_min=0.0, y_min=0.0, x_max=500.0, y_max=5.0)])]),
        "empty box": SetPrompts.Request(prompts=[Prompt(text="a", exemplar_boxes=[
            BoxPrompt(x_min=5.0, y_min=0.0, x_max=5.0, y_max=5.0)])]),
    }
    for what, request in bad_requests.items():
        response = harness.client.call(SetPrompts, srv, request)
        assert not response.success, what
        assert response.message, what
    # The node keeps serving with the last good prompt set.
    result = harness.send_until_result(_frame(4), sec=301)
    assert {d.label for d in result.detections} <= {"cup", "box"}
    harness.client.call(SetPrompts, srv, SetPrompts.Request(texts=["mug", "bottle"]))


def test_parameters_validated_live(harness):
    results = harness.set_params(score_threshold=2.0)
    assert not results[0].successful and "score_threshold" in results[0].reason
    results = harness.set_params(model="/somewhere/else")
    assert not results[0].successful and "reload" in results[0].reason
    # The same value is no change: `ros2 param load` of a `ros2 param dump` re-sets them all.
    results = harness.set_params(device="cpu", dtype="float32")
    assert all(r.successful for r in results), [r.reason for r in results]
    results = harness.set_params(prompts=[])
    assert not results[0].successful and "at least one prompt" in results[0].reason
    results = harness.set_params(score_threshold=0.99)
    assert results[0].successful
    result = harness.send_until_result(_frame(5), sec=400)
    assert len(result.detections) == 0  # the random model never scores 0.99
    assert harness.set_params(score_threshold=SCORE_THRESHOLD)[0].successful


@pytest.mark.skipif(not hasattr(RclpyNode, "add_pre_set_parameters_callback"),
                    reason="rclpy without pre-set parameter callbacks (Humble)")
def test_live_parameters_of_a_near_miss_type_are_converted(harness):
    # `ros2 param set /segmenter score_threshold 1` sends an integer; rclpy refused it with
    # "Wrong parameter type" before the node could convert it as it does at start-up.
    assert harness.set_params(score_threshold=1)[0].successful
    assert harness.set_params(prompts="bottle")[0].successful
    values = harness.client.call(GetParameters, f"{harness.ns}/segmenter/get_parameters",
                                 GetParameters.Request(names=["score_threshold", "prompts"]))
    threshold, prompts = values.values
    assert threshold.type == ParameterType.PARAMETER_DOUBLE and threshold.double_value == 1.0
    assert list(prompts.string_array_value) == ["bottle"]
    # A type that has no conversion is still refused, with rclpy's reason.
    assert not harness.set_params(score_threshold="high")[0].successful
    assert harness.set_params(score_threshold=SCORE_THRESHOLD,
                              prompts=["mug", "bottle"])[0].successful


def test_a_refused_atomic_parameter_change_changes_nothing(harness):
    # rclpy hands an atomic call's parameters to the node together; they were applied one by
    # one, so the new prompts ran although the call was refused.
    def prompts() -> list[str]:
        request = GetParameters.Request(names=["prompts"])
        return list(harness.client.call(GetParameters, f"{harness.ns}/segmenter/get_parameters",
                                        request).values[0].string_array_value)

    before = prompts()
    request = SetParametersAtomically.Request(parameters=[
        _param("prompts", ["atomic_a", "atomic_b", "atomic_c"]), _param("max_prompts", 2)])
    result = harness.client.call(
        SetParametersAtomically, f"{harness.ns}/segmenter/set_parameters_atomically",
        request).result
    assert not result.successful and "2" in result.reason
    assert prompts() == before
    detected = harness.send_until_result(_frame(8), sec=450)
    assert {d.label for d in detected.detections} <= set(before)
    assert harness.set_params(max_prompts=64)[0].successful


def test_bad_frames_are_skipped_and_the_node_keeps_running(harness):
    broken = _image_msg(_frame(6), sec=500)
    broken.data = bytes(10)  # shorter than step * height
    unknown = _image_msg(_frame(6), sec=501)
    unknown.encoding = "bayer_rggb42"
    for msg in (broken, unknown):
        harness.image_pub.publish(msg)
    time.sleep(0.5)
    result = harness.send_until_result(_frame(7), sec=502)
    assert result.header.stamp.sec == 502
    assert not [d for d in harness.detections() if d.header.stamp.sec in (500, 501)]
    assert "frame skipped" in harness.node.output()


def test_frames_without_stamps_are_each_encoded(harness):
    """A publisher that never sets header.stamp: every frame has the same header, and each
    must still be segmented from its own pixels (not served an earlier frame's features)."""
    def result_of(rgb: np.ndarray, sec: int) -> DetectionArray:
        msg = _image_msg(rgb, sec)
        width = rgb.shape[1]

        def got():
            harness.image_pub.publish(msg)
            return [d for d in harness.detections()
                    if d.header.stamp.sec == sec and d.image_width == width]

        return wait_for(got, 60, f"result of the {width} px frame at {sec} s", harness.node,
                        poll_s=0.2)[-1]

    # Different sizes tell the two unstamped frames' results apart.
    first, second = _frame(11), _frame(12, height=96, width=128)
    unstamped = [msg_to_detections(result_of(rgb, 0)) for rgb in (first, second)]
    stamped = [msg_to_detections(result_of(rgb, 800 + i)) for i, rgb in enumerate((first,
                                                                                   second))]
    for got, expected in zip(unstamped, stamped, strict=True):
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.xyxy, expected.xyxy)
    assert "carry no stamp" in harness.node.output()


def test_reset_service(harness):
    response = harness.client.call(Trigger, "/seg_test/segmenter/reset", Trigger.Request())
    assert response.success and response.message


def test_track_ids_persist_across_frames(harness):
    # The random model scores ~0.25: lower ByteTrack's thresholds (all in one atomic change).
    results = harness.set_params(track_ids=True, track_low_score=0.05, track_high_score=0.2,
                                 track_new_score=0.2)
    assert all(r.successful for r in results), [r.reason for r in results]
    rgb = _frame(9)
    first = harness.send_until_result(rgb, sec=700)
    second = harness.send_until_result(rgb, sec=701)
    ids_first = sorted(d.object_id for d in first.detections)
    ids_second = sorted(d.object_id for d in second.detections)
    assert ids_first and ids_first == ids_second  # the same scene keeps its ids
    assert max(d.age_frames for d in second.detections) >= 1
    bad = harness.set_params(track_high_score=0.9)  # above track_new_score 0.2: refused
    assert not bad[0].successful and "track" in bad[0].reason.lower()
    assert harness.set_params(track_ids=False)[0].successful


def test_lifecycle_reload_and_compressed_input(harness, tiny_checkpoint):
    assert harness.state() == "active"
    assert harness.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert harness.state() == "inactive"
    assert harness.lifecycle(Transition.TRANSITION_CLEANUP)
    assert harness.state() == "unconfigured"
    # Unconfigured: reload parameters are accepted; a bad model makes configure fail with
    # the reason logged, and the node stays up.
    assert harness.set_params(model="/does/not/exist")[0].successful
    assert not harness.lifecycle(Transition.TRANSITION_CONFIGURE)
    assert harness.state() == "unconfigured"
    assert "does not exist" in harness.node.output()
    assert harness.set_params(model=str(tiny_checkpoint), input_kind="compressed")[0].successful
    assert harness.lifecycle(Transition.TRANSITION_CONFIGURE)
    assert harness.lifecycle(Transition.TRANSITION_ACTIVATE)
    rgb = _frame(8)
    msg = numpy_to_compressed_msg(rgb[..., ::-1].copy(), "bgr8", "png")
    msg.header.stamp.sec = 600
    msg.header.frame_id = "camera"

    def got():
        harness.compressed_pub.publish(msg)
        return [d for d in harness.detections() if d.header.stamp.sec == 600]

    result = wait_for(got, 60, "detections from compressed input", harness.node, poll_s=0.2)[0]
    assert (result.image_width, result.image_height) == (160, 120)


@pytest.mark.parametrize("input_kind", ["raw", "compressed"])
def test_image_qos_override_reaches_the_camera_subscription(tiny_checkpoint, input_kind):
    # A user's `qos_overrides` (e.g. a driver that only offers reliable) applies to the
    # serialized-sample subscription as to any other, raw and compressed alike.
    ns = f"/qos_{input_kind}"
    topic = f"{ns}/camera/image" + ("/compressed" if input_kind == "compressed" else "")
    cmd = node_command("segmenter", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug"], "input_kind": input_kind,
        f"qos_overrides.{topic}.subscription.reliability": "reliable",
        f"qos_overrides.{topic}.subscription.depth": 3,
    }, remaps={"__ns": ns, "image": f"{ns}/camera/image",
               "image/compressed": f"{ns}/camera/image/compressed"})
    node = NodeProcess(cmd)
    client = Client(f"qos_{input_kind}_client")
    try:
        wait_for(lambda: client.node.get_subscriptions_info_by_topic(topic), 300,
                 "the node to subscribe", node)
        qos = client.node.get_subscriptions_info_by_topic(topic)[0].qos_profile
        assert qos.reliability == ReliabilityPolicy.RELIABLE  # (depth is not on the graph)
        rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        if input_kind == "compressed":
            pub = client.node.create_publisher(CompressedImage, topic, reliable)
            msg = numpy_to_compressed_msg(rgb, "rgb8", "png")
        else:
            pub = client.node.create_publisher(Image, topic, reliable)
            msg = numpy_to_image_msg(rgb, "rgb8")
        msg.header.stamp.sec, msg.header.frame_id = 5, "cam"
        client.subscribe(DetectionArray, f"{ns}/segmenter/detections")

        def answered():
            pub.publish(msg)
            return [d for d in client.messages(f"{ns}/segmenter/detections")
                    if d.header.stamp.sec == 5 and d.header.frame_id == "cam"]

        wait_for(answered, 120, "a result", node, poll_s=0.3)
    finally:
        client.close()
        node.stop()


def _has_events_executor() -> bool:
    try:
        from rclpy.experimental import EventsExecutor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_events_executor(), reason="rclpy without EventsExecutor (Humble)")
def test_node_runs_on_the_events_executor(tiny_checkpoint):
    # `--executor events`: frames, a service, a parameter, a lifecycle round trip and a clean
    # Ctrl-C, as on the default executor.
    ns = "/events_exec"
    cmd = node_command("segmenter", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True, "prompts": ["mug"],
        "score_threshold": SCORE_THRESHOLD,
    }, remaps={"__ns": ns, "image": f"{ns}/camera/image"}, args=["--executor", "events"])
    node = NodeProcess(cmd)
    client = Client("events_exec_client")
    try:
        harness = Harness(node, client, ns)
        first = harness.send_until_result(_frame(1), 1, timeout_s=300)
        assert (first.image_width, first.image_height) == (160, 120)
        response = client.call(SetPrompts, f"{ns}/segmenter/set_prompts", SetPrompts.Request(
            prompts=[Prompt(text="bottle")]))
        assert response.success, response.message
        assert harness.set_params(score_threshold=0.5)[0].successful
        assert harness.lifecycle(Transition.TRANSITION_DEACTIVATE)
        assert harness.lifecycle(Transition.TRANSITION_ACTIVATE)
        later = harness.send_until_result(_frame(2), 2)
        assert all(d.score >= 0.5 and d.label == "bottle" for d in later.detections)
    finally:
        client.close()
        node.stop()
    assert node.proc.returncode == 0, node.output()[-2000:]
    assert "Traceback" not in node.output()


@pytest.mark.parametrize(("argv", "message"), [
    (["segmenter", "--executor", "threads"], "--executor 'threads': expected single_threaded"),
    (["segmenter", "--model", "x"], "unknown arguments: --model x (node options go after"),
    (["segmenter", "--exec", "events"], "unknown arguments: --exec events"),  # no abbreviation
    (["segmenter", "--ros-args", "-p", "model"], "segmenter: invalid ROS arguments:"),
    (["segmenter", "--ros-args", "--params-file", "/nonexistent/p.yaml"],
     "segmenter: invalid ROS arguments:"),
])
def test_node_executables_refuse_unknown_options(argv, message, capsys):
    from sam3_ros.ros.segmenter_node import main

    assert main(argv) == 2  # before rclpy.init: nothing to shut down
    assert message in capsys.readouterr().err
