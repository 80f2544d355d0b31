"""The tracker's object table, request queue and camera-stamp epochs, in plain Python.

Everything a tracked stream keeps about its objects apart from the model's own state: object
ids (int32, free-id allocation with wrap-around), labels, class ids, ages and lost-frame
counters; prompt requests queued by services until the next frame; the held frames a prompt
may refer to by stamp; and the time-jump epochs of the camera's stamps. It imports neither
torch nor transformers, so a model or transformers upgrade never touches it and its checks are
unit-tested without a model (test/test_tracker_objects.py). `TrackerSession`
(core/tracker.py) owns one `ObjectTable` and one `CameraStamps` per stream and applies the
queued requests to the model.
"""

from __future__ import annotations

import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sam3_ros.core.errors import InvalidPromptError
from sam3_ros.core.prompts import check_box, check_point

FRAMES_HELD_FOR_PROMPTS = 4
"""Recent frames whose features are kept so a prompt can refer to them by stamp."""
INT32_MAX = 2**31 - 1
"""Largest object id: ids travel in int32 message fields."""
MAX_LABEL_CHARS = 256
MAX_PENDING_REQUESTS = 64
"""Most add/refine/remove requests waiting for the next processed frame. Every request is
applied at the start of one frame (a prompt on a held frame runs the model there), so the
queue bounds what one frame may cost; an inactive node or a stopped camera applies nothing,
and without a bound a client's requests would pile up until the next frame."""
BOX_POINTS = 2
"""A box enters the model as two corner points: it counts as 2 of max_points_per_object."""


def prompt_points(spec: ObjectPromptSpec) -> int:
    """Points an object prompt puts into the model: its points, plus 2 for a box."""
    return len(spec.points) + (BOX_POINTS if spec.box is not None else 0)
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
class TrackedObject:
    """One object of the table.

    Attributes:
        object_id: Its id, within [0, INT32_MAX].
        label: Echoed on its detections.
        class_id: Index of the text prompt that detected it; -1 for a point/box object.
        phrase: The text prompt that detected it ("" for a point/box object); a new label
            given by a refinement leaves it, so the object stays while its phrase does.
        first_frame_idx: Stream frame it started on (its age is counted from there).
        lost_frames: Consecutive frames the object has been occluded.
    """

    object_id: int
    label: str
    class_id: int
    first_frame_idx: int
    lost_frames: int = 0
    phrase: str = ""


@dataclass
class Request:
    """A validated prompt request, applied on the next processed frame.

    Attributes:
        kind: "add", "refine" or "remove".
        objects: Prompts of an add/refine, ids resolved (never -1).
        ids: Object ids of a remove.
        frame_idx: Held frame an add/refine applies to; None = the next frame.
    """

    kind: str
    objects: list[ObjectPromptSpec] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    frame_idx: int | None = None


def describe_requests(requests: Sequence[Request]) -> str:
    """"add [3, 4], remove [7]": the kinds and object ids of `requests`, for a log line."""
    ids: dict[str, list[int]] = {}
    for request in requests:
        found = request.ids if request.kind == "remove" else [o.object_id for o in request.objects]
        ids.setdefault(request.kind, []).extend(found)
    return ", ".join(f"{kind} {sorted(found)}" for kind, found in ids.items())


def check_id(object_id: object, what: str) -> int:
    """The id as an int within int32 (or -1), else InvalidPromptError.

    Args:
        object_id: The caller's id (any object: requests come from services).
        what: Names the entry in the error message, e.g. "object 2 (id 7)".
    """
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


