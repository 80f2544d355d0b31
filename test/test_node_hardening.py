"""Hostile and real-world conditions over real DDS: two nodes side by side in one namespace,
user parameter mistakes, ids at type limits, oversized inputs, a model slower than the camera,
lifecycle publishers, quiet Ctrl-C. The node must stay alive, refuse with a reason, and process
the next good frame."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters  # noqa: E402
from sam3_ros.msg import (  # noqa: E402
    BoxPrompt,
    DetectionArray,
    ObjectPrompt,
    PointPrompt,
    Prompt,
)
from sam3_ros.srv import AddObjects, RemoveObjects, SetPrompts  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from sam3_ros.ros.image_conversions import numpy_to_image_msg  # noqa: E402
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros
NS = "/side"
H, W = 90, 120
INT32_MAX = 2**31 - 1


def _frame(stamp_ns: int, seed: int = 0) -> Image:
    rgb = np.roll(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8),
                  seed, axis=1)
    msg = numpy_to_image_msg(rgb, "rgb8")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "camera"
    return msg


def _obj(object_id: int, x: float = 40.0, y: float = 30.0, label: str = "") -> ObjectPrompt:
    return ObjectPrompt(object_id=object_id, label=label,
                        points=[PointPrompt(x=float(x), y=float(y), positive=True)])


class Camera:
    """Publishes frames from an executor timer; stamps advance by `stamp_step_ns` per frame."""

    def __init__(self, client: Client, period_s: float, stamp_step_ns: int):
        self.pub = client.node.create_publisher(Image, f"{NS}/image", 10)
        self.count = 0
        self.step = stamp_step_ns
        self._node = client.node
        self._timer = client.node.create_timer(period_s, self._publish)

    def _publish(self) -> None:
        self.pub.publish(_frame(1_000_000_000 + self.count * self.step, self.count % 8))
        self.count += 1

    def stop(self) -> None:
        self._node.destroy_timer(self._timer)


@pytest.fixture(scope="module")
def side_by_side(tiny_checkpoint):
    """A segmenter and a tracker started standalone in the same namespace on one camera; the
    segmenter gets `prompts:=person` (one string, no brackets)."""
    common = {"model": str(tiny_checkpoint), "device": "cpu", "autostart": True}
    remaps = {"__ns": NS, "image": f"{NS}/image"}
    cmd = node_command("segmenter", {**common, "score_threshold": 0.25}, remaps=remaps)
    cmd.insert(cmd.index("--ros-args") + 1, "-p")
    cmd.insert(cmd.index("--ros-args") + 2, "prompts:=person")
    segmenter = NodeProcess(cmd)
    tracker = NodeProcess(node_command("tracker", {**common, "max_objects": 4}, remaps=remaps))
    client = Client("hardening_test_client")
    for node in ("segmenter", "tracker"):
        client.subscribe(DetectionArray, f"{NS}/{node}/detections")
    client.subscribe(DiagnosticArray, "/diagnostics")
    camera = Camera(client, period_s=0.01, stamp_step_ns=10_000_000)
    try:
        for node, process in (("segmenter", segmenter), ("tracker", tracker)):
            wait_for(lambda n=node: client.messages(f"{NS}/{n}/detections"), 300,
                     f"{node} streaming", process)
        yield client, segmenter, tracker
    finally:
        camera.stop()
        client.close()
        segmenter.stop()
        tracker.stop()


def _get_param(client: Client, node: str, name: str):
    response = client.call(GetParameters, f"{NS}/{node}/get_parameters",
                           GetParameters.Request(names=[name]))
    return response.values[0]


def test_two_nodes_in_one_namespace_never_share_a_name(side_by_side):
    client, segmenter, tracker = side_by_side
    graph = client.node
    for node in ("segmenter", "tracker"):
        for topic in ("detections", "mask", "overlay", "label_info"):
            assert graph.count_publishers(f"{NS}/{node}/{topic}") == 1, (node, topic)
    # Each node answers its own services (a segmenter request is never the tracker's).
    seg = client.call(SetPrompts, f"{NS}/segmenter/set_prompts", SetPrompts.Request(
        texts=["person"]))
    assert seg.success and "prompt(s) active" in seg.message
    trk = client.call(SetPrompts, f"{NS}/tracker/set_prompts", SetPrompts.Request(texts=[]))
    assert trk.success and "tracking" in trk.message
    services = {name for name, _ in graph.get_service_names_and_types()}
    assert {f"{NS}/segmenter/reset", f"{NS}/tracker/reset", f"{NS}/tracker/add_objects"} <= \
        services
    assert f"{NS}/reset" not in services and f"{NS}/set_prompts" not in services
    assert segmenter.alive() and tracker.alive()


def test_single_string_prompt_becomes_a_list(side_by_side):
    client, _, _ = side_by_side
    value = _get_param(client, "segmenter", "prompts")
    assert value.type == ParameterType.PARAMETER_STRING_ARRAY
    assert list(value.string_array_value) == ["person"]


def test_parameter_descriptors_carry_ranges(side_by_side):
    client, _, _ = side_by_side
    response = client.call(DescribeParameters, f"{NS}/segmenter/describe_parameters",
                           DescribeParameters.Request(names=["score_threshold",
                                                             "max_detections"]))
    score, count = response.descriptors
    assert (score.floating_point_range[0].from_value,
            score.floating_point_range[0].to_value) == (0.0, 1.0)
    assert count.integer_range[0].from_value == 1
    refused = client.call(SetParameters, f"{NS}/segmenter/set_parameters", SetParameters.Request(
        parameters=[Parameter(name="score_threshold", value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=7.0))]))
    assert not refused.results[0].successful and refused.results[0].reason


def test_ids_at_int32_limits_never_end_the_node(side_by_side):
    client, _, tracker = side_by_side
    srv = f"{NS}/tracker/add_objects"
    top = client.call(AddObjects, srv, AddObjects.Request(objects=[_obj(INT32_MAX)]))
    assert top.success, top.message
    assert list(top.object_ids) == [INT32_MAX]
    auto = client.call(AddObjects, srv, AddObjects.Request(objects=[_obj(-1, 60, 40)]))
    assert auto.success, auto.message
    assert 0 <= auto.object_ids[0] <= INT32_MAX
    negative = client.call(AddObjects, srv, AddObjects.Request(objects=[_obj(-2)]))
    assert not negative.success and "id" in negative.message
    removed = client.call(RemoveObjects, f"{NS}/tracker/remove_objects", RemoveObjects.Request(
        object_ids=[INT32_MAX, auto.object_ids[0]]))
    assert removed.success, f"{removed.message}\ntracker log:\n{tracker.output()[-3000:]}"
    assert tracker.alive()


@pytest.mark.parametrize(("service", "request_factory", "match"), [
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1)] * 5000), "max_objects"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[ObjectPrompt(
        object_id=-1, points=[PointPrompt(x=1.0, y=1.0, positive=True)] * 20000)]), "points"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1, math.nan, 3)]),
     "finite"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1, 1e30, 1e30)]),
     "outside"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1, label="x" * 10_000)]),
     "label"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[]), "no objects"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1)], stamp=Time(
        sec=1, nanosec=1_000_000_000)), "not a valid time"),
    ("tracker/add_objects", lambda: AddObjects.Request(objects=[_obj(-1)], stamp=Time(
        sec=-1, nanosec=999_999_999)), "not a valid time"),
    ("tracker/remove_objects", lambda: RemoveObjects.Request(object_ids=list(range(200_000))),
     "ids"),
    ("tracker/remove_objects", lambda: RemoveObjects.Request(object_ids=[123456]), "unknown"),
    ("tracker/set_prompts", lambda: SetPrompts.Request(texts=["a"] * 5000), "at most"),
    ("segmenter/set_prompts", lambda: SetPrompts.Request(texts=["a"] * 5000), "at most"),
    ("segmenter/set_prompts", lambda: SetPrompts.Request(texts=["y" * 20_000]), "characters"),
    # Megabytes of "a a a ...": refused on its length, before its words are split.
    ("segmenter/set_prompts", lambda: SetPrompts.Request(texts=["a " * 2_000_000]),
     "4000000 characters"),
    ("tracker/set_prompts", lambda: SetPrompts.Request(texts=["a " * 2_000_000]),
     "4000000 characters"),
    ("segmenter/set_prompts", lambda: SetPrompts.Request(texts=[""]), "empty"),
    ("segmenter/set_prompts", lambda: SetPrompts.Request(prompts=[Prompt(
        text="cup", exemplar_boxes=[BoxPrompt(x_min=1.0, y_min=1.0, x_max=5.0, y_max=5.0,
                                              positive=True)] * 10_000)]), "exemplar boxes"),
    ("segmenter/set_prompts", lambda: SetPrompts.Request(prompts=[Prompt(
        text="cup", exemplar_boxes=[BoxPrompt(x_min=math.inf, y_min=1.0, x_max=5.0,
                                              y_max=5.0)])]), "finite"),
])
def test_hostile_requests_are_refused_with_a_reason(side_by_side, service, request_factory,
                                                    match):
    client, segmenter, tracker = side_by_side
    srv_type = {"add_objects": AddObjects, "remove_objects": RemoveObjects,
                "set_prompts": SetPrompts}[service.split("/")[1]]
    response = client.call(srv_type, f"{NS}/{service}", request_factory())
    assert not response.success
    assert match in response.message, response.message
    assert segmenter.alive() and tracker.alive()


def test_request_violating_a_sequence_bound_leaves_the_node_serving(side_by_side):
    """`ObjectPrompt.box` is `BoxPrompt[<=1]`: three boxes cannot be deserialised, so DDS
    drops the request before the node sees it (no answer). The node must keep serving."""
    client, _, tracker = side_by_side
    bad = AddObjects.Request(objects=[ObjectPrompt(
        object_id=-1, box=[BoxPrompt(x_min=1.0, y_min=1.0, x_max=2.0, y_max=2.0)] * 3)])
    try:
        answer = client.call(AddObjects, f"{NS}/tracker/add_objects", bad, timeout_s=5.0)
    except TimeoutError:
        answer = None
    assert answer is None or not answer.success
    assert tracker.alive()
    ok = client.call(SetPrompts, f"{NS}/tracker/set_prompts", SetPrompts.Request(texts=[]))
    assert ok.success


def test_flood_of_service_calls_while_streaming(side_by_side):
    """200 calls at once on two services while frames stream. ROS services keep 10 requests
    in their queue by default (services QoS), so DDS may discard part of a burst before the
    node sees it; every request that is answered must be answered correctly, the node must
    stay alive, answer the next call and keep processing frames."""
    client, segmenter, tracker = side_by_side
    node = client.node
    clients = [node.create_client(Trigger, f"{NS}/segmenter/reset"),
               node.create_client(SetPrompts, f"{NS}/tracker/set_prompts")]
    try:
        for c in clients:
            assert c.wait_for_service(timeout_sec=30)
        futures = []
        for i in range(100):
            futures.append(clients[0].call_async(Trigger.Request()))
            futures.append(clients[1].call_async(SetPrompts.Request(texts=[] if i % 2 else
                                                                    ["", "x" * 300])))
        time.sleep(20.0)
        answered = [(i, f.result()) for i, f in enumerate(futures) if f.done()]
        assert len(answered) >= 20, f"only {len(answered)} of 200 answered"
        for i, result in answered:
            expected = i % 2 == 0 or i % 4 == 3  # resets and the valid prompt sets
            assert result.success == expected, (i, result.message)
    finally:
        for c in clients:
            node.destroy_client(c)
    assert segmenter.alive() and tracker.alive()
    assert client.call(Trigger, f"{NS}/segmenter/reset", Trigger.Request()).success
    start = time.monotonic()
    wait_for(lambda: any(t > start for t, _ in client.messages_with_times(
        f"{NS}/segmenter/detections")), 60, "frames after the flood", segmenter)


def test_oversized_frame_is_refused_before_allocating_and_diagnostics_recover(side_by_side):
    client, segmenter, _ = side_by_side
    huge = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000)
    huge.data = bytes(16)  # declares 10 gigapixels in 16 bytes
    huge.header.frame_id = "camera"
    client.clear("/diagnostics")
    pub = client.node.create_publisher(Image, f"{NS}/image", 10)
    try:
        def warned():
            pub.publish(huge)
            for array in client.messages("/diagnostics"):
                for status in array.status:
                    if ("segmenter" in status.name and status.level == DiagnosticStatus.WARN
                            and "max_image_pixels" in status.message):
                        return status
            return None

        wait_for(warned, 120, "a WARN naming max_image_pixels", segmenter, poll_s=0.2)
    finally:
        client.node.destroy_publisher(pub)
    assert segmenter.alive()
    # Good frames keep coming from the camera: the status returns to OK.
    client.clear("/diagnostics")
    wait_for(lambda: any(s.level == DiagnosticStatus.OK for a in client.messages("/diagnostics")
                         for s in a.status if "segmenter" in s.name), 30,
             "diagnostics back to OK", segmenter)


@pytest.mark.parametrize("damage", ["truncated", "hostile data length", "hostile frame_id"])
def test_malformed_serialized_frames_are_refused(side_by_side, damage):
    # The camera subscription reads serialized samples itself (raw): a sample no DDS
    # deserializer would accept reaches the node's own reader and must be refused there.
    from rclpy.serialization import serialize_message

    client, segmenter, tracker = side_by_side
    sample = serialize_message(_frame(2_000_000_000))
    data_length_at = len(sample) - H * W * 3 - 4
    assert int.from_bytes(sample[data_length_at:data_length_at + 4], "little") == H * W * 3
    if damage == "truncated":
        bad = sample[:len(sample) // 2]
    elif damage == "hostile data length":
        bad = sample[:data_length_at] + b"\xff\xff\xff\xff" + sample[data_length_at + 4:]
    else:  # header.frame_id's length, right after the stamp
        bad = sample[:12] + b"\xff\xff\xff\xff" + sample[16:]
    expected = "frame_id" if damage == "hostile frame_id" else "truncated in data"
    client.clear("/diagnostics")
    pub = client.node.create_publisher(Image, f"{NS}/image", 10)
    try:
        def warned():
            pub.publish(bad)
            return any("segmenter" in status.name and status.level == DiagnosticStatus.WARN
                       and expected in status.message
                       for array in client.messages("/diagnostics") for status in array.status)

        wait_for(warned, 120, f"a WARN naming {expected!r}", segmenter, poll_s=0.2)
    finally:
        client.node.destroy_publisher(pub)
    assert segmenter.alive() and tracker.alive()
    # Good frames keep coming from the camera: both nodes go on answering.
    for node in ("segmenter", "tracker"):
        client.clear(f"{NS}/{node}/detections")
        wait_for(lambda n=node: client.messages(f"{NS}/{n}/detections"), 30,
                 f"{node} answering again", segmenter if node == "segmenter" else tracker)


def test_prompt_parameters_follow_the_services(side_by_side):
    client, _, _ = side_by_side
    assert client.call(SetPrompts, f"{NS}/tracker/set_prompts",
                       SetPrompts.Request(texts=["mug", "bottle"])).success
    assert list(_get_param(client, "tracker", "prompts").string_array_value) == ["mug", "bottle"]
    assert client.call(SetPrompts, f"{NS}/tracker/set_prompts", SetPrompts.Request()).success
    assert list(_get_param(client, "tracker", "prompts").string_array_value) == [""]
    box = BoxPrompt(x_min=10.0, y_min=20.0, x_max=80.5, y_max=90.0, positive=False)
    assert client.call(SetPrompts, f"{NS}/segmenter/set_prompts", SetPrompts.Request(
        texts=["person"], prompts=[Prompt(text="", exemplar_boxes=[box])])).success
    assert list(_get_param(client, "segmenter", "prompts").string_array_value) == ["person", ""]
    assert list(_get_param(client, "segmenter", "prompt_boxes").string_array_value) == [
        "1 10 20 80.5 90 -"]
    # A set the parameters cannot show (33 x 32 boxes > 1024 items) is refused: it was
    # applied with success while prompt_boxes kept the old value, so a later `prompts`
    # change re-read the old boxes.
    huge = [Prompt(text=f"p{i}", exemplar_boxes=[box] * 32) for i in range(33)]
    response = client.call(SetPrompts, f"{NS}/segmenter/set_prompts",
                           SetPrompts.Request(prompts=huge))
    assert not response.success
    assert response.message == ("1056 exemplar boxes in the set; the prompt_boxes parameter "
                                "holds at most 1024")
    assert list(_get_param(client, "segmenter", "prompts").string_array_value) == ["person", ""]
    assert client.call(SetPrompts, f"{NS}/segmenter/set_prompts",
                       SetPrompts.Request(texts=["person"])).success


def test_inactive_node_publishes_nothing_and_counters_restart(side_by_side):
    client, segmenter, _ = side_by_side

    def transition(transition_id: int) -> bool:
        return client.call(ChangeState, f"{NS}/segmenter/change_state", ChangeState.Request(
            transition=Transition(id=transition_id))).success

    assert transition(Transition.TRANSITION_DEACTIVATE)
    time.sleep(0.5)
    client.clear(f"{NS}/segmenter/detections")
    time.sleep(1.5)
    assert client.messages(f"{NS}/segmenter/detections") == []
    assert transition(Transition.TRANSITION_ACTIVATE)
    wait_for(lambda: client.messages(f"{NS}/segmenter/detections"), 60, "detections again",
             segmenter)
    client.clear("/diagnostics")

    def counters():
        for array in client.messages("/diagnostics"):
            for status in array.status:
                if "segmenter" in status.name:
                    return {kv.key: kv.value for kv in status.values}
        return None

    values = wait_for(counters, 10, "diagnostics", segmenter)
    # All counters restarted together at activation (the camera is at 100 Hz).
    assert int(values["errors"]) == 0  # the oversized frames before were counted then
    assert int(values["processed"]) <= int(values["received"]) < 2000


def _call_with_retries(client: Client, srv_type: type, name: str, request, attempts: int = 3):
    for attempt in range(attempts):
        try:
            return client.call(srv_type, name, request, timeout_s=20.0)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    return None


def test_wrong_startup_parameters_keep_the_node_alive(tiny_checkpoint):
    cmd = node_command("segmenter", {"model": str(tiny_checkpoint), "device": "cpu",
                                     "autostart": True, "score_threshold": 5.0,
                                     "max_detections": 3.5},
                       name="bad_params", remaps={"__ns": "/bad"})
    node = NodeProcess(cmd)
    client = Client("bad_params_client")
    try:
        wait_for(lambda: "configure failed: invalid parameter" in node.output(), 120,
                 "configure refusing the parameters", node)
        assert node.alive()
        out = node.output()
        assert "score_threshold must be <= 1.0" in out and "max_detections must be of type int" \
            in out
        # A response can be lost while a new service client is still being matched (DDS
        # discovery race, not the node): retry these idempotent calls.
        fix = _call_with_retries(client, SetParameters, "/bad/bad_params/set_parameters",
                                 SetParameters.Request(parameters=[
                Parameter(name="score_threshold", value=ParameterValue(
                    type=ParameterType.PARAMETER_DOUBLE, double_value=0.3)),
                Parameter(name="max_detections", value=ParameterValue(
                    type=ParameterType.PARAMETER_INTEGER, integer_value=3))]))
        assert all(r.successful for r in fix.results)
        try:  # not idempotent: on a lost response the state below says whether it worked
            configure = client.call(ChangeState, "/bad/bad_params/change_state",
                                    ChangeState.Request(transition=Transition(
                                        id=Transition.TRANSITION_CONFIGURE)), timeout_s=60.0)
            assert configure.success
        except TimeoutError:
            pass
        state = _call_with_retries(client, GetState, "/bad/bad_params/get_state",
                                   GetState.Request())
        assert state.current_state.label == "inactive"
    finally:
        client.close()
        node.stop()


def test_ctrl_c_while_frames_flow_is_quiet(tiny_checkpoint):
    node = NodeProcess(node_command("segmenter", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug"], "score_threshold": 0.25},
        name="quiet", remaps={"__ns": "/quiet", "image": "/quiet/image"}))
    client = Client("quiet_client")
    pub = client.node.create_publisher(Image, "/quiet/image", 10)
    client.subscribe(DetectionArray, "/quiet/quiet/detections")
    timer = client.node.create_timer(0.01, lambda: pub.publish(_frame(time.time_ns())))
    try:
        wait_for(lambda: len(client.messages("/quiet/quiet/detections")) > 5, 120, "streaming",
                 node)
        node.proc.send_signal(2)
        returncode = node.proc.wait(60)
        assert returncode == 0, node.output()[-4000:]
    finally:
        client.node.destroy_timer(timer)
        client.close()
        node.stop()
    tail = node.output().split("active: listening")[-1]
    for word in ("ERROR", "Traceback", "Exception", "error"):
        assert word not in tail, tail[-3000:]


_COMPONENT_CHECK = """
import sys, time
from importlib.metadata import entry_points

