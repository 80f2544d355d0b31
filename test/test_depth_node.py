"""3D outputs of the segmenter node over real DDS: colour + depth + camera_info published from
this process, the node in its own process. Checks that the 3D outputs agree with the 2D masks
of the same frame, that missing or bad depth / camera info never stops the 2D outputs, and
that diagnostics say why a frame had no 3D."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sam3_ros.msg import Detection3DArray, DetectionArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from sam3_ros.ros.image_conversions import numpy_to_image_msg  # noqa: E402
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros

NS = "/depth_test"
H, W = 120, 160
FX, FY, CX, CY = 100.0, 110.0, 79.5, 59.5
FRAME = "cam_optical"


def _camera_info(sec: int, fx: float = FX, width: int = W, height: int = H) -> CameraInfo:
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob",
                     d=[0.0] * 5)
    msg.k = [fx, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.header.stamp.sec = sec
    msg.header.frame_id = FRAME
    return msg


def _depth(sec: int, value_m: float = 1.5, shape: tuple[int, int] = (H, W),
           encoding: str = "32FC1") -> Image:
    if encoding == "32FC1":
        msg = Image(height=shape[0], width=shape[1], encoding="32FC1", step=shape[1] * 4)
        msg.data = np.full(shape, value_m, np.float32).tobytes()
    else:
        msg = numpy_to_image_msg(np.full(shape, round(value_m * 1000), np.uint16), "16UC1")
    msg.header.stamp.sec = sec
    msg.header.frame_id = "depth_frame_ignored"
    return msg


def _colour(sec: int) -> Image:
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    msg = numpy_to_image_msg(rgb, "rgb8")
    msg.header.stamp.sec = sec
    msg.header.frame_id = "colour_frame"
    return msg


class Harness:
    def __init__(self, node: NodeProcess, client: Client):
        self.node, self.client = node, client
        make = client.node.create_publisher
        self.image_pub = make(Image, f"{NS}/camera/image", 10)
        self.depth_pub = make(Image, f"{NS}/camera/depth", 10)
        self.info_pub = make(CameraInfo, f"{NS}/camera/info", 10)
        client.subscribe(DetectionArray, f"{NS}/segmenter/detections")
        for msg_type, name in ((Detection3DArray, "detections_3d"), (PointCloud2, "points"),
                               (MarkerArray, "markers")):
            client.subscribe(msg_type, f"{NS}/segmenter/{name}")
        client.subscribe(DiagnosticArray, "/diagnostics")

    def by_stamp(self, topic: str, sec: int) -> list:
        return [m for m in self.client.messages(topic) if m.header.stamp.sec == sec]

    def send(self, sec: int, depth: Image | None = None, info: CameraInfo | None = None,
             want_3d: bool = True) -> tuple[DetectionArray, Detection3DArray | None]:
        """Publish (again, until the node answers) depth and camera info, then the colour
        frame; wait for its 2D detections and, with want_3d, its 3D detections."""
        def got():
            if info is not None:
                self.info_pub.publish(info)
            if depth is not None:
                self.depth_pub.publish(depth)
            self.image_pub.publish(_colour(sec))
            have_2d = self.by_stamp(f"{NS}/segmenter/detections", sec)
            have_3d = self.by_stamp(f"{NS}/segmenter/detections_3d", sec)
            return (have_2d and (have_3d or not want_3d)) and (have_2d, have_3d)

        have_2d, have_3d = wait_for(got, 90, f"outputs of frame {sec}", self.node, poll_s=0.3)
        return have_2d[0], (have_3d[0] if have_3d else None)

    def depth_status(self, predicate, what: str) -> DiagnosticStatus:
        """Wait for a diagnostics status of the node whose depth_status satisfies predicate."""
        def find():
            for array in reversed(self.client.messages("/diagnostics")):
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if NS in status.name and predicate(values.get("depth_status", "")):
                        return status
            return None

        return wait_for(find, 20, what, self.node, poll_s=0.2)


@pytest.fixture(scope="module")
def harness(tiny_checkpoint):
    cmd = node_command("segmenter", {
        "model": str(tiny_checkpoint), "device": "cpu", "autostart": True,
        "prompts": ["mug", "bottle"], "score_threshold": 0.25, "max_detections": 1000,
        "publish_overlay": False, "publish_mask_image": False,
        "depth_enabled": True, "depth_erode_px": 0, "depth_outlier_k": 0.0,
        "box_percentile": 0.0, "min_points": 1, "max_object_points": 1000000,
        "points_stride": 1, "depth_max_dt": 0.05,
    }, remaps={"__ns": NS, "image": f"{NS}/camera/image", "depth": f"{NS}/camera/depth",
               "camera_info": f"{NS}/camera/info"})
    node = NodeProcess(cmd)
    client = Client("depth_test_client")
    try:
        yield Harness(node, client)
    finally:
        client.close()
        node.stop()


def test_without_camera_info_2d_goes_out_and_diagnostics_warn(harness):
    # First test of the module: no camera info has been published yet.
    detections, _ = harness.send(10, depth=_depth(10), want_3d=False)
    assert detections.header.stamp.sec == 10
    status = harness.depth_status(lambda s: "camera_info" in s, "the missing camera_info")
    assert status.level == DiagnosticStatus.WARN
    assert "no camera_info received" in status.message
    assert not harness.by_stamp(f"{NS}/segmenter/detections_3d", 10)


def _check_consistent(detections: DetectionArray, objects: Detection3DArray, z_m: float,
                      exact_xy: bool) -> None:
    assert objects.header.stamp == detections.header.stamp
    assert objects.header.frame_id == FRAME  # the camera info's frame, not the image's
    assert objects.depth_stamp.sec == detections.header.stamp.sec
    assert any(o.valid for o in objects.detections), "no object to check"
    ids_2d = [(d.object_id, d.class_id, d.label) for d in detections.detections]
    assert [(o.object_id, o.class_id, o.label) for o in objects.detections] == ids_2d
    for det, obj in zip(detections.detections, objects.detections, strict=True):
        assert obj.valid == (det.mask_area_px > 0)
        if not obj.valid:
            continue
        assert obj.centroid.z == pytest.approx(z_m, abs=1e-5)
        assert obj.bbox_size.z == pytest.approx(0.0, abs=1e-5)
        if exact_xy:
            # Erosion off, all depth valid: the points are exactly the mask's pixels.
            assert obj.num_points == det.mask_area_px
            assert obj.centroid.x == pytest.approx(z_m * (det.centroid_x - CX) / FX, abs=1e-4)
            assert obj.centroid.y == pytest.approx(z_m * (det.centroid_y - CY) / FY, abs=1e-4)
        else:  # half-resolution depth: within a colour pixel
            assert obj.centroid.x == pytest.approx(z_m * (det.centroid_x - CX) / FX,
                                                   abs=1.5 * z_m / FX)


def test_constant_depth_puts_every_centroid_at_z_and_xy_through_k(harness):
    harness.client.clear()
    detections, objects = harness.send(20, depth=_depth(20, 1.5), info=_camera_info(20))
    assert detections.detections, "the tiny model at 0.25 should give instances"
    _check_consistent(detections, objects, 1.5, exact_xy=True)
    valid_ids = {o.object_id for o in objects.detections if o.valid}
    cloud = wait_for(lambda: harness.by_stamp(f"{NS}/segmenter/points", 20), 10, "cloud",
                     harness.node)[0]
    assert cloud.header.frame_id == FRAME
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "instance", "class_id"]
    assert cloud.width == sum(o.num_points for o in objects.detections if o.valid)
    points = np.frombuffer(bytes(cloud.data), np.dtype(
        [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance", "<i4"), ("class_id", "<i4")]))
    np.testing.assert_allclose(points["z"], 1.5)
    assert set(points["instance"].tolist()) == valid_ids
    markers = wait_for(lambda: [a for a in harness.client.messages(f"{NS}/segmenter/markers")
                                if a.markers and a.markers[0].header.stamp.sec == 20], 10,
                       "markers", harness.node)[0]
    boxes = {m.id for m in markers.markers if m.ns == "boxes" and m.action == Marker.ADD}
    labels = {m.id for m in markers.markers if m.ns == "labels" and m.action == Marker.ADD}
    assert boxes == labels == valid_ids
    harness.depth_status(lambda s: s == "ok", "depth_status ok")


def test_half_resolution_16uc1_depth(harness):
    detections, objects = harness.send(
        30, depth=_depth(30, 0.75, (H // 2, W // 2), "16UC1"), info=_camera_info(30))
    _check_consistent(detections, objects, 0.75, exact_xy=False)


def test_depth_of_another_frame_id_is_warned_about_once(harness):
    # Unregistered depth of the same aspect ratio passes every size check: said once per
    # pair of frame ids (these tests' depth says "depth_frame_ignored").
    for sec in (35, 36):
        harness.send(sec, depth=_depth(sec, 0.75), info=_camera_info(sec))
    warning = "depth frame_id 'depth_frame_ignored' differs from the colour camera's"
    assert harness.node.output().count(warning) == 1


def test_late_depth_skips_3d_then_recovers(harness):
    # Depth 200 ms older than the colour frame: outside depth_max_dt (50 ms).
    late = _depth(39)
    late.header.stamp.nanosec = 800_000_000
    detections, _ = harness.send(40, depth=late, info=_camera_info(40), want_3d=False)
    assert detections.header.stamp.sec == 40
    status = harness.depth_status(lambda s: "older" in s, "late depth in diagnostics")
    assert status.level == DiagnosticStatus.WARN and "depth_max_dt" in status.message
    assert not harness.by_stamp(f"{NS}/segmenter/detections_3d", 40)
    _, objects = harness.send(41, depth=_depth(41), info=_camera_info(41))
    assert objects is not None
    harness.depth_status(lambda s: s == "ok", "recovery")


def _bad_encoding(sec: int) -> Image:
    msg = _depth(sec)
    msg.encoding = "rgb8"
    return msg


def _huge(sec: int) -> Image:
    msg = _depth(sec)
    msg.width, msg.height, msg.step = 50000, 50000, 200000  # claims 10 GB, carries 77 kB
    return msg


def _truncated(sec: int) -> Image:
    msg = _depth(sec)
    msg.data = bytes(10)
    return msg


def _nan_focal(sec: int) -> CameraInfo:
    return _camera_info(sec, fx=float("nan"))


@pytest.mark.parametrize("sec,depth,info,reason", [
    (50, _bad_encoding, _camera_info, "unsupported depth encoding 'rgb8'"),
    (52, lambda s: _depth(s, shape=(100, 100)), _camera_info, "not registered"),
    (54, _huge, _camera_info, "side limit"),
    (56, _truncated, _camera_info, "data has 10 bytes"),
    (58, _depth, lambda s: _camera_info(s, fx=0.0), "focal lengths must be > 0"),
    (60, _depth, _nan_focal, "non-finite"),
    (62, _depth, lambda s: _camera_info(s, width=100, height=100), "not registered"),
], ids=["encoding", "size-mismatch", "too-large", "truncated", "zero-focal", "nan-focal",
        "info-size"])
def test_bad_depth_or_camera_info_reported_and_next_frame_processed(harness, sec, depth,
                                                                     info, reason):
    detections, _ = harness.send(sec, depth=depth(sec), info=info(sec), want_3d=False)
    assert detections.header.stamp.sec == sec  # 2D is never held back
    status = harness.depth_status(lambda s: reason in s, f"'{reason}' in diagnostics")
    assert status.level == DiagnosticStatus.WARN
    assert not harness.by_stamp(f"{NS}/segmenter/detections_3d", sec)
    _, objects = harness.send(sec + 1, depth=_depth(sec + 1), info=_camera_info(sec + 1))
    assert objects is not None and harness.node.alive()


def test_malformed_serialized_depth_is_dropped_and_next_frame_processed(harness):
    # The depth subscription reads serialized samples itself (raw): a cut sample is dropped
    # in the callback with a log line; its colour frame goes out in 2D without 3D.
    from rclpy.serialization import serialize_message

    sample = serialize_message(_depth(70))
    detections, _ = harness.send(70, depth=sample[:len(sample) // 2], info=_camera_info(70),
                                 want_3d=False)
    assert detections.header.stamp.sec == 70
    wait_for(lambda: "depth sample dropped: serialized image truncated" in harness.node.output(),
             20, "the dropped sample's log line", harness.node)
    assert not harness.by_stamp(f"{NS}/segmenter/detections_3d", 70)
    _, objects = harness.send(71, depth=_depth(71), info=_camera_info(71))
    assert objects is not None and harness.node.alive()


def test_markers_are_deleted_when_the_node_stops_and_after_it_starts(harness):
    # Markers have no lifetime: without a DELETEALL a deactivated (or crashed and restarted)
    # node's last boxes would stay in RViz forever.
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    topic = f"{NS}/segmenter/markers"
    _, objects = harness.send(80, depth=_depth(80), info=_camera_info(80))
    assert any(o.valid for o in objects.detections)
    wait_for(lambda: [a for a in harness.client.messages(topic) if any(
        m.header.stamp.sec == 80 and m.action == Marker.ADD for m in a.markers)],
        10, "markers of frame 80", harness.node)
    harness.client.clear(topic)

    def change(transition: int) -> None:
        request = ChangeState.Request(transition=Transition(id=transition))
        assert harness.client.call(ChangeState, f"{NS}/segmenter/change_state", request).success

    change(Transition.TRANSITION_DEACTIVATE)
    # (Markers of a re-sent copy of frame 80 may still arrive before it.)
    deleted = wait_for(lambda: [a for a in harness.client.messages(topic)
                                if [m.action for m in a.markers] == [Marker.DELETEALL]],
                       10, "a DELETEALL", harness.node)
    assert deleted[0].markers[0].ns == "" and deleted[0].markers[0].header.frame_id == FRAME
    change(Transition.TRANSITION_ACTIVATE)
    harness.send(81, depth=_depth(81), info=_camera_info(81))
    first = wait_for(lambda: [a for a in harness.client.messages(topic) if a.markers
                              and a.markers[0].header.stamp.sec == 81], 10, "markers",
                     harness.node)[0]
    # Whatever an earlier run of this topic showed goes first, then this frame's boxes (in
    # the same message, or in the next if this copy of the frame had no 3D).
    assert first.markers[0].action == Marker.DELETEALL
    assert {m.action for m in first.markers[1:]} <= {Marker.ADD}
    wait_for(lambda: any(m.action == Marker.ADD for a in harness.client.messages(topic)
                         for m in a.markers if m.header.stamp.sec == 81), 10,
             "the boxes of frame 81", harness.node)


def test_inference_slower_than_the_depth_buffer_still_gets_3d(tiny_checkpoint):
    """600 ms of inference per frame (injected) with colour and depth at 30 Hz: the 8 newest
    depth frames span 0.27 s, so every frame's own depth had been evicted by the time its
    detections were out ("nearest is 33.3 ms newer"): no 3D at all on a slow model."""
    import time

    from in_process import in_process_node

    from sam3_ros.ros.segmenter_node import SegmenterNode

    class SlowSegmenter(SegmenterNode):
        def _process(self, *args, **kwargs):
            if not kwargs.get("warmup"):
                time.sleep(0.6)
            return super()._process(*args, **kwargs)

    ns = "/slow_depth"
    with in_process_node(SlowSegmenter, "segmenter", ns, {
            "model": str(tiny_checkpoint), "device": "cpu", "prompts": ["mug"],
            "score_threshold": 0.0, "depth_enabled": True, "depth_max_dt": 0.005}) as node:
        _check_slow_depth(node, ns)


def _check_slow_depth(node, ns: str) -> None:
    import time

    from rclpy.lifecycle import TransitionCallbackReturn as R

    client = Client("slow_depth_client")
    make = client.node.create_publisher
    image_pub, depth_pub = make(Image, f"{ns}/image", 10), make(Image, f"{ns}/depth", 10)
    info_pub = make(CameraInfo, f"{ns}/camera_info", 10)
    client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
    client.subscribe(Detection3DArray, f"{ns}/segmenter/detections_3d")
    count = [0]
    colour, depth = _colour(0), _depth(0)

    def publish():  # depth first, as aligned depth often arrives; same stamps
        stamp = 100_000_000_000 + count[0] * 33_333_333
        for msg in (depth, colour):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        info_pub.publish(_camera_info(100))
        depth_pub.publish(depth)
        image_pub.publish(colour)
        count[0] += 1

    timer = None
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        timer = client.node.create_timer(1 / 30, publish)
        wait_for(lambda: len(client.messages(f"{ns}/segmenter/detections")) >= 4, 120,
                 "4 slow frames")
        time.sleep(0.3)  # the last frame's 3D follows its 2D
        frames_2d = client.messages(f"{ns}/segmenter/detections")
        stamps_3d = {(m.header.stamp.sec, m.header.stamp.nanosec)
                     for m in client.messages(f"{ns}/segmenter/detections_3d")}
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in frames_2d]
        assert np.median(np.diff(stamps)) > 400_000_000, "not slower than the camera"
        with_3d = [m for m in frames_2d
                   if (m.header.stamp.sec, m.header.stamp.nanosec) in stamps_3d]
        assert len(with_3d) >= len(frames_2d) - 1, (len(with_3d), len(frames_2d),
                                                    node._depth.warning())
        assert len(node._depth._depth) <= 8 + 2 * (2 + 8)
    finally:
        if timer is not None:
            client.node.destroy_timer(timer)
        client.close()


def test_3d_parameters_that_disagree_are_refused_not_silently_idle(tiny_checkpoint):
    """Each value within its own range, together unusable (min_depth >= max_depth,
    max_object_points < 4 x min_points): every frame would publish no 3D with only a
    throttled warning. Configure fails with the reason; a live change is refused, the old
    value kept; with 3D off nothing is judged."""
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from sam3_ros.ros.segmenter_node import SegmenterNode

    with in_process_node(SegmenterNode, "segmenter", "/depth_params", {
            "model": str(tiny_checkpoint), "device": "cpu", "depth_enabled": True,
            "min_depth": 0.5, "max_depth": 0.2}, spin=False) as node:
        assert node.trigger_configure() == R.FAILURE
        # Unconfigured, each set is accepted (configure judges): two rules broken at once
        # can be fixed one parameter at a time.
        for name, value in (("min_points", 1000), ("max_depth", 4.0), ("min_points", 20)):
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert result.successful, result.reason
        assert node.trigger_configure() == R.SUCCESS
        result = node.set_parameters([Parameter("min_points", value=1000)])[0]
        assert not result.successful
        assert result.reason == ("3D parameters: max_object_points (2000) must be at least 4 x "
                                 "min_points (1000)")
        assert node.param("min_points") == 20
        result = node.set_parameters([Parameter("max_depth", value=0.3)])[0]
        assert not result.successful and "need 0 < min_depth (0.5) < max_depth (0.3)" in \
            result.reason
        # Both at once, agreeing: accepted.
        results = node.set_parameters_atomically([Parameter("min_points", value=1000),
                                                  Parameter("max_object_points", value=4000)])
        assert results.successful, results.reason


def test_3d_parameters_are_not_judged_with_3d_off(tiny_checkpoint):
    from in_process import in_process_node
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from sam3_ros.ros.segmenter_node import SegmenterNode

    with in_process_node(SegmenterNode, "segmenter", "/depth_params_off", {
            "model": str(tiny_checkpoint), "device": "cpu", "min_depth": 0.5,
            "max_depth": 0.2}, spin=False) as node:
        assert node.set_parameters([Parameter("min_points", value=1000)])[0].successful
        assert node.trigger_configure() == R.SUCCESS


def test_two_alternating_camera_infos_do_not_rebuild_the_rays_every_frame(monkeypatch):
    """Two publishers on one camera_info topic (or a driver alternating two calibrations):
    a distorted grid takes a fraction of a second at 720p on the output thread, and the one
    cached grid was rebuilt on every frame. Kept per camera now (least recently used out)."""
    from sam3_ros.core.camera_model import CameraModel
    from sam3_ros.ros import depth_outputs

    built = []
    monkeypatch.setattr(depth_outputs, "ray_grid", lambda camera: built.append(camera) or camera)
    outputs = depth_outputs.DepthOutputs(node=None)
    cameras = [CameraModel(640, 480, 500.0 + i, 500.0, 320.0, 240.0, "plumb_bob",
                           (0.1, 0.0, 0.0, 0.0, 0.0)) for i in range(3)]
    for _ in range(5):
        for camera in cameras[:2]:
            assert outputs._rays_for(camera, (480, 640)) == camera
    assert built == cameras[:2]
    outputs._rays_for(cameras[2], (480, 640))  # a third: the least recently used leaves
    outputs._rays_for(cameras[1], (480, 640))
    outputs._rays_for(cameras[0], (480, 640))
    assert built == [*cameras[:3], cameras[0]]
