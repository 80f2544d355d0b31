"""Detections <-> sam3_ros / vision_msgs messages (needs rclpy and the built interfaces)."""

from __future__ import annotations

import array
import sys
import types
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from rclpy.serialization import deserialize_message, serialize_message
from sam3_ros.msg import Detection, DetectionArray
from std_msgs.msg import Header

from sam3_ros.core.detections import STATE_OCCLUDED, Detections
from sam3_ros.core.errors import InvalidDetectionsError
from sam3_ros.core.render import mask_crops
from sam3_ros.ros import detection_conversions as conv

pytestmark = pytest.mark.ros

_FIELDS = ("xyxy", "scores", "class_ids", "object_ids", "states", "age_frames", "masks")


def _detections() -> Detections:
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 2:10, 3:15] = True
    masks[1, 20:30, 30:40] = True  # touches the bottom and right borders
    masks[1, 25, 31] = False       # a hole
    return Detections(np.array([[3, 2, 15, 10], [30, 20, 40, 30], [0, 0, 5, 5]], np.float32),
                      np.array([0.9, 0.7, 0.3]), np.array([2, 1, 1]), 30, 40, masks=masks,
                      object_ids=np.array([7, 3, 11]), states=np.array([STATE_OCCLUDED, 0, 0]),
                      age_frames=np.array([5, 0, 2]), labels=("mug", "cup", ""))


def _assert_same(back: Detections, det: Detections) -> None:
    for name in _FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(det, name), err_msg=name)
        if getattr(det, name) is not None:
            assert getattr(back, name).dtype == getattr(det, name).dtype, name
    assert back.labels == det.labels
    assert (back.image_height_px, back.image_width_px) == (det.image_height_px,
                                                           det.image_width_px)


def test_message_fields():
    det = _detections()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 42, 17
    msg = conv.detections_to_msg(det, header, prompt_generation=3)
    assert msg.header.frame_id == "cam" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (
        42, 17)
    assert (msg.image_width, msg.image_height, msg.prompt_generation) == (40, 30, 3)
    assert msg.has_masks
    first = msg.detections[0]
    assert (first.object_id, first.class_id, first.label) == (7, 2, "mug")
    assert first.score == pytest.approx(0.9)
    assert (first.x_min, first.y_min, first.x_max, first.y_max) == (3, 2, 15, 10)
    assert (first.state, first.age_frames) == (STATE_OCCLUDED, 5)
    roi = first.mask_roi
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (3, 2, 12, 8)
    # 12 x 8 = 96 pixels, all set: 12 bytes of 0xff.
    assert isinstance(first.mask_bits, array.array) and list(first.mask_bits) == [255] * 12
    assert first.mask_area_px == 96
    # Pixel-centre convention: columns 3..14 -> 8.5, rows 2..9 -> 5.5.
    assert (first.centroid_x, first.centroid_y) == pytest.approx((8.5, 5.5))
    second = msg.detections[1]
    assert second.mask_area_px == 99
    # The documented layout: the hole at input (31, 25) is crop pixel (1, 5) of the 10 x 10
    # crop at (30, 20), bit k = 5 * 10 + 1 = 51: byte 6, bit 7 - 3 = 4 (MSB first).
    assert (second.mask_roi.width, second.mask_roi.height) == (10, 10)
    expected = [255] * 13
    expected[6] = 0xFF & ~(1 << 4)
    expected[12] = 0xF0  # 100 bits: the last byte holds 4 pixels, trailing bits 0
    assert list(second.mask_bits) == expected
    empty = msg.detections[2]
    assert empty.mask_area_px == 0 and len(empty.mask_bits) == 0 and empty.mask_roi.width == 0
    assert (empty.centroid_x, empty.centroid_y) == (2.0, 2.0)  # box centre, pixel centres


def test_every_detection_field_is_set():
    msg = conv.detections_to_msg(_detections(), Header())
    default = Detection()
    first = msg.detections[0]
    for name in Detection.get_fields_and_field_types():
        assert getattr(first, name) != getattr(default, name), name


@pytest.mark.parametrize("serialize", [False, True])
def test_round_trip_is_lossless(serialize):
    det = _detections()
    msg = conv.detections_to_msg(det, Header(frame_id="cam"), prompt_generation=3)
    if serialize:  # as a subscriber receives it
        msg = deserialize_message(serialize_message(msg), DetectionArray)
    _assert_same(conv.msg_to_detections(msg), det)


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_random_blobs(seed):
    det = conv.random_blob_detections(12, 90, 160, seed=seed)
    _assert_same(conv.msg_to_detections(conv.detections_to_msg(det, Header())), det)


def test_round_trip_edge_cases():
    empty = Detections.empty(30, 40)
    _assert_same(conv.msg_to_detections(conv.detections_to_msg(empty, Header())), empty)
    all_empty = Detections(np.array([[1, 1, 5, 5]], np.float32), [0.5], [0], 30, 40,
                           masks=np.zeros((1, 30, 40), bool))
    back = conv.msg_to_detections(conv.detections_to_msg(all_empty, Header()))
    assert back.masks is not None  # all-empty masks stay masks, not "no masks"
    _assert_same(back, all_empty)


