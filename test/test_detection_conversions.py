"""Detections <-> sam3_ros / vision_msgs messages."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")

from std_msgs.msg import Header

from sam3_ros.core.detections import STATE_OCCLUDED, Detections
from sam3_ros.ros import detection_conversions as conv

pytestmark = pytest.mark.ros


def _detections() -> Detections:
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 2:10, 3:15] = True
    masks[1, 20:30, 30:40] = True  # touches the borders
    return Detections(np.array([[3, 2, 15, 10], [30, 20, 40, 30], [0, 0, 5, 5]], np.float32),
                      np.array([0.9, 0.7, 0.3]), np.array([0, 1, 1]), 30, 40, masks=masks,
                      object_ids=np.array([7, 3, 11]), states=np.array([0, STATE_OCCLUDED, 0]),
                      age_frames=np.array([5, 0, 2]), labels=("mug", "cup", "cup"))


def test_round_trip_is_lossless():
    det = _detections()
    header = Header(frame_id="cam")
    header.stamp.sec = 42
    msg = conv.detections_to_msg(det, header, prompt_generation=3)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 42
    assert (msg.image_width, msg.image_height, msg.prompt_generation) == (40, 30, 3)
    first = msg.detections[0]
    assert (first.object_id, first.class_id, first.label) == (7, 0, "mug")
    assert (first.mask_roi.x_offset, first.mask_roi.y_offset) == (3, 2)
    assert (first.mask.width, first.mask.height, first.mask.step) == (12, 8, 12)
    assert first.mask.encoding == "mono8" and first.mask_area_px == 96
    assert (first.centroid_x, first.centroid_y) == pytest.approx((8.5, 5.5))
    assert msg.detections[2].mask_area_px == 0 and msg.detections[2].mask.width == 0
    back = conv.msg_to_detections(msg)
    for name in ("xyxy", "scores", "class_ids", "object_ids", "states", "age_frames", "masks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(det, name), err_msg=name)
    assert back.labels == det.labels


def test_without_masks():
    msg = conv.detections_to_msg(_detections(), Header(), include_masks=False)
    assert all(d.mask.width == 0 for d in msg.detections)
    assert conv.msg_to_detections(msg).masks is None


def test_label_info():
    msg = conv.label_info_msg(["a", "b"], 4)
    assert list(msg.class_names) == ["a", "b"] and msg.prompt_generation == 4


@dataclass
class _Point:
    x: float = 0.0
    y: float = 0.0


@dataclass
class _Pose2D:  # vision_msgs >= 4: bbox.center is a Pose2D with a `position`
    position: _Point = field(default_factory=_Point)
    theta: float = 0.0


@dataclass
class _BBox:
    center: _Pose2D = field(default_factory=_Pose2D)
    size_x: float = 0.0
    size_y: float = 0.0


@dataclass
class _Hypothesis:
    class_id: str = ""
    score: float = 0.0


@dataclass
class _HypothesisWithPose:
    hypothesis: _Hypothesis = field(default_factory=_Hypothesis)


@dataclass
class _Detection2D:
    header: object = None
    id: str = ""
    bbox: _BBox = field(default_factory=_BBox)
    results: list = field(default_factory=list)


@dataclass
class _Detection2DArray:
    header: object = None
    detections: list = field(default_factory=list)


def test_vision_msgs_absent_returns_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    conv._vision_msgs.cache_clear()
    assert conv.detections_to_vision_msgs(_detections(), Header()) is None
    conv._vision_msgs.cache_clear()


def test_vision_msgs_filled_when_present(monkeypatch):
    fake = types.ModuleType("vision_msgs")
    fake.msg = types.SimpleNamespace(
        Detection2DArray=_Detection2DArray, Detection2D=_Detection2D,
        ObjectHypothesisWithPose=_HypothesisWithPose)
    monkeypatch.setitem(sys.modules, "vision_msgs", fake)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", fake.msg)
    conv._vision_msgs.cache_clear()
    try:
        out = conv.detections_to_vision_msgs(_detections(), Header(frame_id="cam"))
    finally:
        conv._vision_msgs.cache_clear()
    assert len(out.detections) == 3
    first = out.detections[0]
    assert first.id == "7"
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (9.0, 6.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (12.0, 8.0)
    assert first.results[0].hypothesis.class_id == "mug"
    assert first.results[0].hypothesis.score == pytest.approx(0.9)


def test_output_building_benchmark_runs():
    timings = conv.build_outputs_benchmark(n_instances=3, height=300, width=400, repeats=2)
    assert set(timings) == {"messages_ms", "overlay_ms"}