def check_object(spec: ObjectPromptSpec, what: str, max_points_per_object: int,
                 image_size_hw: tuple[int, int] | None) -> None:
    """Validate one object prompt (cheap checks first: sizes before per-point work).

    Args:
        spec: The prompt as the caller gave it (fields of any type).
        what: Names the entry in the error message.
        max_points_per_object: Most points the prompt may carry.
        image_size_hw: (height, width) of the stream's images; None before the first frame
            (then points and boxes are checked for finiteness and order only).

    Raises:
        InvalidPromptError: with the reason.
    """
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
    count += BOX_POINTS if spec.box is not None else 0
    if count > max_points_per_object:
        raise InvalidPromptError(f"{what}: {count} points, at most "
                                 f"{max_points_per_object} per object allowed "
                                 "(max_points_per_object; a box counts as 2)")
    if count == 0:
        raise InvalidPromptError(f"{what}: give points and/or a box")
    try:
        for j, point in enumerate(spec.points):
            if len(point) != 3:
                raise InvalidPromptError(
                    f"{what} point {j}: expected (x, y, positive), got {point!r}")
            check_point(point[:2], f"{what} point {j}", image_size_hw)
        if spec.box is not None:
            check_box(spec.box, f"{what} box", image_size_hw)
    except (TypeError, ValueError, OverflowError) as err:
        if isinstance(err, InvalidPromptError):
            raise
        raise InvalidPromptError(f"{what}: coordinates must be numbers ({err})") from None


def without_ids(requests: Sequence[Request], object_ids: Iterable[int]) -> list[Request]:
    """`requests` without their objects of `object_ids` (a request left empty goes)."""
    gone = set(object_ids)
    kept = []
    for request in requests:
        objects = [o for o in request.objects if o.object_id not in gone]
        if len(objects) == len(request.objects):
            kept.append(request)
        elif objects:
            kept.append(Request(request.kind, objects, frame_idx=request.frame_idx))
    return kept


def free_id(used: set[int], start: int) -> int:
    """The first id >= `start` not in `used`, within int32.

    Past INT32_MAX it wraps to the lowest free id. `used` is at most a few max_objects
    large, so both searches end within len(used) + 1 steps.
    """
    candidate = start
    while candidate in used and candidate <= INT32_MAX:
        candidate += 1
    if candidate > INT32_MAX:
        candidate = min(set(range(len(used) + 1)) - used)
    return candidate


def check_add_request(objects: Sequence[object], max_objects: int) -> None:
    """Refuse an empty add request or one larger than max_objects, before per-object work."""
    if not objects:
        raise InvalidPromptError("no objects given")
    # A request can never hold more than max_objects objects.
    if len(objects) > max_objects:
        raise InvalidPromptError(f"{len(objects)} objects in one request, at most "
                                 f"max_objects {max_objects} allowed")


def check_remove_request(object_ids: Sequence[object], max_objects: int) -> list[int]:
    """The ids of a remove request, checked (count first, then each id).

    Returns:
        The ids as ints.

    Raises:
        InvalidPromptError: no ids, more than max_objects, or an id outside int32.
    """
    if not object_ids:
        raise InvalidPromptError("no object ids given")
    if len(object_ids) > max_objects:
        raise InvalidPromptError(f"{len(object_ids)} ids in one request, at most "
                                 f"max_objects {max_objects} allowed")
    return [check_id(oid, f"id {i}") for i, oid in enumerate(object_ids)]


