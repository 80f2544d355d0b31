"""Objects in 3D from instance masks and a registered depth image (pure numpy + OpenCV).

Per object, from the depth pixels under its mask:

1. the mask is resampled to the depth image's grid (depth may have another resolution than
   colour; each depth pixel takes the mask value of the colour pixel holding its centre) and
   eroded by `erode_px` depth pixels, so pixels on the object's silhouette, whose depth often
   belongs to the background, do not bleed in (image borders are not silhouettes and do not
   erode);
2. depth outside [min_depth_m, max_depth_m] (zero = no return, NaN, inf) is dropped;
3. objects with more than `max_object_points` depth pixels are sampled on a fixed image grid
   (every step-th pixel in u and v) so that about that many remain;
4. outliers on Z are rejected robustly: |Z - median| <= outlier_mad_k * max(1.4826 * MAD,
   1 cm) (lower medians);
5. the inliers are back-projected through the camera's undistorted rays
   (`camera_model.RayGrid`) into the camera optical frame (metres);
6. centroid = mean of the inliers; axis-aligned box between the `box_percentile` and
   100 - `box_percentile` percentiles (0: min/max over all inliers, exact); oriented box along
   the principal axes of the inliers (PCA), between the same percentiles.

Work per object is bounded by its mask crop (`render.mask_crops`), never the full frame:
per object only the crop's windows are sliced and its mask eroded; steps 2 and 4-6 then run
once over the concatenated pixels of all objects (segment sums, one sort per statistic).
An object is `valid` when at least `min_points` inliers remain.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from sam3_ros.core.camera_model import RayGrid
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.render import MaskCrop, color_for

__all__ = [
    "CLOUD_DTYPE",
    "MAD_FLOOR_M",
    "Depth3DConfig",
    "MarkerSpec",
    "Objects3D",
    "check_registration",
    "cloud_points",
    "marker_plan",
    "objects_3d",
    "rotation_to_quaternion_xyzw",
    "sample_stride",
]

MAD_FLOOR_M = 0.01
"""Smallest robust spread used for outlier rejection: a flat, fronto-parallel surface has a MAD
of 0 (every pixel the same millimetre), which would otherwise reject its 1 mm noise."""


CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance", "<i4"),
                        ("class_id", "<i4")])
"""Point layout of the object cloud: x, y, z metres (float32), instance = object id, class id."""


MIN_SAMPLES_PER_POINT_NEEDED = 4
"""max_object_points >= this x min_points: a square sampled on ~n grid points keeps
(sqrt(n) - 2)^2 after a one-step erosion, at least n / 4 for n >= 16."""


@dataclass(frozen=True)
class Depth3DConfig:
    """How object points are selected from the depth pixels under a mask.

    Attributes:
        min_depth_m / max_depth_m: Valid depth range (metres, inclusive); 0 < min < max.
        erode_px: Mask erosion in depth pixels (square kernel of side 2 * erode_px + 1).
        min_points: Inliers needed for a valid object.
        outlier_mad_k: Z outlier threshold in robust standard deviations; 0 disables.
        box_percentile: Boxes span the [p, 100 - p] percentiles of the inliers (nearest
            rank); 0 = min/max.
        max_object_points: Objects with more depth pixels are sampled on a grid of step
            `sample_stride(...)` so about this many remain (bounds the time per object).
    """

    min_depth_m: float = 0.1
    max_depth_m: float = 10.0
    erode_px: int = 2
    min_points: int = 20
    outlier_mad_k: float = 3.0
    box_percentile: float = 1.0
    max_object_points: int = 2000

    def __post_init__(self) -> None:
        if not (0.0 < self.min_depth_m < self.max_depth_m and math.isfinite(self.max_depth_m)):
            raise ValueError(f"need 0 < min_depth ({self.min_depth_m}) < max_depth "
                             f"({self.max_depth_m}), both finite")
        if self.erode_px < 0 or self.min_points < 1 or self.max_object_points < 1:
            raise ValueError("erode_px >= 0, min_points >= 1 and max_object_points >= 1 needed")
        if not (0.0 <= self.box_percentile < 50.0) or not (self.outlier_mad_k >= 0.0):
            raise ValueError("box_percentile in [0, 50) and outlier_mad_k >= 0 needed")
        if self.max_object_points < MIN_SAMPLES_PER_POINT_NEEDED * self.min_points:
            # Sampled objects keep about max_object_points points before the erosion (rounded
            # up to whole grid steps) and the outlier rejection: fewer than this made every
            # large object invalid without saying why.
            raise ValueError(f"max_object_points ({self.max_object_points}) must be at least "
                             f"{MIN_SAMPLES_PER_POINT_NEEDED} x min_points ({self.min_points})")


@dataclass(frozen=True)
class Objects3D:
    """3D geometry of N objects (the detections of one frame, same order), camera optical
    frame, metres. Fields of invalid objects are zero.

    Attributes:
        valid: (N,) bool, at least `min_points` inliers.
        num_points: (N,) int64 inliers used.
        centroid_m: (N, 3) float64 mean of the inliers.
        aabb_center_m / aabb_size_m: (N, 3) float64 axis-aligned box centre and edge lengths.
        obb_center_m / obb_size_m: (N, 3) float64 oriented box centre and edge lengths along
            its own axes (largest spread first).
        obb_rotation: (N, 3, 3) float64 rotation whose columns are the box axes in the camera
            frame (right-handed); identity for invalid objects.
        points: (3, M) float32 inlier points of all valid objects, rows x, y, z, object after
            object: object i has columns point_offsets[i]:point_offsets[i + 1] (`points_m`
            splits them; `pixels(i)` gives their depth-image pixels).
        point_offsets: (N + 1,) int64 (invalid objects have no columns).
        sample_steps: (N,) int64 grid step (depth pixels) each object was sampled with (1:
            every pixel; 1 for objects without pixels).
    """

    valid: np.ndarray
    num_points: np.ndarray
    centroid_m: np.ndarray
    aabb_center_m: np.ndarray
    aabb_size_m: np.ndarray
    obb_center_m: np.ndarray
    obb_size_m: np.ndarray
    obb_rotation: np.ndarray
    points: np.ndarray
    point_offsets: np.ndarray
    sample_steps: np.ndarray
    # Flat index of each point in the concatenated sampled windows, and per object the
    # window's (x0, y0, step, width, start): enough to give pixels on demand.
    _window_index: np.ndarray = field(repr=False)
    _windows: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    @property
    def points_m(self) -> list[np.ndarray]:
        """N float32 (3, n_i) views of `points`, one per object (empty for invalid ones)."""
        offsets = self.point_offsets.tolist()
        return [self.points[:, a:b] for a, b in itertools.pairwise(offsets)]

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) int arrays: the depth-image pixel of each point of object i."""
        a, b = int(self.point_offsets[i]), int(self.point_offsets[i + 1])
        x0, y0, step, width, start = self._windows[i].tolist()
        index = self._window_index[a:b] - start
        row = index // width
        return (index - row * width) * step + x0, row * step + y0

    def sample_step(self, i: int) -> int:
        """Grid step (depth pixels) object i was sampled with (1: every pixel)."""
        return int(self.sample_steps[i])

    @functools.cached_property
    def obb_quaternion_xyzw(self) -> np.ndarray:
        """(N, 4) float64 orientation of each oriented box (x, y, z, w); computed once (the
        message conversions and the marker plan all need it)."""
        return rotation_to_quaternion_xyzw(self.obb_rotation)


