"""Streaming memory-bank tracking of one camera stream with SAM3's tracker.

`TrackerSession` holds all state of one stream: the transformers tracker session (memory bank,
object pointers, prompts), the object table (ids, labels, ages), the text prompts and the
frames still held. The model (`Sam3VideoModel`: detector + tracker sharing one vision backbone)
is stateless and may be shared with a segmenter in the same process.

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

import math
import operator
import threading
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam3_ros.core import tracker_session_state as session_state
from sam3_ros.core.detections import STATE_OCCLUDED, STATE_VISIBLE, Detections
from sam3_ros.core.errors import ConfigError, InvalidPromptError, ModelLoadError
from sam3_ros.core.model_loading import LoadedSam3
from sam3_ros.core.prompts import PromptSpec, check_box, check_point, validate_prompts
from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig
from sam3_ros.core.vision_features import VisionFeatureCache

FRAMES_HELD_FOR_PROMPTS = 4
"""Recent frames whose features are kept so a prompt can refer to them by stamp."""
INT32_MAX = 2**31 - 1
"""Largest object id: ids travel in int32 message fields."""
MAX_LABEL_CHARS = 256
"""Longest accepted object label."""
CAMERA_STAMPS_PENDING = 4096
"""Most camera stamps noted and not yet processed that are remembered (a model lagging
further behind its camera judges the frame it processes on that frame's own stamp)."""


@dataclass(frozen=True)
class ObjectPromptSpec:
    """Points and/or one box identifying one object, in input-image pixels.

    Attributes:
        object_id: Caller's id (>= 0), or -1 to assign the next free id.
        label: Free text echoed on the object's detections.
        points: (x, y, positive) triples; positive = foreground.
        box: (x_min, y_min, x_max, y_max), or None.
    """

    object_id: int = -1
    label: str = ""
    points: tuple[tuple[float, float, bool], ...] = ()
    box: tuple[float, float, float, float] | None = None


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


@dataclass
class _TrackedObject:
    object_id: int
    label: str
    class_id: int
    first_frame_idx: int
    lost_frames: int = 0
    """Consecutive frames the object has been occluded."""


@dataclass
class _Request:
    kind: str  # "add", "refine", "remove"
    objects: list[ObjectPromptSpec] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    frame_idx: int | None = None


class _CameraStamps:
    """Time jumps judged on every frame the camera sent, not only on processed frames.

    Consecutive noted stamps that go backwards or jump by more than the gap limit start a new
    epoch. Each noted stamp waits with its epoch until a frame is processed; the processed
    frame takes the epoch of its own (newest) noted entry, so a jump noted after that frame
    was received belongs to a later frame. All methods are thread-safe and O(1) per stamp
    (`take` is O(stamps noted since the last processed frame)).
    """

    EPOCH_REASONS_KEPT = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: int | None = None
        self._epoch = 0
        self._reasons: dict[int, str] = {}
        self._pending: deque[tuple[int, int]] = deque(maxlen=CAMERA_STAMPS_PENDING)

    def note(self, stamp_ns: int, max_gap_s: float, gap_may_be_ours: bool = False) -> None:
        with self._lock:
            self._note_locked(stamp_ns, max_gap_s, gap_may_be_ours)

    def _note_locked(self, stamp_ns: int, max_gap_s: float,
                     gap_may_be_ours: bool = False) -> None:
        if self._last is not None:
            gap_s = (stamp_ns - self._last) * 1e-9
            reason = None
            if gap_s < 0:
                reason = f"stamp went backwards by {-gap_s:.3f} s (bag loop?)"
            elif gap_s > max_gap_s and not gap_may_be_ours:
                reason = (f"{gap_s:.3f} s gap between camera frames exceeds max_time_gap_s "
                          f"{max_gap_s}")
            if reason is not None:
                self._epoch += 1
                self._reasons[self._epoch] = reason
                self._reasons.pop(self._epoch - self.EPOCH_REASONS_KEPT, None)
        self._last = stamp_ns
        self._pending.append((stamp_ns, self._epoch))

    def take(self, stamp_ns: int, max_gap_s: float) -> int:
        """Epoch of the frame about to be processed (noting its stamp if nobody did).

        Forgets that entry and every one noted before it: frames are processed in order.
        """
        with self._lock:
            found = None
            for back, (stamp, _) in enumerate(reversed(self._pending)):
                if stamp == stamp_ns:
                    found = len(self._pending) - 1 - back
                    break
            if found is None:
                # Never noted: core use without note_camera_stamp judges processed frames.
                self._note_locked(stamp_ns, max_gap_s)
                found = len(self._pending) - 1
            epoch = self._pending[found][1]
            for _ in range(found + 1):
                self._pending.popleft()
            return epoch

    def reason(self, epoch: int) -> str:
        with self._lock:
            return self._reasons.get(epoch, "time jump")

    def __len__(self) -> int:
        return len(self._pending)


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
    """

    def __init__(self, loaded: LoadedSam3, config: TrackerConfig,
                 feature_cache: VisionFeatureCache | None = None):
        if loaded.video_model is None:
            raise ModelLoadError("the tracker needs the SAM3 video model (load_sam3(..., "
                                 "with_tracker=True)); this checkpoint was loaded as a detector")
        self.loaded = loaded
        self.config = config
        self.video_model = loaded.video_model
        self.tracker_model = loaded.video_model.tracker_model
        self.feature_cache = feature_cache or VisionFeatureCache(loaded.detector, capacity=1)
        self._segmenter = Sam3Segmenter(loaded, self.feature_cache)
        self._lock = threading.Lock()
        self._text_prompts: tuple[PromptSpec, ...] = ()
        self._encoded_prompts = None
        self.prompt_generation = 0
        self.last_reset_reason: str | None = None
        """Why the stream last reset itself (time jump, image size change); None if never.
        The caller may set it back to None after reporting it."""
        self.reset_count = 0
        """Automatic resets so far (a frame's result follows a reset when this grew)."""
        self.detector_calls = 0
        self._camera_stamps = _CameraStamps()
        self.reset()

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop every object, the memory bank and held frames; text prompts stay.

        The next frame is not judged for a time jump against frames before the reset.
        """
        with self._lock:
            self._reset_locked()
            self._processed_epoch: int | None = None

    def _reset_locked(self, keep_next_frame_adds: bool = False) -> None:
        # An automatic reset (time jump) keeps objects a caller queued for "the next frame":
        # their ids were already handed out and they refer to no old frame. Requests on held
        # frames and refine/remove requests refer to state that is gone.
        kept = [r for r in getattr(self, "_pending", ()) if keep_next_frame_adds
                and r.kind == "add" and r.frame_idx is None]

        # The vision features of every held frame stay cached: a prompt on a held frame runs
        # the model there (a frame's features are cached after its queued prompts ran).
        self._session = session_state.new_session(self.loaded.device, self.loaded.dtype,
                                                  FRAMES_HELD_FOR_PROMPTS)
        self._objects: dict[int, _TrackedObject] = {}
        self._pending: deque[_Request] = deque(kept)
        self._frame_idx = -1
        self._frames: deque[tuple[int, int]] = deque(maxlen=FRAMES_HELD_FOR_PROMPTS)
        self._image_size_hw: tuple[int, int] | None = None
        self._reused_vision: tuple[int, Any, list[Any], list[Any]] | None = None
        self._last_masks: np.ndarray | None = None
        self._next_id = 1 + max((o.object_id for r in kept for o in r.objects), default=-1)

    @property
    def text_prompts(self) -> tuple[str, ...]:
        return tuple(p.text for p in self._text_prompts)

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    @property
    def memory_window(self) -> int:
        """Frames of per-object state kept (`TrackerConfig.memory_frames`, 0 resolved)."""
        if self.config.memory_frames:
            return self.config.memory_frames
        tracker = self.tracker_model.config
        return max(int(tracker.num_maskmem), int(tracker.max_object_pointers_in_encoder))

    def set_config(self, config: TrackerConfig) -> None:
        if config.max_objects < len(self._objects):
            raise ConfigError(f"max_objects {config.max_objects} is below the "
                              f"{len(self._objects)} objects tracked now")
        self.config = config

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
            "objects": len(self._objects),
            **session_state.held_sizes(self._session),
            "stamps_held": len(self._frames),
            "pending_requests": len(self._pending),
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
        specs = validate_prompts([PromptSpec(t) for t in texts], 64) if texts else ()
        # Encoding runs outside the lock: a frame in flight does not wait for it.
        encoded = self._segmenter.encode_prompts(specs) if specs else None
        class_of_label = {spec.label: i for i, spec in enumerate(specs)}
        with self._lock:
            self._text_prompts, self._encoded_prompts = tuple(specs), encoded
            self.prompt_generation += 1
            gone = []
            for obj in self._objects.values():
                if obj.class_id >= 0:
                    obj.class_id = class_of_label.get(obj.label, -1)
                    if obj.class_id < 0:
                        gone.append(obj.object_id)
            if gone:
                self._pending.append(_Request("remove", ids=gone))
        return list(range(len(specs)))

    def _frame_for_stamp(self, stamp_ns: int | None) -> int | None:
        if stamp_ns is None:
            return None
        for frame_idx, held_stamp in self._frames:
            if held_stamp == stamp_ns:
                return frame_idx
        held = [s for _, s in self._frames]
        raise InvalidPromptError(
            f"no held frame has stamp {stamp_ns} ns (the tracker holds the last "
            f"{len(held)} frame(s): {held}); use a zero stamp for the next frame")

    def _projected_ids(self) -> set[int]:
        """Object ids once the queued requests are applied (what a new request acts on)."""
        ids = set(self._objects)
        for request in self._pending:
            if request.kind == "add":
                ids.update(o.object_id for o in request.objects)
            elif request.kind == "remove":
                ids.difference_update(request.ids)
        return ids

    def _starting_next_frame(self) -> set[int]:
        """Ids of queued objects that start on the next frame (not in the model yet)."""
        ids: set[int] = set()
        for request in self._pending:
            if request.kind == "add" and request.frame_idx is None:
                ids.update(o.object_id for o in request.objects)
            elif request.kind == "remove":
                ids.difference_update(request.ids)
        return ids

    def _points_on(self, object_id: int, frame_idx: int | None) -> int:
        """Points an object will have on a frame (None = next frame) once the queue is applied."""
        count = 0
        if frame_idx is not None:
            held = session_state.points_on_frame(self._session, object_id, frame_idx)
            if held is not None:
                count = int((held[1] < 2).sum())  # labels 2/3 are box corners
        for request in self._pending:
            if request.kind == "remove" and object_id in request.ids:
                count = 0
            elif request.kind != "remove" and request.frame_idx == frame_idx:
                count += sum(len(o.points) for o in request.objects if o.object_id == object_id)
        return count

    def _check_object(self, spec: ObjectPromptSpec, what: str) -> None:
        """Validate one object prompt (cheap checks first: sizes before per-point work)."""
        if not isinstance(spec.label, str) or len(spec.label) > MAX_LABEL_CHARS:
            length = len(spec.label) if isinstance(spec.label, str) else type(spec.label).__name__
            raise InvalidPromptError(
                f"{what}: label must be a string of at most {MAX_LABEL_CHARS} characters, "
                f"got {length}")
        try:
            count = len(spec.points)
        except TypeError:
            raise InvalidPromptError(f"{what}: points must be a sequence of (x, y, positive) "
                                     f"triples") from None
        if count > self.config.max_points_per_object:
            raise InvalidPromptError(f"{what}: {count} points, at most "
                                     f"{self.config.max_points_per_object} per object allowed "
                                     "(max_points_per_object)")
        if not count and spec.box is None:
            raise InvalidPromptError(f"{what}: give points and/or a box")
        try:
            for j, point in enumerate(spec.points):
                if len(point) != 3:
                    raise InvalidPromptError(
                        f"{what} point {j}: expected (x, y, positive), got {point!r}")
                check_point(point[:2], f"{what} point {j}", self._image_size_hw)
            if spec.box is not None:
                check_box(spec.box, f"{what} box", self._image_size_hw)
        except (TypeError, ValueError, OverflowError) as err:
            if isinstance(err, InvalidPromptError):
                raise
            raise InvalidPromptError(f"{what}: coordinates must be numbers ({err})") from None

    @staticmethod
    def _check_id(object_id: object, what: str) -> int:
        """The id as an int within int32 (or -1), else InvalidPromptError."""
        if isinstance(object_id, bool):
            raise InvalidPromptError(f"{what}: object id must be an integer, got {object_id!r}")
        try:
            value = operator.index(object_id)
        except TypeError:
            raise InvalidPromptError(
                f"{what}: object id must be an integer, got {object_id!r}") from None
        if not (value == -1 or 0 <= value <= INT32_MAX):
            raise InvalidPromptError(f"{what}: ids are >= 0 and <= {INT32_MAX} (int32), "
                                     f"or -1 to assign one")
        return value

    def _free_id(self, used: set[int], start: int | None = None) -> int:
        """The next free id from `start` (default: the id counter), within int32.

        Past INT32_MAX it wraps to the lowest free id. `used` is at most a few max_objects
        large, so both searches end within len(used) + 1 steps.
        """
        candidate = self._next_id if start is None else start
        while candidate in used and candidate <= INT32_MAX:
            candidate += 1
        if candidate > INT32_MAX:
            candidate = min(set(range(len(used) + 1)) - used)
        return candidate

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
        if not objects:
            raise InvalidPromptError("no objects given")
        # Before any per-object work: a request can never hold more than max_objects objects.
        if len(objects) > self.config.max_objects:
            raise InvalidPromptError(f"{len(objects)} objects in one request, at most "
                                     f"max_objects {self.config.max_objects} allowed")
        with self._lock:
            frame_idx = self._frame_for_stamp(frame_stamp_ns)
            known = self._projected_ids()
            ids: list[int] = []
            next_id = max([self._next_id, *[i + 1 for i in known]])
            for i, spec in enumerate(objects):
                what = f"object {i} (id {spec.object_id})"
                object_id = self._check_id(spec.object_id, what)
                self._check_object(spec, what)
                if refine:
                    if object_id not in known:
                        raise InvalidPromptError(f"{what}: unknown id (tracked: {sorted(known)})")
                    if frame_idx is not None and object_id in self._starting_next_frame():
                        raise InvalidPromptError(
                            f"{what}: the object starts on the next frame; it cannot be refined "
                            "on an earlier held frame")
                    ids.append(object_id)
                    continue
                if object_id == -1:
                    object_id = self._free_id(known | set(ids), next_id)
                    next_id = object_id + 1
                elif object_id in known or object_id in ids:
                    raise InvalidPromptError(f"{what}: id already in use")
                else:
                    next_id = max(next_id, object_id + 1)
                ids.append(object_id)
            if not refine and len(known) + len(ids) > self.config.max_objects:
                raise InvalidPromptError(
                    f"{len(known)} object(s) tracked, {len(ids)} more would exceed max_objects "
                    f"{self.config.max_objects}")
            limit = self.config.max_points_per_object
            for oid in dict.fromkeys(ids):
                total = (self._points_on(oid, frame_idx) if refine else 0) + sum(
                    len(s.points) for s, i in zip(objects, ids, strict=True) if i == oid)
                if total > limit:
                    raise InvalidPromptError(
                        f"object {oid} would have {total} points on that frame, at most "
                        f"{limit} allowed (max_points_per_object)")
            resolved = [ObjectPromptSpec(oid, s.label, tuple(tuple(p) for p in s.points),
                                         None if s.box is None else tuple(s.box))
                        for oid, s in zip(ids, objects, strict=True)]
            self._pending.append(_Request("refine" if refine else "add", resolved,
                                          frame_idx=frame_idx))
            self._next_id = max(self._next_id, next_id)
        return ids

    def remove_objects(self, object_ids: Sequence[int]) -> None:
        """Stop tracking objects (from the next frame). Unknown ids fail the whole request."""
        if not object_ids:
            raise InvalidPromptError("no object ids given")
        if len(object_ids) > self.config.max_objects:
            raise InvalidPromptError(f"{len(object_ids)} ids in one request, at most "
                                     f"max_objects {self.config.max_objects} allowed")
        checked = [self._check_id(oid, f"id {i}") for i, oid in enumerate(object_ids)]
        with self._lock:
            known = self._projected_ids()
            unknown = sorted(set(checked) - known)
            if unknown:
                raise InvalidPromptError(f"unknown object id(s) {unknown} (tracked: "
                                         f"{sorted(known)})")
            self._pending.append(_Request("remove", ids=checked))

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

    def process_frame(self, rgb: np.ndarray, stamp_ns: int,
                      frame_key: Hashable | None = None) -> Detections:
        """Track every object in the next camera frame.

        Args:
            rgb: (H, W, 3) uint8 RGB frame.
            stamp_ns: The frame's stamp (nanoseconds). The stream resets when a time jump was
                noted (`note_camera_stamp`) between the previously processed frame and this
                one; a stamp never noted is noted here, so callers that do not call
                `note_camera_stamp` get jumps judged between consecutive processed frames.
            frame_key: Key of the frame in the shared vision-feature cache.

        Returns:
            One instance per tracked object, sorted by object id: masks (H, W) bool, boxes
            from the masks (xyxy), score = sigmoid(object score), state VISIBLE or OCCLUDED
            (occluded objects keep their id, with an empty mask and zero box).
        """
        import torch

        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        pixel_values = self._segmenter.preprocess(rgb)
        with self._lock:
            reason = None
            epoch = self._camera_stamps.take(int(stamp_ns), self.config.max_time_gap_s)
            if self._processed_epoch is not None and epoch != self._processed_epoch:
                reason = (self._camera_stamps.reason(epoch) if epoch > self._processed_epoch
                          else "the frame was received before an earlier time jump")
            self._processed_epoch = epoch
            if self._image_size_hw not in (None, (height, width)):
                reason = f"the image size changed from {self._image_size_hw} to {(height, width)}"
            if reason is not None:
                # Old objects, prompts in pixels and the memory bank no longer apply.
                # Queued points/boxes were checked against the old image size.
                same_size = self._image_size_hw in (None, (height, width))
                self._reset_locked(keep_next_frame_adds=same_size)
                self.last_reset_reason = reason
                self.reset_count += 1
            self._image_size_hw = (height, width)
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
                self._frames.append((frame_idx, stamp_ns))
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
        height, width = self._image_size_hw
        staged: dict[int, tuple[Any, Any]] = {}  # this frame's points per object, in order
        while self._pending:
            request = self._pending.popleft()
            if request.kind == "remove":
                self._remove(request.ids)
                for oid in request.ids:
                    staged.pop(oid, None)
                continue
            for spec in request.objects:
                if request.kind == "add":
                    target = frame_idx if request.frame_idx is None else request.frame_idx
                    self._objects[spec.object_id] = _TrackedObject(
                        spec.object_id, spec.label, -1, target)
                elif spec.label:
                    self._objects[spec.object_id].label = spec.label
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
        for oid, (coords, labels) in staged.items():
            obj_idx = session.obj_id_to_idx(oid)
            session.add_point_inputs(obj_idx, frame_idx, {"point_coords": coords,
                                                          "point_labels": labels})
            session.remove_mask_inputs(obj_idx, frame_idx)
        return list(staged)

    def _remove(self, object_ids: Sequence[int]) -> None:
        session_state.remove_objects(self._session, object_ids)
        for oid in object_ids:
            self._objects.pop(oid, None)

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
        tracked = self._previous_masks(height, width)
        new_ids: list[int] = []
        free = self.config.max_objects - len(self._objects)
        size = int(self.tracker_model.config.image_size)
        for i in range(len(detections)):
            if free <= 0:
                break
            mask = detections.masks[i]
            if tracked is not None and len(tracked):
                inter = (tracked & mask).sum(axis=(1, 2))
                union = (tracked | mask).sum(axis=(1, 2))
                if (inter / np.maximum(union, 1)).max() > self.config.new_object_iou:
                    continue
            object_id = self._free_id(set(self._objects))
            self._next_id = object_id + 1
            class_id = int(detections.class_ids[i])
            self._objects[object_id] = _TrackedObject(object_id, detections.labels[i], class_id,
                                                      frame_idx)
            obj_idx = self._session.obj_id_to_idx(object_id)
            mask_t = torch.from_numpy(mask).to(self.loaded.device)[None, None].float()
            mask_t = torch.nn.functional.interpolate(mask_t, size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True)
            self._session.add_mask_inputs(obj_idx, frame_idx, (mask_t >= 0.5).float())
            self._session.remove_point_inputs(obj_idx, frame_idx)
            new_ids.append(object_id)
            free -= 1
        return new_ids

    def _previous_masks(self, height: int, width: int) -> np.ndarray | None:
        masks = self._last_masks
        if masks is None or masks.shape[1:] != (height, width):
            return None
        return masks

    def _track(self, pixel_values: Any, frame_idx: int, height: int, width: int) -> Detections:
        import torch

        session = self._session
        if session.get_obj_num() == 0:
            # Nothing to track: keep the frame out of the session (no memory to grow).
            self._last_masks = None
            return Detections.empty(height, width)
        # frame_idx is always passed: pruned processed frames make the session's own frame
        # count meaningless as the next index.
        out = self.tracker_model(inference_session=session, frame=pixel_values[0],
                                 frame_idx=frame_idx)
        logits = torch.nn.functional.interpolate(
            out.pred_masks.float(), size=(height, width), mode="bilinear", align_corners=False)
        # The two transfers to the host: the full-size masks and the object score logits.
        masks = (logits[:, 0] > self.config.mask_threshold).cpu().numpy()
        object_logits = out.object_score_logits.float().reshape(-1).cpu()
        scores = object_logits.sigmoid().numpy()
        visible = (object_logits > 0).numpy()
        self._last_masks = masks
        ids = list(out.object_ids)
        boxes = np.zeros((len(ids), 4), np.float32)
        rows, cols = masks.any(axis=2), masks.any(axis=1)
        for i in range(len(ids)):
            if rows[i].any():
                ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
                boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        occluded = ~visible | ~rows.any(axis=1)
        masks[occluded] = False
        boxes[occluded] = 0.0
        objects = [self._objects[oid] for oid in ids]
        lost = []
        for obj, is_occluded in zip(objects, occluded, strict=True):
            obj.lost_frames = obj.lost_frames + 1 if is_occluded else 0
            if (obj.class_id >= 0 and self.config.max_lost_frames
                    and obj.lost_frames > self.config.max_lost_frames):
                lost.append(obj.object_id)
        if lost:
            # Reported occluded on this frame, gone from the next one.
            self._remove(lost)
        order = np.argsort(ids, kind="stable")
        return Detections(
            xyxy=boxes, scores=scores, class_ids=np.array([o.class_id for o in objects]),
            image_height_px=height, image_width_px=width, masks=masks,
            object_ids=np.array(ids), states=np.where(occluded, STATE_OCCLUDED, STATE_VISIBLE),
            age_frames=np.array([frame_idx - o.first_frame_idx for o in objects]),
            labels=tuple(o.label for o in objects),
        ).select(order)

    def _prune(self, frame_idx: int) -> None:
        """Drop model state no later call reads (bounded memory, unchanged results)."""
        session_state.prune(
            self._session, self.tracker_model.config, frame_idx,
            first_query_frame=self._frames[0][0], frames_read_back=self.memory_window - 1,
            max_prompt_frames=self.config.max_prompt_frames)
