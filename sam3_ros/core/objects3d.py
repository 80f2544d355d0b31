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

Work per object is bounded by its mask crop (`render.mask_crops`), never the full frame.
An object is `valid` when at least `min_points` inliers remain.
"""

from __future__ import annotations

import functools
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

# Colour, depth and camera info must show the same field of view; their aspect ratios may
# differ by this much (rounding of odd sizes when a driver halves a resolution).
_ASPECT_TOLERANCE = 0.01

CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance", "<i4"),
                        ("class_id", "<i4")])
"""Point layout of the object cloud: x, y, z metres (float32), instance = object id, class id."""


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


@dataclass(frozen=True)
class _Grid:
    """Where an object's sampled depth pixels lie: flat index k of its sampled window is depth
    pixel (x0 + (k % width) * step, y0 + (k // width) * step)."""

    x0: int
    y0: int
    step: int
    width: int

    def pixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row = index // self.width
        return (index - row * self.width) * self.step + self.x0, row * self.step + self.y0


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
        points_m: N float32 (3, n_i) inlier points, rows x, y, z (empty for invalid objects);
            `pixels(i)` gives their depth-image pixels, `sample_step(i)` the sampling step.
    """

    valid: np.ndarray
    num_points: np.ndarray
    centroid_m: np.ndarray
    aabb_center_m: np.ndarray
    aabb_size_m: np.ndarray
    obb_center_m: np.ndarray
    obb_size_m: np.ndarray
    obb_rotation: np.ndarray
    points_m: list[np.ndarray] = field(default_factory=list)
    _indices: list[np.ndarray] = field(default_factory=list, repr=False)
    _grids: list[_Grid] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) int arrays: the depth-image pixel of each point of object i."""
        return self._grids[i].pixels(self._indices[i])

    def sample_step(self, i: int) -> int:
        """Grid step (depth pixels) object i was sampled with (1: every pixel)."""
        return self._grids[i].step

    @property
    def obb_quaternion_xyzw(self) -> np.ndarray:
        """(N, 4) float64 orientation of each oriented box (x, y, z, w)."""
        return rotation_to_quaternion_xyzw(self.obb_rotation)


def check_registration(colour_hw: tuple[int, int], depth_hw: tuple[int, int],
                       camera_hw: tuple[int, int] | None = None) -> None:
    """Raise InvalidImageError unless colour, depth (and camera info) show the same field of
    view: equal aspect ratios within 1 %; resolutions may differ."""
    (hc, wc), (hd, wd) = colour_hw, depth_hw
    sizes = [("colour", hc, wc), ("depth", hd, wd)]
    if camera_hw is not None:
        sizes.append(("camera info", *camera_hw))
    for what, h, w in sizes:
        if h <= 0 or w <= 0:
            raise InvalidImageError(f"{what} size must be positive, got {w}x{h}")
    for what, h, w in sizes[1:]:
        sx, sy = w / wc, h / hc
        if abs(sx / sy - 1.0) > _ASPECT_TOLERANCE:
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


def _bounds(values: Sequence[np.ndarray], cfg: Depth3DConfig) -> np.ndarray:
    """(k, 2, rows) lo and hi of each row of k (rows, n_i) value arrays: min/max over all
    values for box_percentile 0, else the box_percentile and 100 - box_percentile percentiles
    (nearest rank) of at most _RANK_SAMPLES evenly strided columns.

    The percentiles of all objects come from one sort: every object's samples padded with
    +inf to the longest, so the ranks below each object's own count are its own values (the
    same values a partition per object gives, at a fraction of the calls)."""
    if cfg.box_percentile == 0.0:
        return np.array([np.stack([v.min(axis=1), v.max(axis=1)]) for v in values])
    samples = [v[:, ::max(1, math.ceil(v.shape[1] / _RANK_SAMPLES))] for v in values]
    counts = [sample.shape[1] for sample in samples]
    padded = np.full((len(samples), values[0].shape[0], max(counts)), np.inf, np.float32)
    for slot, sample in zip(padded, samples, strict=True):
        slot[:, :sample.shape[1]] = sample
    padded.sort(axis=2)
    k_lo = np.array([round(cfg.box_percentile / 100.0 * (n - 1)) for n in counts])
    k_hi = np.array(counts) - 1 - k_lo
    rows = np.arange(len(samples))
    return np.stack([padded[rows, :, k_lo], padded[rows, :, k_hi]], axis=1)


def _lower_median(values: np.ndarray) -> float:
    mid = (len(values) - 1) // 2
    return float(np.partition(values, mid)[mid])


def sample_stride(area_px: int, colour_hw: tuple[int, int], depth_hw: tuple[int, int],
                  max_points: int) -> int:
    """Grid step (depth pixels) that leaves about `max_points` of a mask of `area_px` colour
    pixels: 1 for masks that small, else ceil(sqrt(depth pixels / max_points))."""
    depth_px = area_px * (depth_hw[0] * depth_hw[1]) / (colour_hw[0] * colour_hw[1])
    return max(1, math.ceil(math.sqrt(depth_px / max_points)))


def _object_points(crop: MaskCrop, colour_hw: tuple[int, int], depth: np.ndarray,
                   scale_m: float, rays: RayGrid, cfg: Depth3DConfig
                   ) -> tuple[np.ndarray, np.ndarray, _Grid] | int:
    """Inlier points (3, n) float32 (rows x, y, z), their flat indices in the object's sampled
    window and that window's grid; or the inlier count when fewer than min_points remain."""
    if crop.area_px == 0:
        return 0
    hd, wd = depth.shape
    x0, y0, mask = _depth_window(crop, colour_hw, (hd, wd))
    h, w = mask.shape
    if h == 0 or w == 0:
        return 0
    # Large objects are sampled on a grid fixed to the image (u % step == 0, v % step == 0),
    # so their points do not shimmer between frames and the work per object is bounded.
    step = sample_stride(crop.area_px, colour_hw, (hd, wd), cfg.max_object_points)
    ox, oy = (-x0) % step, (-y0) % step
    gx0, gy0 = x0 + ox, y0 + oy
    mask_u8 = mask.view(np.uint8)[oy::step, ox::step]
    gh, gw = mask_u8.shape
    if gh == 0 or gw == 0:
        return 0
    if cfg.erode_px:
        # On the sampled grid the erosion is rounded up to whole steps (exact for step 1).
        mask_u8 = _erode(np.ascontiguousarray(mask_u8), -(-cfg.erode_px // step), (
            gx0 < step, gy0 < step, gx0 + gw * step >= wd, gy0 + gh * step >= hd))
    window = np.ascontiguousarray(depth[gy0:y0 + h:step, gx0:x0 + w:step])
    # valid is 0/255 and the mask 0/1, so keep is a 0/1 array: a valid bool view.
    keep = cv2.bitwise_and(_valid_depth(window, scale_m, cfg), mask_u8).view(bool)
    index = np.flatnonzero(keep)
    if len(index) < cfg.min_points:
        return len(index)
    points = np.empty((3, len(index)), np.float32)
    z = points[2]
    if scale_m != 1.0:
        # One pass: the raw depth (exact in float32) times the scale, as a cast then *=.
        np.multiply(window.ravel()[index], np.float32(scale_m), out=z)
    else:
        z[:] = window.ravel()[index]
    if cfg.outlier_mad_k > 0.0:
        sample = z[::max(1, math.ceil(len(z) / _RANK_SAMPLES))]
        median = _lower_median(sample)
        mad = _lower_median(np.abs(sample - np.float32(median)))
        limit = cfg.outlier_mad_k * max(1.4826 * mad, MAD_FLOOR_M)
        deviation = np.subtract(z, np.float32(median))
        inliers = np.abs(deviation, out=deviation) <= np.float32(limit)
        if not inliers.all():
            points, index = points[:, inliers], index[inliers]
            z = points[2]
            if len(z) < cfg.min_points:
                return len(z)
    grid = _Grid(gx0, gy0, step, gw)
    ray_x, ray_y = rays.ray_x, rays.ray_y
    if ray_x.strides[0] == 0 and ray_y.strides[1] == 0:
        # Separable rays (no distortion): one ray per sampled column / row.
        row = index // gw
        np.multiply(ray_x[0, gx0::step][index - row * gw], z, out=points[0])
        np.multiply(ray_y[gy0::step, 0][row], z, out=points[1])
    else:
        rx = np.ascontiguousarray(ray_x[gy0:gy0 + gh * step:step, gx0:gx0 + gw * step:step])
        ry = np.ascontiguousarray(ray_y[gy0:gy0 + gh * step:step, gx0:gx0 + gw * step:step])
        np.multiply(rx.ravel()[index], z, out=points[0])
        np.multiply(ry.ravel()[index], z, out=points[1])
    return points, index, grid


def objects_3d(crops: Sequence[MaskCrop], colour_hw: tuple[int, int], depth: np.ndarray,
               scale_m: float, rays: RayGrid, cfg: Depth3DConfig) -> Objects3D:
    """3D geometry of every object of one frame.

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
    empty_points, empty_index = np.zeros((3, 0), np.float32), np.zeros(0, np.intp)
    points_m = [empty_points] * n
    indices = [empty_index] * n
    grids = [_Grid(0, 0, 1, 1)] * n
    kept: list[int] = []
    centroids: list[np.ndarray] = []
    centered_all: list[np.ndarray] = []
    scatter: list[np.ndarray] = []
    for i, crop in enumerate(crops):
        result = _object_points(crop, colour_hw, depth, scale_m, rays, cfg)
        if isinstance(result, int):
            num_points[i] = result
            continue
        points, indices[i], grids[i] = result
        points_m[i] = points
        num_points[i] = count = points.shape[1]
        c = points.sum(axis=1, dtype=np.float64) / count
        centered = points - c.astype(np.float32)[:, None]
        kept.append(i)
        centroids.append(c)
        centered_all.append(centered)
        scatter.append(np.einsum("in,jn->ij", centered, centered))
    valid = np.zeros(n, bool)
    valid[kept] = True
    centroid = np.zeros((n, 3))
    rotation = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    bounds = np.zeros((n, 2, 6))  # lo/hi of x, y, z (centred) and along the 3 box axes
    if kept:
        # One batched 3x3 eigen-decomposition for all objects (ascending eigenvalues; the
        # scatter matrix has the covariance's eigenvectors).
        _, vectors = np.linalg.eigh(np.array(scatter, np.float64))
        axes = vectors[:, :, ::-1]  # largest spread first
        # Deterministic signs: each axis points along +z (the view direction) when it has a
        # z component, else +x / +y; the third axis makes the frame right-handed.
        for k in (0, 1):
            col = axes[:, :, k]
            pivot = np.where(np.abs(col[:, 2]) > 1e-6, col[:, 2],
                             np.where(np.abs(col[:, 0]) > 1e-6, col[:, 0], col[:, 1]))
            col *= np.where(pivot < 0, -1.0, 1.0)[:, None]
        axes[:, :, 2] = np.cross(axes[:, :, 0], axes[:, :, 1])
        centroid[kept] = centroids
        rotation[kept] = axes
        # Rows 0-2 keep the camera axes, rows 3-5 project onto the box axes: both boxes from
        # one product and one partition per object.
        frames = np.concatenate([np.broadcast_to(np.eye(3), axes.shape),
                                 axes.transpose(0, 2, 1)], axis=1).astype(np.float32)
        bounds[kept] = _bounds([frame @ centered for frame, centered
                                in zip(frames, centered_all, strict=True)], cfg)
    lo, hi = bounds[:, 0], bounds[:, 1]
    obb_mid = np.einsum("nij,nj->ni", rotation, (lo[:, 3:] + hi[:, 3:]) / 2.0)
    return Objects3D(
        valid=valid, num_points=num_points, centroid_m=centroid,
        aabb_center_m=np.where(valid[:, None], centroid + (lo[:, :3] + hi[:, :3]) / 2.0, 0.0),
        aabb_size_m=hi[:, :3] - lo[:, :3],
        obb_center_m=np.where(valid[:, None], centroid + obb_mid, 0.0),
        obb_size_m=hi[:, 3:] - lo[:, 3:], obb_rotation=rotation,
        points_m=points_m, _indices=indices, _grids=grids)


def rotation_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), w >= 0."""
    r = np.asarray(rotation, np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # Each component from the diagonal (always well-conditioned), signs from the off-diagonal.
    w = np.sqrt(np.maximum(0.0, 1.0 + m00 + m11 + m22)) / 2.0
    x = np.sqrt(np.maximum(0.0, 1.0 + m00 - m11 - m22)) / 2.0
    y = np.sqrt(np.maximum(0.0, 1.0 - m00 + m11 - m22)) / 2.0
    z = np.sqrt(np.maximum(0.0, 1.0 - m00 - m11 + m22)) / 2.0
    x = np.copysign(x, r[..., 2, 1] - r[..., 1, 2])
    y = np.copysign(y, r[..., 0, 2] - r[..., 2, 0])
    z = np.copysign(z, r[..., 1, 0] - r[..., 0, 1])
    q = np.stack([x, y, z, w], axis=-1)
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
    parts = []
    for i in np.flatnonzero(objects.valid):
        pts = objects.points_m[i]
        step = objects.sample_step(i)
        spacing = step * max(1, stride // step)
        if spacing > step:
            u, v = objects.pixels(i)
            on_grid = ((u % spacing) == 0) & ((v % spacing) == 0)
            pts = pts[:, on_grid]
        parts.append((i, pts))
    out = np.empty(sum(p.shape[1] for _, p in parts), CLOUD_DTYPE)
    start = 0
    for i, pts in parts:
        end = start + pts.shape[1]
        block = out[start:end]
        block["x"], block["y"], block["z"] = pts
        block["instance"] = detections.object_ids[i]
        block["class_id"] = detections.class_ids[i]
        start = end
    return out


@dataclass(frozen=True)
class MarkerSpec:
    """One RViz marker, independent of the message type.

    Attributes:
        namespace: "boxes" (oriented box, CUBE) or "labels" (TEXT_VIEW_FACING).
        marker_id: The object id: stable across frames, so RViz replaces it in place.
        action: "add" or "delete".
        position_m / orientation_xyzw / scale_m: Pose and size (camera optical frame); for a
            text marker scale_m[2] is the text height.
        rgba: Colour, components in [0, 1].
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
            r, g, b = (c / 255.0 for c in color_for(object_id))
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
