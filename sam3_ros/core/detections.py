"""`Detections`: the one typed result container of the package (numpy fields, validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sam3_ros.core.errors import InvalidDetectionsError

STATE_VISIBLE = 0
STATE_OCCLUDED = 1


def _check(name: str, array: np.ndarray, shape: tuple, dtype) -> np.ndarray:
    """Check `array` against `shape` (None = any size) and dtype kind; return it as `dtype`."""
    array = np.asarray(array)
    if array.ndim != len(shape) or any(
        want is not None and have != want for have, want in zip(array.shape, shape, strict=True)
    ):
        shown = tuple("N" if s is None else s for s in shape)
        raise InvalidDetectionsError(f"{name}: expected shape {shown}, got {array.shape}")
    if dtype is bool and array.dtype != np.bool_:
        raise InvalidDetectionsError(f"{name}: expected dtype bool, got {array.dtype}")
    if array.dtype == dtype:
        return array
    if np.dtype(dtype).kind in "iu" and array.size:
        # A cast would wrap (2**31 -> -2**31) or truncate (1.9 -> 1) silently.
        info = np.iinfo(dtype)
        if array.dtype.kind not in "biuf":
            raise InvalidDetectionsError(f"{name}: expected integers, got {array.dtype}")
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise InvalidDetectionsError(f"{name}: expected integers, got {array.dtype} values "
                                         "with fractions")
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidDetectionsError(f"{name}: values must be in [{info.min}, {info.max}] "
                                         f"({np.dtype(dtype)}), got [{low}, {high}]")
    return array.astype(dtype)


@dataclass(frozen=True)
class Detections:
    """Instances found in one image of size `image_height_px` x `image_width_px`.

    All per-instance arrays share the first dimension N (N may be 0).

    Attributes:
        xyxy: (N, 4) float32 boxes in pixel coordinates of the input image (x_min, y_min,
            x_max, y_max), x right, y down, max edges exclusive (the segmenter's and the
            tracker's are within the image).
        scores: (N,) float32 confidences in [0, 1].
        class_ids: (N,) int32 prompt index of each instance; -1 for objects prompted by points
            or boxes (tracker).
        masks: (N, H, W) bool full-image masks, or None when masks were not computed.
        object_ids: (N,) int32 ids; tracker ids persist across frames. Default 0..N-1.
        states: (N,) uint8 `STATE_VISIBLE` or `STATE_OCCLUDED`. Default all visible.
        age_frames: (N,) uint32 frames since first seen. Default zeros.
        labels: tuple of N strings (prompt text or object label). Default empty strings.
        image_height_px / image_width_px: size of the input image.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    image_height_px: int
    image_width_px: int
    masks: np.ndarray | None = None
    object_ids: np.ndarray | None = None
    states: np.ndarray | None = None
    age_frames: np.ndarray | None = None
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("image_height_px", "image_width_px"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
                raise InvalidDetectionsError(f"{name}: expected an integer, got {value!r} "
                                             f"({type(value).__name__})")
        if self.image_height_px <= 0 or self.image_width_px <= 0:
            raise InvalidDetectionsError(
                f"image size must be positive, got {self.image_height_px}x{self.image_width_px}"
            )
        xyxy = np.asarray(self.xyxy)
        if xyxy.ndim != 2 or xyxy.shape[1:] != (4,):
            raise InvalidDetectionsError(f"xyxy: expected shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        setter = object.__setattr__
        setter(self, "xyxy", _check("xyxy", xyxy, (n, 4), np.float32))
        setter(self, "scores", _check("scores", self.scores, (n,), np.float32))
        setter(self, "class_ids", _check("class_ids", self.class_ids, (n,), np.int32))
        if n:
            self._check_values()
        if self.masks is not None:
            setter(self, "masks", _check(
                "masks", self.masks, (n, self.image_height_px, self.image_width_px), bool))
        object_ids = np.arange(n, dtype=np.int32) if self.object_ids is None else self.object_ids
        setter(self, "object_ids", _check("object_ids", object_ids, (n,), np.int32))
        if n > 1 and len(np.unique(self.object_ids)) != n:
            ids, counts = np.unique(self.object_ids, return_counts=True)
            raise InvalidDetectionsError(f"object_ids: expected unique ids, got "
                                         f"{ids[counts > 1].tolist()} more than once")
        states = np.full(n, STATE_VISIBLE, np.uint8) if self.states is None else self.states
        setter(self, "states", _check("states", states, (n,), np.uint8))
        if n and not np.isin(self.states, (STATE_VISIBLE, STATE_OCCLUDED)).all():
            raise InvalidDetectionsError(
                f"states: expected {STATE_VISIBLE} (visible) or {STATE_OCCLUDED} (occluded), "
                f"got {sorted(set(self.states.tolist()))}")
        ages = np.zeros(n, np.uint32) if self.age_frames is None else self.age_frames
        setter(self, "age_frames", _check("age_frames", ages, (n,), np.uint32))
        labels = ("",) * n if len(self.labels) == 0 and n else tuple(self.labels)
        if len(labels) != n:
            raise InvalidDetectionsError(f"labels: expected {n} strings, got {len(labels)}")
        if not all(isinstance(label, str) for label in labels):
            raise InvalidDetectionsError("labels: expected strings, got "
                                         f"{sorted({type(v).__name__ for v in labels})}")
        setter(self, "labels", labels)

    def _check_values(self) -> None:
        """Scores in [0, 1] and class ids >= -1 (N > 0). Boxes are not checked for
        finiteness or order: a model in fp16 can give a NaN box, which ByteTrack drops and the
        mask crops clip, so one bad instance does not cost the frame."""
        scores = self.scores
        if not ((scores >= 0.0) & (scores <= 1.0)).all():  # NaN fails both
            bad = scores[~((scores >= 0.0) & (scores <= 1.0))][0]
            raise InvalidDetectionsError(f"scores: expected values in [0, 1], got {bad}")
        if self.class_ids.min() < -1:
            raise InvalidDetectionsError("class_ids: expected >= -1 (-1: no prompt class), "
                                         f"got {int(self.class_ids.min())}")

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(
        cls, image_height_px: int, image_width_px: int, with_masks: bool = True
    ) -> Detections:
        """No instances, for an image of the given size."""
        masks = np.zeros((0, image_height_px, image_width_px), bool) if with_masks else None
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                   image_height_px, image_width_px, masks=masks)

    def select(self, index: np.ndarray) -> Detections:
        """A new `Detections` with the instances at `index` (bool mask or integer indices)."""
        return Detections(
            xyxy=self.xyxy[index], scores=self.scores[index], class_ids=self.class_ids[index],
            image_height_px=self.image_height_px, image_width_px=self.image_width_px,
            masks=None if self.masks is None else self.masks[index],
            object_ids=self.object_ids[index], states=self.states[index],
            age_frames=self.age_frames[index],
            labels=tuple(np.asarray(self.labels, dtype=object)[index]) if len(self) else (),
        )

    def with_ids(self, object_ids: np.ndarray, age_frames: np.ndarray | None = None) -> Detections:
        """A copy with new object ids (and ages), e.g. after tracking association."""
        return Detections(
            xyxy=self.xyxy, scores=self.scores, class_ids=self.class_ids,
            image_height_px=self.image_height_px, image_width_px=self.image_width_px,
            masks=self.masks, object_ids=object_ids, states=self.states,
            age_frames=self.age_frames if age_frames is None else age_frames, labels=self.labels,
        )