def test_shared_crops_give_the_same_message():
    det = _detections()
    assert (conv.detections_to_msg(det, Header(), crops=mask_crops(det))
            == conv.detections_to_msg(det, Header()))
    with pytest.raises(ValueError, match="crops"):
        conv.detections_to_msg(det, Header(), crops=mask_crops(det)[:1])


def test_without_masks_keeps_area_and_centroid():
    det = _detections()
    msg = conv.detections_to_msg(det, Header(), include_masks=False)
    assert not msg.has_masks
    assert all(len(d.mask_bits) == 0 and d.mask_roi.width == 0 for d in msg.detections)
    assert [d.mask_area_px for d in msg.detections] == [96, 99, 0]
    back = conv.msg_to_detections(msg)
    assert back.masks is None
    np.testing.assert_array_equal(back.object_ids, det.object_ids)


def test_detections_without_masks():
    det = Detections(np.array([[0, 0, 10, 20]], np.float32), [0.5], [0], 30, 40)
    msg = conv.detections_to_msg(det, Header())
    first = msg.detections[0]
    assert not msg.has_masks
    # The box's centre in the centroid's convention (pixel u's centre at u).
    assert first.mask_area_px == 0 and (first.centroid_x, first.centroid_y) == (4.5, 9.5)
    assert conv.msg_to_detections(conv.detections_to_msg(det, Header())).masks is None


@pytest.mark.parametrize(
    ("corrupt", "error"),
    [
        (lambda d: setattr(d.mask_roi, "width", d.mask_roi.width + 1), "13 bytes.*got 12"),
        (lambda d: setattr(d.mask_roi, "height", d.mask_roi.height - 1), "11 bytes.*got 12"),
        (lambda d: setattr(d.mask_roi, "x_offset", 35), "leaves the 40x30 image"),
        (lambda d: setattr(d.mask_roi, "y_offset", 23), "leaves the 40x30 image"),
        (lambda d: setattr(d, "mask_bits", array.array("B", bytes(3))), "12 bytes.*got 3"),
        (lambda d: setattr(d, "mask_area_px", 95), "96 pixels, mask_area_px says 95"),
        (lambda d: setattr(d, "mask_bits", array.array("B", [0xFF] * 11 + [0x7F])),
         "95 pixels, mask_area_px says 96"),
        (lambda d: setattr(d.mask_roi, "width", 0), "0x0 mask_roi and no bytes, got 0x8"),
    ],
)
def test_inconsistent_masks_are_rejected(corrupt, error):
    msg = conv.detections_to_msg(_detections(), Header())
    corrupt(msg.detections[0])
    with pytest.raises(InvalidDetectionsError, match=f"detection 0: .*{error}"):
        conv.msg_to_detections(msg)


def test_set_padding_bits_are_rejected():
    msg = conv.detections_to_msg(_detections(), Header())
    second = msg.detections[1]  # 10 x 10: 13 bytes, the last 4 bits padding
    second.mask_bits[12] |= 0x01
    with pytest.raises(InvalidDetectionsError, match="detection 1: the last 4 bits"):
        conv.msg_to_detections(msg)


def test_empty_mask_with_bytes_is_rejected():
    msg = conv.detections_to_msg(_detections(), Header())
    msg.detections[2].mask_bits = array.array("B", [0])
    with pytest.raises(InvalidDetectionsError, match="detection 2: an empty mask"):
        conv.msg_to_detections(msg)


def test_masks_without_has_masks_are_rejected():
    msg = conv.detections_to_msg(_detections(), Header())
    msg.has_masks = False  # e.g. a publisher that forgot the flag
    with pytest.raises(InvalidDetectionsError, match="detection 0 carries a mask"):
        conv.msg_to_detections(msg)


def test_mask_crop_of_received_detection():
    det = _detections()
    msg = deserialize_message(serialize_message(conv.detections_to_msg(det, Header())),
                              DetectionArray)
    crop = conv.mask_crop_of(msg.detections[1])
    assert crop.dtype == bool and crop.shape == (10, 10)
    np.testing.assert_array_equal(crop, det.masks[1, 20:30, 30:40])
    assert conv.mask_crop_of(msg.detections[2]).shape == (0, 0)


def test_label_info():
    header = Header(frame_id="cam")
    msg = conv.label_info_msg(("a", "b"), 4, header)
    assert list(msg.class_names) == ["a", "b"] and msg.prompt_generation == 4
    assert msg.header.frame_id == "cam"
    assert conv.label_info_msg([], 0).header.frame_id == ""


# ------------------------------------------------------------------ vision_msgs (faked)
class _Msg:
    """Minimal stand-in for a rosidl message: fixed slots and type-checked fields, like the
    generated Python classes (float fields take Python floats only, sequences typed lists)."""

    FIELDS: ClassVar[dict[str, Any]] = {}
    __slots__ = ()

    def __init__(self) -> None:
        for name, kind in self.FIELDS.items():
            default = [] if isinstance(kind, list) else kind()
            object.__setattr__(self, name, default)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        kind = self.FIELDS[name]
        if isinstance(kind, list):
            assert isinstance(value, list | tuple) and all(isinstance(v, kind[0]) for v in value)
        else:
            assert isinstance(value, kind), f"{name}: {type(value)} is not {kind}"
        object.__setattr__(self, name, value)


