"""Tracker node and composed pipeline over real DDS (nodes in their own processes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from sam3_ros.msg import BoxPrompt, DetectionArray, ObjectPrompt, PointPrompt  # noqa: E402
from sam3_ros.srv import AddObjects, RemoveObjects, SetPrompts  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from sam3_ros.ros.image_conversions import numpy_to_image_msg  # noqa: E402
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros
H, W = 90, 120
PERIOD_NS = 50_000_000


class Camera:
    """Streams frames at ~20 Hz (an executor timer) while the test calls services."""

    def __init__(self, client: Client, topic: str):
        self.pub = client.node.create_publisher(Image, topic, 10)
        base = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        self.frames = [np.roll(base, i, axis=1) for i in range(8)]
        self.count = 0
        self._node = client.node
        self._timer = client.node.create_timer(0.05, self._publish)

    def _publish(self) -> None:
        msg = numpy_to_image_msg(self.frames[self.count % len(self.frames)], "rgb8")
        stamp = self.count * PERIOD_NS
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = "camera"
        self.pub.publish(msg)
        self.count += 1

    def stop(self) -> None:
        self._node.destroy_timer(self._timer)


def _obj(object_id: int, x: float, y: float, positive: bool = True, label: str = ""):
    # float(): rclpy skips field type checks by default, and an int in a float field aborts
    # the *sending* process in the C conversion.
    return ObjectPrompt(object_id=object_id, label=label,
                        points=[PointPrompt(x=float(x), y=float(y), positive=positive)])


@pytest.fixture(scope="module")
def tracker(tiny_checkpoint):
    ns = "/trk_test"
    node = NodeProcess(node_command("tracker", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True, "max_objects": 4,
        "score_threshold": 0.0, "max_time_gap_s": 5.0,
    }, remaps={"__ns": ns}))
    client = Client("tracker_test_client")
    client.subscribe(DetectionArray, f"{ns}/tracker/detections")
    wait_for(lambda: client.node.count_subscribers(f"{ns}/image") > 0, 120, "tracker active",
             node)
    camera = Camera(client, f"{ns}/image")
    try:
        yield ns, node, client
    finally:
        camera.stop()
        client.close()
        node.stop()


def _latest_ids(client: Client, ns: str, after: float) -> list[int] | None:
    timed = client.messages_with_times(f"{ns}/tracker/detections")
    fresh = [m for t, m in timed if t > after]
    return [d.object_id for d in fresh[-1].detections] if fresh else None


def _wait_ids(client, ns, node, predicate, what):
    start = time.monotonic()
    return wait_for(lambda: (ids := _latest_ids(client, ns, start)) is not None
                    and predicate(ids) and ids, 60, what, node)


def test_prompt_services_while_streaming(tracker):
    ns, node, client = tracker
    call = client.call
    response = call(AddObjects, f"{ns}/tracker/add_objects", AddObjects.Request(objects=[
        _obj(7, 40, 30, label="mug"),
        ObjectPrompt(object_id=-1, box=[BoxPrompt(x_min=60.0, y_min=40.0, x_max=110.0,
                                                  y_max=85.0)])]))
    assert response.success, response.message
    assert list(response.object_ids) == [7, 8]
    _wait_ids(client, ns, node, lambda ids: ids == [7, 8], "objects 7 and 8")
    # ids persist across frames
    for _ in range(3):
        _wait_ids(client, ns, node, lambda ids: ids == [7, 8], "objects kept")
    latest = client.messages(f"{ns}/tracker/detections")[-1]
    assert latest.header.frame_id == "camera"
    assert latest.detections[0].label == "mug" and latest.detections[0].class_id == -1
    assert latest.detections[0].age_frames > 0

    refine = call(AddObjects, f"{ns}/tracker/add_objects", AddObjects.Request(
        refine=True, objects=[_obj(7, 45, 35, positive=False)]))
    assert refine.success and list(refine.object_ids) == [7]

    bad = {
        "unknown refine": AddObjects.Request(refine=True, objects=[_obj(99, 5, 5)]),
        "duplicate id": AddObjects.Request(objects=[_obj(7, 5, 5)]),
        "nan point": AddObjects.Request(objects=[_obj(20, float("nan"), 5)]),
        "outside": AddObjects.Request(objects=[_obj(20, 500, 5)]),
        "too many": AddObjects.Request(objects=[_obj(20 + i, 5 + i, 5) for i in range(3)]),
        "negative box": AddObjects.Request(objects=[ObjectPrompt(object_id=30, box=[BoxPrompt(
            x_min=1.0, y_min=1.0, x_max=9.0, y_max=9.0, positive=False)])]),
        "empty": AddObjects.Request(),
    }
    for what, request in bad.items():
        answer = call(AddObjects, f"{ns}/tracker/add_objects", request)
        assert not answer.success and answer.message, what
    missing = call(RemoveObjects, f"{ns}/tracker/remove_objects",
                   RemoveObjects.Request(object_ids=[42]))
    assert not missing.success and "42" in missing.message
    empty_text = call(SetPrompts, f"{ns}/tracker/set_prompts", SetPrompts.Request(texts=[""]))
    assert not empty_text.success
    _wait_ids(client, ns, node, lambda ids: ids == [7, 8], "stream goes on after bad requests")

    removed = call(RemoveObjects, f"{ns}/tracker/remove_objects",
                   RemoveObjects.Request(object_ids=[7]))
    assert removed.success
    _wait_ids(client, ns, node, lambda ids: ids == [8], "object 7 removed")

    # Text prompt: every instance is tracked; new objects are picked up next to object 8.
    text = call(SetPrompts, f"{ns}/tracker/set_prompts", SetPrompts.Request(texts=["bottle"]))
    assert text.success and list(text.class_ids) == [0]
    ids = _wait_ids(client, ns, node, lambda ids: len(ids) > 1, "text-prompted objects")
    assert 8 in ids and len(ids) <= 4  # max_objects
    latest = client.messages(f"{ns}/tracker/detections")[-1]
    assert {d.label for d in latest.detections if d.class_id == 0} == {"bottle"}

    reset = call(Trigger, f"{ns}/tracker/reset", Trigger.Request())
    assert reset.success
    call(SetPrompts, f"{ns}/tracker/set_prompts", SetPrompts.Request(texts=[]))
    assert "still alive" if node.alive() else False


def test_pipeline_loads_once_and_shares_the_backbone(tiny_checkpoint):
    """Segmenter + tracker in one process: one model load, one backbone pass per frame."""
    from diagnostic_msgs.msg import DiagnosticArray

    ns = "/pipe_test"
    node = NodeProcess(node_command("pipeline", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "score_threshold": 0.0,
    }, remaps={"__ns": ns}))
    client = Client("pipeline_test_client")
    seg, trk = f"{ns}/segmenter/detections", f"{ns}/tracker/detections"

    def backbone_calls() -> int | None:
        for msg in reversed(client.messages("/diagnostics")):
            for status in msg.status:
                if "pipe_test/tracker" in status.name:
                    values = {kv.key: kv.value for kv in status.values}
                    return int(values["backbone_calls"])
        return None

    try:
        client.subscribe(DetectionArray, seg)
        client.subscribe(DetectionArray, trk)
        client.subscribe(DiagnosticArray, "/diagnostics")
        pub = client.node.create_publisher(Image, f"{ns}/image", 10)
        wait_for(lambda: pub.get_subscription_count() >= 2, 120, "both nodes subscribed", node)
        answer = client.call(AddObjects, f"{ns}/tracker/add_objects",
                             AddObjects.Request(objects=[_obj(1, 40, 30)]))
        assert answer.success, answer.message
        assert client.call(SetPrompts, f"{ns}/segmenter/set_prompts",
                           SetPrompts.Request(texts=["mug"])).success
        client.clear("/diagnostics")
        before = wait_for(lambda: backbone_calls() is not None, 10, "diagnostics", node)
        before = backbone_calls()
        rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
        frames = 5
        sent = []
        for i in range(1, frames + 1):
            msg = numpy_to_image_msg(np.roll(rgb, i, axis=1), "rgb8")
            msg.header.stamp.sec = i

            def both_results(i=i, msg=msg):
                done = (any(m.header.stamp.sec == i for m in client.messages(seg))
                        and any(m.header.stamp.sec == i for m in client.messages(trk)))
                if not done:
                    pub.publish(msg)  # again until both nodes have it (best-effort QoS)
                    sent.append(i)
                return done

            wait_for(both_results, 60, f"both results for frame {i}", node, poll_s=0.3)
        tracked = client.messages(trk)[-1]
        history = [(m.header.stamp.sec, [d.object_id for d in m.detections])
                   for m in client.messages(trk)]
        assert [d.object_id for d in tracked.detections] == [1], (
            f"tracker results (stamp, ids): {history}\nnode log:\n{node.output()[-6000:]}")
        client.clear("/diagnostics")
        wait_for(lambda: backbone_calls() is not None, 10, "diagnostics", node)
        after = backbone_calls()
        assert node.output().count("1 model load(s) in this process") == 2
        assert "2 model load(s)" not in node.output()
    finally:
        client.close()
        node.stop()
    # One pass per frame for both nodes (without sharing: two). A copy re-sent after a node
    # had read the frame may be encoded again, once per node (features are released once
    # both have read them), so the count is exact only when nothing was re-sent - the usual
    # case; without sharing it would exceed the bound either way.
    passes, resent = after - before, len(sent) - frames
    assert frames <= passes <= frames + 2 * resent, f"{passes} passes, frames sent: {sent}"
