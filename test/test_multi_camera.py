"""Several cameras in one process over real DDS: one model, one runtime, no crossed streams.

The `pipeline` executable runs in its own process with `--cameras`; this test publishes a
different image per camera and checks each camera's outputs against a direct call of the same
model on that camera's image, the diagnostics (one model load, batched backbone passes, per
camera counters), and that a prompt change or lifecycle transition of one camera leaves the
others alone.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sam3_ros.msg import DetectionArray  # noqa: E402
from sam3_ros.srv import SetPrompts  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sam3_ros.core.model_loading import load_sam3  # noqa: E402
from sam3_ros.core.prompts import PromptSpec  # noqa: E402
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, SegmenterSession  # noqa: E402
from sam3_ros.ros.image_conversions import numpy_to_image_msg  # noqa: E402
from sam3_ros.ros.pipeline import PipelineArgumentError, parse_arguments  # noqa: E402
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros

SCORE_THRESHOLD = 0.2


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def _image_msg(rgb: np.ndarray, sec: int, frame_id: str) -> Image:
    msg = numpy_to_image_msg(rgb, "rgb8")
    msg.header.stamp.sec = sec
    msg.header.frame_id = frame_id
    return msg


@pytest.mark.parametrize(("argv", "reason"), [
    (["--cameras", "front", "front"], "listed twice"),
    (["--cameras", "9front"], "not a valid namespace"),
    (["--cameras", "a/../b"], "not a valid namespace"),
    (["--nodes", "detector"], "expected segmenter, tracker"),
    (["--nodes", "segmenter,segmenter"], "expected segmenter, tracker"),
    (["--max-batch", "0"], "--max-batch must be in"),
    (["--max-batch", "17"], "--max-batch must be in"),
    (["--cameras", *[f"c{i}" for i in range(17)]], "at most 16"),
    (["--frobnicate"], "unknown arguments"),
    (["--cameras", "front:detector"], "node kinds after ':'"),
    (["--cameras", "front:tracker", "front"], "listed twice"),
    (["--cameras", "front", "/front"], "listed twice"),  # one namespace
    (["--cameras", ":tracker"], "no camera name"),
    (["--executor", "multi"], "--executor 'multi': expected single_threaded or events"),
    (["--cam", "front"], "unknown arguments: --cam front"),  # no abbreviations
])
def test_pipeline_arguments_refused_with_reason(argv, reason):
    with pytest.raises(PipelineArgumentError, match=reason):
        parse_arguments(argv)


def test_a_process_wide_namespace_with_cameras_is_refused(tmp_path):
    """`-r __ns:=` (what a launch PushRosNamespace passes) replaces every camera's namespace:
    the cameras' nodes would share one name, topics and services. Refused with the reason,
    exit status 2, before any model work."""
    import subprocess

    for cameras, named in (
            (["front", "wrist"], "/robot/segmenter (camera front), /robot/segmenter (camera "
                                 "wrist)"),
            # Names that do not collide: one camera, or cameras of different kinds.
            (["front"], "/robot/segmenter (camera front)"),
            (["front:tracker", "wrist"], "/robot/tracker (camera front), /robot/segmenter "
                                         "(camera wrist)")):
        command = node_command("pipeline", {}, args=["--cameras", *cameras, "--nodes",
                                                     "segmenter"], remaps={"__ns": "/robot"})
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"pipeline: the cameras' namespaces were replaced: {named};" in done.stderr
        assert "Traceback" not in done.stderr


def test_pipeline_arguments_accept_comma_and_space_lists():
    args = parse_arguments(["--cameras", "front,wrist", "/robot/base", "--nodes", "tracker",
                            "--max-batch", "2"])
    assert args.cameras == ["front", "wrist", "/robot/base"]
    assert args.kinds == ["tracker"] and args.max_batch == 2
    assert parse_arguments([]).cameras == []
    assert parse_arguments([]).streams == [(None, ["segmenter", "tracker"])]
    assert parse_arguments([]).executor == "single_threaded"


def test_pipeline_cameras_may_name_their_own_node_kinds():
    args = parse_arguments(["--cameras", "front,wrist:tracker", "/robot/base:segmenter+tracker",
                            "--nodes", "segmenter"])
    assert args.cameras == ["front", "wrist", "/robot/base"]
    assert args.streams == [("front", ["segmenter"]), ("wrist", ["tracker"]),
                            ("/robot/base", ["segmenter", "tracker"])]


class Cameras:
    def __init__(self, node: NodeProcess, client: Client, names: list[str]):
        self.node, self.client, self.names = node, client, names
        self.pubs = {n: client.node.create_publisher(Image, f"/{n}/image", 10) for n in names}
        for n in names:
            client.subscribe(DetectionArray, f"/{n}/segmenter/detections")
        client.subscribe(DiagnosticArray, "/diagnostics")

    def detections(self, camera: str) -> list[DetectionArray]:
        return self.client.messages(f"/{camera}/segmenter/detections")

    def send_all_until_results(self, sec: int, timeout_s: float = 120.0) -> dict:
        """Publish every camera's frame with stamp `sec` (again, until subscribed) and wait
        until every camera answered it."""
        msgs = {n: _image_msg(_frame(i), sec, f"{n}_optical") for i, n in enumerate(self.names)}

        def got():
            results = {}
            for n in self.names:
                mine = [d for d in self.detections(n) if d.header.stamp.sec == sec]
                if mine:
                    results[n] = mine[0]
                else:
                    self.pubs[n].publish(msgs[n])
            return results if len(results) == len(self.names) else None

        return wait_for(got, timeout_s, f"results of stamp {sec} on every camera", self.node,
                        poll_s=0.3)

    def diagnostics(self, camera: str) -> dict[str, str]:
        for msg in reversed(self.client.messages("/diagnostics")):
            for status in msg.status:
                if status.name.startswith(f"/{camera}/segmenter"):
                    return {kv.key: kv.value for kv in status.values}
        return {}


def _start(tiny_checkpoint, names: list[str], max_batch: int):
    cmd = node_command("pipeline", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug"], "score_threshold": SCORE_THRESHOLD, "max_detections": 1000,
        "publish_overlay": False, "publish_mask_image": False, "track_ids": False,
    }, args=["--cameras", *names, "--nodes", "segmenter", "--max-batch", str(max_batch)])
    return NodeProcess(cmd)


def _reference(checkpoint, rgb: np.ndarray):
    loaded = load_sam3(str(checkpoint), device="cpu")
    session = SegmenterSession(
        Sam3Segmenter(loaded), SegmenterConfig(score_threshold=SCORE_THRESHOLD,
                                               max_detections=1000), [PromptSpec("mug")])
    detections, _ = session.process(rgb)
    return detections


@pytest.mark.parametrize("count", [2, 4])
def test_each_camera_gets_its_own_results_from_one_model(tiny_checkpoint, count):
    names = [f"cam{i}" for i in range(count)]
    node = _start(tiny_checkpoint, names, max_batch=count)
    client = Client(f"multi_camera_client_{count}")
    try:
        cameras = Cameras(node, client, names)
        for sec in range(1, 6):
            results = cameras.send_all_until_results(sec)
        for i, name in enumerate(names):
            msg = results[name]
            assert msg.header.frame_id == f"{name}_optical"  # no crossed streams
            ref = _reference(tiny_checkpoint, _frame(i))
            got = np.array([[d.x_min, d.y_min, d.x_max, d.y_max]
                            for d in msg.detections], np.float32).reshape(-1, 4)
            assert len(msg.detections) == len(ref), name
            # Batched and unbatched backbone passes differ by float rounding only.
            np.testing.assert_allclose(got, ref.xyxy, atol=1.0)
            np.testing.assert_allclose([d.score for d in msg.detections], ref.scores,
                                       atol=1e-3)
        # The images differ per camera, so do their detections.
        boxes = {n: tuple(round(d.x_min, 1) for d in results[n].detections)
                 for n in names}
        assert len(set(boxes.values())) > 1
        diag = wait_for(lambda: cameras.diagnostics(names[-1]).get("runtime_cycles") and
                        cameras.diagnostics(names[-1]), 10, "diagnostics", node)
        assert diag["model_loads"] == "1"
        passes, cycles = int(diag["runtime_backbone_passes"]), int(diag["runtime_cycles"])
        assert passes <= cycles  # at most one pass per cycle (one model)
        assert int(diag["runtime_largest_batch"]) <= count
        for name in names:
            # Diagnostics are published on a timer: the newest status may predate the
            # last frame, so wait for one that counts all five.
            stats = wait_for(
                lambda name=name: (int(cameras.diagnostics(name).get("processed", "0")) >= 5
                                   and cameras.diagnostics(name)), 10,
                f"diagnostics of {name} counting 5 frames", node)
            assert stats["errors"] == "0", (name, stats)
    finally:
        client.close()
        node.stop()


def test_one_cameras_prompts_and_lifecycle_leave_the_others_alone(tiny_checkpoint):
    names = ["front", "wrist"]
    node = _start(tiny_checkpoint, names, max_batch=2)
    client = Client("multi_camera_isolation_client")
    try:
        cameras = Cameras(node, client, names)
        cameras.send_all_until_results(1)
        response = client.call(SetPrompts, "/front/segmenter/set_prompts",
                               SetPrompts.Request(texts=["bottle", "cup"]))
        assert response.success, response.message
        results = cameras.send_all_until_results(2)
        assert results["front"].prompt_generation != results["wrist"].prompt_generation
        assert {d.label for d in results["wrist"].detections} <= {"mug"}
        assert {d.label for d in results["front"].detections} <= {"bottle", "cup"}
        deactivate = ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        assert client.call(ChangeState, "/front/segmenter/change_state", deactivate).success
        state = client.call(GetState, "/wrist/segmenter/get_state", GetState.Request())
        assert state.current_state.label == "active"
        # The wrist camera keeps streaming while the front node is inactive.
        front_before = len(cameras.detections("front"))
        msg = _image_msg(_frame(1), 3, "wrist_optical")
        wait_for(lambda: cameras.pubs["wrist"].publish(msg) or [
            d for d in cameras.detections("wrist") if d.header.stamp.sec == 3], 60,
            "wrist result while front is inactive", node, poll_s=0.3)
        cameras.pubs["front"].publish(_image_msg(_frame(0), 3, "front_optical"))
        time.sleep(1.0)
        assert len(cameras.detections("front")) == front_before
        activate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))
        assert client.call(ChangeState, "/front/segmenter/change_state", activate).success
        cameras.send_all_until_results(4)
    finally:
        client.close()
        node.stop()


def test_cameras_mix_a_segmenter_and_a_tracker_in_one_process(tiny_checkpoint):
    # front runs a segmenter, wrist a tracker: one process, one model load.
    cmd = node_command("pipeline", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug"], "score_threshold": SCORE_THRESHOLD,
        "publish_overlay": False, "publish_mask_image": False,
    }, args=["--cameras", "front", "wrist:tracker", "--nodes", "segmenter"])
    node = NodeProcess(cmd)
    client = Client("multi_camera_mixed_client")
    try:
        topics = {"front": "/front/segmenter/detections", "wrist": "/wrist/tracker/detections"}
        pubs = {n: client.node.create_publisher(Image, f"/{n}/image", 10) for n in topics}
        for topic in topics.values():
            client.subscribe(DetectionArray, topic)
        client.subscribe(DiagnosticArray, "/diagnostics")
        for sec in (1, 2):
            msgs = {n: _image_msg(_frame(i), sec, f"{n}_optical") for i, n in enumerate(topics)}

            def got(msgs=msgs, sec=sec):
                missing = [n for n, t in topics.items()
                           if not [d for d in client.messages(t) if d.header.stamp.sec == sec]]
                for n in missing:
                    pubs[n].publish(msgs[n])
                return not missing

            wait_for(got, 120, f"both cameras' results of stamp {sec}", node, poll_s=0.3)
        for name, topic in topics.items():
            assert {d.header.frame_id for d in client.messages(topic)} == {f"{name}_optical"}
        nodes = {f"{ns.rstrip('/')}/{n}" for n, ns in client.node.get_node_names_and_namespaces()}
        assert {"/front/segmenter", "/wrist/tracker"} <= nodes
        assert not {"/front/tracker", "/wrist/segmenter"} & nodes

        def model_loads():
            for msg in reversed(client.messages("/diagnostics")):
                for status in msg.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if status.name.startswith("/wrist/tracker") and "model_loads" in values:
                        return values["model_loads"]
            return None

        assert wait_for(model_loads, 10, "diagnostics", node) == "1"
    finally:
        client.close()
        node.stop()
