"""Mask crops, label image and overlay (pure core)."""

from __future__ import annotations

import numpy as np
import pytest

from sam3_ros.core.detections import Detections
from sam3_ros.core.render import color_for, draw_overlay, label_image, mask_crops

H, W = 40, 60


def _detections(masks: np.ndarray, boxes: list[list[float]] | None = None) -> Detections:
    n = masks.shape[0]
    if boxes is None:
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs)
                         else [0, 0, 1, 1])
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.linspace(0.9, 0.5, n),
                      np.zeros(n), H, W, masks=masks, labels=tuple(f"c{i}" for i in range(n)))


def _blob(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize(
    ("mask", "box"),
    [
        (_blob(5, 10, 7, 20), [7, 5, 20, 10]),            # inside its box
        (_blob(0, 40, 0, 60), [0, 0, 60, 40]),            # the whole image, touching borders
        (_blob(30, 40, 50, 60), [50, 30, 60, 40]),        # bottom-right corner
        (_blob(5, 10, 7, 20), [30, 30, 35, 35]),          # mask outside its (wrong) box
    ],
)
def test_crop_is_lossless_and_tight(mask, box):
    crop = mask_crops(_detections(mask[None], [box]))[0]
    ys, xs = np.nonzero(mask)
    assert (crop.x_offset, crop.y_offset) == (xs.min(), ys.min())
    assert crop.mask.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert crop.mask.flags.c_contiguous and crop.mask.dtype == np.uint8
    assert set(np.unique(crop.mask)) <= {0, 255}
    rebuilt = np.zeros_like(mask)
    rebuilt[crop.y_offset:crop.y_offset + crop.mask.shape[0],
            crop.x_offset:crop.x_offset + crop.mask.shape[1]] = crop.mask > 0
    np.testing.assert_array_equal(rebuilt, mask)
    assert crop.area_px == len(xs)
    assert crop.centroid_xy == pytest.approx((xs.mean(), ys.mean()))


def test_empty_mask_gives_empty_crop_and_box_centre():
    crop = mask_crops(_detections(np.zeros((1, H, W), bool), [[10, 20, 30, 40]]))[0]
    assert crop.mask.shape == (0, 0) and crop.area_px == 0
    assert crop.centroid_xy == (20.0, 30.0)


def test_no_masks_no_crops():
    det = Detections(np.zeros((1, 4), np.float32), [0.5], [0], H, W)
    assert mask_crops(det) == []
    assert not label_image(det).any()


def test_label_image_indices_and_overlap_priority():
    first = _blob(0, 20, 0, 30)   # highest score (index 0)
    second = _blob(10, 30, 20, 50)
    labels = label_image(_detections(np.stack([first, second])))
    assert labels.dtype == np.uint8
    assert labels[5, 5] == 1 and labels[25, 45] == 2 and labels[35, 55] == 0
    assert labels[15, 25] == 1  # overlap: the higher score wins


def test_label_image_switches_to_uint16_above_254():
    n = 300
    masks = np.zeros((n, H, W), bool)
    for i in range(n):
        masks[i].flat[i] = True
    labels = label_image(_detections(masks))
    assert labels.dtype == np.uint16 and labels.max() == n


def test_empty_detections_label_image():
    labels = label_image(Detections.empty(H, W))
    assert labels.shape == (H, W) and labels.dtype == np.uint8 and not labels.any()


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_overlay_changes_only_instance_pixels_and_keeps_order(encoding):
    image = np.full((H, W, 3), 100, np.uint8)
    det = _detections(_blob(10, 20, 10, 30)[None])
    masks_only = draw_overlay(image, det, encoding, alpha=1.0, draw_boxes=False,
                              draw_labels=False)
    assert masks_only.shape == image.shape and masks_only.dtype == np.uint8
    assert masks_only is not image and (image == 100).all()
    color = np.array(color_for(0))
    expected = color if encoding == "rgb8" else color[::-1]
    np.testing.assert_array_equal(masks_only[15, 15], expected)
    changed = (masks_only != image).any(axis=2)
    np.testing.assert_array_equal(changed, det.masks[0])
    full = draw_overlay(image, det, encoding)
    assert (full != image).any(axis=2).sum() > changed.sum()  # boxes and labels drawn too
