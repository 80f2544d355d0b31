"""`Detections` <-> sam3_ros / vision_msgs messages, and the output-building benchmark."""

from __future__ import annotations

import array as pyarray
import functools
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidDetectionsError
from sam3_ros.core.mask_bits import pack_mask_bits, unpack_mask_bits
from sam3_ros.core.render import MaskCrop, box_centre_px, draw_overlay, label_image, mask_crops
from sam3_ros.msg import Detection, DetectionArray, LabelInfo


def _uint8_sequence(values: np.ndarray) -> pyarray.array:
    """A uint8[] message field value holding the bytes of a C-contiguous uint8 array."""
    # frombytes is one memcpy. The generated setter stores an array.array('B') without
    # per-element checks (Humble: as is; Jazzy/Kilted: one more memcpy); a list or a numpy
    # array would be checked element by element.
    data = pyarray.array("B")
    data.frombytes(values.data)
    return data


def detections_to_msg(detections: Detections, header: Header, prompt_generation: int = 0,
                      include_masks: bool = True,
                      crops: Sequence[MaskCrop] | None = None) -> DetectionArray:
    """Build the DetectionArray of one frame; masks are cropped to their pixels and bit-packed
    (lossless; layout in Detection.msg and `sam3_ros.core.mask_bits`).

    Args:
        detections: Instances of one image (sorted by descending score).
        header: The input image's header; stored unchanged (stamp and frame_id).
        prompt_generation: Generation of the prompt set that produced `detections`.
        include_masks: False leaves `mask_roi` and `mask_bits` empty and `has_masks` false to
            save bandwidth; `mask_area_px` and the centroid are still computed from the masks.
        crops: `mask_crops(detections)` when already computed (e.g. shared with
            `label_image`), else computed here.

    Returns:
        The message. Without masks in `detections`: area 0 and the box centre as centroid
        (in the centroid's convention: pixel u's centre at u).
    """
    n = len(detections)
    if detections.masks is not None and crops is None:
        crops = mask_crops(detections)
    if crops is not None and len(crops) != n:
        raise ValueError(f"got {len(crops)} crops for {n} detections")
    # One tolist() per field: Python scalars satisfy the generated setters' type checks and
    # avoid a numpy scalar conversion per field per instance.
    xyxy = detections.xyxy.tolist()
    scores = detections.scores.tolist()
    class_ids = detections.class_ids.tolist()
    object_ids = detections.object_ids.tolist()
    states = detections.states.tolist()
    ages = detections.age_frames.tolist()
    items = []
    for i in range(n):
        x_min, y_min, x_max, y_max = xyxy[i]
        det = Detection(object_id=object_ids[i], class_id=class_ids[i],
                        label=detections.labels[i], score=scores[i], x_min=x_min,
                        y_min=y_min, x_max=x_max, y_max=y_max, state=states[i],
                        age_frames=ages[i])
        if crops is None:
            det.centroid_x, det.centroid_y = box_centre_px(xyxy[i])
        else:
            crop = crops[i]
            det.mask_area_px = crop.area_px
            det.centroid_x, det.centroid_y = crop.centroid_xy
            if include_masks:
                det.mask_roi = RegionOfInterest(x_offset=crop.x_offset, y_offset=crop.y_offset,
                                                height=crop.height, width=crop.width)
                det.mask_bits = _uint8_sequence(pack_mask_bits(crop.mask))
        items.append(det)
    return DetectionArray(header=header, image_width=detections.image_width_px,
                          image_height=detections.image_height_px,
                          prompt_generation=int(prompt_generation),
                          has_masks=crops is not None and include_masks, detections=items)


def mask_crop_of(detection: Any) -> np.ndarray:
    """The mask of one received `Detection` as a (mask_roi.height, mask_roi.width) bool crop.

    Crop pixel (u, v) is input pixel (mask_roi.x_offset + u, mask_roi.y_offset + v). A (0, 0)
    crop means the mask has no pixels (or the array's `has_masks` is false).

    Raises:
        InvalidDetectionsError: `mask_bits` does not hold ceil(height * width / 8) bytes.
    """
    roi = detection.mask_roi
    return unpack_mask_bits(detection.mask_bits, int(roi.height), int(roi.width))