import rclpy
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rclpy.executors import SingleThreadedExecutor

checkpoint = sys.argv[1]
found = {ep.name: ep for ep in entry_points(group="rclpy_components")}
assert {"sam3_ros::SegmenterNode", "sam3_ros::TrackerNode"} <= set(found), sorted(found)
context = rclpy.Context()
rclpy.init(context=context)
executor = SingleThreadedExecutor(context=context)
try:
    cls = found["sam3_ros::SegmenterNode"].load()

    def param(name, **value):
        return Parameter(name=name, value=ParameterValue(**value))

    node = cls("front_segmenter", context=context, namespace="front", parameter_overrides=[
        param("model", type=ParameterType.PARAMETER_STRING, string_value=checkpoint),
        param("device", type=ParameterType.PARAMETER_STRING, string_value="cpu"),
        param("autostart", type=ParameterType.PARAMETER_BOOL, bool_value=True),
    ], cli_args=["--ros-args", "-r", "image:=/front/color/image_raw"])
    executor.add_node(node)
    deadline = time.monotonic() + 240
    while node._subscription is None and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    assert node.get_fully_qualified_name() == "/front/front_segmenter"
    assert node._subscription is not None, "autostart did not activate the node"
    assert node._subscription.topic_name == "/front/color/image_raw"
    topics = {name for name, _ in node.get_publisher_names_and_types_by_node(
        "front_segmenter", "/front")}
    assert "/front/front_segmenter/detections" in topics, topics
    node.stop_streaming()
    node.destroy_node()
