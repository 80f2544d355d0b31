"""Share one frame's SAM3 vision-backbone features between every consumer of the frame."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from sam3_ros.core.backbone import TorchBackbone, VisionBackbone, split_frames


class FrameKey(NamedTuple):
    """Identity of one camera image: consumers asking with equal keys share its features.

    Attributes:
        source: Where the image came from (the fully resolved topic name): two topics never
            share, even with equal stamps and frame ids (`image_raw` and `image_rect` of one
            camera carry both).
        stamp_sec: Header stamp, seconds.
        stamp_nanosec: Header stamp, nanoseconds.
        frame_id: Header frame id.
    """

    source: str
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str


def frame_key(source: str, stamp_sec: int, stamp_nanosec: int, frame_id: str) -> FrameKey | None:
    """The feature-sharing key of an image message, or None when it cannot be identified.

    A zero stamp is what a publisher that never sets the header sends: every one of its frames
    would carry the same key, and later frames would be served the first frame's features.
    Such frames are never shared (each consumer runs the backbone on its own frame).

    Args:
        source: The resolved topic name the message arrived on.
        stamp_sec: Header stamp, seconds.
        stamp_nanosec: Header stamp, nanoseconds.
        frame_id: Header frame id.
    """
    if stamp_sec == 0 and stamp_nanosec == 0:
        return None
    return FrameKey(source, int(stamp_sec), int(stamp_nanosec), frame_id)


class VisionFeatureCache:
    """Runs the vision backbone once per frame key; later askers reuse the output.

    Consumers of one camera frame (a segmenter and a tracker stream, or the detector and the
    tracker inside one tracker session) ask with the same key (a `FrameKey`: topic, stamp and
    frame id); the ViT backbone, by far the most expensive part of SAM3, then runs once. The
    runtime fills the cache for several cameras with one batched pass (`compute_batch`). Only
    the newest `capacity` frames are held, so memory stays bounded (~135 MB of fp32 features
    per frame at 1008 px), and they are dropped as early as their readers allow:

    * After each runtime cycle, the frames that every stream reading their camera has
      processed, or read past, are dropped (`release_read`): a camera read by one stream holds
      no features between its frames. A frame stays while a reader is behind it (a tracker
      whose copy of the image arrives a cycle after the segmenter's), so a camera read by a
      lagging pair can hold two frames (more only briefly, see below). During a cycle, the
      frames it reads are pinned (`pin`). Stamps are compared per camera: after a bag loop
      (stamps going back) a lagging stream's first frame may be encoded twice.
    * Before a frame is encoded, the other frames of its camera are dropped unless the
      current cycle reads them or a reader still awaits them; an awaited frame survives one
      such pass, not more (a reader that never reads it, e.g. after a bag loop, cannot hold
      it longer). Without a runtime (a session called directly) this keeps the latest encoded
      frame of each camera only ("latest encoded", not "newest stamp").

    A consumer that asks for a dropped frame runs the backbone again (correct, one extra pass).

    Args:
        backbone: A `VisionBackbone`; a `Sam3Model` (or `Sam3VideoModel.detector_model`) is
            wrapped in `TorchBackbone`.
        capacity: How many frames' features to keep.
    """

    def __init__(self, backbone: Any, capacity: int = 2) -> None:
        if not isinstance(backbone, TorchBackbone) and hasattr(backbone, "get_vision_features"):
            backbone = TorchBackbone(backbone)
        self.backbone: VisionBackbone = backbone
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pinned: frozenset[Hashable] = frozenset()
        """Frames a runtime cycle reads (`pin`), kept until its `release_read`."""
        self._awaited: dict[Hashable, int] = {}
        """Frames that `release_read` kept because a reader of their camera is behind them,
        with how many more newer passes of their camera they survive (one: a reader lags at
        most one pass of its camera under the runtime's round-robin; more would only keep
        frames for a reader that never reads them, e.g. after a bag loop)."""
        self._shared_position: tuple[Any, ...] | None = None
        """One batch-of-one copy of the position encodings, shared by frames of batches."""
        self.backbone_calls = 0
        """How many backbone passes actually ran (a batched pass counts once)."""
        self.frames_encoded = 0
        """How many frames those passes encoded."""

    def get(self, key: Hashable | None, pixel_values: Any) -> Any:
        """Vision features of `pixel_values` (1, 3, S, S), computed once per `key`.

        Args:
            key: Identifies the frame; None disables caching for this call.
            pixel_values: The preprocessed frame; only used when the key is not cached.

        Returns:
            The backbone's `Sam3VisionEncoderOutput` (batch 1).
        """
        with self._lock:
            if key is not None and key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            if key is not None:
                self._drop_source((key,))
            features = self._run(pixel_values)
            if key is not None:
                self._store(key, features)
            return features

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def pin(self, keys: Sequence[Hashable]) -> None:
        """Keep `keys` cached until the next `release_read`: the frames one runtime cycle
        reads survive that cycle's passes (a newer frame of the same camera, or the capacity,
        would otherwise drop a frame that a lagging stream reads in the same cycle)."""
        with self._lock:
            self._pinned = frozenset(k for k in keys if k is not None)

    def compute_batch(self, keys: Sequence[Hashable], pixel_values: Any) -> None:
        """Encode B frames in one backbone pass and cache each under its key.

        Args:
            keys: B distinct frame keys (not None), in batch order.
            pixel_values: (B, 3, S, S).

        Raises:
            ValueError: B does not match the number of keys, or more frames than the cache
                holds (their features would be evicted before use).
        """
        if pixel_values.shape[0] != len(keys):
            raise ValueError(f"compute_batch: expected {len(keys)} frames (one per key), got "
                             f"a batch of {pixel_values.shape[0]}")
        if len(keys) > self.capacity:
            raise ValueError(f"compute_batch: {len(keys)} frames, but the cache holds "
                             f"{self.capacity}")
        with self._lock:
            # Before the pass, so that the peak holds a camera's older frame only while a
            # reader still needs it.
            self._drop_source(keys)
            frames = split_frames(self._run(pixel_values), self._shared_position)
            if len(frames) > 1:
                self._shared_position = frames[0].fpn_position_encoding
            for key, features in zip(keys, frames, strict=True):
                self._store(key, features)

    def _run(self, pixel_values: Any) -> Any:
        features = self.backbone(pixel_values)
        self.backbone_calls += 1
        self.frames_encoded += pixel_values.shape[0]
        return features

    def release_read(self, readers: Sequence[tuple[str | None, Hashable | None]]) -> None:
        """Drop the frames that every reader of their camera has read, or read past.

        Readers (runtime streams) take each camera's newest frame, so one that has processed
        a frame of a camera never asks for an earlier-stamped one. A frame stays while some
        reader of its camera is behind it (a tracker stream whose copy of the image is still
        waiting behind a segmenter's) or has read nothing yet. A reader nobody declared is not
        known; if it asks for a dropped frame, the frame is encoded again (correct, one pass
        more).

        Args:
            readers: Per reader, the camera it reads (a `FrameKey.source`, or None when not
                declared) and the key of the latest frame it processed (None: none yet).
        """
        newest: dict[str, list[tuple[int, int]]] = {}
        unknown_reader = False  # a reader of a camera not known yet may read any camera
        for source, key in readers:
            if isinstance(key, FrameKey):
                newest.setdefault(key.source, []).append((key.stamp_sec, key.stamp_nanosec))
            elif source is not None:
                newest.setdefault(source, []).append((-1, -1))  # behind every frame
            else:
                unknown_reader = True
        with self._lock:
            self._pinned = frozenset()
            awaited: dict[Hashable, int] = {}
            for key in [k for k in self._entries if isinstance(k, FrameKey)]:
                if key.source not in newest:
                    # Every reader of its camera left (cleanup, deactivate) while it was
                    # cached: nobody will read it, and capacity eviction may never reach it.
                    if not unknown_reader:
                        del self._entries[key]
                    continue
                stamp = (key.stamp_sec, key.stamp_nanosec)
                if all(read >= stamp for read in newest[key.source]):
                    del self._entries[key]
                else:
                    awaited[key] = self._awaited.get(key, 1)
            self._awaited = awaited

    def _drop_source(self, keys: Sequence[Hashable]) -> None:
        """Forget every entry from the sources of `keys` except `keys` and the frames a
        runtime cycle reads or a reader is still behind on."""
        sources = {k.source for k in keys if isinstance(k, FrameKey)}
        if not sources:
            return
        kept = {*keys, *self._pinned}
        for key in [k for k in self._awaited if k not in kept]:
            if getattr(key, "source", None) in sources:
                if self._awaited[key] > 0:
                    self._awaited[key] -= 1
                    kept.add(key)
                else:
                    del self._awaited[key]
        for old in [k for k in self._entries if isinstance(k, FrameKey)
                    and k.source in sources and k not in kept]:
            del self._entries[old]

    def _store(self, key: Hashable, features: Any) -> None:
        self._entries[key] = features
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            # Oldest first, pinned frames last (the key just stored is the newest).
            victim = next((k for k in self._entries if k not in self._pinned),
                          next(iter(self._entries)))
            del self._entries[victim]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def release(self) -> None:
        """Forget every tensor and the backbone (the model is being freed); unusable after."""
        with self._lock:
            self._entries.clear()
            self._pinned = frozenset()
            self._awaited = {}
            self._shared_position = None
            self.backbone = None
