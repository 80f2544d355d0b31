"""Unit tests of the ByteTrack-style id association (pure core, no ROS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam3_ros.core.bytetrack import ByteTrackConfig, ByteTracker, box_iou
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import ConfigError

H, W = 240, 320


def _dets(boxes, scores=None, classes=None, masks: bool = False) -> Detections:
    """Detections from a list of xyxy boxes (scores default 0.9, classes default 0)."""
    xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(xyxy)
    scores = np.full(n, 0.9) if scores is None else np.asarray(scores, np.float64)
    classes = np.zeros(n, np.int32) if classes is None else np.asarray(classes, np.int32)
    mask_array = None
    if masks:
        mask_array = np.zeros((n, H, W), bool)
        for i in range(n):
            mask_array[i, i, i] = True  # a distinct marker per instance
    return Detections(xyxy, scores, classes, H, W, masks=mask_array)


def _box(cx: float, cy: float, size: float = 30.0) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def _id_of(out: Detections, cx: float) -> int:
    """Id of the output box whose center x is nearest `cx`."""
    centers = 0.5 * (out.xyxy[:, 0] + out.xyxy[:, 2])
    return int(out.object_ids[np.argmin(np.abs(centers - cx))])


def test_module_is_pure():
    import sam3_ros.core.bytetrack as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "import rclpy" not in source and "import torch" not in source


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"high_score_threshold": 1.5}, "high_score_threshold: expected a number in [0.0, 1.0]"),
        ({"low_score_threshold": -0.1}, "low_score_threshold: expected a number in [0.0, 1.0]"),
        ({"low_score_threshold": 0.7}, "low_score_threshold: expected <= high_score_threshold"),
        ({"new_track_threshold": 0.4}, "new_track_threshold: expected >= high_score_threshold"),
        ({"new_track_threshold": float("nan")}, "new_track_threshold: expected a number"),
        ({"match_iou_threshold": 0.0}, "match_iou_threshold: expected a number in (0.0, 1.0]"),
        ({"low_match_iou_threshold": 1.2}, "low_match_iou_threshold: expected a number in"),
        ({"max_lost_frames": -1}, "max_lost_frames: expected an integer >= 0, got -1"),
        ({"max_lost_frames": 2.5}, "max_lost_frames: expected an integer >= 0, got 2.5"),
        ({"min_hits_to_confirm": 0}, "min_hits_to_confirm: expected an integer >= 1, got 0"),
        ({"min_hits_to_confirm": True}, "min_hits_to_confirm: expected an integer >= 1"),
        ({"class_aware": "yes"}, "class_aware: expected a bool, got 'yes'"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        ByteTrackConfig(**kwargs)
    assert message in str(info.value)


def test_default_config_is_valid():
    cfg = ByteTrackConfig()
    assert cfg.min_hits_to_confirm == 1 and cfg.class_aware


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 1, 0], [0, 0, 0]])


def test_linear_motion_keeps_ids_and_ages():
    tracker = ByteTracker()
    for frame in range(20):
        boxes = [_box(20 + 6 * frame, 50), _box(200 - 4 * frame, 150), _box(150, 100 + 3 * frame)]
        out = tracker.update(_dets(boxes))
        np.testing.assert_array_equal(out.object_ids, [0, 1, 2])
        np.testing.assert_array_equal(out.age_frames, [frame] * 3)
    assert tracker.num_tracks == 3


def test_masks_and_order_carried_through():
    tracker = ByteTracker()
    tracker.update(_dets([_box(50, 50), _box(150, 150)], masks=True))
    # Swap the input order: ids follow the objects, masks follow the detections.
    det = _dets([_box(152, 150), _box(52, 50)], masks=True)
    out = tracker.update(det)
    np.testing.assert_array_equal(out.object_ids, [1, 0])
    np.testing.assert_array_equal(out.masks, det.masks)
    np.testing.assert_array_equal(out.xyxy, det.xyxy)


def test_crossing_objects_keep_ids():
    tracker = ByteTracker()
    speed = 5.0
    for frame in range(50):
        left = 40 + speed * frame  # moves right
        right = 280 - speed * frame  # moves left
        # Same row: the boxes coincide at frame 24, and right after it each detection overlaps
        # the *other* track's last box more; only the velocity tells them apart.
        out = tracker.update(_dets([_box(left, 100), _box(right, 100)]))
        assert len(out) == 2
        ids = {_id_of(out, left): "left", _id_of(out, right): "right"}
        if left != right:  # identical boxes: either assignment is correct
            assert ids == {0: "left", 1: "right"}, f"frame {frame}"


def test_short_disappearance_keeps_id_long_one_gets_new_id():
    max_lost = 5
    tracker = ByteTracker(ByteTrackConfig(max_lost_frames=max_lost))
    box = _box(100, 100)
    for _ in range(3):
        assert tracker.update(_dets([box])).object_ids.tolist() == [0]
    for _ in range(max_lost):
        assert len(tracker.update(_dets([]))) == 0
    assert tracker.num_lost == 1
    out = tracker.update(_dets([box]))
    assert out.object_ids.tolist() == [0]
    assert out.age_frames.tolist() == [3 + max_lost]

    for _ in range(max_lost + 1):
        tracker.update(_dets([]))
    assert tracker.num_tracks == 0
    out = tracker.update(_dets([box]))
    assert out.object_ids.tolist() == [1]
    assert out.age_frames.tolist() == [0]


def test_lost_moving_object_recovered_by_prediction():
    tracker = ByteTracker()
    for frame in range(10):
        tracker.update(_dets([_box(40 + 8 * frame, 100)]))
    for _ in range(3):  # occluded while it keeps moving
        tracker.update(_dets([]))
    # Now 13 frames in: 104 px further than the start of the gap; no overlap with the last box.
    out = tracker.update(_dets([_box(40 + 8 * 13, 100)]))
    assert out.object_ids.tolist() == [0]


def test_low_score_keeps_track_alive_but_never_starts_one():
    tracker = ByteTracker(ByteTrackConfig(max_lost_frames=0))
    assert tracker.update(_dets([_box(100, 100)], scores=[0.9])).object_ids.tolist() == [0]
    for frame in range(5):
        out = tracker.update(_dets([_box(101 + frame, 100)], scores=[0.2]))
        assert out.object_ids.tolist() == [0]  # stage 2 matched it; no miss, so not removed
        np.testing.assert_allclose(out.scores, [0.2])
    # A low-score detection of a new object is dropped and starts nothing.
    out = tracker.update(_dets([_box(106, 100), _box(250, 200)], scores=[0.9, 0.3]))
    assert out.object_ids.tolist() == [0]
    assert tracker.num_tracks == 1
    # Below low_score_threshold it does not even keep a track alive.
    out = tracker.update(_dets([_box(107, 100)], scores=[0.05]))
    assert len(out) == 0 and tracker.num_tracks == 0


def test_low_score_does_not_revive_lost_track():
    tracker = ByteTracker()
    tracker.update(_dets([_box(100, 100)]))
    tracker.update(_dets([]))
    assert len(tracker.update(_dets([_box(100, 100)], scores=[0.3]))) == 0
    assert tracker.update(_dets([_box(100, 100)])).object_ids.tolist() == [0]


def test_borderline_score_matches_but_does_not_start_track():
    tracker = ByteTracker()  # high 0.5, new track 0.6
    assert len(tracker.update(_dets([_box(100, 100)], scores=[0.55]))) == 0
    assert tracker.num_tracks == 0
    tracker.update(_dets([_box(100, 100)], scores=[0.9]))
    assert tracker.update(_dets([_box(100, 100)], scores=[0.55])).object_ids.tolist() == [0]


@pytest.mark.parametrize("class_aware", [True, False])
def test_class_aware_prevents_cross_class_match(class_aware):
    tracker = ByteTracker(ByteTrackConfig(class_aware=class_aware))
    tracker.update(_dets([_box(100, 100)], classes=[0]))
    out = tracker.update(_dets([_box(101, 100)], classes=[1]))
    assert out.object_ids.tolist() == ([1] if class_aware else [0])
    np.testing.assert_array_equal(out.class_ids, [1])


def test_min_hits_delays_confirmation_and_drops_flicker():
    tracker = ByteTracker(ByteTrackConfig(min_hits_to_confirm=3))
    # A one-frame false positive never gets an id.
    assert len(tracker.update(_dets([_box(250, 200)]))) == 0
    assert len(tracker.update(_dets([_box(100, 100)]))) == 0
    assert tracker.num_tracks == 1  # the flicker was dropped at its first miss
    assert len(tracker.update(_dets([_box(100, 100)]))) == 0
    out = tracker.update(_dets([_box(100, 100)]))
    assert out.object_ids.tolist() == [0]
    assert out.age_frames.tolist() == [2]


def test_reset_restarts_ids():
    tracker = ByteTracker()
    tracker.update(_dets([_box(50, 50), _box(150, 150)]))
    tracker.reset()
    assert tracker.num_tracks == 0
    out = tracker.update(_dets([_box(250, 200)]))
    assert out.object_ids.tolist() == [0]
    assert out.age_frames.tolist() == [0]


def test_ids_never_reused():
    tracker = ByteTracker(ByteTrackConfig(max_lost_frames=0))
    seen = []
    for frame in range(6):
        # A different far-apart spot each frame: every detection is a new object.
        out = tracker.update(_dets([_box(40 + 50 * frame, 40 + 30 * frame)]))
        seen += out.object_ids.tolist()
    assert seen == list(range(6))


def test_empty_frames():
    tracker = ByteTracker()
    out = tracker.update(Detections.empty(H, W))
    assert len(out) == 0 and out.masks is not None and out.masks.shape == (0, H, W)
    out = tracker.update(Detections.empty(H, W, with_masks=False))
    assert len(out) == 0 and out.masks is None
    assert tracker.update(_dets([_box(50, 50)])).object_ids.tolist() == [0]
    assert len(tracker.update(Detections.empty(H, W))) == 0
    assert tracker.update(_dets([_box(50, 50)])).object_ids.tolist() == [0]


def test_invalid_boxes_are_dropped():
    tracker = ByteTracker()
    boxes = [[np.nan, 0, 10, 10], [10, 10, 10, 20], _box(100, 100)]
    out = tracker.update(_dets(boxes))
    assert out.object_ids.tolist() == [0]
    np.testing.assert_array_equal(out.xyxy, [_box(100, 100)])


def test_dt_extrapolates_over_dropped_frames():
    tracker = ByteTracker()
    period = 0.1
    for frame in range(10):
        tracker.update(_dets([_box(40 + 10 * frame, 100)]), dt_s=period)
    # Two frames dropped: the object moved 30 px (the box is 30 px wide, so no overlap).
    out = tracker.update(_dets([_box(40 + 10 * 12, 100)]), dt_s=3 * period)
    assert out.object_ids.tolist() == [0]


@pytest.mark.parametrize("dt_s", [-0.1, float("nan"), float("inf"), "0.1"])
def test_bad_dt_raises(dt_s):
    tracker = ByteTracker()
    with pytest.raises(ConfigError, match="dt_s: expected a finite number of seconds >= 0"):
        tracker.update(_dets([_box(50, 50)]), dt_s=dt_s)


def test_track_count_bounded_over_random_frames():
    max_lost, max_dets = 10, 8
    tracker = ByteTracker(ByteTrackConfig(max_lost_frames=max_lost))
    rng = np.random.default_rng(0)
    last_id = -1
    for _ in range(1000):
        n = int(rng.integers(0, max_dets + 1))
        corners = rng.uniform([0, 0], [W - 40, H - 40], size=(n, 2))
        sizes = rng.uniform(5, 40, size=(n, 2))
        xyxy = np.concatenate([corners, corners + sizes], axis=1)
        out = tracker.update(
            _dets(xyxy, scores=rng.uniform(0, 1, n), classes=rng.integers(0, 3, n))
        )
        assert len(out.object_ids) == len(set(out.object_ids.tolist()))  # one box per id
        if len(out):
            last_id = max(last_id, int(out.object_ids.max()))
        # Each frame adds at most max_dets tracks; each lives at most max_lost + 1 frames unmatched.
        assert tracker.num_tracks <= (max_lost + 2) * max_dets
    assert tracker._mean.shape[0] == tracker.num_tracks == tracker._cov.shape[0]
    assert last_id > 100  # random boxes keep creating new ids (not reused)