def _message(name: str, **fields: Any) -> type:
    return type(name, (_Msg,), {"FIELDS": fields, "__slots__": tuple(fields)})


def _fake_vision_msgs(legacy_center: bool) -> types.ModuleType:
    """vision_msgs.msg as in 4.x (Humble/Jazzy/Kilted) or, with legacy_center, 3.x."""
    point2d = _message("Point2D", x=float, y=float)
    if legacy_center:  # geometry_msgs/Pose2D
        pose2d = _message("Pose2D", x=float, y=float, theta=float)
    else:
        pose2d = _message("Pose2D", position=point2d, theta=float)
    bbox = _message("BoundingBox2D", center=pose2d, size_x=float, size_y=float)
    hypothesis = _message("ObjectHypothesis", class_id=str, score=float)
    pose = _message("PoseWithCovariance")
    with_pose = _message("ObjectHypothesisWithPose", hypothesis=hypothesis, pose=pose)
    detection = _message("Detection2D", header=Header, results=[with_pose], bbox=bbox, id=str)
    array_msg = _message("Detection2DArray", header=Header, detections=[detection])
    package = types.ModuleType("vision_msgs")
    package.msg = types.ModuleType("vision_msgs.msg")
    for cls in (point2d, pose2d, bbox, hypothesis, with_pose, detection, array_msg):
        setattr(package.msg, cls.__name__, cls)
    return package


@pytest.fixture
def vision_msgs_cache():
    conv._vision_msgs.cache_clear()
    yield
    conv._vision_msgs.cache_clear()


def _install(monkeypatch, package: types.ModuleType | None) -> None:
    monkeypatch.setitem(sys.modules, "vision_msgs", package)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None if package is None else package.msg)


def test_vision_msgs_absent_returns_none(monkeypatch, vision_msgs_cache):
    _install(monkeypatch, None)
    assert conv.detections_to_vision_msgs(_detections(), Header()) is None


@pytest.mark.parametrize("legacy_center", [False, True])
def test_vision_msgs_filled_when_present(monkeypatch, vision_msgs_cache, legacy_center):
    _install(monkeypatch, _fake_vision_msgs(legacy_center))
    header = Header(frame_id="cam")
    out = conv.detections_to_vision_msgs(_detections(), header)
    assert out.header is header and len(out.detections) == 3
    first = out.detections[0]
    assert first.header is header and first.id == "7"
    center = first.bbox.center if legacy_center else first.bbox.center.position
    assert (center.x, center.y) == (9.0, 6.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (12.0, 8.0)
    assert len(first.results) == 1
    assert first.results[0].hypothesis.class_id == "mug"  # the label
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert out.detections[2].results[0].hypothesis.class_id == "1"  # no label: the class id


def test_vision_msgs_import_is_cached(monkeypatch, vision_msgs_cache):
    _install(monkeypatch, _fake_vision_msgs(False))
    empty = Detections.empty(30, 40)
    assert conv.detections_to_vision_msgs(empty, Header()) is not None
    _install(monkeypatch, None)  # not imported again
    assert conv.detections_to_vision_msgs(empty, Header()) is not None


# ---------------------------------------------------------------------------- benchmark


def test_output_building_benchmark_runs():
    timings = conv.build_outputs_benchmark(n_instances=3, height=300, width=400, repeats=2)
    assert {"messages_ms", "messages_shared_crops_ms", "crops_ms", "to_msg_ms",
            "label_image_ms", "overlay_ms"} == set(timings)
    assert all(0 < median <= p90 for median, p90 in timings.values())


def test_random_blob_detections_are_realistic():
    det = conv.random_blob_detections(20, 720, 1280, seed=1)
    assert len(det) == 20 and det.masks.shape == (20, 720, 1280)
    assert (np.diff(det.scores) <= 0).all()
    areas = det.masks.sum(axis=(1, 2))
    assert (areas > 0).all() and (areas < 0.1 * 720 * 1280).all()  # blobs, not full images


def test_masks_larger_than_the_limit_are_refused_before_allocating():
    msg = conv.detections_to_msg(_detections(), Header())
    msg.image_width = msg.image_height = 65535  # 3 x 4.3 GB of masks asked for
    with pytest.raises(InvalidDetectionsError, match="more than max_mask_bytes"):
        conv.msg_to_detections(msg)
    small = conv.detections_to_msg(_detections(), Header())
    limit = len(small.detections) * small.image_height * small.image_width
    assert len(conv.msg_to_detections(small, max_mask_bytes=limit)) == 3
    with pytest.raises(InvalidDetectionsError, match="more than max_mask_bytes"):
        conv.msg_to_detections(small, max_mask_bytes=limit - 1)
