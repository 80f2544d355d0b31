"""Camera info validation, depth decoding limits and stamp pairing (pure core, no ROS)."""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest

from sam3_ros.core.camera_model import (
    CameraModel,
    InvalidCameraError,
    camera_model_from_fields,
    decode_depth,
    default_depth_scale,
    ray_grid,
)
from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.stamp_pairing import StampBuffer

K = [500.0, 0.0, 319.5, 0.0, 520.0, 239.5, 0.0, 0.0, 1.0]
P = [400.0, 0.0, 300.0, 0.0, 0.0, 410.0, 200.0, 0.0, 0.0, 0.0, 1.0, 0.0]
NAN = float("nan")


def test_camera_from_fields_and_scaling():
    cam = camera_model_from_fields(640, 480, K, [0.0] * 5, "plumb_bob")
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (500.0, 520.0, 319.5, 239.5)
    assert not cam.distorted and cam.dist_coeffs == ()
    half = cam.scaled_to(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (250.0, 260.0, 159.5, 119.5)
    rect = camera_model_from_fields(640, 480, K, [0.1, 0, 0, 0, 0], "plumb_bob", P,
                                    rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy, rect.distorted) == (400, 410, 300, 200, False)
    # Separable rays: broadcast views, no per-pixel memory.
    rays = ray_grid(cam)
    assert rays.ray_x.strides[0] == 0 and rays.ray_y.strides[1] == 0
    assert rays.ray_x[7, 319] == pytest.approx(-0.5 / 500)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": [0.0, 0, 319.5, 0, 520, 239.5, 0, 0, 1]}, "focal lengths must be > 0"),
    ({"k": [-5.0, 0, 319.5, 0, 520, 239.5, 0, 0, 1]}, "focal lengths must be > 0"),
    ({"k": [NAN, 0, 319.5, 0, 520, 239.5, 0, 0, 1]}, "non-finite"),
    ({"k": K[:8]}, "K must have 9 values"),
    ({"k": [*K, 1.0]}, "K must have 9 values"),
    ({"d": [0.1, NAN, 0, 0, 0]}, "non-finite"),
    ({"d": [0.1, 0.0, 0.0]}, "plumb_bob takes"),
    ({"d": [0.1] * 5, "distortion_model": "rational_polynomial"}, "rational_polynomial takes"),
    ({"d": [0.1] * 5, "distortion_model": "fancy_lens"}, "not supported"),
    ({"width": 0}, "size must be positive"),
    ({"height": 100000}, "side limit"),
    ({"binning_x": 2}, "binning"),
    ({"roi_size": (100, 100)}, "ROI"),
    ({"rectified": True, "p": []}, "P must have 12 values"),
    ({"rectified": True, "p": [0.0] * 12}, "focal lengths must be > 0"),
    # fx, fy, cx, cy alone define the rays: a skew or a wrong last row would be dropped.
    ({"k": [520, 3.0, 319.5, 0, 520, 239.5, 0, 0, 1]}, r"skew term \(K\[1\] = 3\)"),
    ({"k": [520, 0, 319.5, 0, 520, 239.5, 0, 0, 0]}, r"K\[8\] = 0 \(its last row"),
    ({"k": [520, 0, 319.5, 0, 520, 239.5, 0.5, 0, 1]}, r"K\[6\] = 0.5"),
    ({"k": [520, 0, 319.5, 1, 520, 239.5, 0, 0, 1]}, r"K\[3\] = 1"),
    ({"rectified": True, "p": [520, 0, 319.5, 0, 0, 520, 239.5, 0, 0, 0, 2, 0]},
     r"P\[10\] = 2"),
    ({"rectified": True, "p": [520, 1, 319.5, 0, 0, 520, 239.5, 0, 0, 0, 1, 0]}, "skew term"),
])
def test_hostile_camera_info_rejected_with_reason(kwargs, match):
    args = {"width": 640, "height": 480, "k": K, "d": [0.0] * 5,
            "distortion_model": "plumb_bob"} | kwargs
    with pytest.raises(InvalidCameraError, match=match):
        camera_model_from_fields(**args)


