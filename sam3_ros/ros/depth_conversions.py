"""3D outputs <-> messages: CameraInfo and depth Image in; Detection3DArray, vision_msgs
Detection3DArray, PointCloud2 and MarkerArray out. Thin adapter over `sam3_ros.core`
(`camera_model`, `objects3d`): every check and computation lives there."""

from __future__ import annotations

import array as pyarray
from collections.abc import Sequence
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from sam3_ros.core.camera_model import (
    MAX_COEFFS,
    MAX_DEPTH_PIXELS,
    CameraModel,
    camera_model_from_fields,
    decode_depth,
)
from sam3_ros.core.detections import Detections
from sam3_ros.core.image_cdr import ImageFields
from sam3_ros.core.objects3d import CLOUD_DTYPE, MarkerSpec, Objects3D
from sam3_ros.msg import Detection3D, Detection3DArray
from sam3_ros.ros.detection_conversions import _vision_msgs

__all__ = [
    "MessagePool",
    "camera_info_key",
    "camera_model_from_info",
    "cloud_to_msg",
    "depth_msg_to_numpy",
    "markers_to_msg",
    "objects_to_msg",
    "objects_to_vision_msgs",
]


def camera_info_key(msg: CameraInfo) -> tuple:
    """Everything of a CameraInfo that the camera model depends on (hashable): the model is
    rebuilt, and the rays recomputed, only when this changes. A D longer than any model's
    is keyed by its length (refused anyway) instead of copied on every frame."""
    d = tuple(msg.d) if len(msg.d) <= MAX_COEFFS else ("too long", len(msg.d))
    return (msg.width, msg.height, tuple(msg.k), d, msg.distortion_model,
            tuple(msg.p), msg.binning_x, msg.binning_y, msg.roi.width, msg.roi.height)


def camera_model_from_info(msg: CameraInfo, rectified: bool) -> CameraModel:
    """Validated camera model of a CameraInfo (see `camera_model_from_fields`).

    Raises:
        InvalidCameraError: with the reason.
    """
    return camera_model_from_fields(
        # D as it is (not list()): its length is checked before anything is converted.
        int(msg.width), int(msg.height), list(msg.k), msg.d, msg.distortion_model,
        list(msg.p), rectified=rectified, binning_x=int(msg.binning_x),
        binning_y=int(msg.binning_y), roi_size=(int(msg.roi.width), int(msg.roi.height)))


def depth_msg_to_numpy(msg: Image | ImageFields,
                       max_pixels: int = MAX_DEPTH_PIXELS) -> np.ndarray:
    """(H, W) uint16 (16UC1, mono16) or float32 (32FC1) view of a depth Image (or of its
    `image_conversions.image_fields`, read from the serialized sample).

    Raises:
        InvalidImageError: encoding, size limits, step or data length (checked before any
            allocation).
    """
    return decode_depth(msg.data, int(msg.width), int(msg.height), msg.encoding,
                        int(msg.step), bool(msg.is_bigendian), max_pixels)


def _set_xyz(msg: Any, xyz: Sequence[float]) -> None:
    """Fill a Point / Vector3 in place (values already Python floats, e.g. from tolist())."""
    msg.x, msg.y, msg.z = xyz


def _set_xyzw(msg: Any, xyzw: Sequence[float]) -> None:
    msg.x, msg.y, msg.z, msg.w = xyzw