def check_registration(colour_hw: tuple[int, int], depth_hw: tuple[int, int],
                       camera_hw: tuple[int, int] | None = None) -> None:
    """Raise InvalidImageError unless colour, depth (and camera info) show the same field of
    view: resolutions may differ by one scale, each side rounded to a whole pixel.

    A fixed 1 % tolerance of the aspect ratios accepted a RealSense D435's unregistered
    848x480 depth stream (0.6 % off) against 1280x720 colour: back-projected with the colour
    intrinsics, its x and y were tens of percent off.
    """
    (hc, wc), (hd, wd) = colour_hw, depth_hw
    sizes = [("colour", hc, wc), ("depth", hd, wd)]
    if camera_hw is not None:
        sizes.append(("camera info", *camera_hw))
    for what, h, w in sizes:
        if h <= 0 or w <= 0:
            raise InvalidImageError(f"{what} size must be positive, got {w}x{h}")
    for what, h, w in sizes[1:]:
        sx, sy = w / wc, h / hc
        # The smaller of the two is the larger scaled and rounded (by less than a pixel per
        # side): w*hc - h*wc is then bounded by the larger one's width + height.
        if abs(w * hc - h * wc) >= max(w, wc) + max(h, hc):
            raise InvalidImageError(
                f"{what} image {w}x{h} is not registered to the {wc}x{hc} colour image "
                f"(aspect ratios differ: scale {sx:.3f} in x, {sy:.3f} in y)")