def test_unknown_model_with_zero_coefficients_is_a_plain_pinhole():
    cam = camera_model_from_fields(640, 480, K, [0.0] * 7, "whatever")
    assert cam == CameraModel(640, 480, 500.0, 520.0, 319.5, 239.5)


def test_decode_depth_uint16_float_and_byte_order():
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    out = decode_depth(array.array("B", mm.tobytes()), 4, 3, "16UC1", 8, False)
    np.testing.assert_array_equal(out, mm)
    swapped = decode_depth(mm.astype(">u2").tobytes(), 4, 3, "16UC1", 8, True)
    np.testing.assert_array_equal(swapped, mm)
    assert swapped.dtype.isnative
    metres = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4)
    padded = np.zeros((3, 20), np.uint8)  # step 20 > 16 bytes of pixels
    padded[:, :16] = metres.view(np.uint8).reshape(3, 16)
    out = decode_depth(padded.tobytes(), 4, 3, "32FC1", 20, sys.byteorder == "big")
    np.testing.assert_array_equal(out, metres)
    assert default_depth_scale("16UC1") == 0.001 and default_depth_scale("32FC1") == 1.0


@pytest.mark.parametrize("args,match", [
    ((b"\0" * 24, 4, 3, "rgb8", 8, False), "unsupported depth encoding"),
    ((b"\0" * 24, 4, 3, "32FC1", 8, False), "step 8 does not fit"),
    ((b"\0" * 23, 4, 3, "16UC1", 8, False), "has 23 bytes"),
    ((b"\0" * 25, 4, 3, "16UC1", 8, False), "has 25 bytes"),
    ((b"\0" * 24, 4, 3, "16UC1", 7, False), "does not fit"),
    ((b"", 0, 3, "16UC1", 0, False), "size must be positive"),
    ((b"", 5000, 5000, "16UC1", 10000, False), "more than the"),  # before any allocation
    ((b"", 20000, 1, "16UC1", 40000, False), "side limit"),
    (("not bytes", 1, 1, "16UC1", 2, False), "not a byte buffer"),
])
def test_decode_depth_rejects_inconsistent_messages(args, match):
    with pytest.raises(InvalidImageError, match=match):
        decode_depth(*args)
    with pytest.raises(InvalidImageError):
        default_depth_scale("bgr8")


def test_pairing_nearest_within_dt():
    buf: StampBuffer[str] = StampBuffer(capacity=4)
    for stamp in (100, 200, 300):
        buf.put(stamp, f"d{stamp}")
    got = buf.nearest(240, max_dt_ns=50)
    assert (got.item, got.stamp_ns, got.dt_ns, got.reason) == ("d200", 200, -40, "")
    assert buf.nearest(260, 50).item == "d300"
    assert buf.nearest(250, 50).item == "d200"  # a tie goes to the older depth
    assert buf.nearest(300, 0).item == "d300"


def test_pairing_misses_say_why():
    buf: StampBuffer[str] = StampBuffer()
    miss = buf.nearest(1000, 10)
    assert miss.item is None and miss.reason == "no depth image received"
    buf.put(1_000_000, "old")
    late = buf.nearest(50_000_000, 5_000_000)  # depth lags 49 ms behind colour
    assert late.item is None and late.dt_ns == -49_000_000
    assert "49.0 ms older" in late.reason and "depth_max_dt 5.0 ms" in late.reason
    early = buf.nearest(0, 10)
    assert early.item is None and "newer" in early.reason