def _fill_detections(items: list[Detection3D], objects: Objects3D,
                     detections: Detections) -> None:
    """Set every field of items[i] (len(objects) messages) from object i."""
    quats = objects.obb_quaternion_xyzw.tolist()
    centroid = objects.centroid_m.tolist()
    aabb_c, aabb_s = objects.aabb_center_m.tolist(), objects.aabb_size_m.tolist()
    obb_c, obb_s = objects.obb_center_m.tolist(), objects.obb_size_m.tolist()
    ids, classes = detections.object_ids.tolist(), detections.class_ids.tolist()
    scores, valid = detections.scores.tolist(), objects.valid.tolist()
    counts = objects.num_points.tolist()
    labels = detections.labels
    # Filled in place: a rosidl constructor builds every sub-message default anyway, so
    # passing new Point / Pose / Vector3 objects would construct each one twice.
    for i, d in enumerate(items):
        d.object_id, d.class_id, d.label, d.score = ids[i], classes[i], labels[i], scores[i]
        d.valid, d.num_points = valid[i], counts[i]
        # (Unrolled _set_xyz: six calls per detection add up.)
        p, c, s = d.centroid, d.bbox_center, d.bbox_size
        p.x, p.y, p.z = centroid[i]
        c.x, c.y, c.z = aabb_c[i]
        s.x, s.y, s.z = aabb_s[i]
        pose, s = d.obb_pose, d.obb_size
        p, q = pose.position, pose.orientation
        p.x, p.y, p.z = obb_c[i]
        q.x, q.y, q.z, q.w = quats[i]
        s.x, s.y, s.z = obb_s[i]


def _detection_array(items: list[Detection3D], header: Header,
                     depth_stamp: Any) -> Detection3DArray:
    out = Detection3DArray(header=header, detections=items)
    if depth_stamp is not None:
        out.depth_stamp = depth_stamp
    return out


def objects_to_msg(objects: Objects3D, detections: Detections, header: Header,
                   depth_stamp: Any = None) -> Detection3DArray:
    """Detection3DArray of one frame: one Detection3D per detection, same order and ids.

    Args:
        objects: `objects_3d` of `detections`.
        detections: The frame's 2D detections (ids, class ids, labels, scores).
        header: Colour image stamp with the camera info's frame_id.
        depth_stamp: builtin_interfaces/Time of the paired depth image (None: zero).
    """
    if len(objects) != len(detections):
        raise ValueError(f"{len(objects)} 3D objects for {len(detections)} detections")
    items = [Detection3D() for _ in range(len(objects))]
    _fill_detections(items, objects, detections)
    return _detection_array(items, header, depth_stamp)


def objects_to_vision_msgs(objects: Objects3D, detections: Detections,
                           header: Header) -> Any | None:
    """vision_msgs/Detection3DArray of the valid objects, or None without vision_msgs.

    Per object: `id` = str(object_id); `bbox` = the oriented box (centre pose + size);
    `results[0].hypothesis` = label (or str(class_id)) and score;
    `results[0].pose.pose.position` = the centroid.
    """
    vm = _vision_msgs()
    if vm is None:
        return None
    quats = objects.obb_quaternion_xyzw.tolist()
    obb_c, obb_s = objects.obb_center_m.tolist(), objects.obb_size_m.tolist()
    centroid = objects.centroid_m.tolist()
    items = []
    for i in np.flatnonzero(objects.valid).tolist():
        det = vm.Detection3D()
        det.header = header
        det.id = str(int(detections.object_ids[i]))
        _set_xyz(det.bbox.center.position, obb_c[i])
        _set_xyzw(det.bbox.center.orientation, quats[i])
        _set_xyz(det.bbox.size, obb_s[i])
        result = vm.ObjectHypothesisWithPose()
        result.hypothesis.class_id = detections.labels[i] or str(int(detections.class_ids[i]))
        result.hypothesis.score = float(detections.scores[i])
        _set_xyz(result.pose.pose.position, centroid[i])
        result.pose.pose.orientation.w = 1.0
        det.results = [result]
        items.append(det)
    out = vm.Detection3DArray()
    out.header = header
    out.detections = items
    return out


_CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="instance", offset=12, datatype=PointField.INT32, count=1),
    PointField(name="class_id", offset=16, datatype=PointField.INT32, count=1),
]


def cloud_to_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """PointCloud2 (unorganised, height 1) of a `CLOUD_DTYPE` array: x, y, z float32 metres,
    instance (object id) and class_id int32, little endian, 20 bytes per point."""
    if points.dtype != CLOUD_DTYPE:
        raise ValueError(f"expected CLOUD_DTYPE points, got {points.dtype}")
    data = pyarray.array("B")
    data.frombytes(np.ascontiguousarray(points).view(np.uint8).data)  # one memcpy
    return PointCloud2(header=header, height=1, width=len(points), fields=_CLOUD_FIELDS,
                       is_bigendian=False, point_step=CLOUD_DTYPE.itemsize,
                       row_step=CLOUD_DTYPE.itemsize * len(points), data=data, is_dense=True)


