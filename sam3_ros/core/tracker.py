"""Streaming memory-bank tracking of one camera stream with SAM3's tracker.

`TrackerSession` holds all state of one stream: the transformers tracker session (memory bank,
object pointers, prompts), the object table (ids, labels, ages), the text prompts and the
frames still held. The model (`Sam3VideoModel`: detector + tracker sharing one vision backbone)
is stateless and may be shared with a segmenter in the same process.

Three files, split so that a transformers upgrade breaks one small one:
  - core/tracker_objects.py: the object table, request queue, held frames and camera-stamp
    epochs; plain Python (no torch, no transformers), unit-tested without a model;
  - core/tracker_session_state.py: the only code touching transformers' private
    inference-session state (pruning, object removal, table sizes);
  - this file: the per-frame model flow, composing both.

Per frame:
  1. the vision backbone runs once (through the shared `VisionFeatureCache`, or reused for
     `reuse_backbone_frames` frames in realtime mode) and its features are projected for the
     tracker (`Sam3VideoModel.get_vision_features_for_tracker`);
  2. prompt requests queued by services since the last frame are applied, in order;
  3. every `detect_every_n_frames` frames, with text prompts set, the SAM3 detector runs on the
     same features; detections that overlap no tracked object start new objects (mask prompt);
  4. the tracker propagates every object with its memory bank (`Sam3TrackerVideoModel`
     streaming forward, one frame at a time);
  5. state older than the memory window is pruned: transformers keeps every frame's outputs and
     every processed frame otherwise (measured: RSS grows without bound).

Why one `Sam3TrackerVideoInferenceSession` rather than `Sam3VideoModel`'s own session: the
Sam3Video session takes text prompts and mask inputs only (no points or boxes for an object),
and its forward recomputes the backbone and runs the detector on every frame (no shared
feature cache, no realtime mode). Here the SAM3 detector (same weights, same features) finds
text-prompted instances and hands each new one to the SAM2-style tracker as a mask prompt, so
caller-prompted objects and detected instances share one memory-bank session. Not reproduced
from Sam3Video's det-track loop: hotstart, keep-alive counters, reconditioning on confident
detections, masklet NMS; instead a detection overlapping a tracked mask (IoU >
`new_object_iou`) is not a new object and detected objects lost for `max_lost_frames` frames
are dropped.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam3_ros.core import tracker_session_state as session_state
from sam3_ros.core.detections import STATE_OCCLUDED, STATE_VISIBLE, Detections
from sam3_ros.core.errors import ConfigError, ModelLoadError
from sam3_ros.core.model_loading import LoadedSam3
from sam3_ros.core.prompts import PromptSpec, validate_prompts
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, upsample_masks
from sam3_ros.core.text_cache import TextEmbeddingCache
from sam3_ros.core.tracker_objects import (
    CAMERA_STAMPS_PENDING,
    FRAMES_HELD_FOR_PROMPTS,
    INT32_MAX,
    MAX_LABEL_CHARS,
    CameraStamps,
    ObjectPromptSpec,
    ObjectTable,
    Request,
    check_add_request,
    check_remove_request,
    describe_requests,
    without_ids,
)
from sam3_ros.core.vision_features import VisionFeatureCache

__all__ = [
    "CAMERA_STAMPS_PENDING",
    "FRAMES_HELD_FOR_PROMPTS",
    "INT32_MAX",
    "MAX_LABEL_CHARS",
    "ObjectPromptSpec",
    "TrackerConfig",
    "TrackerSession",
]


@dataclass(frozen=True)
class MaskExtent:
    """Pixel count and bounding box (half-open rows y0:y1, columns x0:x1) of a bool mask, so
    overlaps are counted where two boxes meet rather than over whole frames (171 ms per
    detector frame for 15 objects at 1280x720 over whole frames, ~4 ms within boxes)."""

    area: int
    y0: int = 0
    y1: int = 0
    x0: int = 0
    x1: int = 0

    @staticmethod
    def of(mask: np.ndarray) -> MaskExtent:
        rows = np.flatnonzero(mask.any(axis=1))
        if not rows.size:
            return MaskExtent(0)
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return MaskExtent(int(np.count_nonzero(mask[y0:y1, x0:x1])), y0, y1, x0, x1)

    def iou(self, other: MaskExtent, mask: np.ndarray, other_mask: np.ndarray) -> float:
        """IoU of `mask` (this extent's) and `other_mask` (other's); 0 when either is empty."""
        y0, y1 = max(self.y0, other.y0), min(self.y1, other.y1)
        x0, x1 = max(self.x0, other.x0), min(self.x1, other.x1)
        if not (self.area and other.area) or y0 >= y1 or x0 >= x1:
            return 0.0
        inter = int(np.count_nonzero(mask[y0:y1, x0:x1] & other_mask[y0:y1, x0:x1]))
        return inter / (self.area + other.area - inter)


@dataclass
class TrackerConfig:
    """Settings of a tracking stream.

    Attributes:
        score_threshold: Detector score a text-prompted instance needs to start a track.
        mask_threshold: Mask logit threshold (SAM trackers binarise logits at 0.0).
        max_objects: Most objects tracked at once; more are refused (or not started).
        memory_frames: The model's read window W, in frames: per-object model state
            (memory-bank features and object pointers) of the W - 1 frames before any frame
            the model may still run on (the next frame, or a held frame a prompt refers to) is
            kept; older state is pruned every frame. 0 = max(num_maskmem,
            max_object_pointers_in_encoder) (16 for SAM3): the tracker reads num_maskmem - 1
            (6) past memory frames and object pointers from up to 15 past frames, so any
            W >= 16 leaves every result unchanged (state of at most W - 1 +
            FRAMES_HELD_FOR_PROMPTS frames is held); a smaller window (e.g. num_maskmem)
            bounds memory tighter but drops the older object pointers. Prompted frames are
            bounded by max_prompt_frames instead.
        detect_every_n_frames: Run the text detector every N frames (realtime mode), track
            in between.
        reuse_backbone_frames: Reuse a frame's backbone features for up to M following frames
            (realtime mode on weak GPUs; 0 = compute every frame).
        max_time_gap_s: Reset the stream when the camera's stamps go backwards or jump
            further between two consecutive frames it sent (`note_camera_stamp`), not between
            two processed frames: a model slower than the camera skips frames without
            resetting.
        max_lost_frames: A text-detected object occluded for more than this many consecutive
            frames is dropped (its slot under max_objects frees up for new instances);
            0 = never. Point/box objects are the caller's: only remove_objects drops them.
        new_object_iou: A detection overlapping a tracked object's mask by more than this IoU
            belongs to that object rather than starting a new one.
        max_points_per_object: Most points one object may carry on one frame (a refinement
            adds to the points the object already has on that frame).
        max_prompt_frames: Prompted (conditioning) frames kept per object. transformers reads
            the object pointer of every prompted frame of an object, so this is the one bound
            that can change a result: an object refined on more frames than this forgets its
            oldest prompt frames.
    """

    score_threshold: float = 0.5
    mask_threshold: float = 0.0
    max_objects: int = 16
    memory_frames: int = 0
    detect_every_n_frames: int = 1
    reuse_backbone_frames: int = 0
    max_time_gap_s: float = 1.0
    new_object_iou: float = 0.3
    max_lost_frames: int = 30
    max_points_per_object: int = 64
    max_prompt_frames: int = 64

    def __post_init__(self) -> None:
        for name in ("score_threshold", "new_object_iou"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if not math.isfinite(self.mask_threshold):
            raise ConfigError(f"mask_threshold must be finite, got {self.mask_threshold}")
        for name, minimum in (("max_objects", 1), ("memory_frames", 0),
                              ("detect_every_n_frames", 1), ("reuse_backbone_frames", 0),
                              ("max_lost_frames", 0), ("max_points_per_object", 1),
                              ("max_prompt_frames", 1)):
            value = getattr(self, name)
            if int(value) != value or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")
        if not (self.max_time_gap_s > 0 and math.isfinite(self.max_time_gap_s)):
            raise ConfigError(f"max_time_gap_s must be > 0, got {self.max_time_gap_s}")


class TrackerSession:
    """All state of one tracked camera stream, with one `reset()`.

    Thread safety: prompt methods (services) may be called while `process_frame` runs in
    another thread. They validate at once (raising InvalidPromptError with the reason) and queue
    the change; the next frame applies queued changes in order before it is tracked, so a frame
    in flight is never modified and a request never waits longer than one inference.
    `note_camera_stamp` never waits for an inference (its own lock).

    Args:
        loaded: A checkpoint loaded with the video model (`load_sam3(..., with_tracker=True)`).
        config: Stream settings.
        feature_cache: The process's shared vision-feature cache (pipeline); None makes one.
        preprocessing: "auto", "device" or "processor", as for `Sam3Segmenter`.
        text_cache: On-disk text embeddings of the prompts (shared with the segmenter when
            both use one folder); None encodes every prompt set.
    """

    def __init__(self, loaded: LoadedSam3, config: TrackerConfig,
                 feature_cache: VisionFeatureCache | None = None,
                 preprocessing: str = "auto",
                 text_cache: TextEmbeddingCache | None = None):
        if loaded.video_model is None:
            raise ModelLoadError("the tracker needs the SAM3 video model (load_sam3(..., "
                                 "with_tracker=True)); this checkpoint was loaded as a detector")
        self.loaded = loaded
        self.config = config
        self.video_model = loaded.video_model
        self.tracker_model = loaded.video_model.tracker_model
        self.feature_cache = feature_cache or VisionFeatureCache(loaded.detector, capacity=1)
        self._segmenter = Sam3Segmenter(loaded, self.feature_cache, preprocessing=preprocessing,
                                        text_cache=text_cache)
        self.preprocessing = self._segmenter.preprocessing
        """Which preprocessing runs (`Sam3Segmenter.preprocessing`)."""
        self._lock = threading.Lock()
        self._text_prompts: tuple[PromptSpec, ...] = ()
        self._encoded_prompts = None
        self.prompt_generation = 0
        self.last_reset_reason: str | None = None
        """Why the stream last reset itself (time jump, image size change); None if never.
        The caller may set it back to None after reporting it."""
        self.reset_count = 0
        """Automatic resets so far (a frame's result follows a reset when this grew)."""
        self.requests_dropped_by_reset = 0
        """Queued prompt requests that resets dropped before a frame applied them."""
        self.detector_calls = 0
        self._camera_stamps = CameraStamps()
        self._table = ObjectTable()
        self._taken_requests: list[Request] = []  # what this frame took off the queue
        self.reset()

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop every object, the memory bank and held frames; text prompts stay.

        The next frame is not judged for a time jump against frames before the reset.
        """
        with self._lock:
            size_hw = self._table.image_size_hw
            self._reset_locked()
            # The camera is the same: prompts given before its next frame are still checked
            # against its image size (a frame of another size resets again, dropping them).
            self._table.image_size_hw = size_hw
            self._camera_stamps.forget_processed()

    def _reset_locked(self, keep_next_frame_adds: bool = False,
                      automatic: bool = False, taken: Sequence[Request] = ()) -> str:
        """Start the stream afresh; returns "" or what queued requests it dropped.

        An automatic reset (time jump) keeps objects a caller queued for "the next frame"
        (see ObjectTable.reset), and ids keep counting up: nobody asked for it, so a
        consumer keying its state by id must not see an old id on a new object.
        """
        # `taken`: requests a failed frame took off the queue (their objects go too).
        dropped = [*taken, *self._table.reset(keep_next_frame_adds, restart_ids=not automatic)]
        self._taken_requests = []
        # The vision features of every held frame stay cached: a prompt on a held frame runs
        # the model there (a frame's features are cached after its queued prompts ran).
        self._session = session_state.new_session(self.loaded.device, self.loaded.dtype,
                                                  FRAMES_HELD_FOR_PROMPTS)
        self._frame_idx = -1
        self._reused_vision: tuple[int, Any, list[Any], list[Any]] | None = None
        self._last_masks: np.ndarray | None = None
        self._last_mask_ids: list[int] = []  # object id of each of _last_masks
        if not dropped:
            return ""
        # Their service calls had succeeded: the log line is how the caller learns of it.
        self.requests_dropped_by_reset += len(dropped)
        return (f"; {len(dropped)} queued request(s) dropped ({describe_requests(dropped)}): "
                f"send them again")

    @property
    def text_prompts(self) -> tuple[str, ...]:
        return tuple(p.text for p in self._text_prompts)

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._table.objects)

    @property
    def memory_window(self) -> int:
        """Frames of per-object state kept (`TrackerConfig.memory_frames`, 0 resolved)."""
        if self.config.memory_frames:
            return self.config.memory_frames
        tracker = self.tracker_model.config
        return max(int(tracker.num_maskmem), int(tracker.max_object_pointers_in_encoder))

    def set_config(self, config: TrackerConfig) -> None:
        """Replace the configuration (applies from the next frame; see `update`)."""
        self.update(config=config)

    def update(self, config: TrackerConfig | None = None,
               texts: Sequence[str] | None = None) -> None:
        """Apply a new configuration and text prompts together, or neither.

        One parameter call may change both; applying them one by one left the configuration
        in place when the prompts were refused. The prompts are validated and encoded first
        (outside the lock: a frame in flight does not wait for it).

        Args:
            config: The new configuration; None keeps.
            texts: New text prompts (as `set_text_prompts`); None keeps.

        Raises:
            InvalidPromptError: a prompt is invalid.
            ConfigError: max_objects below the objects tracked once the queued requests
                are applied.
        """
        specs = encoded = None
        if texts is not None:
            specs = validate_prompts([PromptSpec(t) for t in texts], 64) if texts else ()
            encoded = self._segmenter.encode_prompts(specs) if specs else None
        with self._lock:
            if config is not None:
                # Queued adds count: they enter at the next frame whatever the new limit is.
                tracked = len(self._table.projected_ids())
                if config.max_objects < tracked:
                    raise ConfigError(f"max_objects {config.max_objects} is below the "
                                      f"{tracked} objects tracked now (queued additions "
                                      "included)")
                self.config = config
            if specs is not None:
                self._text_prompts, self._encoded_prompts = tuple(specs), encoded
                self.prompt_generation += 1
                self._table.reclassify({spec.label: i for i, spec in enumerate(specs)})

    def memory_stats(self) -> dict[str, int]:
        """Sizes of everything that could grow with the stream (for tests and soak runs).

        Returns:
            objects, frames_held (processed frames in the transformers session),
            outputs_held (per-object memory-bank entries, all objects),
            max_outputs_per_object, inputs_held (point/mask prompts), tracked_entries,
            vision_features_held, stamps_held (frames a prompt may refer to) and
            pending_requests.
        """
        with self._lock:
            return self._memory_stats_locked()

    def _memory_stats_locked(self) -> dict[str, int]:
        return {
            "objects": len(self._table.objects),
            **session_state.held_sizes(self._session),
            "stamps_held": len(self._table.frames),
            "pending_requests": len(self._table.pending),
        }

    # ---------------------------------------------------------------------------- prompts
    def set_text_prompts(self, texts: Sequence[str]) -> list[int]:
        """Replace the text prompts: track every instance of each phrase (class id = index).

        Objects detected for a phrase that stays keep their id and get the phrase's new class
        id; objects of phrases no longer asked for are dropped from the next frame. [] stops
        text detection. Point/box objects are not affected.

        Returns:
            The class id of each phrase.

        Raises:
            InvalidPromptError: empty or duplicate phrases, or a phrase too long to encode.
        """
        self.update(texts=texts)
        return list(range(len(texts)))  # validated: one class per phrase

    def _held_points(self, object_id: int, frame_idx: int) -> int:
        """Points (box corners included) an object has on a held frame in the model."""
        held = session_state.points_on_frame(self._session, object_id, frame_idx)
        return 0 if held is None else int(held[1].numel())

    def add_objects(self, objects: Sequence[ObjectPromptSpec], frame_stamp_ns: int | None = None,
                    refine: bool = False) -> list[int]:
        """Queue new objects (or refinements of existing ones) for the next frame.

        Points and boxes are checked against the stream's image size; before the first frame
        (size unknown) they are checked for finiteness and order only and clipped to the image
        when applied.

        Args:
            objects: Object prompts; ids must be new (or -1) unless `refine`. Ids are within
                int32 ([0, 2**31 - 1]); -1 assigns the next free id (wrapping to the lowest
                free id past 2**31 - 1).
            frame_stamp_ns: Apply on the held frame with this stamp instead of the next frame.
            refine: Add the prompts to existing objects (ids must exist).

        Returns:
            The object id of each entry.

        Raises:
            InvalidPromptError: with the reason; nothing is queued.
        """
        # Before any per-object work, and without waiting for a frame in flight.
        check_add_request(objects, self.config.max_objects)
        with self._lock:
            return self._table.queue_add(objects, frame_stamp_ns, refine, self.config.max_objects,
                                         self.config.max_points_per_object, self._held_points)

    def remove_objects(self, object_ids: Sequence[int]) -> None:
        """Stop tracking objects (from the next frame). Unknown ids fail the whole request."""
        checked = check_remove_request(object_ids, self.config.max_objects)
        with self._lock:
            self._table.queue_remove(checked)

    # ----------------------------------------------------------------------------- frames
    def note_camera_stamp(self, stamp_ns: int, gap_may_be_ours: bool = False) -> None:
        """Record the stamp of a frame the camera sent (call for EVERY received frame).

        Cheap and thread-safe: meant for the subscription callback, concurrently with
        `process_frame` on another thread (it never waits for an inference). Time jumps are
        judged on these consecutive stamps: a stamp going backwards or jumping by more than
        max_time_gap_s resets the stream when the first frame received at or after the jump is
        processed. Frames dropped because the model is slower than the camera are not gaps.
        Call it before handing the frame to the processing thread.

        Args:
            stamp_ns: The frame's header stamp in nanoseconds.
            gap_may_be_ours: The receiver itself could not take frames since the previous
                one (e.g. a service call held the executor while frames were overwritten), so
                a forward gap says nothing about the camera: it does not reset. A backward
                jump still does.
        """
        self._camera_stamps.note(int(stamp_ns), self.config.max_time_gap_s, gap_may_be_ours)

    def preprocess(self, rgb: np.ndarray) -> Any:
        """(H, W, 3) uint8 RGB -> (1, 3, S, S) pixel values for this session's model."""
        return self._segmenter.preprocess(rgb)

    def needs_backbone(self) -> bool:
        """False when the next frame will reuse earlier backbone features (realtime mode), so
        the runtime spends no backbone pass on it. A guess: a reset in between makes the
        session compute the features itself."""
        reuse = self.config.reuse_backbone_frames
        reused = self._reused_vision
        return not (reuse and reused is not None and self._frame_idx + 1 - reused[0] <= reuse)

    def process_frame(self, rgb: np.ndarray, stamp_ns: int,
                      frame_key: Hashable | None = None, pixel_values: Any = None) -> Detections:
        """Track every object in the next camera frame.

        Args:
            rgb: (H, W, 3) uint8 RGB frame.
            stamp_ns: The frame's stamp (nanoseconds). The stream resets when a time jump was
                noted (`note_camera_stamp`) between the previously processed frame and this
                one; a stamp never noted is noted here, so callers that do not call
                `note_camera_stamp` get jumps judged between consecutive processed frames.
            frame_key: Key of the frame in the shared vision-feature cache.
            pixel_values: The frame already preprocessed (by the runtime), else done here.

        Returns:
            One instance per tracked object, sorted by object id: masks (H, W) bool, boxes
            from the masks (xyxy), score = sigmoid(object score), state VISIBLE or OCCLUDED
            (occluded objects keep their id, with an empty mask and zero box).
        """
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        if pixel_values is None:
            pixel_values = self._segmenter.preprocess(rgb)
        with self._lock:
            self._taken_requests = []
            try:
                detections = self._process_locked(rgb, stamp_ns, frame_key, pixel_values,
                                                  height, width)
            except BaseException as err:
                # The frame's requests were taken off the queue and the object table and the
                # model's session may be half updated: every later frame would fail (missing
                # memory features). Start the stream afresh; the caller reports the error.
                dropped = self._reset_locked(automatic=True, taken=self._taken_requests)
                self._table.image_size_hw = (height, width)  # as after a manual reset
                self.last_reset_reason = (f"a frame failed ({type(err).__name__}: {err})"
                                          f"{dropped}")
                self.reset_count += 1
                raise
        return detections

    def _process_locked(self, rgb: np.ndarray, stamp_ns: int, frame_key: Hashable | None,
                        pixel_values: Any, height: int, width: int) -> Detections:
        """`process_frame` under the session lock."""
        import torch

        table = self._table
        reason = self._camera_stamps.jump_before(int(stamp_ns), self.config.max_time_gap_s)
        if table.image_size_hw not in (None, (height, width)) and (
                self._frame_idx >= 0 or table.pending):
            # (Right after a manual reset with nothing queued there is nothing to reset.)
            reason = f"the image size changed from {table.image_size_hw} to {(height, width)}"
        if reason is not None:
            # Old objects, prompts in pixels and the memory bank no longer apply.
            # Queued points/boxes were checked against the old image size.
            same_size = table.image_size_hw in (None, (height, width))
            dropped = self._reset_locked(keep_next_frame_adds=same_size, automatic=True)
            self.last_reset_reason = reason + dropped
            self.reset_count += 1
        table.image_size_hw = (height, width)
        self._frame_idx += 1
        frame_idx = self._frame_idx
        session = self._session
        session.video_height, session.video_width = height, width
        # What transformers' own session would count before this frame: a prompt on a held
        # frame (a non-streaming call) normalises object-pointer offsets by it.
        session_state.set_frames_in_stream(session, frame_idx)
        with torch.inference_mode():
            vision, feats, pos = self._vision_features(pixel_values, frame_key, frame_idx)
            # Queued prompts on held frames run first: the held frames' features are all
            # still cached until this frame's features are added.
            new_inputs = self._apply_requests(frame_idx)
            session.cache.cache_vision_features(
                frame_idx, {"vision_feats": feats, "vision_pos_embeds": pos})
            table.hold_frame(frame_idx, stamp_ns)
            new_inputs += self._detect_new_objects(rgb, vision, frame_idx, height, width)
            session.obj_with_new_inputs = new_inputs
            detections = self._track(pixel_values, frame_idx, height, width)
        self._prune(frame_idx)
        return detections

    def _vision_features(self, pixel_values: Any, frame_key: Hashable | None,
                         frame_idx: int) -> tuple[Any, list[Any], list[Any]]:
        """Backbone output (detector) and its tracker projection (features, positions).

        Realtime mode reuses both for `reuse_backbone_frames` frames: the tracker neck is
        per-frame work too.
        """
        reuse = self.config.reuse_backbone_frames
        if reuse and self._reused_vision is not None:
            computed_at, *features = self._reused_vision
            if frame_idx - computed_at <= reuse:
                return tuple(features)
        vision = self.feature_cache.get(frame_key, pixel_values)
        feats, pos = self.video_model.get_vision_features_for_tracker(vision)
        self._reused_vision = (frame_idx, vision, feats, pos) if reuse else None
        return vision, feats, pos

    def _to_model_points(self, spec: ObjectPromptSpec, height: int, width: int):
        """(1, 1, P, 2) float32 model-input coordinates and (1, 1, P) int32 SAM labels."""
        import torch

        coords, labels = [], []
        # Prompts queued before the first frame could not be checked against the image size:
        # clip them to the image (a no-op for checked prompts).
        if spec.box is not None:
            x0, x1 = (min(max(v, 0.0), width) for v in spec.box[0::2])
            y0, y1 = (min(max(v, 0.0), height) for v in spec.box[1::2])
            coords += [[x0, y0], [x1, y1]]
            labels += [2, 3]  # SAM's box corner labels
        for x, y, positive in spec.points:
            coords.append([min(max(x, 0.0), width), min(max(y, 0.0), height)])
            labels.append(1 if positive else 0)
        # Pixels scaled to the square model input in float64, rounded once to float32: the
        # result does not depend on how prompts are batched. (Sam3TrackerVideoProcessor scales
        # float32 tensors; its last bit varies with the tensor layout, i.e. with how many
        # objects one call carries - measured up to 1 ulp apart from this.)
        size = float(self.tracker_model.config.image_size)
        scale = np.array([size / width, size / height])
        points = torch.from_numpy((np.array(coords, np.float64) * scale).astype(np.float32))
        device = self.loaded.device
        return (points[None, None].to(device),
                torch.tensor([[labels]], dtype=torch.int32, device=device))

    def _apply_requests(self, frame_idx: int) -> list[int]:
        """Apply queued requests in order; return object ids with new inputs on this frame.

        Prompts on held frames run the model there at once (it re-runs every object in the
        session on that frame, like transformers' own session). Objects and points for this
        frame enter the session only afterwards: an object without any prompted frame yet
        cannot be run on a held frame.
        """
        import torch

        session = self._session
        height, width = self._table.image_size_hw
        staged: dict[int, tuple[Any, Any]] = {}  # this frame's points per object, in order
        self._taken_requests = taken = []
        while (request := self._table.pop_request()) is not None:
            if request.kind == "remove":
                # Objects the caller removed are not lost if this frame fails.
                taken[:] = without_ids(taken, request.ids)
                self._remove(request.ids)
                for oid in request.ids:
                    staged.pop(oid, None)
                continue
            taken.append(request)
            for spec in request.objects:
                self._table.enter(request, spec, frame_idx)
                coords, labels = self._to_model_points(spec, height, width)
                if request.frame_idx is None:
                    if request.kind == "refine" and spec.object_id in staged:
                        old_coords, old_labels = staged[spec.object_id]
                        coords = torch.cat([old_coords, coords], dim=2)
                        labels = torch.cat([old_labels, labels], dim=2)
                    staged[spec.object_id] = (coords, labels)
                    continue
                # A prompt on an earlier held frame: condition the object there first.
                obj_idx = session.obj_id_to_idx(spec.object_id)
                existing = session_state.points_on_frame(session, spec.object_id,
                                                         request.frame_idx)
                if request.kind == "refine" and existing is not None:
                    coords = torch.cat([existing[0], coords], dim=2)
                    labels = torch.cat([existing[1], labels], dim=2)
                session.add_point_inputs(obj_idx, request.frame_idx,
                                         {"point_coords": coords, "point_labels": labels})
                session.remove_mask_inputs(obj_idx, request.frame_idx)
                session.obj_with_new_inputs = [spec.object_id]
                self.tracker_model(inference_session=session, frame_idx=request.frame_idx)
        # After the requests (validated against the objects of their time): detected
        # objects whose phrase is no longer prompted leave now.
        gone = self._table.unprompted()
        if gone:
            self._remove(gone)
            for oid in gone:
                staged.pop(oid, None)
        for oid, (coords, labels) in staged.items():
            obj_idx = session.obj_id_to_idx(oid)
            session.add_point_inputs(obj_idx, frame_idx, {"point_coords": coords,
                                                          "point_labels": labels})
            session.remove_mask_inputs(obj_idx, frame_idx)
        return list(staged)

    def _remove(self, object_ids: Sequence[int]) -> None:
        session_state.remove_objects(self._session, object_ids)
        self._table.drop(object_ids)

    def _detect_new_objects(self, rgb: np.ndarray, vision: Any, frame_idx: int, height: int,
                            width: int) -> list[int]:
        """Text-prompted detection; instances not matching a tracked object start tracks."""
        import torch

        encoded = self._encoded_prompts
        if encoded is None or frame_idx % self.config.detect_every_n_frames:
            return []
        self.detector_calls += 1
        config = SegmenterConfig(score_threshold=self.config.score_threshold,
                                 max_detections=self.config.max_objects,
                                 prompts_per_batch=16, max_prompts=64)
        detections = self._segmenter.segment_features(vision, encoded, config, height, width)
        if len(detections) == 0:
            return []
        # The previous frame's masks, then each detection accepted on this frame: two
        # prompts ("mug", "cup") or two queries on one instance must not start two objects.
        tracked = self._previous_masks(height, width)
        new_ids: list[int] = []
        free = self.config.max_objects - len(self._table.objects)
        size = int(self.tracker_model.config.image_size)
        for i in range(len(detections)):
            if free <= 0:
                break
            mask = detections.masks[i]
            extent = MaskExtent.of(mask)
            if any(extent.iou(other, mask, other_mask) > self.config.new_object_iou
                   for other_mask, other in tracked):
                continue
            tracked.append((mask, extent))
            object_id = self._table.add_detected(detections.labels[i],
                                                 int(detections.class_ids[i]), frame_idx)
            obj_idx = self._session.obj_id_to_idx(object_id)
            mask_t = torch.from_numpy(mask).to(self.loaded.device)[None, None].float()
            mask_t = torch.nn.functional.interpolate(mask_t, size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True)
            self._session.add_mask_inputs(obj_idx, frame_idx, (mask_t >= 0.5).float())
            self._session.remove_point_inputs(obj_idx, frame_idx)
            new_ids.append(object_id)
            free -= 1
        return new_ids

    def _previous_masks(self, height: int,
                        width: int) -> list[tuple[np.ndarray, MaskExtent]]:
        """The previous frame's masks of this size with their extents, of the objects still
        tracked (one removed since, e.g. its phrase dropped, no longer hides a detection)."""
        masks = self._last_masks
        if masks is None or masks.shape[1:] != (height, width):
            return []
        tracked = self._table.objects
        return [(mask, MaskExtent.of(mask))
                for oid, mask in zip(self._last_mask_ids, masks, strict=True) if oid in tracked]

    def _track(self, pixel_values: Any, frame_idx: int, height: int, width: int) -> Detections:

        session = self._session
        if session.get_obj_num() == 0:
            # Nothing to track: keep the frame out of the session (no memory to grow).
            self._last_masks = None
            return Detections.empty(height, width)
        # frame_idx is always passed: pruned processed frames make the session's own frame
        # count meaningless as the next index.
        out = self.tracker_model(inference_session=session, frame=pixel_values[0],
                                 frame_idx=frame_idx)
        # The two transfers to the host: the full-size masks and the object score logits.
        masks = upsample_masks(out.pred_masks[:, 0].float(), height, width,
                               self.config.mask_threshold)
        object_logits = out.object_score_logits.float().reshape(-1).cpu()
        scores = object_logits.sigmoid().numpy()
        visible = (object_logits > 0).numpy()
        self._last_masks = masks
        ids = list(out.object_ids)
        self._last_mask_ids = ids
        boxes = np.zeros((len(ids), 4), np.float32)
        rows, cols = masks.any(axis=2), masks.any(axis=1)
        for i in range(len(ids)):
            if rows[i].any():
                ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
                boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        occluded = ~visible | ~rows.any(axis=1)
        masks[occluded] = False
        boxes[occluded] = 0.0
        objects = [self._table.objects[oid] for oid in ids]
        lost = self._table.count_lost(ids, occluded.tolist(), self.config.max_lost_frames)
        if lost:
            # Reported occluded on this frame, gone from the next one.
            self._remove(lost)
        detections = Detections(
            xyxy=boxes, scores=scores, class_ids=np.array([o.class_id for o in objects]),
            image_height_px=height, image_width_px=width, masks=masks,
            object_ids=np.array(ids), states=np.where(occluded, STATE_OCCLUDED, STATE_VISIBLE),
            age_frames=np.array([frame_idx - o.first_frame_idx for o in objects]),
            labels=tuple(o.label for o in objects),
        )
        if any(a > b for a, b in itertools.pairwise(ids)):
            # Sorted by id; `select` copies every full-size mask (~2 ms for 16 objects at
            # 1280x720), so only when the model's order is not sorted already.
            detections = detections.select(np.argsort(ids, kind="stable"))
        return detections

    def _prune(self, frame_idx: int) -> None:
        """Drop model state no later call reads (bounded memory, unchanged results)."""
        session_state.prune(
            self._session, self.tracker_model.config, frame_idx,
            first_query_frame=self._table.oldest_held_frame,
            frames_read_back=self.memory_window - 1,
            max_prompt_frames=self.config.max_prompt_frames)