def test_pairing_out_of_order_duplicates_and_capacity():
    buf: StampBuffer[str] = StampBuffer(capacity=3)
    for stamp in (300, 100, 200):
        buf.put(stamp, f"d{stamp}")
    assert buf.nearest(110, 20).item == "d100"
    buf.put(200, "d200b")  # same stamp replaces
    assert len(buf) == 3 and buf.nearest(200, 0).item == "d200b"
    buf.put(400, "d400")  # full: the oldest stamp goes
    assert buf.nearest(100, 0).item is None and len(buf) == 3
    buf.put(50, "d50")  # older than everything held in a full buffer: dropped
    assert buf.nearest(50, 0).item is None
    assert buf.received == 6
    buf.clear()
    assert len(buf) == 0
    with pytest.raises(ValueError):
        StampBuffer(capacity=0)


@pytest.mark.parametrize("inference_s", [0.1, 0.25, 0.5, 1.0, 3.0])
def test_pairing_outlasts_inference_slower_than_the_buffer(inference_s):
    # 30 Hz colour and depth with equal stamps; each colour frame is taken when the model is
    # free and paired when its detections are out. 8 depth frames span 0.27 s: from 0.25 s
    # of inference on, every frame missed its depth ("nearest is 33.3 ms newer").
    period = 33_333_333
    buf: StampBuffer[int] = StampBuffer(capacity=8)
    busy_until, taken, paired, frames = 0, None, 0, 0
    for i in range(int(10 * 1e9 / period)):
        now = i * period
        buf.put(now, now)  # depth, then the colour frame of the same stamp
        buf.hold(now)
        if taken is not None and now >= busy_until:
            frames += 1
            paired += buf.nearest(taken, 20_000_000, release=True).item == taken
            taken = None
        if taken is None:
            taken, busy_until = now, now + int(inference_s * 1e9)
            buf.hold(now, taken=True)
        assert len(buf) <= 8 + 2 * (2 + 8)  # bounded: capacity + two per hold
    assert frames >= 2 and paired == frames


def test_pairing_holds_keep_the_nearest_items_until_released():
    buf: StampBuffer[str] = StampBuffer(capacity=2, received_holds=1, taken_holds=1)
    buf.put(100, "d100")
    buf.put(200, "d200")
    buf.hold(150, taken=True)  # keeps d100 and d200, its neighbours
    buf.hold(310)  # received only: keeps d300 and the next newer one
    for stamp in (300, 400, 500, 600):
        buf.put(stamp, f"d{stamp}")
    # The newest two always stay; besides them only the holds' neighbours.
    assert [buf.nearest(t, 0).item for t in (100, 200, 300, 400, 500, 600)] == [
        "d100", "d200", "d300", "d400", "d500", "d600"]
    buf.put(700, "d700")
    assert buf.nearest(500, 0).item is None and len(buf) == 6
    assert buf.nearest(150, 60, release=True).item == "d100"  # paired, then let go
    assert len(buf) == 4 and buf.nearest(100, 0).item is None
    buf.hold(650)  # replaces the received hold at 310
    buf.put(800, "d800")
    assert [buf.nearest(t, 0).item for t in (300, 400, 600, 700, 800)] == [
        None, None, "d600", "d700", "d800"]
    buf.clear()
    for stamp in (1, 2, 3):
        buf.put(stamp, "x")
    assert len(buf) == 2  # no hold left after clear
    with pytest.raises(ValueError):
        StampBuffer(received_holds=-1)


