"""3D message conversions: CameraInfo / depth Image in, Detection3DArray, PointCloud2 and
MarkerArray out (no DDS)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from sensor_msgs.msg import CameraInfo, Image, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from sam3_ros.core.camera_model import InvalidCameraError, ray_grid
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.objects3d import (
    CLOUD_DTYPE,
    Depth3DConfig,
    cloud_points,
    marker_plan,
    objects_3d,
)
from sam3_ros.core.render import mask_crops
from sam3_ros.ros.depth_conversions import (
    MessagePool,
    camera_info_key,
    camera_model_from_info,
    cloud_to_msg,
    depth_msg_to_numpy,
    markers_to_msg,
    objects_to_msg,
    objects_to_vision_msgs,
)


def _info(**fields) -> CameraInfo:
    msg = CameraInfo(width=64, height=48, distortion_model="plumb_bob", d=[0.0] * 5)
    msg.k = [50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]
    msg.p = [40.0, 0.0, 30.0, 0.0, 0.0, 40.0, 20.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def _frame():
    masks = np.zeros((3, 48, 64), bool)
    masks[0, 10:20, 10:30] = True
    masks[1, 30:40, 40:60] = True  # no depth there: invalid
    masks[2, 0:2, 0:2] = True
    dets = Detections(np.array([[10, 10, 30, 20], [40, 30, 60, 40], [0, 0, 2, 2]], np.float32),
                      np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 48, 64, masks=masks,
                      object_ids=np.array([5, 6, 7]), labels=("mug", "bottle", "mug"))
    depth = np.full((48, 64), 800, np.uint16)
    depth[30:40, 40:60] = 0
    cam = camera_model_from_info(_info(), rectified=False)
    objs = objects_3d(mask_crops(dets), (48, 64), depth, 0.001, ray_grid(cam),
                      Depth3DConfig(erode_px=0, min_points=3))
    return dets, objs


def test_camera_info_k_or_p_and_errors():
    cam = camera_model_from_info(_info(), rectified=False)
    assert (cam.fx, cam.cx, cam.width_px) == (50.0, 31.5, 64)
    assert camera_model_from_info(_info(), rectified=True).fx == 40.0
    with pytest.raises(InvalidCameraError, match="focal"):
        camera_model_from_info(_info(k=[0.0] * 9), rectified=False)
    with pytest.raises(InvalidCameraError, match="plumb_bob takes"):
        camera_model_from_info(_info(d=[0.1, 0.2]), rectified=False)
    assert camera_info_key(_info()) != camera_info_key(_info(d=[0.1, 0, 0, 0, 0]))
    assert camera_info_key(_info()) == camera_info_key(_info())
    # A hostile D: refused on its length (the message's own array, not a copy of it).
    with pytest.raises(InvalidCameraError, match="D has 2000000 values, at most 14"):
        camera_model_from_info(_info(d=[0.0] * 2_000_000), rectified=False)


def test_depth_msg_to_numpy_and_limits():
    msg = Image(width=4, height=2, encoding="16UC1", step=8, data=bytes(range(16)))
    out = depth_msg_to_numpy(msg)
    assert out.shape == (2, 4) and out.dtype == np.uint16
    with pytest.raises(InvalidImageError, match="more than the 4 pixels"):
        depth_msg_to_numpy(msg, max_pixels=4)


def test_detection3d_array_keeps_ids_order_and_geometry():
    dets, objs = _frame()
    header = Header(frame_id="cam")
    header.stamp.sec = 3
    msg = objects_to_msg(objs, dets, header)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 3
    assert [(d.object_id, d.class_id, d.label) for d in msg.detections] == [
        (5, 1, "mug"), (6, 0, "bottle"), (7, 1, "mug")]
    assert [d.valid for d in msg.detections] == [True, False, True]
    assert [d.num_points for d in msg.detections] == [200, 0, 4]
    first = msg.detections[0]
    assert first.centroid.z == pytest.approx(0.8)
    assert first.centroid.x == pytest.approx(0.8 * (19.5 - 31.5) / 50.0, abs=1e-6)
    assert first.bbox_size.x == pytest.approx(objs.aabb_size_m[0, 0])
    assert first.obb_pose.orientation.w == pytest.approx(1.0)
    assert msg.detections[1].centroid.z == 0.0
    with pytest.raises(ValueError):
        objects_to_msg(objs, dets.select(np.array([0])), header)
    vision = objects_to_vision_msgs(objs, dets, header)
    if vision is not None:  # vision_msgs installed
        assert [d.id for d in vision.detections] == ["5", "7"]


def test_point_cloud_layout_round_trip():
    dets, objs = _frame()
    points = cloud_points(objs, dets, stride=1)
    msg = cloud_to_msg(points, Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 204, 20, 204 * 20)
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("instance", 12, PointField.INT32), ("class_id", 16, PointField.INT32)]
    back = np.frombuffer(bytes(msg.data), CLOUD_DTYPE)
    np.testing.assert_array_equal(back, points)
    assert sorted(set(back["instance"].tolist())) == [5, 7]
    with pytest.raises(ValueError):
        cloud_to_msg(np.zeros(3, np.float32), Header())


def test_markers_message_types_and_deletes():
    dets, objs = _frame()
    plan, shown = marker_plan(objs, dets, frozenset({5, 9}))
    msg = markers_to_msg(plan, Header(frame_id="cam"))
    kinds = sorted((m.ns, m.id, m.type, m.action) for m in msg.markers)
    assert kinds == [
        ("boxes", 5, Marker.CUBE, Marker.ADD), ("boxes", 7, Marker.CUBE, Marker.ADD),
        ("boxes", 9, 0, Marker.DELETE), ("labels", 5, Marker.TEXT_VIEW_FACING, Marker.ADD),
        ("labels", 7, Marker.TEXT_VIEW_FACING, Marker.ADD), ("labels", 9, 0, Marker.DELETE)]
    text = next(m for m in msg.markers if m.ns == "labels" and m.id == 5)
    assert text.text == "mug #5 0.80 m" and text.header.frame_id == "cam"
    assert shown == {5, 7}


def test_message_pool_equals_fresh_messages_frame_after_frame():
    # Frames with more, fewer and other objects: every reused Detection3D / Marker must equal
    # a freshly built one (an ADD marker reused as a DELETE keeps no pose, colour or text).
    dets, objs = _frame()
    pool = MessagePool()
    shown: frozenset[int] = frozenset()
    frames = [(dets, objs), (dets.select(np.array([1])), None),
              (dets.select(np.array([2, 0])), None), (dets, objs)]
    for sec, (d, o) in enumerate(frames):
        if o is None:
            o = objects_3d(mask_crops(d), (48, 64), np.full((48, 64), 500 + sec, np.uint16),
                           0.001, ray_grid(camera_model_from_info(_info(), False)),
                           Depth3DConfig(erode_px=0, min_points=3))
        header = Header(frame_id="cam")
        header.stamp.sec = sec
        plan, shown = marker_plan(o if sec != 1 else None, d, shown)
        assert pool.objects_to_msg(o, d, header) == objects_to_msg(o, d, header)
        assert pool.markers_to_msg(plan, header) == markers_to_msg(plan, header)
    with pytest.raises(ValueError):
        pool.objects_to_msg(objs, dets.select(np.array([0])), Header())


def test_depth_benchmark_runs_every_stage(capsys):
    from sam3_ros.tools.depth_benchmark import run

    results = run(3, 96, 64, distortion=True, repeats=2)
    assert {"objects_3d", "core total", "Detection3DArray (pooled)", "PointCloud2",
            "MarkerArray (pooled)", "all 3D outputs (core + messages)",
            "all 3D outputs, messages not pooled"} <= set(results)
    assert all(t["cpu_median"] >= 0.0 for t in results.values())
    assert "the node skips outputs without subscribers" in capsys.readouterr().out


def test_depth_outputs_build_only_what_has_subscribers():
    from sam3_ros.ros.depth_outputs import DepthOutputs

    class FakePublisher:
        def __init__(self, subscribers: int):
            self.subscribers, self.sent = subscribers, []

        def get_subscription_count(self) -> int:
            return self.subscribers

        def publish(self, msg) -> None:
            self.sent.append(msg)

    class FakeNode:
        def param(self, name):
            return {"publish_vision_msgs": True, "publish_points": True, "points_stride": 1,
                    "publish_markers": True}[name]

    dets, objs = _frame()
    outputs = DepthOutputs(FakeNode())
    pubs = {"detections_3d": FakePublisher(1), "points": FakePublisher(0),
            "markers": FakePublisher(1)}
    outputs._pubs = pubs
    outputs._send(objs, dets, Header(frame_id="cam"), None)
    assert [len(p.sent) for p in pubs.values()] == [1, 0, 1]
    assert [d.object_id for d in pubs["detections_3d"].sent[0].detections] == [5, 6, 7]
    assert outputs._marker_ids == {5, 7}
    # Nobody listens to the markers now: none are planned, the shown ids stay, so the objects
    # gone meanwhile get their DELETE when someone subscribes again.
    pubs["markers"].subscribers, pubs["points"].subscribers = 0, 1
    gone = dets.select(np.array([1]))
    outputs._send(objects_3d(mask_crops(gone), (48, 64), np.full((48, 64), 0, np.uint16),
                             0.001, ray_grid(camera_model_from_info(_info(), False)),
                             Depth3DConfig()), gone, Header(frame_id="cam"), None)
    assert [len(p.sent) for p in pubs.values()] == [2, 1, 1]
    assert outputs._marker_ids == {5, 7}
    pubs["markers"].subscribers = 1
    first = dets.select(np.array([0]))
    outputs._send(objects_3d(mask_crops(first), (48, 64), np.full((48, 64), 800, np.uint16),
                             0.001, ray_grid(camera_model_from_info(_info(), False)),
                             Depth3DConfig(erode_px=0)), first, Header(frame_id="cam"), None)
    markers = pubs["markers"].sent[-1].markers
    assert sorted((m.ns, m.id, m.action) for m in markers) == [
        ("boxes", 5, Marker.ADD), ("boxes", 7, Marker.DELETE), ("labels", 5, Marker.ADD),
        ("labels", 7, Marker.DELETE)]
    assert outputs._marker_ids == {5}


@pytest.mark.parametrize("publish_markers", [True, False])
def test_a_node_not_publishing_markers_sends_no_deleteall(publish_markers):
    # After activation the first markers message starts with a DELETEALL (markers an earlier
    # run left in RViz); a node told not to publish markers must not send one: on a shared
    # markers topic it would wipe other publishers' markers.
    from sam3_ros.ros.depth_outputs import DepthOutputs

    class FakePublisher:
        def __init__(self):
            self.sent = []

        def get_subscription_count(self) -> int:
            return 1

        def publish(self, msg) -> None:
            self.sent.append(msg)

    class FakeNode:
        def param(self, name):
            return {"publish_markers": publish_markers}[name]

    outputs = DepthOutputs(FakeNode())
    outputs._pubs = {"markers": FakePublisher()}
    outputs._stale_markers = True  # as `subscribe` (activate) leaves it
    outputs._clear_markers(Header(frame_id="cam"))  # a frame without 3D
    sent = [[m.action for m in a.markers] for a in outputs._pubs["markers"].sent]
    assert sent == ([[Marker.DELETEALL]] if publish_markers else [])
