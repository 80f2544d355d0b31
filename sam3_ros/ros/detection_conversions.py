"""`Detections` <-> sam3_ros / vision_msgs messages."""

from __future__ import annotations

import array as pyarray
import functools
import statistics
import time
from typing import Any

import numpy as np
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidDetectionsError
from sam3_ros.core.render import draw_overlay, label_image, mask_crops
from sam3_ros.msg import Detection, DetectionArray, LabelInfo


def _mono8_image(mask: np.ndarray) -> Image:
    image = Image(height=int(mask.shape[0]), width=int(mask.shape[1]), encoding="mono8",
                  is_bigendian=0, step=int(mask.shape[1]))
    # array.array is stored by the generated setter without per-element checks (fast path).
    data = pyarray.array("B")
    data.frombytes(mask.data)
    image.data = data
    return image


def detections_to_msg(detections: Detections, header: Header, prompt_generation: int = 0,
                      include_masks: bool = True) -> DetectionArray:
    """Build the DetectionArray of one frame (masks cropped losslessly to their pixels)."""
    crops = mask_crops(detections) if include_masks else []
    out = DetectionArray(header=header, image_width=detections.image_width_px,
                         image_height=detections.image_height_px,
                         prompt_generation=int(prompt_generation))
    xyxy = detections.xyxy.tolist()
    scores = detections.scores.tolist()
    class_ids = detections.class_ids.tolist()
    object_ids = detections.object_ids.tolist()
    states = detections.states.tolist()
    ages = detections.age_frames.tolist()
    items = []
    for i in range(len(detections)):
        box = xyxy[i]
        det = Detection(object_id=object_ids[i], class_id=class_ids[i],
                        label=detections.labels[i], score=scores[i], x_min=box[0],
                        y_min=box[1], x_max=box[2], y_max=box[3], state=states[i],
                        age_frames=ages[i])
        if crops:
            crop = crops[i]
            det.mask_roi = RegionOfInterest(x_offset=crop.x_offset, y_offset=crop.y_offset,
                                            height=int(crop.mask.shape[0]),
                                            width=int(crop.mask.shape[1]))
            det.mask = _mono8_image(crop.mask)
            det.mask_area_px = crop.area_px
            det.centroid_x, det.centroid_y = crop.centroid_xy
        else:
            det.centroid_x, det.centroid_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        items.append(det)
    out.detections = items
    return out


def msg_to_detections(msg: DetectionArray) -> Detections:
    """Rebuild `Detections` (full-size masks) from a DetectionArray; exact inverse.

    Masks are None when the message carries none (published with publish_masks false).
    """
    height, width = int(msg.image_height), int(msg.image_width)
    n = len(msg.detections)
    has_masks = n == 0 or any(d.mask.width for d in msg.detections)
    masks = np.zeros((n, height, width), bool) if has_masks else None
    for i, det in enumerate(msg.detections):
        if masks is None or det.mask.width == 0:
            continue
        roi = det.mask_roi
        if det.mask.encoding != "mono8" or det.mask.step != det.mask.width:
            raise InvalidDetectionsError(f"detection {i}: mask must be mono8 with step = width")
        crop = np.frombuffer(bytes(det.mask.data), np.uint8).reshape(det.mask.height,
                                                                     det.mask.width)
        masks[i, roi.y_offset:roi.y_offset + roi.height,
              roi.x_offset:roi.x_offset + roi.width] = crop > 0
    return Detections(
        xyxy=np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in msg.detections],
                      np.float32).reshape(n, 4),
        scores=np.array([d.score for d in msg.detections], np.float32),
        class_ids=np.array([d.class_id for d in msg.detections], np.int32),
        image_height_px=height, image_width_px=width, masks=masks,
        object_ids=np.array([d.object_id for d in msg.detections], np.int32),
        states=np.array([d.state for d in msg.detections], np.uint8),
        age_frames=np.array([d.age_frames for d in msg.detections], np.uint32),
        labels=tuple(d.label for d in msg.detections),
    )


@functools.cache
def _vision_msgs() -> Any | None:
    try:
        from vision_msgs import msg as vision_msgs
    except ImportError:
        return None
    return vision_msgs


def detections_to_vision_msgs(detections: Detections, header: Header) -> Any | None:
    """vision_msgs/Detection2DArray for the frame, or None when vision_msgs is not installed.

    `results[0].hypothesis.class_id` is the prompt text (the label; vision_msgs class ids are
    strings), `id` the object id. Works with the vision_msgs of Humble, Jazzy and Kilted
    (bbox centre as `center.position.{x,y}` in 4.x; `center.{x,y}` in older releases).
    """
    vm = _vision_msgs()
    if vm is None:
        return None
    out = vm.Detection2DArray(header=header)
    for i in range(len(detections)):
        x0, y0, x1, y1 = (float(v) for v in detections.xyxy[i])
        det = vm.Detection2D(header=header, id=str(int(detections.object_ids[i])))
        center = det.bbox.center
        target = center.position if hasattr(center, "position") else center
        target.x, target.y = (x0 + x1) / 2, (y0 + y1) / 2
        det.bbox.size_x, det.bbox.size_y = x1 - x0, y1 - y0
        hypothesis = vm.ObjectHypothesisWithPose()
        hyp = hypothesis.hypothesis if hasattr(hypothesis, "hypothesis") else hypothesis
        hyp.class_id = detections.labels[i] or str(int(detections.class_ids[i]))
        hyp.score = float(detections.scores[i])
        det.results = [hypothesis]
        out.detections.append(det)
    return out


def label_info_msg(class_names: list[str], prompt_generation: int,
                   header: Header | None = None) -> LabelInfo:
    return LabelInfo(header=header or Header(), class_names=list(class_names),
                     prompt_generation=int(prompt_generation))


def build_outputs_benchmark(n_instances: int = 20, height: int = 720, width: int = 1280,
                            repeats: int = 50, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Time building the per-frame outputs for realistic instances (blobs, not full images).

    Returns:
        {"messages_ms": (median, p90)} for DetectionArray with masks + the label image, and
        {"overlay_ms": (median, p90)} for the overlay.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_instances, height, width), bool)
    boxes = np.zeros((n_instances, 4), np.float32)
    yy, xx = np.ogrid[:height, :width]
    for i in range(n_instances):
        rx, ry = rng.integers(20, 120), rng.integers(20, 120)
        cx, cy = rng.integers(rx, width - rx), rng.integers(ry, height - ry)
        masks[i] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        boxes[i] = (cx - rx, cy - ry, cx + rx + 1, cy + ry + 1)
    detections = Detections(boxes, rng.random(n_instances, dtype=np.float32),
                            np.arange(n_instances) % 3, height, width, masks=masks,
                            labels=tuple(f"class {i % 3}" for i in range(n_instances)))
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    header = Header()

    def timed(fn) -> tuple[float, float]:
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]

    return {
        "messages_ms": timed(lambda: (detections_to_msg(detections, header, 0),
                                      label_image(detections))),
        "overlay_ms": timed(lambda: draw_overlay(rgb, detections, "rgb8")),
    }
