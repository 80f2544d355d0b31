"""ByteTrack-style id association for per-frame detections (pure numpy, no ROS, no torch).

The detection-only path of the segmenter runs SAM3's detector on every frame independently, so
its `object_ids` are just 0..N-1 per frame. `ByteTracker` turns them into persistent ids, after
the idea of ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every
Detection Box", ECCV 2022): every track's box is predicted by a constant-velocity Kalman filter,
confident detections are matched first, and the remaining tracks then get a second chance
against the *low*-score detections, which are usually the same objects partly occluded or
blurred. Low-score detections keep tracks alive but never start new ones.

Only boxes take part in the association; masks (and labels, states) are carried through
untouched by selecting whole instances from the input `Detections`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import ConfigError

# Kalman noise, as fractions of the box width / height (per frame): the uncertainty of a box
# scales with its size, so one setting fits near and far objects alike.
_STD_POSITION = 1.0 / 20.0
_STD_VELOCITY = 1.0 / 160.0
# Noise std never drops below this many pixels, so a tiny box cannot make a covariance singular.
_MIN_STD_PX = 1.0
# Boxes never shrink below this size while predicted, so IoU stays defined.
_MIN_SIZE_PX = 1.0
# Cost given to gated-out pairs; real costs (1 - IoU) lie in [0, 1].
_FORBIDDEN_COST = 1e6
# How far (in nominal frames) one update may extrapolate: after a long pause of the stream a
# straight-line extrapolation is mostly wrong, while the last position is still a fair guess.
_MAX_STEP_FRAMES = 10.0
# Weight of a new `dt_s` sample in the running estimate of the nominal frame period.
_PERIOD_EMA_WEIGHT = 0.1


def _check_fraction(name: str, value: float, low: float, high: float, low_open: bool) -> None:
    """Raise ConfigError unless `low (<|<=) value <= high`."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name}: expected a number in {bracket}{low}, {high}], got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise ConfigError unless `value` is an int >= `minimum`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ByteTrackConfig:
    """Parameters of `ByteTracker`.

    Attributes:
        high_score_threshold: Detections scoring at least this are "high" and take part in the
            first association stage (against tracked and lost tracks).
        low_score_threshold: Detections scoring at least this but below `high_score_threshold`
            are "low": they only take part in the second stage, against tracks still tracked
            after the first. Detections below it are ignored.
        new_track_threshold: A high detection left unmatched starts a new track only if it
            scores at least this (>= `high_score_threshold`), which keeps borderline false
            positives from spawning ids.
        match_iou_threshold: Minimum IoU between a predicted track box and a high detection
            for a first-stage match (equivalently, maximum cost 1 - IoU).
        low_match_iou_threshold: Minimum IoU for a second-stage match; stricter than the first
            because low-score boxes are less reliable.
        max_lost_frames: A track unmatched for more than this many consecutive frames is
            removed; its id is never given out again. 0 removes tracks at their first miss.
        min_hits_to_confirm: Matched frames (including the first) a track needs before it gets
            an id and appears in the output. The default 1 shows every new track at once, which
            suits SAM3's fairly clean detections; raise it to suppress one-frame flickers, at
            the price of that many frames of delay. A track that misses a frame before being
            confirmed is dropped.
        class_aware: Only associate detections and tracks of the same `class_id` (prompt).
    """

    high_score_threshold: float = 0.5
    low_score_threshold: float = 0.1
    new_track_threshold: float = 0.6
    match_iou_threshold: float = 0.3
    low_match_iou_threshold: float = 0.5
    max_lost_frames: int = 30
    min_hits_to_confirm: int = 1
    class_aware: bool = True

    def __post_init__(self) -> None:
        _check_fraction("high_score_threshold", self.high_score_threshold, 0.0, 1.0, False)
        _check_fraction("low_score_threshold", self.low_score_threshold, 0.0, 1.0, False)
        if self.low_score_threshold > self.high_score_threshold:
            raise ConfigError(
                f"low_score_threshold: expected <= high_score_threshold "
                f"({self.high_score_threshold}), got {self.low_score_threshold}"
            )
        _check_fraction("new_track_threshold", self.new_track_threshold, 0.0, 1.0, False)
        if self.new_track_threshold < self.high_score_threshold:
            raise ConfigError(
                f"new_track_threshold: expected >= high_score_threshold "
                f"({self.high_score_threshold}), got {self.new_track_threshold}"
            )
        # IoU 0 would let boxes that do not overlap at all be matched.
        _check_fraction("match_iou_threshold", self.match_iou_threshold, 0.0, 1.0, True)
        _check_fraction("low_match_iou_threshold", self.low_match_iou_threshold, 0.0, 1.0, True)
        _check_int("max_lost_frames", self.max_lost_frames, 0)
        _check_int("min_hits_to_confirm", self.min_hits_to_confirm, 1)
        if not isinstance(self.class_aware, (bool, np.bool_)):
            raise ConfigError(f"class_aware: expected a bool, got {self.class_aware!r}")


