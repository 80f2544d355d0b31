"""Objects in 3D on synthetic geometry with known answers: planes and boxes at known distances,
holes, NaN / zero depth, 16UC1 vs 32FC1, masks at image edges, half-resolution depth, lens
distortion, the point cloud and the RViz marker plan. Pure core: no ROS."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from sam3_ros.core.camera_model import CameraModel, camera_model_from_fields, ray_grid
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.objects3d import (
    CLOUD_DTYPE,
    Depth3DConfig,
    check_registration,
    cloud_points,
    marker_plan,
    objects_3d,
    rotation_to_quaternion_xyzw,
    sample_stride,
)
from sam3_ros.core.render import mask_crops

H, W = 480, 640
FX, FY, CX, CY = 500.0, 520.0, 319.5, 239.5
CAMERA = CameraModel(W, H, FX, FY, CX, CY)
# Exact geometry: no erosion, no outlier rejection, boxes from min/max, every pixel.
EXACT = Depth3DConfig(erode_px=0, outlier_mad_k=0.0, box_percentile=0.0, min_points=1,
                      max_object_points=10**7)


def _detections(masks: list[np.ndarray], ids: list[int] | None = None) -> Detections:
    n = len(masks)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0] * 4)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.linspace(0.9, 0.5, n),
                      np.arange(n) % 2, m.shape[0], m.shape[1], masks=np.stack(masks),
                      object_ids=ids, labels=tuple(f"thing{i}" for i in range(n)))


def _rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _run(masks, depth, scale=1.0, cfg=EXACT, camera=CAMERA, ids=None):
    dets = _detections(masks, ids)
    cam = camera.scaled_to(depth.shape[1], depth.shape[0])
    return dets, objects_3d(mask_crops(dets), (dets.image_height_px, dets.image_width_px),
                            depth, scale, ray_grid(cam), cfg)


def _expected_plane(z_m: float, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """(3, n) points of pixels (us, vs) on the fronto-parallel plane at z_m."""
    return np.stack([(us - CX) / FX * z_m, (vs - CY) / FY * z_m, np.full(us.shape, z_m)])


def test_plane_rectangle_exact():
    depth = np.full((H, W), 2.0, np.float32)
    _, objs = _run([_rect(200, 100, 300, 180)], depth)
    vs, us = np.mgrid[100:180, 200:300]
    pts = _expected_plane(2.0, us.ravel().astype(float), vs.ravel().astype(float))
    assert objs.valid.tolist() == [True]
    assert objs.num_points[0] == 100 * 80
    np.testing.assert_allclose(objs.centroid_m[0], pts.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(objs.aabb_center_m[0], (pts.min(1) + pts.max(1)) / 2, atol=1e-6)
    np.testing.assert_allclose(objs.aabb_size_m[0], pts.max(1) - pts.min(1), atol=1e-6)
    # Wider than tall: box axes x, y, z (deterministic signs), flat along z.
    np.testing.assert_allclose(objs.obb_rotation[0], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(objs.obb_quaternion_xyzw[0], [0, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(objs.obb_size_m[0], objs.aabb_size_m[0], atol=1e-6)
    np.testing.assert_allclose(objs.obb_center_m[0], objs.aabb_center_m[0], atol=1e-6)


def test_16uc1_millimetres_equal_32fc1_metres():
    masks = [_rect(10, 20, 90, 70), _rect(300, 200, 420, 330)]
    depth_m = np.full((H, W), 1.25, np.float32)
    depth_m[200:330, 300:420] = 0.75
    depth_mm = np.round(depth_m * 1000).astype(np.uint16)
    _, a = _run(masks, depth_m, 1.0)
    _, b = _run(masks, depth_mm, 0.001)
    _, c = _run(masks, depth_mm // 10, 0.01)  # another scale: centimetres
    for other in (b, c):
        np.testing.assert_array_equal(a.num_points, other.num_points)
        np.testing.assert_allclose(a.centroid_m, other.centroid_m, atol=1e-6)
        np.testing.assert_allclose(a.aabb_size_m, other.aabb_size_m, atol=1e-6)
    np.testing.assert_allclose(a.centroid_m[:, 2], [1.25, 0.75], atol=1e-6)


@pytest.mark.parametrize("dtype,invalid", [
    (np.float32, np.nan), (np.float32, 0.0), (np.float32, np.inf), (np.float32, -1.0),
    (np.float32, 50.0), (np.uint16, 0), (np.uint16, 65535),
])
def test_holes_and_out_of_range_depth_are_skipped(dtype, invalid):
    scale = 1.0 if dtype == np.float32 else 0.001
    depth = np.full((H, W), 1.5 / scale, dtype)
    rng = np.random.default_rng(3)
    holes = rng.random((H, W)) < 0.3
    depth[holes] = invalid
    mask = _rect(100, 100, 200, 160)
    _, objs = _run([mask], depth, scale)
    expected = np.count_nonzero(mask & ~holes)
    assert objs.num_points[0] == expected
    vs, us = np.nonzero(mask & ~holes)
    np.testing.assert_allclose(objs.centroid_m[0], _expected_plane(1.5, us, vs).mean(1),
                               atol=1e-6)


def test_min_points_makes_objects_invalid():
    depth = np.full((H, W), 1.0, np.float32)
    depth[0:50, 0:50] = np.nan  # the first object has no depth at all
    cfg = Depth3DConfig(erode_px=0, min_points=30)
    _, objs = _run([_rect(0, 0, 50, 50), _rect(100, 100, 105, 105), _rect(200, 200, 210, 210),
                    np.zeros((H, W), bool)], depth, cfg=cfg)
    assert objs.valid.tolist() == [False, False, True, False]
    assert objs.num_points.tolist() == [0, 25, 100, 0]
    assert not objs.centroid_m[[0, 1, 3]].any() and not objs.obb_size_m[[0, 1, 3]].any()
    assert [p.shape for p in objs.points_m] == [(3, 0), (3, 0), (3, 100), (3, 0)]


def test_erosion_drops_the_silhouette_but_not_image_edges():
    depth = np.full((H, W), 2.0, np.float32)
    cfg = Depth3DConfig(erode_px=2, outlier_mad_k=0.0, box_percentile=0.0, min_points=1,
                        max_object_points=10**7)
    # Interior rectangle: 2 px off every side. Corner rectangle: only the inner sides erode.
    _, objs = _run([_rect(200, 100, 300, 180), _rect(0, 0, 60, 40)], depth, cfg=cfg)
    assert objs.num_points.tolist() == [96 * 76, 58 * 38]
    for i, (u0, v0, u1, v1) in enumerate([(202, 102, 297, 177), (0, 0, 57, 37)]):
        lo = _expected_plane(2.0, np.array([u0]), np.array([v0]))[:, 0]
        hi = _expected_plane(2.0, np.array([u1]), np.array([v1]))[:, 0]
        np.testing.assert_allclose(objs.aabb_center_m[i], (lo + hi) / 2, atol=1e-6)
        np.testing.assert_allclose(objs.aabb_size_m[i], hi - lo, atol=1e-6)


def test_background_bleed_rejected_by_mad():
    # A box face at 0.8 m in front of a wall at 2.5 m; the mask (as a segmenter draws it) is
    # 3 px too wide, so its rim sees the wall. Erosion off: the MAD rejection alone must drop it.
    depth = np.full((H, W), 2.5, np.float32)
    depth[150:250, 250:400] = 0.8
    mask = _rect(247, 147, 403, 253)
    cfg = Depth3DConfig(erode_px=0, outlier_mad_k=3.0, box_percentile=0.0, min_points=1,
                        max_object_points=10**7)
    _, objs = _run([mask], depth, cfg=cfg)
    assert objs.num_points[0] == 100 * 150
    vs, us = np.mgrid[150:250, 250:400]
    expected = _expected_plane(0.8, us.ravel().astype(float), vs.ravel().astype(float))
    np.testing.assert_allclose(objs.centroid_m[0], expected.mean(1), atol=1e-6)
    np.testing.assert_allclose(objs.aabb_size_m[0], np.ptp(expected, axis=1), atol=1e-6)
    # Without the rejection the wall pulls the centroid back.
    _, raw = _run([mask], depth, cfg=EXACT)
    assert raw.centroid_m[0, 2] > 0.85


def test_robust_percentile_box_ignores_flying_pixels():
    depth = np.full((H, W), 1.0, np.float32)
    mask = _rect(100, 100, 200, 200)
    depth[100, 100] = 1.02  # within the MAD floor: not rejected on Z
    cfg = Depth3DConfig(erode_px=0, outlier_mad_k=3.0, box_percentile=1.0, min_points=1,
                        max_object_points=10**7)
    _, objs = _run([mask], depth, cfg=cfg)
    # 1st-99th percentile of 512 strided samples: z extent excludes the single 1.02 pixel.
    assert objs.aabb_size_m[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert objs.num_points[0] == 100 * 100


def test_tilted_plane_oriented_box_normal():
    # Plane through (0, 0, 2) with normal n = (sin 30deg, 0, cos 30deg): its points satisfy
    # n . P = 2 cos 30deg; depth of pixel (u, v) is d / (n . ray).
    theta = np.deg2rad(30.0)
    normal = np.array([np.sin(theta), 0.0, np.cos(theta)])
    d = 2.0 * np.cos(theta)
    _, us = np.mgrid[0:H, 0:W]
    rx = (us - CX) / FX
    depth = (d / (normal[0] * rx + normal[2])).astype(np.float32)
    mask = _rect(250, 150, 400, 350)
    _, objs = _run([mask], depth)
    pts = objs.points_m[0].astype(np.float64)
    np.testing.assert_allclose(normal @ pts, d, atol=1e-5)  # the points are on the plane
    axis = objs.obb_rotation[0][:, 2]
    assert abs(axis @ normal) > 0.9999
    assert objs.obb_size_m[0, 2] < 1e-4
    np.testing.assert_allclose(np.linalg.det(objs.obb_rotation[0]), 1.0, atol=1e-9)
    # AABB from min/max of the exact points.
    zs = depth[150:350, 250:400].astype(np.float64)
    xs = rx[150:350, 250:400] * zs
    assert objs.aabb_size_m[0, 0] == pytest.approx(np.ptp(xs), abs=1e-5)
    assert objs.aabb_size_m[0, 2] == pytest.approx(np.ptp(zs), abs=1e-5)


def test_half_resolution_depth_scales_intrinsics():
    mask = _rect(200, 100, 300, 180)
    full = np.full((H, W), 2.0, np.float32)
    half = np.full((H // 2, W // 2), 2.0, np.float32)
    _, a = _run([mask], full)
    _, b = _run([mask], half)
    # Depth pixel ud covers colour pixels 2ud, 2ud + 1; its centre is colour x = 2ud + 0.5.
    assert b.num_points[0] == 50 * 40
    np.testing.assert_allclose(b.centroid_m[0], a.centroid_m[0], atol=1e-6)
    us, vs = 2 * np.arange(100, 150) + 0.5, 2 * np.arange(50, 90) + 0.5
    lo = _expected_plane(2.0, us[:1], vs[:1])[:, 0]
    hi = _expected_plane(2.0, us[-1:], vs[-1:])[:, 0]
    np.testing.assert_allclose(b.aabb_size_m[0], hi - lo, atol=1e-6)


def test_depth_must_be_registered():
    with pytest.raises(InvalidImageError, match="not registered"):
        _run([_rect(0, 0, 10, 10)], np.ones((480, 480), np.float32))
    with pytest.raises(InvalidImageError, match="not registered"):
        check_registration((480, 640), (480, 640), (720, 1280))
    with pytest.raises(InvalidImageError, match="uint16 or float32"):
        _run([_rect(0, 0, 10, 10)], np.ones((H, W), np.float64))
    check_registration((480, 640), (240, 320), (960, 1280))


@pytest.mark.parametrize(("colour_hw", "depth_hw", "registered"), [
    ((720, 1280), (720, 1280), True),
    ((720, 1280), (360, 640), True),
    ((721, 1281), (360, 640), True),  # odd sizes halved, rounded down
    ((723, 1281), (361, 640), True),
    ((1080, 1920), (360, 640), True),
    # A D435's unregistered depth stream: 0.6 % off in aspect, within the old 1 % tolerance.
    ((720, 1280), (480, 848), False),
    ((720, 1280), (480, 640), False),
    ((480, 640), (480, 639), True),
    ((480, 640), (480, 637), False),
    # Camera info at the full sensor resolution, the colour image decimated (the smaller one
    # rounded, the larger one exact).
    ((682, 816), (2048, 2448), True),
    ((341, 427), (1024, 1280), True),
    ((92, 306), (370, 1226), True),
])
def test_registration_allows_rounding_of_a_scaled_size_only(colour_hw, depth_hw, registered):
    if registered:
        check_registration(colour_hw, depth_hw)
    else:
        with pytest.raises(InvalidImageError, match="not registered"):
            check_registration(colour_hw, depth_hw)


def test_large_objects_are_sampled_on_a_fixed_grid():
    depth = np.full((H, W), 1.0, np.float32)
    mask = _rect(0, 0, 400, 300)
    cfg = Depth3DConfig(erode_px=0, outlier_mad_k=0.0, box_percentile=0.0, min_points=1,
                        max_object_points=2000)
    step = sample_stride(400 * 300, (H, W), (H, W), 2000)
    assert step == 8
    _, objs = _run([mask], depth, cfg=cfg)
    u, v = objs.pixels(0)
    assert objs.sample_step(0) == 8 and np.all(u % 8 == 0) and np.all(v % 8 == 0)
    assert objs.num_points[0] == 50 * 38 <= 2000
    # The centroid of the grid is within half a step of the mask's.
    _, exact = _run([mask], depth)
    np.testing.assert_allclose(objs.centroid_m[0], exact.centroid_m[0], atol=4 / FX)


@pytest.mark.parametrize("model,coeffs", [
    ("plumb_bob", [-0.28, 0.09, 0.001, -0.0015, -0.015]),
    ("rational_polynomial", [0.4, -0.1, 0.0005, 0.001, 0.02, 0.7, -0.05, 0.01]),
    ("equidistant", [0.05, -0.01, 0.002, -0.0005]),
])
def test_distortion_round_trip(model, coeffs):
    cam = camera_model_from_fields(W, H, [FX, 0, CX, 0, FY, CY, 0, 0, 1], coeffs, model)
    rays = ray_grid(cam)
    rng = np.random.default_rng(0)
    u = rng.integers(0, W, 300)
    v = rng.integers(0, H, 300)
    z = rng.uniform(0.5, 4.0, 300)
    pts = np.stack([rays.ray_x[v, u] * z, rays.ray_y[v, u] * z, z], axis=1).astype(np.float64)
    k = cam.k_matrix
    d = np.array(coeffs)
    if model == "equidistant":
        pix, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, d)
    else:
        pix, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), k, d)
    np.testing.assert_allclose(pix.reshape(-1, 2), np.stack([u, v], 1), atol=2e-3)
    # And the distortion is not a no-op here: the raw pinhole ray differs at the corners.
    assert abs(rays.ray_x[0, 0] - (0 - CX) / FX) > 1e-3


def test_distorted_and_separable_ray_paths_agree():
    depth = np.full((H, W), 1.7, np.float32)
    masks = [_rect(5, 5, 100, 60), _rect(500, 400, 640, 480)]
    _, pinhole = _run(masks, depth)
    # Coefficients too small to move a pixel still take the per-pixel lookup path.
    tiny = camera_model_from_fields(W, H, [FX, 0, CX, 0, FY, CY, 0, 0, 1],
                                    [1e-12, 0, 0, 0, 0], "plumb_bob")
    assert tiny.distorted and ray_grid(tiny).ray_x.strides[0] != 0
    _, lookup = _run(masks, depth, camera=tiny)
    np.testing.assert_allclose(lookup.centroid_m, pinhole.centroid_m, atol=1e-6)
    np.testing.assert_allclose(lookup.aabb_size_m, pinhole.aabb_size_m, atol=1e-6)


def test_cloud_points_fields_ids_and_stride():
    depth = np.full((H, W), 1.0, np.float32)
    dets, objs = _run([_rect(10, 10, 30, 30), _rect(100, 100, 140, 120),
                       np.zeros((H, W), bool)], depth, ids=[7, 3, 9])
    cloud = cloud_points(objs, dets, stride=1)
    assert cloud.dtype == CLOUD_DTYPE
    assert len(cloud) == 400 + 800
    assert np.count_nonzero(cloud["instance"] == 7) == 400
    assert set(cloud["class_id"][cloud["instance"] == 3].tolist()) == {1}
    np.testing.assert_allclose(cloud["z"], 1.0)
    thin = cloud_points(objs, dets, stride=4)
    # 20x20 at (10, 10): u, v in {12, 16, 20, 24, 28}; 40x20 at (100, 100): 10 x 5.
    assert len(thin) == 25 + 50
    xs = np.sort(np.unique(thin["x"][thin["instance"] == 7]))
    np.testing.assert_allclose(xs, (np.arange(12, 30, 4) - CX) / FX, atol=1e-6)
    with pytest.raises(ValueError):
        cloud_points(objs, dets, stride=0)


def test_marker_plan_stable_ids_and_deletes():
    depth = np.full((H, W), 1.0, np.float32)
    dets, objs = _run([_rect(10, 10, 30, 30), _rect(100, 100, 140, 120)], depth, ids=[7, 3])
    markers, shown = marker_plan(objs, dets, frozenset())
    assert shown == {7, 3}
    assert sorted((m.namespace, m.marker_id, m.action) for m in markers) == [
        ("boxes", 3, "add"), ("boxes", 7, "add"), ("labels", 3, "add"), ("labels", 7, "add")]
    text = next(m for m in markers if m.namespace == "labels" and m.marker_id == 7)
    assert text.text == "thing0 #7 1.00 m"
    box = next(m for m in markers if m.namespace == "boxes" and m.marker_id == 3)
    np.testing.assert_allclose(box.position_m, objs.obb_center_m[1])
    assert min(box.scale_m) > 0  # flat objects still get a visible box

    # Next frame: object 7 is gone, 3 is still there, 12 is new but invalid (no depth).
    depth2 = depth.copy()
    depth2[200:220, 200:220] = np.nan
    dets2, objs2 = _run([_rect(100, 100, 140, 120), _rect(200, 200, 220, 220)], depth2,
                        ids=[3, 12])
    markers2, shown2 = marker_plan(objs2, dets2, shown)
    assert shown2 == {3}
    assert sorted((m.namespace, m.marker_id, m.action) for m in markers2) == [
        ("boxes", 3, "add"), ("boxes", 7, "delete"), ("labels", 3, "add"),
        ("labels", 7, "delete")]
    # A frame without 3D deletes everything shown.
    markers3, shown3 = marker_plan(None, dets2, shown2)
    assert shown3 == frozenset()
    assert sorted((m.namespace, m.marker_id, m.action) for m in markers3) == [
        ("boxes", 3, "delete"), ("labels", 3, "delete")]


@pytest.mark.parametrize("kwargs", [
    {"min_depth_m": 0.0}, {"min_depth_m": 2.0, "max_depth_m": 1.0},
    {"max_depth_m": float("inf")}, {"erode_px": -1}, {"min_points": 0},
    {"box_percentile": 50.0}, {"outlier_mad_k": -1.0}, {"max_object_points": 0},
    # Too few samples for min_points after erosion: every large object was invalid, silently.
    {"max_object_points": 30, "min_points": 20}, {"max_object_points": 10},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Depth3DConfig(**kwargs)


def test_quaternion_of_known_rotations():
    angle = np.deg2rad(90.0)
    rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                   [0, 0, 1]])
    np.testing.assert_allclose(rotation_to_quaternion_xyzw(rz),
                               [0, 0, np.sin(angle / 2), np.cos(angle / 2)], atol=1e-12)
    rx180 = np.diag([1.0, -1.0, -1.0])
    q = rotation_to_quaternion_xyzw(rx180)
    assert abs(q[0]) == pytest.approx(1.0) and q[3] == pytest.approx(0.0)


def _matrix_of(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _half_turns() -> list[np.ndarray]:
    """180-degree rotations (w = 0) as the box fit writes them for a flat object seen
    head-on at constant depth: two in-plane axes, the third exactly -z (signed zeros)."""
    turns = [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]),
             np.diag([-1.0, -1.0, 1.0])]
    for degrees in range(0, 180, 3):
        c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
        for signs in itertools.product((0.0, -0.0), repeat=4):  # each zero either sign
            z02, z12, z20, z21 = signs
            turns.append(np.array([[c, s, z02], [s, -c, z12], [z20, z21, -1.0]]))
    return turns


def _random_rotations(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    rotations = []
    for _ in range(count):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rotations.append(q if np.linalg.det(q) > 0 else -q)
    return rotations


@pytest.mark.parametrize("kind", ["half_turns", "random"])
def test_quaternion_round_trips_to_the_same_rotation(kind):
    # At 180 degrees the signs came from +-0 differences: a 60-degree box was published as
    # -60 degrees (15 of 60 in-plane angles wrong).
    rotations = _half_turns() if kind == "half_turns" else _random_rotations(500)
    quaternions = rotation_to_quaternion_xyzw(np.stack(rotations))
    for rotation, q in zip(rotations, quaternions, strict=True):
        assert q[3] >= 0.0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(_matrix_of(q), rotation, atol=1e-9)


def test_flat_box_at_constant_depth_keeps_its_orientation():
    # A 200x60 px rectangle turned 60 degrees in the image, every depth pixel 800 mm
    # (16UC1 from a top-down camera, or a simulator): the fit's third axis is exactly -z.
    v, u = np.mgrid[0:H, 0:W]
    angle = np.deg2rad(60.0)
    du, dv = u - CX, v - CY
    along = du * np.cos(angle) + dv * np.sin(angle)
    across = -du * np.sin(angle) + dv * np.cos(angle)
    mask = (np.abs(along) <= 100) & (np.abs(across) <= 30)
    _, objects = _run([mask], np.full((H, W), 800, np.uint16), scale=0.001,
                      camera=CameraModel(W, H, 500.0, 500.0, CX, CY))
    assert objects.valid[0]
    np.testing.assert_allclose(_matrix_of(objects.obb_quaternion_xyzw[0]),
                               objects.obb_rotation[0], atol=1e-9)
    long_axis = objects.obb_rotation[0][:, np.argmax(objects.obb_size_m[0])]
    assert abs(abs(long_axis[:2] @ [np.cos(angle), np.sin(angle)]) - 1.0) < 1e-2


def test_demo_disparity_to_depth():
    from sam3_ros.tools.depth_demo import disparity_to_depth_m

    disparity = np.array([[10.0, np.nan, -31.086, 0.0]], np.float32)
    depth = disparity_to_depth_m(disparity, 994.978, 0.193001, 31.086)
    assert depth.dtype == np.float32
    assert depth[0, 0] == pytest.approx(994.978 * 0.193001 / 41.086, rel=1e-6)
    assert np.isnan(depth[0, 1]) and np.isnan(depth[0, 2])
    assert depth[0, 3] == pytest.approx(994.978 * 0.193001 / 31.086, rel=1e-6)


# ------------------------------------------- batched objects_3d vs a per-object reference
def _reference_object(crop, colour_hw, depth, scale, rays, cfg):
    """The module doc's steps for one object, written plainly (per-pixel numpy, no OpenCV,
    float64 statistics): None, or (num_points, points, u, v, centroid, aabb lo/hi, rotation,
    obb lo/hi) when valid; the inlier count when not."""
    hd, wd = depth.shape
    hc, wc = colour_hw
    if crop.area_px == 0:
        return 0
    step = sample_stride(crop.area_px, colour_hw, (hd, wd), cfg.max_object_points)
    # Depth pixels on the image-fixed grid whose centre lies in the crop's colour pixels.
    x_c = lambda d, s: np.floor((d + 0.5) / s).astype(int)  # noqa: E731
    us = np.arange(0, wd, step)
    vs = np.arange(0, hd, step)
    cu, cv = x_c(us, wd / wc), x_c(vs, hd / hc)
    us, cu = us[(cu >= crop.x_offset) & (cu < crop.x_offset + crop.width)], cu[
        (cu >= crop.x_offset) & (cu < crop.x_offset + crop.width)]
    vs, cv = vs[(cv >= crop.y_offset) & (cv < crop.y_offset + crop.height)], cv[
        (cv >= crop.y_offset) & (cv < crop.y_offset + crop.height)]
    if len(us) == 0 or len(vs) == 0:
        return 0
    grid = crop.mask[np.ix_(cv - crop.y_offset, cu - crop.x_offset)]
    r = -(-cfg.erode_px // step)
    if r:
        # Outside the grid: background, except beyond an image edge (edge pixels repeat).
        edges = (us[0] < step, vs[0] < step, us[-1] + step >= wd, vs[-1] + step >= hd)
        padded = np.pad(grid, r, mode="edge")
        if not edges[0]:
            padded[:, :r] = False
        if not edges[1]:
            padded[:r] = False
        if not edges[2]:
            padded[:, -r:] = False
        if not edges[3]:
            padded[-r:] = False
        windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
        grid = windows.all(axis=(2, 3))
    d = depth[np.ix_(vs, us)]
    z_m = d.astype(np.float64) * scale
    keep = grid & (z_m >= cfg.min_depth_m) & (z_m <= cfg.max_depth_m)
    vv, uu = np.nonzero(keep)
    u, v = us[uu], vs[vv]
    z = depth[v, u].astype(np.float32) * np.float32(scale)
    if len(z) < cfg.min_points:
        return len(z)
    if cfg.outlier_mad_k > 0:
        sample = np.sort(z[::-(-len(z) // 512)])
        median = sample[(len(sample) - 1) // 2]
        mad = np.sort(np.abs(sample - median))[(len(sample) - 1) // 2]
        limit = cfg.outlier_mad_k * max(1.4826 * float(mad), 0.01)
        inliers = np.abs(z - median) <= np.float32(limit)
        u, v, z = u[inliers], v[inliers], z[inliers]
        if len(z) < cfg.min_points:
            return len(z)
    points = np.stack([rays.ray_x[v, u] * z, rays.ray_y[v, u] * z, z])
    p64 = points.astype(np.float64)
    centroid = p64.mean(axis=1)
    centered = p64 - centroid[:, None]
    _, vectors = np.linalg.eigh(centered @ centered.T)
    axes = vectors[:, ::-1].copy()
    for k in (0, 1):
        col = axes[:, k]
        pivot = next((c for c in (col[2], col[0], col[1]) if abs(c) > 1e-6), col[1])
        axes[:, k] *= -1.0 if pivot < 0 else 1.0
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    frame = np.concatenate([centered, axes.T @ centered])
    if cfg.box_percentile == 0:
        lo, hi = frame.min(axis=1), frame.max(axis=1)
    else:
        sample = np.sort(frame[:, ::-(-frame.shape[1] // 512)], axis=1)
        k_lo = round(cfg.box_percentile / 100 * (sample.shape[1] - 1))
        lo, hi = sample[:, k_lo], sample[:, sample.shape[1] - 1 - k_lo]
    return len(z), points, u, v, centroid, lo, hi, axes


@pytest.mark.parametrize("case", range(8))
def test_batched_objects_match_a_per_object_reference(case):
    # Random elliptic masks (some at image edges, some tiny or empty), a wall behind objects
    # at random distances, noise, holes, flying pixels; every option switched across cases.
    rng = np.random.default_rng(case)
    half = case in (3, 6)
    distorted = case in (2, 6)
    cfg = Depth3DConfig(
        erode_px=[2, 0, 1, 3][case % 4], outlier_mad_k=[3.0, 0.0][case % 2 if case < 6 else 0],
        box_percentile=[1.0, 0.0, 5.0][case % 3], min_points=[20, 1, 50][case % 3],
        max_object_points=[2000, 10**7, 300][case % 3])
    masks = []
    for k in range(12):
        mask = np.zeros((H, W), bool)
        if k == 11:
            masks.append(mask)  # empty mask
            continue
        rx, ry = rng.integers(1, 90, 2) if k else (3, 2)
        cx, cy = rng.integers(-20, W + 20), rng.integers(-20, H + 20)
        yy, xx = np.ogrid[:H, :W]
        mask[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0] = True
        masks.append(mask)
    depth_m = np.full((H, W), 4.0)
    for mask in masks:
        depth_m[mask] = rng.uniform(0.3, 3.0)
    depth_m += rng.normal(0.0, 0.004, depth_m.shape)
    depth_m[rng.random(depth_m.shape) < 0.05] = 0.0
    depth_m[rng.random(depth_m.shape) < 0.01] = 9.0  # flying pixels
    if half:
        depth_m = depth_m[::2, ::2]
    uint16 = case % 2 == 0
    depth = (np.round(depth_m * 1000).astype(np.uint16) if uint16
             else depth_m.astype(np.float32))
    scale = 0.001 if uint16 else 1.0
    camera = (camera_model_from_fields(W, H, [FX, 0, CX, 0, FY, CY, 0, 0, 1],
                                       [-0.2, 0.05, 0.001, -0.001, 0.0], "plumb_bob")
              if distorted else CAMERA)
    rays = ray_grid(camera.scaled_to(depth.shape[1], depth.shape[0]))
    dets = _detections(masks)
    crops = mask_crops(dets)
    objs = objects_3d(crops, (H, W), depth, scale, rays, cfg)
    assert objs.points.shape[1] == objs.point_offsets[-1]
    for i, crop in enumerate(crops):
        ref = _reference_object(crop, (H, W), depth, scale, rays, cfg)
        if isinstance(ref, int):
            assert not objs.valid[i] and objs.num_points[i] == ref
            assert objs.points_m[i].shape == (3, 0)
            continue
        n, points, u, v, centroid, lo, hi, axes = ref
        assert objs.valid[i] and objs.num_points[i] == n
        np.testing.assert_array_equal(objs.points_m[i], points)
        pu, pv = objs.pixels(i)
        np.testing.assert_array_equal(pu, u)
        np.testing.assert_array_equal(pv, v)
        np.testing.assert_allclose(objs.centroid_m[i], centroid, atol=1e-9)
        np.testing.assert_allclose(objs.aabb_center_m[i], centroid + (lo[:3] + hi[:3]) / 2,
                                   atol=1e-6)
        np.testing.assert_allclose(objs.aabb_size_m[i], hi[:3] - lo[:3], atol=1e-6)
        # The box axes are only defined up to the spread's degeneracy: compare the boxes.
        np.testing.assert_allclose(objs.obb_rotation[i], axes, atol=1e-4)
        np.testing.assert_allclose(objs.obb_size_m[i], hi[3:] - lo[3:], atol=1e-5)
        np.testing.assert_allclose(objs.obb_center_m[i], centroid + axes @ (lo[3:] + hi[3:]) / 2,
                                   atol=1e-5)
    # The cloud is the valid objects' points in order, with their ids.
    cloud = cloud_points(objs, dets, stride=1)
    np.testing.assert_array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]]), objs.points)
    np.testing.assert_array_equal(
        cloud["instance"], np.repeat(dets.object_ids, np.diff(objs.point_offsets)))


@pytest.mark.parametrize(("d", "model"), [([-0.2, 0.0, 0.0, 0.0], "equidistant"),
                                          ([-0.4, 0.0, 0.0, 0.0, 0.0], "plumb_bob")])
def test_pixels_without_a_ray_are_no_points_and_spare_the_other_objects(d, model):
    # Corner rays came out as OpenCV's -1e6 failure marker (a "valid" object at -1e6 m) or
    # NaN (one NaN point failed the eigen-decomposition of every object of the frame).
    camera = camera_model_from_fields(W, H, [200.0, 0.0, 319.5, 0.0, 200.0, 239.5, 0, 0, 1],
                                      d, model)
    rays = ray_grid(camera)
    assert rays.valid is not None and not rays.valid[:40, :40].any()
    assert 0 < rays.valid[80:230, 100:300].mean() < 1
    masks = [_rect(0, 0, 40, 40), _rect(300, 220, 340, 260), _rect(100, 80, 300, 230)]
    _, objects = _run(masks, np.full((H, W), 1.0, np.float32), cfg=Depth3DConfig(),
                      camera=camera)
    assert objects.valid.tolist() == [False, True, True]
    assert np.isfinite(objects.centroid_m).all()
    np.testing.assert_allclose(objects.centroid_m[1], [0.0, 0.0, 1.0], atol=0.01)
    # The partly covered object keeps its points with rays: all on the wall, none at -1e6.
    assert objects.num_points[2] > 0 and abs(objects.centroid_m[2][2] - 1.0) < 1e-6
    assert np.abs(objects.centroid_m).max() < 10