def test_pairing_restarts_when_the_stream_goes_back_in_time():
    # A bag played in a loop: a full buffer of newer stamps refused every new depth image
    # (each was "older than everything held") until the node was deactivated.
    second = 1_000_000_000
    buf: StampBuffer[str] = StampBuffer(capacity=3)
    for i in range(3):
        buf.put(900 * second + i, f"late{i}")
    buf.put(899 * second + second // 2, "within a second: an out-of-order old one, dropped")
    assert len(buf) == 3 and buf.jumps_back == 0
    buf.put(3 * second, "one straggler (a relay's late burst): no restart")
    assert len(buf) == 3 and buf.jumps_back == 0
    buf.put(900 * second + 3, "newer again")
    buf.put(4 * second, "looped")
    assert len(buf) == 3 and buf.jumps_back == 0
    buf.put(5 * second, "looped")  # the second in a row: the stream went back in time
    assert buf.jumps_back == 1 and len(buf) == 1
    assert buf.nearest(5 * second, 0).item == "looped"
    for stamp in (6, 7, 8):
        buf.put(stamp * second, f"d{stamp}")
    assert buf.nearest(8 * second, 0).item == "d8" and len(buf) == 3
    with pytest.raises(ValueError, match="jump_back_ns"):
        StampBuffer(jump_back_ns=-1)


K_640 = [200.0, 0.0, 319.5, 0.0, 200.0, 239.5, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(("k", "d", "model", "reason"), [
    # Some drivers leave the model name empty: pinhole rays would be silently wrong.
    (K_640, [-0.3, 0.1, 0.0, 0.0, 0.0], "", "5 non-zero distortion coefficients but no"),
    (K_640, [0.0] * 15, "plumb_bob", "D has 15 values, at most 14"),
    (K_640, [0.0] * 2_000_000, "", "D has 2000000 values, at most 14"),
    (K_640, [0.1, float("nan"), 0.0, 0.0, 0.0], "plumb_bob", r"non-finite values \(D\[1\] = nan\)"),
    # Finite and > 0, but every ray would be inf.
    ([1e-300, 0.0, 319.5, 0.0, 200.0, 239.5, 0.0, 0.0, 1.0], [], "", "focal lengths"),
    ([200.0, 0.0, 1e300, 0.0, 200.0, 239.5, 0.0, 0.0, 1.0], [], "", "principal point"),
])
def test_unusable_camera_infos_are_refused_with_a_short_reason(k, d, model, reason):
    with pytest.raises(InvalidCameraError, match=reason) as info:
        camera_model_from_fields(640, 480, k, d, model)
    assert len(str(info.value)) < 300


def test_fisheye_rays_project_back_onto_their_pixels():
    # OpenCV's fisheye.undistortPoints stopped ~20 px short in the corners of this lens.
    import cv2

    camera = camera_model_from_fields(640, 480, K_640, [0.3, 0.2, 0.1, 0.1], "equidistant")
    rays = ray_grid(camera)
    assert rays.valid is None
    xyz = np.stack([rays.ray_x[::37, ::41], rays.ray_y[::37, ::41],
                    np.ones((13, 16), np.float32)], -1).reshape(-1, 1, 3).astype(np.float64)
    back, _ = cv2.fisheye.projectPoints(xyz, np.zeros(3), np.zeros(3), camera.k_matrix,
                                        np.asarray(camera.dist_coeffs))
    vv, uu = np.mgrid[0:480:37, 0:640:41]
    pixels = np.stack([uu, vv], -1).reshape(-1, 2)
    assert np.abs(back.reshape(-1, 2) - pixels).max() < 1e-3


@pytest.mark.parametrize(("d", "model"), [
    ([-0.2, 0.0, 0.0, 0.0], "equidistant"),  # OpenCV answered -1e6 (its failure marker)
    ([-0.05, 0.0, 0.0, 0.0], "equidistant"),  # ... or rays of 1e5 on the wrong side
    ([-0.4, 0.0, 0.0, 0.0, 0.0], "plumb_bob"),  # ... or the pinhole ray
])
def test_pixels_a_lens_model_cannot_invert_have_no_ray(d, model):
    rays = ray_grid(camera_model_from_fields(640, 480, K_640, d, model))
    assert rays.valid is not None and rays.valid[240, 320] == 1 and rays.valid[0, 0] == 0
    assert np.isnan(rays.ray_x[rays.valid == 0]).all()
    ok = rays.valid == 1
    assert np.isfinite(rays.ray_x[ok]).all() and np.abs(rays.ray_x[ok]).max() < 1e3