def _unpack_into(full: np.ndarray, det: Any) -> None:
    """Write one Detection's mask into its (H, W) slot, checking it against the image and its
    area."""
    roi = det.mask_roi
    height, width = full.shape
    if roi.width == 0 or roi.height == 0:
        if roi.width or roi.height or len(det.mask_bits):
            raise InvalidDetectionsError(
                f"an empty mask has a 0x0 mask_roi and no bytes, got {roi.width}x{roi.height} "
                f"and {len(det.mask_bits)} bytes")
        crop = None
    else:
        if roi.x_offset + roi.width > width or roi.y_offset + roi.height > height:
            raise InvalidDetectionsError(
                f"mask_roi {roi.width}x{roi.height} at ({roi.x_offset}, {roi.y_offset}) leaves "
                f"the {width}x{height} image")
        crop = mask_crop_of(det)
    area = 0 if crop is None else int(np.count_nonzero(crop))
    if area != det.mask_area_px:
        raise InvalidDetectionsError(
            f"mask has {area} pixels, mask_area_px says {det.mask_area_px}")
    if crop is not None:
        full[roi.y_offset:roi.y_offset + roi.height,
             roi.x_offset:roi.x_offset + roi.width] = crop


MAX_MASK_BYTES = 1 << 30
"""Default bound on the full-size masks `msg_to_detections` allocates (n x H x W bytes)."""


def msg_to_detections(msg: DetectionArray, max_mask_bytes: int = MAX_MASK_BYTES) -> Detections:
    """Rebuild `Detections` with full-size masks from a DetectionArray (exact inverse).

    Masks are None when the message carries none (`has_masks` false); an empty array with
    `has_masks` gives (0, H, W) masks.

    Args:
        msg: The message.
        max_mask_bytes: Most bytes of (N, H, W) bool masks to allocate: a message declaring
            65535 x 65535 with 100 detections asked for 429 GB.

    Raises:
        InvalidDetectionsError: a mask's bytes disagree with its mask_roi (count, padding
            bits) or its mask_area_px, the mask_roi leaves the image, a detection carries a
            mask while `has_masks` is false, or the masks would exceed `max_mask_bytes`.
    """
    height, width = int(msg.image_height), int(msg.image_width)
    dets = msg.detections
    n = len(dets)
    if msg.has_masks and n * height * width > max_mask_bytes:
        raise InvalidDetectionsError(
            f"{n} masks of {width}x{height} would take {n * height * width} bytes, more than "
            f"max_mask_bytes {max_mask_bytes}")
    if not msg.has_masks:
        for i, det in enumerate(dets):
            if len(det.mask_bits) or det.mask_roi.width or det.mask_roi.height:
                raise InvalidDetectionsError(
                    f"detection {i} carries a mask but the array's has_masks is false")
        masks = None
    else:
        masks = np.zeros((n, height, width), bool)
        for i, det in enumerate(dets):
            try:
                _unpack_into(masks[i], det)
            except InvalidDetectionsError as err:
                raise InvalidDetectionsError(f"detection {i}: {err}") from None
    return Detections(
        xyxy=np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in dets],
                      np.float32).reshape(n, 4),
        scores=np.array([d.score for d in dets], np.float32),
        class_ids=np.array([d.class_id for d in dets], np.int32),
        image_height_px=height, image_width_px=width, masks=masks,
        object_ids=np.array([d.object_id for d in dets], np.int32),
        states=np.array([d.state for d in dets], np.uint8),
        age_frames=np.array([d.age_frames for d in dets], np.uint32),
        labels=tuple(d.label for d in dets),
    )


@functools.cache
def _vision_msgs() -> ModuleType | None:
    """`vision_msgs.msg`, or None when vision_msgs is not installed (imported once)."""
    try:
        from vision_msgs import msg as vision_msgs
    except ImportError:
        return None
    return vision_msgs


def detections_to_vision_msgs(detections: Detections, header: Header) -> Any | None:
    """vision_msgs/Detection2DArray of one frame, or None when vision_msgs is not installed.

    Per instance: `id` = str(object_id); `bbox` = the box as centre and size (pixels);
    `results[0].hypothesis.class_id` = the label (the prompt text: vision_msgs class ids are
    strings and the text is what viewers show), or str(class_id) when the label is empty;
    `results[0].hypothesis.score` = the score. Masks are not carried (use DetectionArray).

    Works with vision_msgs 4.x (Humble, Jazzy, Kilted: `bbox.center.position.{x,y}`) and 3.x
    (`bbox.center.{x,y}`, geometry_msgs/Pose2D).
    """
    vm = _vision_msgs()
    if vm is None:
        return None
    xyxy = detections.xyxy.tolist()
    scores = detections.scores.tolist()
    items = []
    for i in range(len(detections)):
        x_min, y_min, x_max, y_max = xyxy[i]
        det = vm.Detection2D()
        det.header = header
        det.id = str(int(detections.object_ids[i]))
        center = det.bbox.center
        point = center.position if hasattr(center, "position") else center
        point.x, point.y = (x_min + x_max) / 2.0, (y_min + y_max) / 2.0
        det.bbox.size_x, det.bbox.size_y = x_max - x_min, y_max - y_min
        result = vm.ObjectHypothesisWithPose()
        result.hypothesis.class_id = detections.labels[i] or str(int(detections.class_ids[i]))
        result.hypothesis.score = scores[i]
        det.results = [result]
        items.append(det)
    out = vm.Detection2DArray()
    out.header = header
    out.detections = items
    return out


