"""Mask crops, label image and overlay (pure core: numpy + cv2, no rclpy)."""

from __future__ import annotations

import numpy as np
import pytest

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.render import (
    MAX_MONO8_INSTANCES,
    MaskCrop,
    color_for,
    draw_overlay,
    label_image,
    mask_crops,
)

H, W = 40, 60


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 1, 1]


def _detections(masks: np.ndarray, boxes: list[list[float]] | None = None,
                object_ids: list[int] | None = None) -> Detections:
    """Detections over H x W with descending scores (index 0 = highest)."""
    n = masks.shape[0]
    if boxes is None:
        boxes = [_tight_box(m) for m in masks]
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.linspace(0.9, 0.5, n),
                      np.zeros(n), masks.shape[1], masks.shape[2], masks=masks,
                      object_ids=object_ids, labels=tuple(f"c{i}" for i in range(n)))


def _blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _reference_crop(mask: np.ndarray) -> tuple[int, int, np.ndarray, int, tuple[float, float]]:
    """Brute force (full-image np.nonzero): offsets, bool crop, area, centroid."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1].copy()
    return int(x0), int(y0), crop, len(xs), (float(xs.mean()), float(ys.mean()))


def _rebuild(crop: MaskCrop, shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape, bool)
    full[crop.y_offset:crop.y_offset + crop.height,
         crop.x_offset:crop.x_offset + crop.width] = crop.mask
    return full


# ----------------------------------------------------------------------------- mask_crops
@pytest.mark.parametrize(
    ("mask", "box"),
    [
        (_blob(5, 10, 7, 20), [7, 5, 20, 10]),            # inside its box
        (_blob(0, 40, 0, 60), [0, 0, 60, 40]),            # the whole image, touching borders
        (_blob(30, 40, 50, 60), [50, 30, 60, 40]),        # bottom-right corner
        (_blob(0, 1, 0, 1), [0, 0, 1, 1]),                # one pixel, top-left corner
        (_blob(0, 40, 59, 60), [59, 0, 60, 40]),          # one column on the right border
        (_blob(5, 10, 7, 20), [30, 30, 35, 35]),          # mask outside its (wrong) box
        (_blob(5, 10, 7, 20), [8, 6, 12, 9]),             # mask larger than its box
        (_blob(5, 10, 7, 20), [100, 100, 120, 130]),      # box outside the image
        (_blob(5, 10, 7, 20), [float("nan"), 0, 5, 5]),   # box not finite
    ],
)
def test_crop_is_lossless_and_tight(mask, box):
    det = _detections(mask[None], [box])
    crop = mask_crops(det)[0]
    x0, y0, ref, area, centroid = _reference_crop(mask)
    assert (crop.x_offset, crop.y_offset) == (x0, y0)
    assert (crop.height, crop.width) == ref.shape
    assert crop.window == (x0, y0, x0 + ref.shape[1], y0 + ref.shape[0])
    assert crop.mask.dtype == bool
    assert np.shares_memory(crop.mask, det.masks)  # a view, not a per-frame copy
    np.testing.assert_array_equal(crop.mask, ref)
    np.testing.assert_array_equal(_rebuild(crop, mask.shape), mask)
    assert crop.area_px == area
    assert crop.centroid_xy == pytest.approx(centroid)


@pytest.mark.parametrize("seed", range(5))
def test_crops_match_brute_force_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    n, height, width = 6, 50, 70
    masks = rng.random((n, height, width)) < 0.02  # scattered pixels, anywhere
    masks[0] = False                                # one empty mask
    boxes = [np.array(_tight_box(m), np.float32) + rng.uniform(-3, 3, 4) for m in masks]
    det = _detections(masks, boxes)
    for i, crop in enumerate(mask_crops(det)):
        if not masks[i].any():
            assert crop.area_px == 0 and crop.mask.shape == (0, 0)
            continue
        x0, y0, ref, area, centroid = _reference_crop(masks[i])
        assert (crop.x_offset, crop.y_offset, crop.area_px) == (x0, y0, area)
        np.testing.assert_array_equal(crop.mask, ref)
        assert crop.centroid_xy == pytest.approx(centroid)


def test_crops_of_non_contiguous_masks():
    masks = np.ascontiguousarray(np.stack([_blob(5, 10, 7, 20), _blob(0, 40, 58, 60)]))
    transposed = np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not transposed.flags.c_contiguous
    for crop, mask in zip(mask_crops(_detections(transposed)), masks, strict=True):
        np.testing.assert_array_equal(_rebuild(crop, mask.shape), mask)


def test_empty_mask_gives_empty_crop_and_box_centre():
    crop = mask_crops(_detections(np.zeros((1, H, W), bool), [[10, 20, 30, 40]]))[0]
    assert crop.mask.shape == (0, 0) and crop.area_px == 0
    assert (crop.width, crop.height, crop.x_offset, crop.y_offset) == (0, 0, 0, 0)
    # The box [10, 30) x [20, 40) covers pixels 10..29 x 20..39: centre (19.5, 29.5), as a
    # full mask's centroid would be (it was (20, 30), half a pixel off).
    assert crop.centroid_xy == (19.5, 29.5)
    # The tracker's occluded objects: empty mask, all-zero box: (0, 0), never -0.5.
    occluded = mask_crops(_detections(np.zeros((1, H, W), bool), [[0, 0, 0, 0]]))[0]
    assert occluded.centroid_xy == (0.0, 0.0)


def test_no_instances_and_no_masks():
    assert mask_crops(Detections.empty(H, W)) == []
    det = Detections(np.zeros((1, 4), np.float32), [0.5], [0], H, W)  # masks None
    assert mask_crops(det) == []
    labels = label_image(det)
    assert labels.shape == (H, W) and not labels.any()


# ---------------------------------------------------------------------------- label_image
def test_label_image_indices_and_overlap_priority():
    first = _blob(0, 20, 0, 30)     # highest score (index 0)
    second = _blob(10, 30, 20, 50)
    third = _blob(25, 40, 40, 60)   # lowest score, touches the bottom-right corner
    det = _detections(np.stack([first, second, third]))
    labels = label_image(det)
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    assert labels[5, 5] == 1 and labels[20, 45] == 2 and labels[39, 59] == 3
    assert labels[15, 25] == 1  # overlap 1/2: the higher score wins
    assert labels[27, 45] == 2  # overlap 2/3
    assert labels[35, 5] == 0
    expected = np.zeros((H, W), np.uint8)
    for index in (2, 1, 0):
        expected[det.masks[index]] = index + 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("scores", [[0.2, 0.9, 0.5], [0.5, 0.5, 0.9]])
def test_overlaps_go_to_the_higher_score_in_any_order(scores):
    # The tracker's detections come sorted by object id: its overlaps went to the lower id.
    masks = np.stack([_blob(0, 20, 0, 30), _blob(10, 30, 20, 50), _blob(15, 40, 25, 60)])
    det = _detections(masks, object_ids=[1, 2, 3])
    det = Detections(det.xyxy, np.array(scores), det.class_ids, H, W, masks=masks,
                     object_ids=det.object_ids, labels=det.labels)
    expected = np.zeros((H, W), np.uint8)
    # Highest score last; of equal scores the lower index last.
    for index in sorted(range(3), key=lambda i: (scores[i], -i)):
        expected[masks[index]] = index + 1
    np.testing.assert_array_equal(label_image(det), expected)
    image = np.full((H, W, 3), 100, np.uint8)
    out = draw_overlay(image, det, "rgb8", alpha=1.0, draw_boxes=False, draw_labels=False)
    for y, x in ((16, 26), (12, 22), (25, 45)):
        on_top = expected[y, x] - 1
        np.testing.assert_array_equal(out[y, x], color_for(int(det.object_ids[on_top])))


def test_overlay_survives_boxes_far_outside_the_image():
    # A misbehaving model: finite but huge boxes made cv2.rectangle raise (overlay lost).
    masks = np.stack([_blob(0, 20, 0, 30), _blob(10, 30, 20, 50)])
    det = _detections(masks, boxes=[[-3e9, -3e9, 3e9, 3e38], [3e9, 3e9, 4e9, 4e9]])
    out = draw_overlay(np.zeros((H, W, 3), np.uint8), det, "rgb8")
    assert out.shape == (H, W, 3)


def test_label_image_with_shared_crops_is_identical():
    rng = np.random.default_rng(3)
    masks = rng.random((8, H, W)) < 0.05
    boxes = [np.array(_tight_box(m), np.float32) + rng.uniform(-4, 4, 4) for m in masks]
    det = _detections(masks, boxes)
    np.testing.assert_array_equal(label_image(det, crops=mask_crops(det)), label_image(det))
    with pytest.raises(ValueError, match="crops"):
        label_image(det, crops=mask_crops(det)[:3])


def test_label_image_mask_outside_its_box():
    det = _detections(_blob(5, 10, 7, 20)[None], [[30, 30, 35, 35]])
    np.testing.assert_array_equal(label_image(det) == 1, det.masks[0])


@pytest.mark.parametrize(
    ("n", "dtype"),
    [(0, np.uint8), (1, np.uint8), (MAX_MONO8_INSTANCES, np.uint8),
     (MAX_MONO8_INSTANCES + 1, np.uint16), (300, np.uint16)],
)
def test_label_image_dtype_by_instance_count(n, dtype):
    masks = np.zeros((n, H, W), bool)
    for i in range(n):
        masks[i].flat[i * 7] = True  # one distinct pixel each
    labels = label_image(_detections(masks, [[0, 0, W, H]] * n))
    assert labels.dtype == dtype and int(labels.max()) == n
    assert np.count_nonzero(labels) == n


def test_label_image_explicit_dtype():
    det = _detections(np.stack([_blob(0, 5, 0, 5), _blob(5, 9, 5, 9)]))
    labels = label_image(det, dtype=np.uint16)
    assert labels.dtype == np.uint16 and labels.max() == 2
    masks = np.zeros((300, H, W), bool)
    with pytest.raises(ValueError, match="cannot hold"):
        label_image(_detections(masks, [[0, 0, 1, 1]] * 300), dtype=np.uint8)
    with pytest.raises(ValueError, match="cannot hold"):
        label_image(det, dtype=np.float32)


def test_empty_detections_label_image():
    labels = label_image(Detections.empty(H, W))
    assert labels.shape == (H, W) and labels.dtype == np.uint8 and not labels.any()


# -------------------------------------------------------------------------------- overlay
def _box_band(box: list[float], thickness: int = 2) -> np.ndarray:
    """Pixels a thickness-2 rectangle on `box` (exclusive max edges) may touch."""
    x0, y0, x1, y1 = round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1
    band = np.zeros((H, W), bool)
    top, left = max(y0 - thickness, 0), max(x0 - thickness, 0)
    band[top:y1 + thickness + 1, left:x1 + thickness + 1] = True
    band[y0 + thickness:y1 - thickness + 1, x0 + thickness:x1 - thickness + 1] = False
    return band


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_overlay_masks_only_changes_mask_pixels_with_object_colour(encoding):
    image = np.full((H, W, 3), 100, np.uint8)
    det = _detections(_blob(10, 20, 10, 30)[None], object_ids=[7])
    out = draw_overlay(image, det, encoding, alpha=1.0, draw_boxes=False, draw_labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image and (image == 100).all()  # input untouched
    color = np.array(color_for(7))
    np.testing.assert_array_equal(out[15, 15], color if encoding == "rgb8" else color[::-1])
    np.testing.assert_array_equal((out != image).any(axis=2), det.masks[0])


def test_overlay_blends_with_alpha():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    det = _detections(_blob(3, 30, 4, 50)[None])
    out = draw_overlay(image, det, "rgb8", alpha=0.25, draw_boxes=False, draw_labels=False)
    expected = np.round(0.75 * image[det.masks[0]] + 0.25 * np.array(color_for(0)))
    assert np.abs(out[det.masks[0]].astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(out[~det.masks[0]], image[~det.masks[0]])
    unchanged = draw_overlay(image, det, "rgb8", alpha=0.0, draw_boxes=False, draw_labels=False)
    np.testing.assert_array_equal(unchanged, image)


def test_overlay_boxes_and_labels_stay_in_their_regions():
    image = np.full((H, W, 3), 100, np.uint8)
    box = [12.0, 18.0, 40.0, 35.0]
    det = _detections(_blob(20, 30, 15, 35)[None], [box])
    boxes_only = draw_overlay(image, det, "rgb8", draw_masks=False, draw_labels=False)
    changed = (boxes_only != image).any(axis=2)
    assert changed.any() and not (changed & ~_box_band(box)).any()
    labels_only = draw_overlay(image, det, "rgb8", draw_masks=False, draw_boxes=False)
    changed = (labels_only != image).any(axis=2)
    ys, xs = np.nonzero(changed)
    # The caption sits on the box's top edge, above the box.
    assert changed.any() and ys.max() <= box[1] and xs.min() >= box[0]
    everything = draw_overlay(image, det, "rgb8")
    changed = (everything != image).any(axis=2)
    allowed = det.masks[0] | _box_band(box) | (labels_only != image).any(axis=2)
    assert not (changed & ~allowed).any()


@pytest.mark.parametrize("seed", range(3))
def test_overlay_keeps_channel_order(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = rng.random((4, H, W)) < 0.1
    det = _detections(masks, object_ids=[3, 9, 4, 1])
    rgb = draw_overlay(image, det, "rgb8")
    bgr = draw_overlay(np.ascontiguousarray(image[..., ::-1]), det, "bgr8")
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])
    np.testing.assert_array_equal(draw_overlay(image, det, "rgb8", crops=mask_crops(det)), rgb)


def test_overlay_without_instances_or_masks_is_a_copy():
    image = np.full((H, W, 3), 7, np.uint8)
    out = draw_overlay(image, Detections.empty(H, W), "bgr8")
    np.testing.assert_array_equal(out, image)
    assert out is not image
    no_masks = Detections(np.array([[5, 5, 20, 20]], np.float32), [0.5], [0], H, W)
    out = draw_overlay(image, no_masks, "rgb8", draw_boxes=False, draw_labels=False)
    np.testing.assert_array_equal(out, image)


def test_overlay_empty_mask_draws_only_box_and_label():
    image = np.zeros((H, W, 3), np.uint8)
    det = _detections(np.zeros((1, H, W), bool), [[10, 10, 30, 30]])
    masks_only = draw_overlay(image, det, "rgb8", draw_boxes=False, draw_labels=False)
    np.testing.assert_array_equal(masks_only, image)
    assert (draw_overlay(image, det, "rgb8") != image).any()


@pytest.mark.parametrize(
    ("image", "encoding"),
    [
        (np.zeros((H, W, 3), np.uint8), "mono8"),
        (np.zeros((H, W, 3), np.uint8), "rgba8"),
        (np.zeros((H, W), np.uint8), "rgb8"),
        (np.zeros((H + 1, W, 3), np.uint8), "rgb8"),
        (np.zeros((H, W, 3), np.uint16), "rgb8"),
    ],
)
def test_overlay_rejects_bad_images(image, encoding):
    with pytest.raises(InvalidImageError):
        draw_overlay(image, Detections.empty(H, W), encoding)


def test_overlay_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(np.zeros((H, W, 3), np.uint8), Detections.empty(H, W), alpha=1.5)


def test_colors_are_stable_per_object_id():
    assert color_for(5) == color_for(5) == color_for(25)
    assert len({color_for(i) for i in range(20)}) == 20
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in color_for(-3))
