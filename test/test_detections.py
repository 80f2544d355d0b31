"""Unit tests of the `Detections` container (pure core)."""

import numpy as np
import pytest

from sam3_ros.core.detections import STATE_VISIBLE, Detections
from sam3_ros.core.errors import InvalidDetectionsError


def _make(n: int = 3, h: int = 8, w: int = 10, **overrides) -> Detections:
    kwargs = dict(
        xyxy=np.tile(np.array([[1, 2, 5, 6]], np.float64), (n, 1)),
        scores=np.linspace(0.1, 0.9, n),
        class_ids=np.arange(n),
        image_height_px=h,
        image_width_px=w,
        masks=np.zeros((n, h, w), bool),
    )
    kwargs.update(overrides)
    return Detections(**kwargs)


def test_defaults_and_dtypes():
    det = _make()
    assert len(det) == 3
    assert det.xyxy.dtype == np.float32 and det.scores.dtype == np.float32
    assert det.class_ids.dtype == np.int32
    np.testing.assert_array_equal(det.object_ids, [0, 1, 2])
    assert (det.states == STATE_VISIBLE).all()
    assert det.labels == ("", "", "")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"xyxy": np.zeros((3, 5))}, "xyxy: expected shape (N, 4), got (3, 5)"),
        ({"scores": np.zeros(2)}, "scores: expected shape (3,), got (2,)"),
        ({"class_ids": np.zeros((3, 1))}, "class_ids: expected shape (3,), got (3, 1)"),
        ({"masks": np.zeros((3, 8, 9), bool)}, "masks: expected shape (3, 8, 10), got (3, 8, 9)"),
        ({"masks": np.zeros((3, 8, 10), np.uint8)}, "masks: expected dtype bool, got uint8"),
        ({"labels": ("a",)}, "labels: expected 3 strings, got 1"),
        ({"image_height_px": 0}, "image size must be positive"),
        # Casts wrapped or truncated silently: 2**31 became -2**31, 1.9 became 1.
        ({"object_ids": np.array([0, 1, 2**31])},
         "object_ids: values must be in [-2147483648, 2147483647] (int32), got [0, 2147483648]"),
        ({"class_ids": np.array([0, 1, -(2**31) - 1])}, "class_ids: values must be in"),
        ({"age_frames": np.array([0, -1, 2])}, "age_frames: values must be in [0, 4294967295]"),
        ({"object_ids": np.array([0.0, 1.9, 2.0])}, "object_ids: expected integers, got float64 "
                                                    "values with fractions"),
        ({"object_ids": np.array(["a", "b", "c"])}, "object_ids: expected integers, got <U1"),
        ({"states": np.array([0, 1, 7])}, "states: expected 0 (visible) or 1 (occluded), got "
                                          "[0, 1, 7]"),
        ({"states": np.array([0, 1, 256])}, "states: values must be in [0, 255]"),
        ({"labels": ("a", None, "c")}, "labels: expected strings, got ['NoneType', 'str']"),
        # Values a box, a score or a class id cannot have.
        ({"scores": np.array([0.1, 2.0, 0.3])}, "scores: expected values in [0, 1], got 2.0"),
        ({"scores": np.array([0.1, np.nan, 0.3])}, "scores: expected values in [0, 1], got nan"),
        ({"class_ids": np.array([0, -5, 1])}, "class_ids: expected >= -1"),
        ({"object_ids": np.array([4, 7, 4])}, "object_ids: expected unique ids, got [4] more"),
        ({"image_height_px": 2.5}, "image_height_px: expected an integer, got 2.5 (float)"),
        ({"image_width_px": True}, "image_width_px: expected an integer, got True (bool)"),
    ],
)
def test_invalid_fields_say_expected_and_actual(overrides, message):
    with pytest.raises(InvalidDetectionsError) as info:
        _make(**overrides)
    assert message in str(info.value)


def test_select_and_empty():
    det = _make(labels=("a", "b", "c"))
    sub = det.select(np.array([True, False, True]))
    assert len(sub) == 2 and sub.labels == ("a", "c")
    np.testing.assert_array_equal(sub.object_ids, [0, 2])
    empty = Detections.empty(4, 5)
    assert len(empty) == 0 and empty.masks.shape == (0, 4, 5)
    assert len(empty.select(np.zeros(0, bool))) == 0
