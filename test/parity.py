"""Shared helpers for backend parity tests: two `Detections` of the same frame agree; a
short tracker run to compare backends on."""

from __future__ import annotations

import numpy as np

SCORE_TOL = 1e-4
BOX_TOL_PX = 0.01
MIN_MASK_IOU = 0.99


def clipped_xyxy(boxes, height: int, width: int) -> np.ndarray:
    """transformers' post-processed (N, 4) xyxy boxes clipped to the image as the package
    publishes them (transformers keeps corners outside the image)."""
    out = np.array(boxes, np.float32, copy=True)
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def assert_same_detections(ref, got) -> None:
    """Same instances (count, classes, labels, object ids if any), scores within SCORE_TOL,
    boxes within BOX_TOL_PX pixels, every mask pair at IoU >= MIN_MASK_IOU."""
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got.class_ids, ref.class_ids)
    if ref.object_ids is not None:
        np.testing.assert_array_equal(got.object_ids, ref.object_ids)
    assert got.labels == ref.labels
    np.testing.assert_allclose(got.scores, ref.scores, atol=SCORE_TOL, rtol=0)
    np.testing.assert_allclose(got.xyxy, ref.xyxy, atol=BOX_TOL_PX, rtol=0)
    for a, b in zip(ref.masks, got.masks, strict=True):
        union = np.logical_or(a, b).sum()
        assert (np.logical_and(a, b).sum() / union if union else 1.0) >= MIN_MASK_IOU


def assert_matched_detections(ref, got, score_tol: float, box_tol_px: float,
                              min_mask_iou: float) -> None:
    """Each reference instance has its own twin in `got`: same class and label, score within
    `score_tol`, box within `box_tol_px`, mask IoU >= `min_mask_iou`. Matched, not compared in
    order: for backends that move scores (INT8), near-duplicate instances of the tiny random
    model swap places."""
    assert len(got) == len(ref)
    unmatched = list(range(len(got)))
    for i in range(len(ref)):
        twins = [j for j in unmatched
                 if got.class_ids[j] == ref.class_ids[i] and got.labels[j] == ref.labels[i]
                 and abs(float(got.scores[j]) - float(ref.scores[i])) <= score_tol
                 and np.abs(got.xyxy[j] - ref.xyxy[i]).max() <= box_tol_px]
        assert twins, f"reference instance {i} has no twin"
        j = min(twins, key=lambda k: np.abs(got.xyxy[k] - ref.xyxy[i]).max())
        union = np.logical_or(ref.masks[i], got.masks[j]).sum()
        iou = np.logical_and(ref.masks[i], got.masks[j]).sum() / union if union else 1.0
        assert iou >= min_mask_iou, f"reference instance {i}: mask IoU {iou:.3f}"
        unmatched.remove(j)


def tracker_run(loaded, feature_cache, prompts: list[str], frames: int = 3,
                base: np.ndarray | None = None) -> list:
    """`TrackerSession.process_frame` results for `frames` frames of one scene moving right
    by a pixel per frame (33 ms apart), text prompts `prompts`, every detection kept
    (score_threshold 0, at most 4 objects). `feature_cache` None: the session's own backbone.
    """
    from sam3_ros.core.tracker import TrackerConfig, TrackerSession

    session = TrackerSession(loaded, TrackerConfig(score_threshold=0.0, max_objects=4),
                             feature_cache=feature_cache)
    session.set_text_prompts(prompts)
    if base is None:
        base = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    return [session.process_frame(np.roll(base, i, axis=1), i * 33_000_000)
            for i in range(frames)]