def xyxy_to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) corner boxes -> (N, 4) center x, center y, width, height."""
    size = xyxy[:, 2:] - xyxy[:, :2]
    return np.concatenate([xyxy[:, :2] + 0.5 * size, size], axis=1)


def cxcywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    """(N, 4) center x, center y, width, height -> (N, 4) corner boxes."""
    half = 0.5 * cxcywh[:, 2:]
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M); 0 where a union is empty."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0.0)


def _size_std(wh: np.ndarray, fraction: float) -> np.ndarray:
    """(T, 2) widths/heights -> (T, 4) noise std for (x, y, w, h)-shaped blocks."""
    std = np.maximum(fraction * wh, _MIN_STD_PX)
    return np.concatenate([std, std], axis=1)


def _kalman_initiate(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start filters at (T, 4) cxcywh boxes -> mean (T, 8), covariance (T, 8, 8).

    Velocity starts at 0 with a wide variance, so the first few updates learn it quickly.
    """
    mean = np.concatenate([boxes, np.zeros_like(boxes)], axis=1)
    wh = boxes[:, 2:]
    std = np.concatenate(
        [2.0 * _size_std(wh, _STD_POSITION), 10.0 * _size_std(wh, _STD_VELOCITY)], axis=1
    )
    cov = np.zeros((len(boxes), 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std**2
    return mean, cov


def _kalman_predict(
    mean: np.ndarray, cov: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Constant-velocity prediction of `step` nominal frames for (T, 8) / (T, 8, 8) filters."""
    transition = np.eye(8)
    transition[np.arange(4), np.arange(4, 8)] = step
    mean = mean @ transition.T
    mean[:, 2:4] = np.maximum(mean[:, 2:4], _MIN_SIZE_PX)
    std = np.concatenate(
        [_size_std(mean[:, 2:4], _STD_POSITION), _size_std(mean[:, 2:4], _STD_VELOCITY)], axis=1
    )
    cov = transition @ cov @ transition.T
    idx = np.arange(8)
    # Random-walk noise: its variance grows linearly with the time elapsed.
    cov[:, idx, idx] += step * std**2
    return mean, cov


def _kalman_update(
    mean: np.ndarray, cov: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Correct (T, 8) / (T, 8, 8) filters with (T, 4) cxcywh measurements (H = [I 0])."""
    noise = _size_std(mean[:, 2:4], _STD_POSITION) ** 2
    innovation_cov = cov[:, :4, :4].copy()
    idx = np.arange(4)
    innovation_cov[:, idx, idx] += noise
    # K = P H^T S^-1; S is symmetric, so K^T = S^-1 (H P) and one batched solve gives it.
    gain = np.linalg.solve(innovation_cov, cov[:, :4, :]).transpose(0, 2, 1)
    mean = mean + np.einsum("tij,tj->ti", gain, boxes - mean[:, :4])
    cov = cov - gain @ cov[:, :4, :]
    # Keep the covariance exactly symmetric against round-off over long tracks.
    cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    return mean, cov


def _associate(
    det_xyxy: np.ndarray,
    det_classes: np.ndarray,
    track_xyxy: np.ndarray,
    track_classes: np.ndarray,
    min_iou: float,
    class_aware: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on 1 - IoU, gated by `min_iou` (and class).

    Args:
        det_xyxy: (N, 4) detection boxes.
        det_classes: (N,) detection class ids.
        track_xyxy: (T, 4) predicted track boxes.
        track_classes: (T,) track class ids.
        min_iou: Pairs overlapping less are never matched.
        class_aware: Forbid pairs whose class ids differ.

    Returns:
        (K,) detection indices and (K,) track indices of the matched pairs.
    """
    empty = np.zeros(0, np.intp)
    if len(det_xyxy) == 0 or len(track_xyxy) == 0:
        return empty, empty
    iou = box_iou(det_xyxy, track_xyxy)
    allowed = iou >= min_iou
    if class_aware:
        allowed &= det_classes[:, None] == track_classes[None, :]
    if not allowed.any():
        return empty, empty
    # A large finite cost (not inf) keeps every assignment feasible; gated pairs are dropped
    # afterwards, so the solver first maximises the number of valid pairs, then their IoU.
    cost = np.where(allowed, 1.0 - iou, _FORBIDDEN_COST)
    rows, cols = linear_sum_assignment(cost)
    keep = allowed[rows, cols]
    return rows[keep], cols[keep]


class ByteTracker:
    """Gives per-frame detections persistent ids by ByteTrack-style two-stage association.

    Each `update`:
      1. predicts every track's box with its constant-velocity Kalman filter, state
         (cx, cy, w, h, vcx, vcy, vw, vh), vectorised over tracks;
      2. matches high-score detections to tracked and lost tracks (Hungarian on 1 - IoU);
      3. matches low-score detections to the confirmed tracks still tracked and unmatched;
      4. marks the remaining tracks lost, drops lost tracks older than `max_lost_frames` and
         unconfirmed tracks that missed a frame;
      5. starts tracks from unmatched high detections scoring >= `new_track_threshold`.

    The output holds only the detections of confirmed tracks, in input order, with
    `object_ids` = track ids (monotonic from 0, never reused until `reset`) and `age_frames` =
    frames since the track's first detection. Detections that neither match a track nor start
    one (low scores, borderline unmatched scores, unconfirmed tracks, boxes with non-finite
    coordinates or no area) are dropped from the output.

    Memory is bounded: tracks are held in flat arrays, one row per live track, and removed rows
    are discarded; no per-frame history is kept.

    Args:
        config: Thresholds and lifetimes; defaults when None.
    """

    def __init__(self, config: ByteTrackConfig | None = None) -> None:
        self.config = ByteTrackConfig() if config is None else config
        self.reset()

    def reset(self) -> None:
        """Forget all tracks; the next ids start again at 0."""
        self._mean = np.zeros((0, 8))
        self._cov = np.zeros((0, 8, 8))
        self._ids = np.zeros(0, np.int64)  # -1 while not confirmed
        self._classes = np.zeros(0, np.int32)
        self._hits = np.zeros(0, np.int64)
        self._misses = np.zeros(0, np.int64)  # consecutive unmatched frames; 0 = tracked
        self._start_frame = np.zeros(0, np.int64)
        self._next_id = 0
        self._frame = -1
        self._period_s: float | None = None

    @property
    def num_tracks(self) -> int:
        """Live tracks (tracked, lost and unconfirmed) held right now."""
        return len(self._ids)

    @property
    def num_lost(self) -> int:
        """Live tracks currently unmatched (kept for re-identification)."""
        return int(np.count_nonzero(self._misses > 0))

    def update(self, detections: Detections, dt_s: float | None = None) -> Detections:
        """Associate one frame's detections with the tracks.

        Args:
            detections: This frame's N detections; boxes, scores and class ids are used.
            dt_s: Seconds since the previous frame. None counts one nominal frame. When given,
                the motion model steps by `dt_s` over a running average of the frame period,
                so a dropped frame is extrapolated twice as far; velocities stay in pixels per
                nominal frame either way. 0 (a repeated stamp) predicts no motion.

        Returns:
            The K <= N detections of confirmed tracks, in input order, with persistent
            `object_ids` (K,) and `age_frames` (K,); masks and labels unchanged.

        Raises:
            ConfigError: If `dt_s` is negative or not finite.
        """
        cfg = self.config
        step = self._step_frames(dt_s)
        self._frame += 1

        if self.num_tracks:
            lost = self._misses > 0
            # Size velocity is unobserved while lost; extrapolating it would make boxes grow
            # or collapse, so lost tracks only keep drifting in position.
            self._mean[lost, 6:8] = 0.0
            self._mean, self._cov = _kalman_predict(self._mean, self._cov, step)
        track_xyxy = cxcywh_to_xyxy(self._mean[:, :4])

        xyxy = detections.xyxy.astype(np.float64)
        scores = detections.scores
        classes = detections.class_ids
        valid = (
            np.isfinite(xyxy).all(axis=1)
            & np.isfinite(scores)
            & (xyxy[:, 2] > xyxy[:, 0])
            & (xyxy[:, 3] > xyxy[:, 1])
        )
        high = valid & (scores >= cfg.high_score_threshold)
        low = valid & ~high & (scores >= cfg.low_score_threshold)

        # Stage 1: confident detections against every track, lost ones included.
        high_idx = np.flatnonzero(high)
        all_tracks = np.arange(self.num_tracks)
        rows, cols = _associate(
            xyxy[high_idx], classes[high_idx], track_xyxy, self._classes,
            cfg.match_iou_threshold, cfg.class_aware,
        )
        matched_dets = [high_idx[rows]]
        matched_tracks = [all_tracks[cols]]

        # Stage 2: low-score detections rescue confirmed tracks that were tracked last frame.
        track_free = np.ones(self.num_tracks, bool)
        track_free[matched_tracks[0]] = False
        candidates = np.flatnonzero(track_free & (self._misses == 0) & (self._ids >= 0))
        low_idx = np.flatnonzero(low)
        rows, cols = _associate(
            xyxy[low_idx], classes[low_idx], track_xyxy[candidates], self._classes[candidates],
            cfg.low_match_iou_threshold, cfg.class_aware,
        )
        matched_dets.append(low_idx[rows])
        matched_tracks.append(candidates[cols])
        det_rows = np.concatenate(matched_dets)
        track_rows = np.concatenate(matched_tracks)
        track_free[track_rows] = False

        if len(track_rows):
            self._mean[track_rows], self._cov[track_rows] = _kalman_update(
                self._mean[track_rows], self._cov[track_rows], xyxy_to_cxcywh(xyxy[det_rows])
            )
            self._hits[track_rows] += 1
            self._misses[track_rows] = 0
            self._classes[track_rows] = classes[det_rows]
            self._confirm(track_rows[np.argsort(det_rows, kind="stable")])

        out_ids = np.full(len(detections), -1, np.int64)
        out_start = np.zeros(len(detections), np.int64)
        out_ids[det_rows] = self._ids[track_rows]
        out_start[det_rows] = self._start_frame[track_rows]

        # Unmatched tracks age; unconfirmed ones get no second chance (likely false positives).
        self._misses[track_free] += 1
        remove = track_free & ((self._ids < 0) | (self._misses > cfg.max_lost_frames))
        self._keep(~remove)

        det_free = np.ones(len(detections), bool)
        det_free[det_rows] = False
        new_idx = np.flatnonzero(det_free & high & (scores >= cfg.new_track_threshold))
        if len(new_idx):
            first_new = self.num_tracks
            self._add(xyxy_to_cxcywh(xyxy[new_idx]), classes[new_idx])
            new_rows = np.arange(first_new, self.num_tracks)
            self._confirm(new_rows)
            out_ids[new_idx] = self._ids[new_rows]
            out_start[new_idx] = self._frame

        shown = np.flatnonzero(out_ids >= 0)
        ages = (self._frame - out_start[shown]).astype(np.uint32)
        return detections.select(shown).with_ids(out_ids[shown].astype(np.int32), ages)

    def _step_frames(self, dt_s: float | None) -> float:
        """Nominal frames elapsed for `dt_s` seconds; also tracks the nominal frame period."""
        if dt_s is None:
            return 1.0
        if not isinstance(dt_s, (int, float, np.floating, np.integer)) or not (
            math.isfinite(dt_s) and dt_s >= 0.0
        ):
            raise ConfigError(f"dt_s: expected a finite number of seconds >= 0, got {dt_s!r}")
        dt_s = float(dt_s)
        if self._period_s is None or self._period_s <= 0.0:
            self._period_s = dt_s
            return 1.0
        period = self._period_s
        step = dt_s / period
        # Clip the sample so a single pause or burst cannot redefine what "one frame" is.
        sample = min(max(dt_s, 0.5 * period), 2.0 * period)
        self._period_s = (1.0 - _PERIOD_EMA_WEIGHT) * period + _PERIOD_EMA_WEIGHT * sample
        return min(step, _MAX_STEP_FRAMES)

    def _confirm(self, rows: np.ndarray) -> None:
        """Give ids, in the order of `rows`, to those tracks that just reached enough hits."""
        rows = rows[(self._ids[rows] < 0) & (self._hits[rows] >= self.config.min_hits_to_confirm)]
        self._ids[rows] = np.arange(self._next_id, self._next_id + len(rows))
        self._next_id += len(rows)

    def _add(self, boxes: np.ndarray, classes: np.ndarray) -> None:
        """Append unconfirmed tracks for (K, 4) cxcywh boxes with (K,) class ids."""
        mean, cov = _kalman_initiate(boxes)
        count = len(boxes)
        self._mean = np.concatenate([self._mean, mean])
        self._cov = np.concatenate([self._cov, cov])
        self._ids = np.concatenate([self._ids, np.full(count, -1, np.int64)])
        self._classes = np.concatenate([self._classes, classes.astype(np.int32)])
        self._hits = np.concatenate([self._hits, np.ones(count, np.int64)])
        self._misses = np.concatenate([self._misses, np.zeros(count, np.int64)])
        self._start_frame = np.concatenate([self._start_frame, np.full(count, self._frame)])

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the tracks where the (T,) bool `keep` is False."""
        self._mean = self._mean[keep]
        self._cov = self._cov[keep]
        self._ids = self._ids[keep]
        self._classes = self._classes[keep]
        self._hits = self._hits[keep]
        self._misses = self._misses[keep]
        self._start_frame = self._start_frame[keep]