@functools.cache
def _kernel(radius: int) -> np.ndarray:
    return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)


def _erode(mask_u8: np.ndarray, radius: int, image_edges: tuple[bool, bool, bool, bool]
           ) -> np.ndarray:
    """Erode a (h, w) uint8 0/1 crop; outside the crop is background except beyond the image
    edges (left, top, right, bottom flags), which continue the crop's border pixels (an image
    edge is not a silhouette). Returns a contiguous uint8 0/1 array."""
    r = radius
    left, top, right, bottom = image_edges
    if not (left or top or right or bottom):
        return cv2.erode(mask_u8, _kernel(r), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    padded = cv2.copyMakeBorder(mask_u8, r, r, r, r, cv2.BORDER_REPLICATE)
    h, w = mask_u8.shape
    if not left:
        padded[:, :r] = 0
    if not right:
        padded[:, r + w:] = 0
    if not top:
        padded[:r] = 0
    if not bottom:
        padded[r + h:] = 0
    return np.ascontiguousarray(cv2.erode(padded, _kernel(r))[r:-r, r:-r])


def _depth_window(crop: MaskCrop, colour_hw: tuple[int, int], depth_hw: tuple[int, int]
                  ) -> tuple[int, int, np.ndarray]:
    """The crop's mask on the depth grid: (x0, y0, mask) with mask[v, u] for depth pixel
    (x0 + u, y0 + v); a depth pixel takes the colour pixel that holds its centre."""
    if colour_hw == depth_hw:
        return crop.x_offset, crop.y_offset, crop.mask
    (hc, wc), (hd, wd) = colour_hw, depth_hw
    sx, sy = wd / wc, hd / hc

    def axis(offset: int, size: int, scale: float, limit: int, colour_limit: int
             ) -> tuple[int, np.ndarray]:
        # Depth pixel d has its centre at colour coordinate (d + 0.5) / scale - 0.5, i.e. in
        # colour pixel floor((d + 0.5) / scale).
        d0 = max(0, math.ceil(offset * scale - 0.5))
        d1 = min(limit, math.ceil((offset + size) * scale - 0.5))
        d = np.arange(d0, max(d0, d1))
        c = np.floor((d + 0.5) / scale).astype(np.intp)
        return d0, np.clip(c, 0, colour_limit - 1) - offset

    x0, cols = axis(crop.x_offset, crop.width, sx, wd, wc)
    y0, rows = axis(crop.y_offset, crop.height, sy, hd, hc)
    cols = np.clip(cols, 0, max(crop.width - 1, 0))
    rows = np.clip(rows, 0, max(crop.height - 1, 0))
    return x0, y0, crop.mask[np.ix_(rows, cols)]


@functools.cache
def _uint_max(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)  # np.iinfo costs microseconds per call


def _valid_depth(window: np.ndarray, scale_m: float, cfg: Depth3DConfig) -> np.ndarray:
    """uint8 mask (255 = valid) of depth pixels in [min_depth_m, max_depth_m], compared in the
    raw unit (no float conversion of the window; NaN is never in range)."""
    if window.dtype.kind == "u":
        # Integer depth: the nearest raw values inside the range (tolerance for 0.1 / 0.001).
        lo = max(1, math.ceil(cfg.min_depth_m / scale_m - 1e-6))
        hi = min(math.floor(cfg.max_depth_m / scale_m + 1e-6), _uint_max(window.dtype))
        if hi < lo:
            return np.zeros(window.shape, np.uint8)
        return cv2.inRange(window, lo, hi)
    return cv2.inRange(window, cfg.min_depth_m / scale_m, cfg.max_depth_m / scale_m)


# Percentiles (box_percentile > 0) and the median / MAD are taken from at most this many
# evenly strided samples: their rank error is far below the noise of a depth camera, and a
# partition of all points per statistic would cost more than the rest of the object.
_RANK_SAMPLES = 512


def _strided_samples(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most _RANK_SAMPLES evenly strided samples of each of K segments of a flat array
    (segment k: starts[k] + [0, counts[k]), counts >= 1): sample j of segment k is at
    starts[k] + j * ceil(counts[k] / _RANK_SAMPLES).

    Returns:
        (position, padding): (K, width) flat positions of the samples, row k holding segment
        k's in order; where `padding` is true the row has no more samples (the position
        repeats its last one).
    """
    strides = -(-counts // _RANK_SAMPLES)
    per_row = -(-counts // strides)
    column = np.arange(int(per_row.max()))
    position = starts[:, None] + np.minimum(column, (per_row - 1)[:, None]) * strides[:, None]
    return position, column >= per_row[:, None]


def _lower_median_mad(z: np.ndarray, starts: np.ndarray, counts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per segment of z: the lower median of its strided samples and the lower median of their
    absolute deviations from it (float32 each): two sorts of a (K, <= _RANK_SAMPLES) array
    (+inf padded) instead of two partitions per object, same values."""
    position, padding = _strided_samples(starts, counts)
    n = padding.shape[1] - np.count_nonzero(padding, axis=1)
    mid, rows = (n - 1) // 2, np.arange(len(n))
    samples = z[position]
    np.copyto(samples, np.float32(np.inf), where=padding)
    samples.sort(axis=1)
    median = samples[rows, mid]
    deviation = np.abs(samples - median[:, None])  # the padding stays +inf, last
    deviation.sort(axis=1)
    return median, deviation[rows, mid]


def _bounds(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, axes: np.ndarray,
            cfg: Depth3DConfig) -> np.ndarray:
    """(K, 2, 6) lo and hi of each segment of the (3, M) centred points: rows 0-2 along the
    camera axes, rows 3-5 along the segment's box axes (columns of axes[k]). min/max over all
    points for box_percentile 0, else the box_percentile and 100 - box_percentile percentiles
    (nearest rank) of at most _RANK_SAMPLES evenly strided points, all segments from one
    batched product and one sort of a +inf padded array."""
    frames = np.concatenate([np.broadcast_to(np.eye(3), axes.shape), axes.transpose(0, 2, 1)],
                            axis=1).astype(np.float32)
    if cfg.box_percentile == 0.0:
        out = np.empty((len(counts), 2, 6))
        for k, (a, n) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
            projected = frames[k] @ values[:, a:a + n]
            out[k, 0], out[k, 1] = projected.min(axis=1), projected.max(axis=1)
        return out
    position, padding = _strided_samples(starts, counts)
    # (K, 6, width): the samples along the camera axes and the box axes, one batched product.
    sampled = np.ascontiguousarray(np.take(values, position, axis=1).transpose(1, 0, 2))
    projected = np.matmul(frames, sampled)
    np.copyto(projected, np.float32(np.inf), where=padding[:, None, :])
    projected.sort(axis=2)
    n = padding.shape[1] - np.count_nonzero(padding, axis=1)
    k_lo = np.round(cfg.box_percentile / 100.0 * (n - 1)).astype(np.intp)
    rows = np.arange(len(n))
    return np.stack([projected[rows, :, k_lo], projected[rows, :, n - 1 - k_lo]], axis=1)


def sample_stride(area_px: int, colour_hw: tuple[int, int], depth_hw: tuple[int, int],
                  max_points: int) -> int:
    """Grid step (depth pixels) that leaves about `max_points` of a mask of `area_px` colour
    pixels: 1 for masks that small, else ceil(sqrt(depth pixels / max_points))."""
    depth_px = area_px * (depth_hw[0] * depth_hw[1]) / (colour_hw[0] * colour_hw[1])
    return max(1, math.ceil(math.sqrt(depth_px / max_points)))


@dataclass
class _Windows:
    """The sampled windows of a frame's objects (steps 1 and 3 of the module doc): per window
    the object's index, its grid (x0, y0, step, width, start = its offset in the flat
    concatenation of all windows), its eroded 0/1 mask and its depth and ray windows (views,
    concatenated flat by `objects_3d`)."""

    objects: list[int] = field(default_factory=list)
    grids: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    depth: list[np.ndarray] = field(default_factory=list)
    ray_x: list[np.ndarray] = field(default_factory=list)
    ray_y: list[np.ndarray] = field(default_factory=list)
    size: int = 0


def _sampled_windows(crops: Sequence[MaskCrop], colour_hw: tuple[int, int],
                     depth: np.ndarray, rays: RayGrid, cfg: Depth3DConfig) -> _Windows:
    """Per object, only views and one erosion: everything per pixel is done once for the
    concatenation of all objects."""
    hd, wd = depth.shape
    # sample_stride's arithmetic, its constant part hoisted out of the loop (same floats).
    depth_px, colour_px = hd * wd, colour_hw[0] * colour_hw[1]
    same_grid = colour_hw == (hd, wd)
    max_points = cfg.max_object_points
    out = _Windows()
    for i, crop in enumerate(crops):
        area = crop.area_px
        if area == 0:
            continue
        if same_grid:
            x0, y0, mask = crop.x_offset, crop.y_offset, crop.mask
        else:
            x0, y0, mask = _depth_window(crop, colour_hw, (hd, wd))
        h, w = mask.shape
        if h == 0 or w == 0:
            continue
        # Large objects are sampled on a grid fixed to the image (u % step == 0, v % step ==
        # 0), so their points do not shimmer between frames and the work per object is
        # bounded.
        step = max(1, math.ceil(math.sqrt(area * depth_px / colour_px / max_points)))
        ox, oy = (-x0) % step, (-y0) % step
        gx0, gy0 = x0 + ox, y0 + oy
        mask_u8 = mask.view(np.uint8)[oy::step, ox::step]
        gh, gw = mask_u8.shape
        if gh == 0 or gw == 0:
            continue
        if cfg.erode_px:
            # On the sampled grid the erosion is rounded up to whole steps (exact for step 1).
            mask_u8 = _erode(np.ascontiguousarray(mask_u8), -(-cfg.erode_px // step), (
                gx0 < step, gy0 < step, gx0 + gw * step >= wd, gy0 + gh * step >= hd))
        rows, cols = slice(gy0, gy0 + gh * step, step), slice(gx0, gx0 + gw * step, step)
        if rays.valid is not None:
            # Pixels without a ray (lens model not invertible there) are no points.
            mask_u8 = mask_u8 & rays.valid[rows, cols]
        out.objects.append(i)
        out.grids.append((gx0, gy0, step, gw, out.size))
        out.masks.append(mask_u8)
        out.depth.append(depth[rows, cols])
        # Rays without distortion are broadcast views (stride 0): so are these windows.
        out.ray_x.append(rays.ray_x[rows, cols])
        out.ray_y.append(rays.ray_y[rows, cols])
        out.size += gh * gw
    return out


def _drop_small(counts: np.ndarray, min_points: int, keep_objects: np.ndarray,
                *per_point: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Drop the segments with fewer than min_points points: (counts, objects, per-point arrays)
    of the others."""
    enough = counts >= min_points
    if enough.all():
        return counts, keep_objects, list(per_point)
    keep = np.repeat(enough, counts)
    return counts[enough], keep_objects[enough], [a[..., keep] for a in per_point]


def objects_3d(crops: Sequence[MaskCrop], colour_hw: tuple[int, int], depth: np.ndarray,
               scale_m: float, rays: RayGrid, cfg: Depth3DConfig) -> Objects3D:
    """3D geometry of every object of one frame.

    Per object only the crop's windows are sliced and eroded; the depth range, outlier
    rejection, back-projection, centroids, covariances and box percentiles run once over the
    concatenated points of all objects (segment reductions and one sort per statistic).

    Args:
        crops: Mask crops of the frame's detections (`render.mask_crops`), in colour pixels.
        colour_hw: (height, width) of the colour image the masks belong to.
        depth: (Hd, Wd) uint16 or float32 depth registered to the colour image (same field of
            view, any resolution with the same aspect ratio).
        scale_m: Metres per depth unit (> 0).
        rays: Viewing rays of the depth image's pixels (`camera_model.ray_grid` of the camera
            model scaled to (Wd, Hd)).
        cfg: Point selection.

    Returns:
        Objects3D in crop order.

    Raises:
        InvalidImageError: depth and colour (or rays) disagree in size or aspect ratio, or the
            depth dtype is not uint16 / float32.
    """
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
        raise InvalidImageError(f"depth must be a 2-D uint16 or float32 array, got "
                                f"{depth.dtype} {depth.shape}")
    if rays.ray_x.shape != depth.shape:
        raise InvalidImageError(f"rays are for {rays.ray_x.shape[::-1]}, depth is "
                                f"{depth.shape[::-1]}")
    if not (scale_m > 0.0 and math.isfinite(scale_m)):
        raise InvalidImageError(f"depth scale must be positive and finite, got {scale_m}")
    check_registration(colour_hw, depth.shape)
    n = len(crops)
    num_points = np.zeros(n, np.int64)
    steps = np.ones(n, np.int64)
    windows = np.zeros((n, 5), np.int64)
    windows[:, 2:4] = 1
    win = _sampled_windows(crops, colour_hw, depth, rays, cfg)
    objects = np.array(win.objects, np.intp)
    points = np.zeros((3, 0), np.float32)
    index = np.zeros(0, np.intp)
    counts = np.zeros(0, np.int64)
    if len(objects):
        grids = np.array(win.grids, np.int64)
        steps[objects] = grids[:, 2]
        windows[objects] = grids
        depth_all = np.concatenate(win.depth, axis=None)
        # Step 2 for all objects at once: valid depth (0/255) AND the eroded mask (0/1).
        # (OpenCV takes them as one-column images.)
        keep = cv2.bitwise_and(_valid_depth(depth_all[:, None], scale_m, cfg),
                               np.concatenate(win.masks, axis=None)[:, None])
        index = np.flatnonzero(keep.view(bool))
        counts = np.diff(np.searchsorted(index, np.append(grids[:, 4], win.size)))
        num_points[objects] = counts
        counts, objects, (index,) = _drop_small(counts, cfg.min_points, objects, index)
    if len(objects):
        z = depth_all[index]
        z = (np.multiply(z, np.float32(scale_m)) if scale_m != 1.0
             else z.astype(np.float32, copy=False))
        if cfg.outlier_mad_k > 0.0:
            # Step 4: |Z - median| <= k * max(1.4826 MAD, floor), per object.
            starts = np.cumsum(counts) - counts
            median, mad = _lower_median_mad(z, starts, counts)
            limit = cfg.outlier_mad_k * np.maximum(1.4826 * mad.astype(np.float64),
                                                   MAD_FLOOR_M)
            deviation = np.subtract(z, np.repeat(median, counts))
            inliers = np.abs(deviation, out=deviation) <= np.repeat(
                limit.astype(np.float32), counts)
            if not inliers.all():
                index, z = index[inliers], z[inliers]
                counts = np.add.reduceat(inliers, starts, dtype=np.int64)
                num_points[objects] = counts
                counts, objects, (index, z) = _drop_small(counts, cfg.min_points, objects,
                                                          index, z)
    if len(objects):
        # Step 5: each point's ray, from the windows' rays concatenated like their depth.
        points = np.empty((3, len(z)), np.float32)
        np.multiply(np.concatenate(win.ray_x, axis=None)[index], z, out=points[0])
        np.multiply(np.concatenate(win.ray_y, axis=None)[index], z, out=points[1])
        points[2] = z
    valid = np.zeros(n, bool)
    valid[objects] = True
    centroid = np.zeros((n, 3))
    rotation = np.zeros((n, 3, 3))
    rotation[:, [0, 1, 2], [0, 1, 2]] = 1.0
    bounds = np.zeros((n, 2, 6))  # lo/hi of x, y, z (centred) and along the 3 box axes
    if len(objects):
        starts = np.cumsum(counts) - counts
        c = (np.add.reduceat(points, starts, axis=1, dtype=np.float64) / counts).T
        centered = points - np.repeat(c.astype(np.float32).T, counts, axis=1)
        # Scatter matrices of all objects: per entry one product and one segment sum (float64
        # accumulation); one batched 3x3 eigen-decomposition (ascending eigenvalues; the
        # scatter matrix has the covariance's eigenvectors).
        scatter = np.empty((len(counts), 3, 3))
        for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)):
            scatter[:, i, j] = scatter[:, j, i] = np.add.reduceat(
                centered[i] * centered[j], starts, dtype=np.float64)
        _, vectors = np.linalg.eigh(scatter)
        axes = vectors[:, :, ::-1]  # largest spread first
        # Deterministic signs: each axis points along +z (the view direction) when it has a
        # z component, else +x / +y; the third axis makes the frame right-handed.
        first_two = axes[:, :, :2]  # (K, 3, 2): both columns at once
        x, y, z = first_two[:, 0], first_two[:, 1], first_two[:, 2]
        pivot = np.where(np.abs(z) > 1e-6, z, np.where(np.abs(x) > 1e-6, x, y))
        first_two *= np.where(pivot < 0, -1.0, 1.0)[:, None, :]
        (a0, a1, a2), (b0, b1, b2) = axes[:, :, 0].T, axes[:, :, 1].T
        axes[:, :, 2] = np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], 1)
        centroid[objects] = c
        rotation[objects] = axes
        bounds[objects] = _bounds(centered, starts, counts, axes, cfg)
    lo, hi = bounds[:, 0], bounds[:, 1]
    obb_mid = np.einsum("nij,nj->ni", rotation, (lo[:, 3:] + hi[:, 3:]) / 2.0)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(np.where(valid, num_points, 0))
    return Objects3D(
        valid=valid, num_points=num_points, centroid_m=centroid,
        aabb_center_m=np.where(valid[:, None], centroid + (lo[:, :3] + hi[:, :3]) / 2.0, 0.0),
        aabb_size_m=hi[:, :3] - lo[:, :3],
        obb_center_m=np.where(valid[:, None], centroid + obb_mid, 0.0),
        obb_size_m=hi[:, 3:] - lo[:, 3:], obb_rotation=rotation,
        points=points, point_offsets=offsets, sample_steps=steps,
        _window_index=index, _windows=windows)


def rotation_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), w >= 0.

    Shepperd's method: the largest of |w|, |x|, |y|, |z| comes from the diagonal, the other
    three from off-diagonal sums and differences divided by it. Taking every component from
    the diagonal with signs from the off-diagonal differences fails at 180-degree rotations
    (w = 0): the differences are +-0 there and their signs arbitrary (a flat box seen head-on
    at constant depth got its long axis mirrored).
    """
    r = np.asarray(rotation, np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    squares = np.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                        1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1)
    largest = np.argmax(squares, axis=-1)
    s = 2.0 * np.sqrt(np.maximum(np.take_along_axis(squares, largest[..., None], -1)[..., 0],
                                 1e-300))  # 4 * the largest component
    d_x, d_y, d_z = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], \
        r[..., 1, 0] - r[..., 0, 1]
    s_xy, s_xz, s_yz = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], \
        r[..., 1, 2] + r[..., 2, 1]
    quarter = s / 4.0
    # (x, y, z, w) for each choice of the largest component, times s.
    candidates = np.stack([
        np.stack([d_x, d_y, d_z, quarter * s], axis=-1),   # w largest
        np.stack([quarter * s, s_xy, s_xz, d_x], axis=-1),  # x largest
        np.stack([s_xy, quarter * s, s_yz, d_y], axis=-1),  # y largest
        np.stack([s_xz, s_yz, quarter * s, d_z], axis=-1),  # z largest
    ], axis=-2)
    q = np.take_along_axis(candidates, largest[..., None, None], -2)[..., 0, :] / s[..., None]
    q = np.where(q[..., 3:4] < 0.0, -q, q)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def cloud_points(objects: Objects3D, detections: Detections, stride: int = 1) -> np.ndarray:
    """All valid objects' inlier points as one structured array (`CLOUD_DTYPE`).

    Args:
        objects: `objects_3d` of `detections`.
        detections: The frame's detections (object and class ids).
        stride: Point spacing in depth pixels: keep the points on a grid fixed to the image
            (u and v multiples of the spacing, so the cloud does not shimmer between frames).
            Objects sampled coarser than `stride` (`max_object_points`) keep their own grid,
            thinned by stride // step.

    Returns:
        (M,) array with fields x, y, z (float32 metres), instance (object id), class_id.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    points, offsets = objects.points, objects.point_offsets
    counts = np.diff(offsets)
    # Only objects sampled finer than half the spacing are thinned (the others keep every
    # point of their own grid, which is fixed to the image like the spacing's).
    thin = np.flatnonzero((stride // objects.sample_steps >= 2) & (counts > 0)).tolist()
    if thin:
        keep = np.ones(points.shape[1], bool)
        for i in thin:
            step = int(objects.sample_steps[i])
            spacing = step * (stride // step)
            u, v = objects.pixels(i)
            on_grid = ((u % spacing) == 0) & ((v % spacing) == 0)
            keep[offsets[i]:offsets[i + 1]] = on_grid
            counts[i] = np.count_nonzero(on_grid)
        points = points[:, keep]
    out = np.empty(points.shape[1], CLOUD_DTYPE)
    out["x"], out["y"], out["z"] = points
    out["instance"] = np.repeat(detections.object_ids, counts)
    out["class_id"] = np.repeat(detections.class_ids, counts)
    return out


@dataclass(frozen=True)
class MarkerSpec:
    """One RViz marker, independent of the message type.

    Attributes:
        namespace: "boxes" (oriented box, CUBE) or "labels" (TEXT_VIEW_FACING).
        marker_id: The object id: stable across frames, so RViz replaces it in place.
        action: "add" or "delete".
        position_m / orientation_xyzw / scale_m: Pose and size (camera optical frame); for a
            text marker scale_m[2] is the text height. Python floats (as message fields).
        rgba: Colour, components in [0, 1] (Python floats).
        text: Label text (text markers).
    """

    namespace: str
    marker_id: int
    action: str
    position_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation_xyzw: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    scale_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    text: str = ""


MARKER_NAMESPACES = ("boxes", "labels")
_TEXT_HEIGHT_M = 0.04
_MIN_BOX_EDGE_M = 0.005  # a flat surface has a zero-thickness box; RViz shows nothing at 0


@functools.lru_cache(maxsize=4096)
def _marker_rgb(object_id: int) -> tuple[float, float, float]:
    r, g, b = (c / 255.0 for c in color_for(object_id))
    return r, g, b


def marker_plan(objects: Objects3D | None, detections: Detections,
                previous_ids: frozenset[int]) -> tuple[list[MarkerSpec], frozenset[int]]:
    """Markers of one frame and the ids they show, given the ids shown by the previous frame.

    Every valid object gets an oriented-box CUBE (namespace "boxes") and a label above it
    ("labels"), both with marker id = object id; objects shown before that are gone or
    invalid now get DELETE markers in both namespaces. `objects` None (no 3D this frame)
    deletes everything shown.

    Returns:
        (markers, ids shown now): pass the ids as `previous_ids` of the next frame.
    """
    markers: list[MarkerSpec] = []
    shown: set[int] = set()
    if objects is not None:
        # Everything per object as Python lists first: one conversion per array, not per
        # object (same arithmetic, so the same floats).
        rows = np.flatnonzero(objects.valid)
        quats = objects.obb_quaternion_xyzw[rows].tolist()
        centres = objects.obb_center_m[rows].tolist()
        sizes = np.maximum(objects.obb_size_m[rows], _MIN_BOX_EDGE_M).tolist()
        # Text above the object: -y is up in the optical frame.
        tops = objects.aabb_center_m[rows]
        tops[:, 1] -= objects.aabb_size_m[rows, 1] / 2.0 + _TEXT_HEIGHT_M
        tops = tops.tolist()
        depths = objects.centroid_m[rows, 2].tolist()
        ids = detections.object_ids[rows].tolist()
        classes = detections.class_ids[rows].tolist()
        for k, i in enumerate(rows.tolist()):
            object_id = int(ids[k])
            if object_id in shown:
                continue  # duplicate ids would overwrite each other; the first (best) wins
            shown.add(object_id)
            r, g, b = _marker_rgb(object_id)
            markers.append(MarkerSpec(
                "boxes", object_id, "add", tuple(centres[k]), tuple(quats[k]),
                tuple(sizes[k]), (r, g, b, 0.4)))
            label = detections.labels[i] or f"class {int(classes[k])}"
            markers.append(MarkerSpec(
                "labels", object_id, "add", tuple(tops[k]), scale_m=(0.0, 0.0,
                                                                   _TEXT_HEIGHT_M),
                rgba=(r, g, b, 1.0), text=f"{label} #{object_id} {depths[k]:.2f} m"))
    for object_id in sorted(previous_ids - shown):
        markers.extend(MarkerSpec(ns, object_id, "delete") for ns in MARKER_NAMESPACES)
    return markers, frozenset(shown)