def label_info_msg(class_names: Sequence[str], prompt_generation: int,
                   header: Header | None = None) -> LabelInfo:
    """LabelInfo mapping class id i to `class_names[i]` for one prompt generation."""
    return LabelInfo(header=Header() if header is None else header,
                     class_names=[str(name) for name in class_names],
                     prompt_generation=int(prompt_generation))


def random_blob_detections(n_instances: int = 20, height: int = 720, width: int = 1280,
                           seed: int = 0) -> Detections:
    """Realistic synthetic instances: elliptic blobs (radii 20-120 px) with detector-like
    boxes (mask bounds jittered by up to 1.5 px), random scores sorted descending.

    Returns:
        Detections with (n_instances, height, width) bool masks.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_instances, height, width), bool)
    boxes = np.zeros((n_instances, 4), np.float32)
    for i in range(n_instances):
        rx_max, ry_max = max(1, min(120, width // 2 - 1)), max(1, min(120, height // 2 - 1))
        rx = int(rng.integers(min(20, rx_max), rx_max + 1))
        ry = int(rng.integers(min(20, ry_max), ry_max + 1))
        cx, cy = int(rng.integers(rx, width - rx)), int(rng.integers(ry, height - ry))
        # Only the blob's own box is touched, not the full image.
        yy, xx = np.ogrid[cy - ry:cy + ry + 1, cx - rx:cx + rx + 1]
        masks[i, cy - ry:cy + ry + 1, cx - rx:cx + rx + 1] = (
            ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)
        boxes[i] = np.array([cx - rx, cy - ry, cx + rx + 1, cy + ry + 1]) + rng.uniform(
            -1.5, 1.5, 4)
    return Detections(boxes, np.sort(rng.random(n_instances, dtype=np.float32))[::-1],
                      np.arange(n_instances) % 3, height, width, masks=masks,
                      object_ids=rng.permutation(n_instances) + 100,
                      labels=tuple(f"class {i % 3}" for i in range(n_instances)))


def build_outputs_benchmark(n_instances: int = 20, height: int = 720, width: int = 1280,
                            repeats: int = 50, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Time building the per-frame outputs for realistic instances (blobs, not full images).

    Args:
        n_instances / height / width: Instances per frame and frame size.
        repeats: Timed calls per measurement (after five warm-up calls).
        seed: Seed of the synthetic instances.

    Returns:
        (median, p90) milliseconds per call for:
        - "messages_ms": `detections_to_msg` with masks + `label_image`, each on its own
          (as the node calls them; the target is <= 5 ms for 20 instances at 1280x720);
        - "messages_shared_crops_ms": the same with `mask_crops` computed once and passed to
          both;
        - "crops_ms", "to_msg_ms" (from precomputed crops), "label_image_ms": the parts;
        - "overlay_ms": `draw_overlay` with masks, boxes and captions.
    """
    detections = random_blob_detections(n_instances, height, width, seed)
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    header = Header()
    crops = mask_crops(detections)

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        for _ in range(5):  # warm-up: caches, lazy imports, allocator state
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return float(np.median(samples)), float(np.percentile(samples, 90))

    def shared() -> None:
        shared_crops = mask_crops(detections)
        detections_to_msg(detections, header, 0, crops=shared_crops)
        label_image(detections, crops=shared_crops)

    return {
        "messages_ms": timed(lambda: (detections_to_msg(detections, header, 0),
                                      label_image(detections))),
        "messages_shared_crops_ms": timed(shared),
        "crops_ms": timed(lambda: mask_crops(detections)),
        "to_msg_ms": timed(lambda: detections_to_msg(detections, header, 0, crops=crops)),
        "label_image_ms": timed(lambda: label_image(detections)),
        "overlay_ms": timed(lambda: draw_overlay(rgb, detections, "rgb8")),
    }