finally:
    executor.shutdown()
    rclpy.shutdown(context=context)
print("COMPONENT_OK")
"""


def test_components_load_through_entry_points(tiny_checkpoint):
    """What an rclpy component container does: find the class by entry point, construct it
    with the node name, parameter messages, namespace and remapping cli_args, add it to an
    executor; autostart then configures and activates it. In a child process, as in a
    container, so that a crash there fails this test instead of ending the test run."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _COMPONENT_CHECK, str(tiny_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "COMPONENT_OK" in result.stdout, output[-4000:]


def test_tracker_slower_than_the_camera_keeps_its_objects(tiny_checkpoint):
    """A model made slower than the camera (600 ms injected per frame) with stamps 10 ms
    apart and max_time_gap_s 300 ms: the node processes about one frame in sixty, so processed
    stamps are ~600 ms apart, and service calls hold the executor for an inference, but the
    camera never paused, so nothing may reset."""
    import threading

    from rclpy.executors import SingleThreadedExecutor

    from sam3_ros.ros.tracker_node import TrackerNode

    class SlowTracker(TrackerNode):
        def _process(self, *args, **kwargs):
            time.sleep(0.6)
            return super()._process(*args, **kwargs)

    context = rclpy.Context()
    rclpy.init(context=context)
    node = SlowTracker("slow_tracker", context=context, namespace="/slow", parameter_overrides=[
        rclpy.parameter.Parameter("model", value=str(tiny_checkpoint)),
        rclpy.parameter.Parameter("device", value="cpu"),
        rclpy.parameter.Parameter("max_time_gap_s", value=0.3)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = Client("slow_client")
    pub = client.node.create_publisher(Image, "/slow/image", 10)
    client.subscribe(DetectionArray, "/slow/slow_tracker/detections")
    count = [0]

    def publish():
        pub.publish(_frame(1_000_000_000 + count[0] * 10_000_000, count[0] % 8))
        count[0] += 1

    timer = None
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        # Client and service matched before 100 Hz frames load DDS: under CI load the
        # first response was once dropped by rmw ("failed to send response (timeout)")
        # while the client's response reader was still being discovered.
        warm = client.call(AddObjects, "/slow/slow_tracker/add_objects", AddObjects.Request())
        assert not warm.success and "no objects" in warm.message
        timer = client.node.create_timer(0.01, publish)
        answer = client.call(AddObjects, "/slow/slow_tracker/add_objects",
                             AddObjects.Request(objects=[_obj(3)]))
        assert answer.success, answer.message

        def tracked():
            return [m for m in client.messages("/slow/slow_tracker/detections")
                    if [d.object_id for d in m.detections] == [3]]

        wait_for(lambda: len(tracked()) >= 2, 120, "object 3 tracked")
        # A service that waits for the compute thread holds the executor for a whole
        # (slow) inference: frames sent meanwhile are lost here, not paused by the camera.
        for _ in range(2):
            answer = client.call(SetPrompts, "/slow/slow_tracker/set_prompts",
                                 SetPrompts.Request(texts=[]))
            assert answer.success, answer.message
        frames = wait_for(lambda: len(tracked()) >= 8 and tracked(), 180,
                          "8 frames tracking object 3")
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in frames]
        assert np.median(np.diff(stamps)) > 300_000_000, "processed every frame: not slower"
        assert node._session.reset_count == 0, node._session.last_reset_reason
    finally:
        if timer is not None:
            client.node.destroy_timer(timer)
        client.close()
        node.stop_streaming()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


_LIFECYCLE_FAILURES = """
import sys
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn as R
from rclpy.parameter import Parameter
from sam3_ros.core.model_hub import ModelHub
from sam3_ros.ros.segmenter_node import SegmenterNode

checkpoint = sys.argv[1]
context = rclpy.Context()
rclpy.init(context=context)
base = [Parameter("model", value=checkpoint), Parameter("device", value="cpu"),
        Parameter("warmup", value=False)]


def subscriptions(node):
    return sorted(s.topic_name for s in node.subscriptions)


def set_prompts_servers(node):
    return len([s for s in node.services if s.srv_name.endswith("/set_prompts")])


try:
    # A bad qos_overrides value for camera_info: activate fails after the image and depth
    # subscriptions were made; each retry leaked another pair.
    node = SegmenterNode("seg_qos", context=context, parameter_overrides=[
        *base, Parameter("depth_enabled", value=True),
        Parameter("qos_overrides./camera_info.subscription.reliability", value="bogus")])
    assert node.trigger_configure() == R.SUCCESS
    for _ in range(3):
        assert node.trigger_activate() == R.FAILURE
        assert subscriptions(node) == [], subscriptions(node)
    assert node.trigger_cleanup() == R.SUCCESS
    node.destroy_node()

    # Creating the outputs fails inside configure: the model was acquired (and leaked, with
    # a second set of services at the next configure).
    hub = ModelHub()
    node = SegmenterNode("seg_outputs", context=context, model_hub=hub,
                         parameter_overrides=base)
    create = node._create_outputs

    def failing():
        node._create_outputs = create
        create()
        raise RuntimeError("rmw: cannot create publisher (injected)")

    node._create_outputs = failing
    assert node.trigger_configure() == R.FAILURE
    assert hub._models == {} and set_prompts_servers(node) == 0 and not node._configured
    assert node.trigger_configure() == R.SUCCESS and set_prompts_servers(node) == 1

    # An error inside activate after subscribing: the transition fails cleanly, inactive.
    publish = node._publish_label_info

    def failing_publish():
        node._publish_label_info = publish
        raise RuntimeError("injected")

    node._publish_label_info = failing_publish
    assert node.trigger_activate() == R.FAILURE
    assert subscriptions(node) == [] and node._stream is None
    assert node._state_machine.current_state[1] == "inactive"
    assert node.trigger_activate() == R.SUCCESS and subscriptions(node) == ["/image"]
    assert node.trigger_deactivate() == R.SUCCESS and node.trigger_cleanup() == R.SUCCESS
    assert hub._models == {} and set_prompts_servers(node) == 0
    node.destroy_node()

    # A node given its own runtime loads, warms and takes calls on that runtime's thread,
    # the one its frames run on (they ran on the process default's).
    from sam3_ros.core.runtime import Runtime

    own = Runtime(max_batch=1, name="own_runtime")
    default_calls = Runtime.default().stats.calls
    node = SegmenterNode("seg_own", context=context, runtime=own, parameter_overrides=base)
    assert node.trigger_configure() == R.SUCCESS
    node.set_parameters([Parameter("score_threshold", value=0.4)])
    assert own.stats.calls == 2 and Runtime.default().stats.calls == default_calls
    assert node.trigger_cleanup() == R.SUCCESS and own.stats.calls == 3
    node.destroy_node()
finally:
    rclpy.shutdown(context=context)
print("LIFECYCLE_OK")
"""


def test_failed_transitions_leave_nothing_behind(tiny_checkpoint):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _LIFECYCLE_FAILURES, str(tiny_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "LIFECYCLE_OK" in result.stdout, output[-4000:]


def test_counters_keep_their_values_until_activate_with_the_same_keys(tiny_checkpoint,
                                                                      monkeypatch):
    """Deactivate keeps the last activation's counters (they all restart at activate); the
    diagnostics carry the same keys in every state; the warm-up frame is not counted. Images
    nobody subscribes to (overlay, label image) are not drawn."""
    import threading

    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.ros import base_node
    from sam3_ros.ros.segmenter_node import SegmenterNode

    drawn = []
    for name in ("draw_overlay", "label_image"):
        real = getattr(base_node, name)
        monkeypatch.setattr(base_node, name, lambda *a, real=real, name=name, **k: (
            drawn.append(name), real(*a, **k))[1])

    context = rclpy.Context()
    rclpy.init(context=context)
    # A 1 MiB mask budget caps every frame of 640x480 at 3 instances: the warm-up frame too.
    node = SegmenterNode("seg_counters", context=context, namespace="/counters",
                         parameter_overrides=[
                             rclpy.parameter.Parameter("model", value=str(tiny_checkpoint)),
                             rclpy.parameter.Parameter("device", value="cpu"),
                             rclpy.parameter.Parameter("prompts", value=["mug", "cup"]),
                             rclpy.parameter.Parameter("score_threshold", value=0.0),
                             rclpy.parameter.Parameter("max_mask_memory_mb", value=1)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = Client("counters_client")
    pub = client.node.create_publisher(Image, "/counters/image", 10)
    client.subscribe(DetectionArray, "/counters/seg_counters/detections")
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        keys = set(node.stats())
        assert node.stats()["frames_at_mask_memory_cap"] == 0  # the warm-up is not a frame
        for i in range(2):
            msg = numpy_to_image_msg(np.random.default_rng(i).integers(
                0, 255, (480, 640, 3), dtype=np.uint8), "rgb8")
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1, i
            wait_for(lambda msg=msg: pub.publish(msg) or [
                m for m in client.messages("/counters/seg_counters/detections")
                if m.header.stamp.nanosec == msg.header.stamp.nanosec], 60, f"frame {i}")
        time.sleep(0.5)  # (frames are re-sent until answered: a few may still arrive)
        active = node.stats()
        assert active["processed"] >= 2
        assert active["frames_at_mask_memory_cap"] == active["processed"]
        assert drawn == []  # nobody subscribed to the overlay or the label image
        client.subscribe(Image, "/counters/seg_counters/overlay")
        wait_for(lambda: pub.publish(msg) or client.messages("/counters/seg_counters/overlay"),
                 60, "an overlay once subscribed")
        assert drawn and set(drawn) == {"draw_overlay"}
        time.sleep(0.5)
        active = node.stats()
        assert node.trigger_deactivate() == R.SUCCESS
        inactive = node.stats()
        assert set(inactive) == keys
        # Kept, not zeroed (a re-sent copy may have been counted after `active` was read).
        assert inactive["processed"] >= active["processed"] >= 2
        assert inactive["received"] >= active["received"]
        assert inactive["frames_at_mask_memory_cap"] == inactive["processed"]
        assert inactive["mean_heads_ms"] > 0
        time.sleep(0.3)
        assert node.stats()["processed"] == inactive["processed"]  # nothing runs now
        assert node.trigger_activate() == R.SUCCESS
        again = node.stats()
        assert set(again) == keys
        assert (again["received"], again["processed"], again["frames_at_mask_memory_cap"]) == (
            0, 0, 0)
    finally:
        client.close()
        node.stop_streaming()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_tracker_diagnostics_count_resets_and_the_requests_they_drop(tiny_checkpoint):
    """A reset after a service call succeeded drops the queued request: the log names it
    and `/diagnostics` counts it, per activation as every counter."""
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.core.tracker_objects import ObjectPromptSpec
    from sam3_ros.ros.tracker_node import TrackerNode

    with in_process_node(TrackerNode, "trk_counters", "/trk_counters", {
            "model": str(tiny_checkpoint), "device": "cpu", "max_time_gap_s": 1.0},
            spin=False) as node:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        stats = node.stats()
        assert (stats["automatic_resets"], stats["requests_dropped_by_reset"]) == (0, 0)
        session = node._session  # no camera: the test drives the session as the node would
        frame = np.zeros((90, 120, 3), np.uint8)
        (oid,) = session.add_objects([ObjectPromptSpec(-1, "", ((30.0, 30.0, True),))])
        node._process(frame, 10**9, None)
        session.add_objects([ObjectPromptSpec(oid, "", ((40.0, 40.0, True),))], refine=True)
        node._process(frame, 20 * 10**9, None)  # a 19 s gap: the stream resets
        stats = node.stats()
        assert (stats["automatic_resets"], stats["requests_dropped_by_reset"]) == (1, 1)
        assert session.last_reset_reason is None  # logged by the node, then cleared
        assert node.trigger_deactivate() == R.SUCCESS
        assert node.stats()["requests_dropped_by_reset"] == 1
        assert node.trigger_activate() == R.SUCCESS
        stats = node.stats()
        assert (stats["automatic_resets"], stats["requests_dropped_by_reset"]) == (0, 0)


def test_a_parameter_no_node_has_is_warned_about(tiny_checkpoint, capfd):
    """rclpy drops overrides a node does not declare: a typo in a params file left the
    default in force without a word. A tracker-only parameter given to a segmenter (a file
    keyed /** reaches both) is not warned about."""
    from in_process import in_process_node

    from sam3_ros.ros.segmenter_node import SegmenterNode

    with in_process_node(SegmenterNode, "segmenter", "/unknown_params", {
            "model": str(tiny_checkpoint), "score_treshold": 0.2, "max_objects": 3},
            spin=False) as node:
        assert node.param("score_threshold") == 0.5
    err = capfd.readouterr().err
    assert ("ignored: no sam3_ros node has the parameter(s) 'score_treshold' (did you mean "
            "'score_threshold'?) (from a params file, a launch SetParameter or -p): a typo?"
            ) in err
    assert "max_objects" not in err
    # Once per process: the pipeline's nodes all get the same overrides.
    with in_process_node(SegmenterNode, "segmenter", "/unknown_params_2", {
            "model": str(tiny_checkpoint), "score_treshold": 0.2}, spin=False):
        pass
    assert "score_treshold" not in capfd.readouterr().err


def test_deactivate_activate_pauses_the_tracker_without_a_reset(tiny_checkpoint):
    """The node did not listen while inactive: the stamp gap across the pause is its own, so
    the tracker keeps its objects and applies what was queued meanwhile. Before, the first
    frame after activate reset the stream (objects and queued requests gone) unless some
    unrelated callback had happened to stall the executor."""
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.ros.tracker_node import TrackerNode

    def frame(stamp_s: float) -> Image:
        msg = numpy_to_image_msg(np.zeros((90, 120, 3), np.uint8), "rgb8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp_s), int(stamp_s % 1 * 1e9)
        return msg

    def process(node, stamp_s: float) -> None:
        done = node.stats()["processed"] + 1
        node._on_image(frame(stamp_s))
        wait_for(lambda: node.stats()["processed"] >= done, 60, "the frame processed")

    with in_process_node(TrackerNode, "trk_pause", "/trk_pause", {
            "model": str(tiny_checkpoint), "device": "cpu", "max_time_gap_s": 1.0,
            "max_lost_frames": 1000}, spin=False) as node:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        added = node._on_add_objects(AddObjects.Request(objects=[_obj(-1, 30, 30)]),
                                     AddObjects.Response())
        assert added.success, added.message
        process(node, 1.0)
        process(node, 1.1)
        assert node._session.object_ids == list(added.object_ids)
        assert node.trigger_deactivate() == R.SUCCESS
        refined = node._on_add_objects(
            AddObjects.Request(objects=[_obj(added.object_ids[0], 40, 40)], refine=True),
            AddObjects.Response())
        assert refined.success, refined.message
        assert node.trigger_activate() == R.SUCCESS
        process(node, 30.0)  # the camera ran on for 29 s meanwhile
        stats = node.stats()
        assert (stats["automatic_resets"], stats["requests_dropped_by_reset"]) == (0, 0)
        assert node._session.object_ids == list(added.object_ids)
        process(node, 30.1)
        process(node, 2.0)  # a camera that jumps backwards still resets the stream
        assert node.stats()["automatic_resets"] == 1


@pytest.mark.parametrize("kind", ["segmenter", "tracker"])
def test_cleanup_of_the_last_user_frees_the_model(tiny_checkpoint, kind):
    """A per-activation counter baseline kept the tracker's session, and through it the
    model, alive after cleanup: the hub 'freed' it, the next configure loaded a second copy."""
    import gc
    import weakref

    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.core.model_hub import ModelHub
    from sam3_ros.ros.segmenter_node import SegmenterNode
    from sam3_ros.ros.tracker_node import TrackerNode

    hub = ModelHub(with_tracker=kind == "tracker")
    node_type = TrackerNode if kind == "tracker" else SegmenterNode
    with in_process_node(node_type, f"{kind}_frees", "/frees", {
            "model": str(tiny_checkpoint), "device": "cpu"}, spin=False, model_hub=hub) as node:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        detector = weakref.ref(node._model.loaded.detector)
        assert node.trigger_deactivate() == R.SUCCESS
        assert node.trigger_cleanup() == R.SUCCESS
        gc.collect()
        assert detector() is None, [type(r).__name__ for r in gc.get_referrers(detector())]
        assert node.trigger_configure() == R.SUCCESS  # and it configures again
        assert hub.loads == 2


def test_destroy_node_stops_the_threads_and_gives_the_model_back(tiny_checkpoint):
    """destroy_node() on an active node (no deactivate, no cleanup first): its stream left
    the runtime, its output thread stopped, the model freed; before, the thread blocked for
    ever and the stream kept node and model alive."""
    import gc
    import weakref

    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.core.model_hub import ModelHub
    from sam3_ros.ros.segmenter_node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        hub = ModelHub()
        node = SegmenterNode("segmenter", context=context, namespace="/destroyed",
                             model_hub=hub, parameter_overrides=[
                                 rclpy.parameter.Parameter("model", value=str(tiny_checkpoint)),
                                 rclpy.parameter.Parameter("device", value="cpu")])
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        detector = weakref.ref(node._model.loaded.detector)
        thread = node._output_thread
        runtime = node._runtime
        node.destroy_node()
        node.destroy_node()  # twice: harmless
        assert not thread.is_alive()
        assert all(s.name != "/destroyed/segmenter" for s in runtime.streams())
        gc.collect()
        assert detector() is None
    finally:
        rclpy.shutdown(context=context)


def test_a_failed_configure_frees_the_model_at_once(tiny_checkpoint):
    """The exception of a failed warm-up held the loaded model through its traceback (a
    reference cycle through the runtime's call, and the release ran inside the `except`), so
    the model, GPU memory included, lived until some later garbage collection."""
    import weakref

    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from sam3_ros.ros.segmenter_node import SegmenterNode

    refs = []

    class FailingWarmUp(SegmenterNode):
        def _warm_up(self) -> None:
            detector = self._model.loaded.detector  # a frame local the traceback keeps
            refs.append(weakref.ref(detector))
            raise RuntimeError("warm-up failed")

    with in_process_node(FailingWarmUp, "segmenter", "/failed_configure", {
            "model": str(tiny_checkpoint), "device": "cpu"}, spin=False) as node:
        assert node.trigger_configure() == R.FAILURE
        assert refs and refs[0]() is None  # no gc.collect here: freed by the node's release