class ObjectTable:
    """Tracked objects, queued requests and held frames of one stream.

    Not thread-safe: its owner calls it under the owner's lock. Requests are validated
    against the objects they will act on once the queue ahead of them is applied, so a
    queued request never fails when applied.

    Attributes:
        objects: Tracked objects by id (objects in the model).
        pending: Requests not applied yet, oldest first.
        next_id: Where the search for the next assigned id starts.
        frames: (frame_idx, stamp_ns) of the held frames a prompt may refer to, oldest first.
        image_size_hw: (height, width) of the stream's images; None before the first frame.
    """

    def __init__(self) -> None:
        self.pending: deque[Request] = deque()
        # Class id of each text prompt now asked for (kept across resets, as the prompts are).
        self.class_of_phrase: dict[str, int] = {}
        self.reset()

    def reset(self, keep_next_frame_adds: bool = False,
              restart_ids: bool = True) -> list[Request]:
        """Forget every object, request and held frame.

        Args:
            keep_next_frame_adds: Keep the queued adds for the next frame (an automatic reset
                on a time jump): their ids were already handed out and they refer to no old
                frame. Only objects the queue would still start are kept (one add per id:
                an add removed, or removed and added again, later in the queue is not),
                so the kept adds never exceed what the queue was checked for.
            restart_ids: Assign ids from 0 again (a reset the caller asked for); False keeps
                counting up (an automatic reset: no old id is reused for a new object).

        Returns:
            The queued requests dropped (a caller's service call succeeded for them):
            refinements, prompts on held frames and, unless kept, adds for the next frame.
            Removals are not: the objects they name are gone after a reset either way.
        """
        previous_next_id = 0 if restart_ids else getattr(self, "next_id", 0)
        pending = getattr(self, "pending", deque())
        starting = self.starting_next_frame() if pending else set()
        kept: list[Request] = []
        dropped: list[Request] = []
        seen: set[int] = set()
        removed_later: set[int] = set()
        for request in reversed(pending):  # the last add of an id is the one that counts
            if request.kind == "remove":
                removed_later.update(request.ids)
                continue
            if request.kind == "add" and request.frame_idx is None:
                objects = [o for o in request.objects
                           if o.object_id in starting and o.object_id not in seen]
                seen.update(o.object_id for o in objects)
                if not objects:
                    continue  # removed (or added again) by the caller later in the queue
                if len(objects) < len(request.objects):
                    request = Request("add", objects)
                (kept if keep_next_frame_adds else dropped).append(request)
            else:
                # A refinement (or a prompt on a held frame) of an object the caller removed
                # later is not lost: "send it again" would meet an unknown id.
                dropped.extend(without_ids([request], removed_later))
        kept.reverse()
        dropped.reverse()
        self.objects: dict[int, TrackedObject] = {}
        self.pending = deque(kept)
        self.frames: deque[tuple[int, int]] = deque(maxlen=FRAMES_HELD_FOR_PROMPTS)
        self.image_size_hw: tuple[int, int] | None = None
        self.next_id = max(previous_next_id,
                           1 + max((o.object_id for r in kept for o in r.objects), default=-1))
        return dropped

    # ------------------------------------------------------------------------ held frames
    def hold_frame(self, frame_idx: int, stamp_ns: int) -> None:
        """Let prompts refer to a processed frame by its stamp (the oldest held one drops)."""
        self.frames.append((frame_idx, stamp_ns))

    def frame_for_stamp(self, stamp_ns: int | None) -> int | None:
        """Index of the held frame with this stamp; None for None (the next frame).

        Raises:
            InvalidPromptError: no held frame has the stamp.
        """
        if stamp_ns is None:
            return None
        for frame_idx, held_stamp in self.frames:
            if held_stamp == stamp_ns:
                return frame_idx
        held = [s for _, s in self.frames]
        raise InvalidPromptError(
            f"no held frame has stamp {stamp_ns} ns (the tracker holds the last "
            f"{len(held)} frame(s): {held}); use a zero stamp for the next frame")

    @property
    def oldest_held_frame(self) -> int:
        """Oldest frame a prompt may still refer to (the oldest a model call may run on)."""
        return self.frames[0][0]

    # ---------------------------------------------------------------------------- queue
    def projected_ids(self) -> set[int]:
        """Object ids once the queued requests are applied (what a new request acts on)."""
        ids = set(self.objects).difference(self.unprompted())
        for request in self.pending:
            if request.kind == "add":
                ids.update(o.object_id for o in request.objects)
            elif request.kind == "remove":
                ids.difference_update(request.ids)
        return ids

    def starting_next_frame(self) -> set[int]:
        """Ids of queued objects that start on the next frame (not in the model yet)."""
        ids: set[int] = set()
        for request in self.pending:
            if request.kind == "add" and request.frame_idx is None:
                ids.update(o.object_id for o in request.objects)
            elif request.kind == "remove":
                ids.difference_update(request.ids)
        return ids

    def points_on(self, object_id: int, frame_idx: int | None, held: int = 0) -> int:
        """Points an object will have on a frame (None = next frame) once the queue is applied.

        Box corners count (`prompt_points`): refinements each bringing a box would otherwise
        grow one object's prompt on a frame without limit.

        Args:
            object_id: The object.
            frame_idx: A held frame, or None for the next frame.
            held: Points (box corners included) the object already has on that held frame in
                the model.
        """
        count = held
        for request in self.pending:
            if request.kind == "remove" and object_id in request.ids:
                count = 0
            elif request.kind != "remove" and request.frame_idx == frame_idx:
                count += sum(prompt_points(o) for o in request.objects
                             if o.object_id == object_id)
        return count

    def queue_add(self, objects: Sequence[ObjectPromptSpec], frame_stamp_ns: int | None,
                  refine: bool, max_objects: int, max_points_per_object: int,
                  held_points: Callable[[int, int], int]) -> list[int]:
        """Validate an add/refine request and queue it; see `TrackerSession.add_objects`.

        The request's size is checked before (`check_add_request`).

        Args:
            objects: Object prompts as the caller gave them.
            frame_stamp_ns: Stamp of the held frame they apply to; None = the next frame.
            refine: Add the prompts to existing objects (ids must exist).
            max_objects: Most objects tracked at once.
            max_points_per_object: Most points one object may have on one frame.
            held_points: (object_id, frame_idx) -> points the object has on that held frame
                in the model; called for refinements on a held frame only.

        Returns:
            The object id of each entry.

        Raises:
            InvalidPromptError: with the reason; nothing is queued.
        """
        self._check_queue_room()
        frame_idx = self.frame_for_stamp(frame_stamp_ns)
        if frame_idx is not None:
            # Each entry on a held frame runs the model on that frame when the next frame
            # is processed: bounded per frame, or requests could make one frame take minutes.
            held = sum(len(r.objects) for r in self.pending
                       if r.kind != "remove" and r.frame_idx is not None)
            if held + len(objects) > max_objects:
                raise InvalidPromptError(
                    f"{held} prompt(s) on held frames already wait for the next processed "
                    f"frame; {len(objects)} more would exceed max_objects {max_objects} (each "
                    "runs the model on its frame)")
        known = self.projected_ids()
        # Objects leaving with their phrase are still in the model until the next frame: a
        # new object must not take such an id (unless a queued remove frees it first).
        removed = {i for r in self.pending if r.kind == "remove" for i in r.ids}
        taken = known | (set(self.unprompted()) - removed)
        ids: list[int] = []
        # Not raised to the ids in use here (the ids a caller chose raised it when queued):
        # once it had wrapped past INT32_MAX, a tracked id near INT32_MAX raised it past
        # again at every request, and every later id was the lowest free one (a removed
        # object's id, at once).
        next_id = self.next_id
        for i, spec in enumerate(objects):
            what = f"object {i} (id {spec.object_id})"
            object_id = check_id(spec.object_id, what)
            check_object(spec, what, max_points_per_object, self.image_size_hw)
            if refine:
                if object_id not in known:
                    raise InvalidPromptError(f"{what}: unknown id (tracked: {sorted(known)})")
                if frame_idx is not None and object_id in self.starting_next_frame():
                    raise InvalidPromptError(
                        f"{what}: the object starts on the next frame; it cannot be refined "
                        "on an earlier held frame")
                ids.append(object_id)
                continue
            if object_id == -1:
                object_id = free_id(taken | set(ids), next_id)
                next_id = object_id + 1
            elif object_id in taken or object_id in ids:
                raise InvalidPromptError(f"{what}: id already in use")
            else:
                next_id = max(next_id, object_id + 1)
            ids.append(object_id)
        if not refine and len(known) + len(ids) > max_objects:
            raise InvalidPromptError(
                f"{len(known)} object(s) tracked, {len(ids)} more would exceed max_objects "
                f"{max_objects}")
        for oid in dict.fromkeys(ids):
            total = 0
            if refine:
                held = held_points(oid, frame_idx) if frame_idx is not None else 0
                total = self.points_on(oid, frame_idx, held)
            total += sum(prompt_points(s) for s, i in zip(objects, ids, strict=True)
                         if i == oid)
            if total > max_points_per_object:
                raise InvalidPromptError(
                    f"object {oid} would have {total} points on that frame, at most "
                    f"{max_points_per_object} allowed (max_points_per_object; a box counts "
                    "as 2)")
        # Stored as the checks read them (float(), bool()): applying the request must not
        # meet a type the checks let through ("40" for a coordinate).
        resolved = [ObjectPromptSpec(oid, s.label,
                                     tuple((float(x), float(y), bool(positive))
                                           for x, y, positive in s.points),
                                     None if s.box is None else tuple(float(v) for v in s.box))
                    for oid, s in zip(ids, objects, strict=True)]
        self.pending.append(Request("refine" if refine else "add", resolved,
                                    frame_idx=frame_idx))
        # Lower than before only after a wrap past INT32_MAX (counting on from there).
        self.next_id = next_id
        return ids

    def queue_remove(self, object_ids: list[int]) -> None:
        """Queue removal of checked ids (`check_remove_request`); all must be known.

        Raises:
            InvalidPromptError: an id is not tracked once the queue is applied; nothing is
                queued.
        """
        self._check_queue_room()
        known = self.projected_ids()
        unknown = sorted(set(object_ids) - known)
        if unknown:
            raise InvalidPromptError(f"unknown object id(s) {unknown} (tracked: "
                                     f"{sorted(known)})")
        self.pending.append(Request("remove", ids=object_ids))

    def _check_queue_room(self) -> None:
        if len(self.pending) >= MAX_PENDING_REQUESTS:
            raise InvalidPromptError(
                f"{len(self.pending)} requests already wait for the next processed frame (at "
                f"most {MAX_PENDING_REQUESTS}); they are applied when the node processes a "
                "frame (is it active and receiving images?)")

    def reclassify(self, class_of_phrase: dict[str, int]) -> None:
        """New text prompts: detected objects take their phrase's new class id.

        Objects of phrases no longer asked for leave at the next processed frame, after its
        queued requests (`unprompted`): decided then, from the prompts of that moment, so a
        phrase asked for again meanwhile keeps its objects, and an id freed and reused by a
        caller meanwhile is not removed. Point/box objects (no phrase) are not affected.

        Args:
            class_of_phrase: Class id of each phrase now prompted.
        """
        self.class_of_phrase = dict(class_of_phrase)
        for obj in self.objects.values():
            if obj.phrase:
                obj.class_id = self.class_of_phrase.get(obj.phrase, -1)

    def unprompted(self) -> list[int]:
        """Detected objects whose phrase is no longer prompted (they leave at the next
        processed frame)."""
        return [oid for oid, obj in self.objects.items()
                if obj.phrase and obj.phrase not in self.class_of_phrase]

    # ------------------------------------------------------------------- applying (frame)
    def pop_request(self) -> Request | None:
        """The oldest queued request, taken off the queue; None when none is left."""
        return self.pending.popleft() if self.pending else None

    def enter(self, request: Request, spec: ObjectPromptSpec, frame_idx: int) -> None:
        """Enter one object of an applied add/refine request (a new object, or its new label).

        Args:
            request: The request being applied.
            spec: One of its objects.
            frame_idx: The frame being processed (where an add for the next frame starts).
        """
        if request.kind == "add":
            target = frame_idx if request.frame_idx is None else request.frame_idx
            self.objects[spec.object_id] = TrackedObject(spec.object_id, spec.label, -1, target)
        elif spec.label:
            self.objects[spec.object_id].label = spec.label

    def drop(self, object_ids: Sequence[int]) -> None:
        """Forget objects (ids not tracked are ignored)."""
        for oid in object_ids:
            self.objects.pop(oid, None)

    def add_detected(self, label: str, class_id: int, frame_idx: int) -> int:
        """Start a text-detected object on a frame under the next free id; return the id."""
        object_id = free_id(set(self.objects), self.next_id)
        self.next_id = object_id + 1
        self.objects[object_id] = TrackedObject(object_id, label, class_id, frame_idx,
                                                phrase=label)
        return object_id

    def count_lost(self, object_ids: Sequence[int], occluded: Sequence[bool],
                   max_lost_frames: int) -> list[int]:
        """Count consecutive occluded frames; return detected objects lost for too long.

        Args:
            object_ids: The objects tracked on this frame.
            occluded: Whether each was occluded on it.
            max_lost_frames: A text-detected object occluded for more consecutive frames is
                lost; 0 = never. Point/box objects are never lost (only removed by the caller).

        Returns:
            Ids of the lost objects (still in the table: the caller drops them).
        """
        lost = []
        for oid, is_occluded in zip(object_ids, occluded, strict=True):
            obj = self.objects[oid]
            obj.lost_frames = obj.lost_frames + 1 if is_occluded else 0
            if obj.class_id >= 0 and max_lost_frames and obj.lost_frames > max_lost_frames:
                lost.append(oid)
        return lost


