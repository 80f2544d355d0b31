"""Shared assertion for backend parity tests: two `Detections` of the same frame agree."""

from __future__ import annotations

import numpy as np

SCORE_TOL = 1e-4
BOX_TOL_PX = 0.01
MIN_MASK_IOU = 0.99


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
