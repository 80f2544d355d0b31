"""Per-instance mask crops, the instance-id label image and the debug overlay (numpy + cv2)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sam3_ros.core.detections import Detections

# Fixed, well-separated colours (RGB); an object keeps its colour across frames via its id.
_PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], np.uint8)


@dataclass(frozen=True)
class MaskCrop:
    """One instance mask, cropped losslessly to the bounding box of its pixels.

    Attributes:
        x_offset / y_offset: Top-left pixel of the crop in the input image.
        mask: (height, width) uint8, C-contiguous, 255 = object, 0 = background; (0, 0) when
            the mask is empty.
        area_px: Number of mask pixels.
        centroid_xy: Mean (x, y) of the mask pixels; the box centre for an empty mask.
    """

    x_offset: int
    y_offset: int
    mask: np.ndarray
    area_px: int
    centroid_xy: tuple[float, float]


def _window(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    # The mask lies (almost always) inside its box; search a slightly larger window, and the
    # whole image when the box is degenerate.
    x0, y0 = int(np.floor(box[0])) - 2, int(np.floor(box[1])) - 2
    x1, y1 = int(np.ceil(box[2])) + 2, int(np.ceil(box[3])) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, width, height
    return x0, y0, x1, y1


def _crop_one(mask: np.ndarray, box: np.ndarray) -> MaskCrop:
    height, width = mask.shape
    x0, y0, x1, y1 = _window(box, height, width)
    window = mask[y0:y1, x0:x1].view(np.uint8)
    # SAM3's box and mask come from different heads: a mask may leave its box. Counting the
    # whole mask (cheap) tells whether the window holds all of it.
    if cv2.countNonZero(window) != np.count_nonzero(mask):
        x0, y0, window = 0, 0, mask.view(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(window)
    if bw == 0 or bh == 0:
        centre = (float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2))
        return MaskCrop(0, 0, np.zeros((0, 0), np.uint8), 0, centre)
    tight = window[by:by + bh, bx:bx + bw]
    moments = cv2.moments(tight, binaryImage=True)
    area = int(moments["m00"])
    centroid = (moments["m10"] / area + x0 + bx, moments["m01"] / area + y0 + by)
    return MaskCrop(x0 + bx, y0 + by, tight * np.uint8(255), area, centroid)


def mask_crops(detections: Detections) -> list[MaskCrop]:
    """Crop every instance mask to the bounding box of its pixels (lossless).

    Work is bounded by each instance's box, not the image: 20 instances at 1280x720 cost
    about as much as their boxes' areas.
    """
    if detections.masks is None:
        return []
    return [_crop_one(mask, box) for mask, box in zip(detections.masks, detections.xyxy,
                                                       strict=True)]


def label_image(detections: Detections) -> np.ndarray:
    """Instance-id label image aligned to the input frame.

    Pixel value = 1 + the instance's index in the detections (and so in the published
    DetectionArray); 0 = background. Where instances overlap, the higher-scoring one wins
    (detections are sorted by descending score, so the lower index wins).

    Returns:
        (H, W) uint8 (mono8) for up to 254 instances, else uint16 (mono16).
    """
    height, width = detections.image_height_px, detections.image_width_px
    n = len(detections)
    labels = np.zeros((height, width), np.uint8 if n <= 254 else np.uint16)
    if detections.masks is None:
        return labels
    # Paint the lowest score first so that higher scores overwrite it; only inside each box.
    for index in range(n - 1, -1, -1):
        x0, y0, x1, y1 = _window(detections.xyxy[index], height, width)
        mask = detections.masks[index]
        if np.count_nonzero(mask[y0:y1, x0:x1]) != np.count_nonzero(mask):
            x0, y0, x1, y1 = 0, 0, width, height
        labels[y0:y1, x0:x1][mask[y0:y1, x0:x1]] = index + 1
    return labels


def color_for(object_id: int) -> tuple[int, int, int]:
    """Stable RGB colour of an object id."""
    return tuple(int(c) for c in _PALETTE[object_id % len(_PALETTE)])


def draw_overlay(image: np.ndarray, detections: Detections, encoding: str = "rgb8",
                 alpha: float = 0.5, draw_boxes: bool = True, draw_labels: bool = True,
                 draw_masks: bool = True) -> np.ndarray:
    """Draw masks, boxes and "label #id score" captions on a copy of `image`.

    Args:
        image: (H, W, 3) uint8 in `encoding` channel order ("rgb8" or "bgr8").
        detections: Instances of this image.
        alpha: Mask opacity in [0, 1].

    Returns:
        A new (H, W, 3) uint8 image in the same channel order.
    """
    out = image.copy()
    bgr = encoding == "bgr8"
    height, width = out.shape[:2]
    for index in range(len(detections)):
        color = color_for(int(detections.object_ids[index]))
        if bgr:
            color = color[::-1]
        box = detections.xyxy[index]
        if draw_masks and detections.masks is not None:
            x0, y0, x1, y1 = _window(box, height, width)
            mask = detections.masks[index]
            if np.count_nonzero(mask[y0:y1, x0:x1]) != np.count_nonzero(mask):
                x0, y0, x1, y1 = 0, 0, width, height
            region = out[y0:y1, x0:x1]
            # Blend the whole window with SIMD, then keep the blend only on mask pixels.
            solid = np.empty_like(region)
            solid[:] = color
            blended = cv2.addWeighted(region, 1.0 - alpha, solid, alpha, 0.0)
            np.copyto(region, blended, where=mask[y0:y1, x0:x1, None])
        p0 = (round(float(box[0])), round(float(box[1])))
        p1 = (round(float(box[2])) - 1, round(float(box[3])) - 1)
        if draw_boxes:
            cv2.rectangle(out, p0, p1, color, 2)
        if draw_labels:
            text = (f"{detections.labels[index] or 'obj'} #{int(detections.object_ids[index])} "
                    f"{float(detections.scores[index]):.2f}")
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            y_text = max(p0[1], th + 4)
            cv2.rectangle(out, (p0[0], y_text - th - 4), (p0[0] + tw + 2, y_text), color, -1)
            cv2.putText(out, text, (p0[0] + 1, y_text - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return out