class CameraStamps:
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
        self._processed_epoch: int | None = None
        self._last_taken: tuple[int, int] | None = None
        """(stamp, epoch) of the last taken frame."""

    def note(self, stamp_ns: int, max_gap_s: float, gap_may_be_ours: bool = False) -> None:
        """Note the stamp of a frame the camera sent (see `TrackerSession.note_camera_stamp`)."""
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
            return self._take_locked(stamp_ns, max_gap_s)

    def _take_locked(self, stamp_ns: int, max_gap_s: float) -> int:
        found = None
        for back, (stamp, _) in enumerate(reversed(self._pending)):
            if stamp == stamp_ns:
                found = len(self._pending) - 1 - back
                break
        if found is None and self._last_taken is not None and self._last_taken[0] == stamp_ns:
            # A second copy of the frame just taken (a re-sent frame: both copies were noted,
            # and taking the first one consumed both entries). Noting it again now, after
            # newer stamps, would look like the stamps went backwards and reset the stream.
            return self._last_taken[1]
        if found is None:
            # Never noted: core use without note_camera_stamp judges processed frames.
            self._note_locked(stamp_ns, max_gap_s)
            found = len(self._pending) - 1
        epoch = self._pending[found][1]
        for _ in range(found + 1):
            self._pending.popleft()
        self._last_taken = (stamp_ns, epoch)
        return epoch

    def reason(self, epoch: int) -> str:
        """Why `epoch` started (the newest EPOCH_REASONS_KEPT are remembered)."""
        with self._lock:
            return self._reasons.get(epoch, "time jump")

    def jump_before(self, stamp_ns: int, max_gap_s: float) -> str | None:
        """Take the frame about to be processed; why the stream must reset before it.

        Args:
            stamp_ns: The processed frame's stamp.
            max_gap_s: Gap limit, if the stamp has to be noted here.

        Returns:
            The reason when a time jump was noted between the previously processed frame
            and this one (or this frame was received before a jump the previous one
            followed); None otherwise, and for the first frame after `forget_processed`.
        """
        with self._lock:
            epoch = self._take_locked(stamp_ns, max_gap_s)
            previous, self._processed_epoch = self._processed_epoch, epoch
            if previous is None or epoch == previous:
                return None
            if epoch > previous:
                return self._reasons.get(epoch, "time jump")
            return "the frame was received before an earlier time jump"

    def forget_processed(self) -> None:
        """The next processed frame is not judged against frames processed before."""
        with self._lock:
            self._processed_epoch = None

    def __len__(self) -> int:
        return len(self._pending)