# Message constants are metaclass properties: looked up once.
_MARKER_TYPE = {"boxes": Marker.CUBE, "labels": Marker.TEXT_VIEW_FACING}
_MARKER_ADD, _MARKER_DELETE = Marker.ADD, Marker.DELETE


def _fill_marker(m: Marker, spec: MarkerSpec, header: Header) -> None:
    """Set every field a MarkerSpec decides (the others keep their defaults). Its numbers
    must be Python floats (as `marker_plan` makes them) or float subclasses."""
    m.header = header
    m.ns = spec.namespace
    m.id = int(spec.marker_id)
    if spec.action == "delete":
        m.action, m.type = _MARKER_DELETE, 0
    else:
        m.action, m.type = _MARKER_ADD, _MARKER_TYPE.get(spec.namespace,
                                                         Marker.TEXT_VIEW_FACING)
    pose = m.pose
    position, orientation, scale, color = pose.position, pose.orientation, m.scale, m.color
    position.x, position.y, position.z = spec.position_m
    orientation.x, orientation.y, orientation.z, orientation.w = spec.orientation_xyzw
    scale.x, scale.y, scale.z = spec.scale_m
    color.r, color.g, color.b, color.a = spec.rgba
    m.text = spec.text


def delete_all_marker(header: Header) -> Marker:
    """A DELETEALL with an empty namespace: every marker of the topic, in every RViz version
    (newer ones limit a DELETEALL with a namespace to that namespace)."""
    return Marker(header=header, action=Marker.DELETEALL)


def markers_to_msg(markers: Sequence[MarkerSpec], header: Header) -> MarkerArray:
    """MarkerArray of a `marker_plan`: CUBE for "boxes", TEXT_VIEW_FACING for "labels",
    DELETE for removed ones; every marker stamped with `header`."""
    out = []
    for spec in markers:
        m = Marker()
        _fill_marker(m, spec, header)
        out.append(m)
    return MarkerArray(markers=out)


class MessagePool:
    """The Detection3DArray and MarkerArray of successive frames, built into message objects
    kept from earlier frames: equal to `objects_to_msg` / `markers_to_msg`, without their
    rosidl constructors (which build every sub-message: ~8 us per Detection3D, ~15 us per
    Marker, which has eleven). Only public fields are set, and every field the conversion
    decides is set on every use.

    A returned message is valid until the next call of the same method: publish it first
    (rclpy serialises during `publish`, so the objects are free again when it returns).
    Not thread-safe: one pool per publishing thread.
    """

    def __init__(self) -> None:
        self._detections: list[Detection3D] = []
        self._markers: list[Marker] = []

    def objects_to_msg(self, objects: Objects3D, detections: Detections, header: Header,
                       depth_stamp: Any = None) -> Detection3DArray:
        """`objects_to_msg`, reusing the Detection3D objects of the previous frames."""
        if len(objects) != len(detections):
            raise ValueError(f"{len(objects)} 3D objects for {len(detections)} detections")
        pool = self._detections
        pool.extend(Detection3D() for _ in range(len(objects) - len(pool)))
        items = pool[:len(objects)]
        _fill_detections(items, objects, detections)
        return _detection_array(items, header, depth_stamp)

    def markers_to_msg(self, markers: Sequence[MarkerSpec], header: Header) -> MarkerArray:
        """`markers_to_msg`, reusing the Marker objects of the previous frames."""
        pool = self._markers
        pool.extend(Marker() for _ in range(len(markers) - len(pool)))
        items = pool[:len(markers)]
        for m, spec in zip(items, markers, strict=True):
            _fill_marker(m, spec, header)
        return MarkerArray(markers=items)
