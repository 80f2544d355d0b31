"""Share one frame's SAM3 vision-backbone features between the detector and the tracker."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class VisionFeatureCache:
    """Runs the detector's vision backbone once per frame key; later askers reuse the output.

    In a composed process the segmenter and tracker ask for the same camera frame (key: the
    image stamp and frame id); the ViT backbone, by far the most expensive part of SAM3, then
    runs once. Only the newest `capacity` frames are held, so memory stays bounded.

    Args:
        detector: A `Sam3Model` (or `Sam3VideoModel.detector_model`).
        capacity: How many frames' features to keep.
    """

    def __init__(self, detector: Any, capacity: int = 2) -> None:
        self._detector = detector
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.backbone_calls = 0
        """How many times the backbone actually ran (for tests and benchmarks)."""

    def get(self, key: Hashable | None, pixel_values: Any) -> Any:
        """Vision features of `pixel_values` (1, 3, S, S), computed once per `key`.

        Args:
            key: Identifies the frame; None disables caching for this call.
            pixel_values: The preprocessed frame; only used when the key is not cached.

        Returns:
            The `Sam3VisionEncoderOutput` of `detector.get_vision_features`.
        """
        import torch

        with self._lock:
            if key is not None and key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            with torch.inference_mode():
                features = self._detector.get_vision_features(pixel_values=pixel_values)
            self.backbone_calls += 1
            if key is not None:
                self._entries[key] = features
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            return features

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
