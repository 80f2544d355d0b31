"""Tests of `sam3_ros.ros.image_conversions` (sensor_msgs Image / CompressedImage <-> numpy)."""

from __future__ import annotations

import array
import re
import sys

import pytest

pytest.importorskip("rclpy")
sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sam3_ros.core.errors import InvalidImageError  # noqa: E402
from sam3_ros.core.image_codec import SUPPORTED_ENCODINGS  # noqa: E402
from sam3_ros.ros.image_conversions import (  # noqa: E402
    compressed_msg_to_numpy,
    image_msg_to_numpy,
    numpy_to_compressed_msg,
    numpy_to_image_msg,
)

Image = sensor_msgs_msg.Image
CompressedImage = sensor_msgs_msg.CompressedImage

pytestmark = pytest.mark.ros


def _random_image(encoding: str, height: int = 6, width: int = 8) -> np.ndarray:
    """Random array with the dtype and shape `encoding` needs."""
    rng = np.random.default_rng(1)
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        channels = 2
    elif encoding in ("mono8", "8UC1", "mono16", "16UC1") or encoding.startswith("bayer_"):
        channels = 1
    elif encoding in ("rgba8", "bgra8", "8UC4", "rgba16", "bgra16"):
        channels = 4
    else:
        channels = 3
    dtype = np.uint16 if "16" in encoding else np.uint8
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _header() -> Header:
    return Header(stamp=Time(sec=12, nanosec=345), frame_id="camera_optical")


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_image_msg_round_trip_every_encoding(encoding):
    image = _random_image(encoding)
    msg = numpy_to_image_msg(image, encoding)
    assert (msg.height, msg.width, msg.encoding) == (6, 8, encoding)
    assert msg.step == image.nbytes // 6
    assert msg.is_bigendian == int(sys.byteorder == "big")
    assert isinstance(msg.data, array.array) and len(msg.data) == image.nbytes
    decoded = image_msg_to_numpy(msg)
    assert decoded.dtype == image.dtype
    np.testing.assert_array_equal(decoded, image)


def test_image_msg_to_numpy_is_a_view_of_msg_data():
    msg = numpy_to_image_msg(_random_image("rgb8"), "rgb8")
    decoded = image_msg_to_numpy(msg)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))


def test_header_is_kept():
    msg = numpy_to_image_msg(_random_image("bgr8"), "bgr8", header=_header())
    assert msg.header.frame_id == "camera_optical"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert numpy_to_image_msg(_random_image("mono8"), "mono8").header.frame_id == ""


def test_hand_built_msg_with_step_padding():
    width, height, step = 5, 3, 20
    image = _random_image("rgb8", height, width)
    rows = np.full((height, step), 0xAB, np.uint8)
    rows[:, : width * 3] = image.reshape(height, -1)
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=step)
    msg.data = array.array("B", rows.tobytes())
    decoded = image_msg_to_numpy(msg)
    np.testing.assert_array_equal(decoded, image)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))


def test_hand_built_big_endian_mono16_msg():
    image = np.array([[1, 0x1234], [0xFF00, 65535]], np.uint16)
    msg = Image(height=2, width=2, encoding="mono16", is_bigendian=1, step=4)
    msg.data = array.array("B", image.astype(">u2").tobytes())
    np.testing.assert_array_equal(image_msg_to_numpy(msg), image)


def test_msg_built_from_bytes_decodes():
    image = _random_image("mono8")
    msg = Image(height=6, width=8, encoding="mono8", step=8, data=image.tobytes())
    np.testing.assert_array_equal(image_msg_to_numpy(msg), image)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            dict(height=480, width=640, encoding="rgb8", step=1920, data=b"\x00" * 100),
            "data has 100 bytes, expected at least step*height = 921600",
        ),
        (
            dict(height=2, width=10, encoding="rgb8", step=10, data=b"\x00" * 60),
            "step 10 < width*bytes_per_pixel 30",
        ),
        (dict(height=480, width=0, encoding="rgb8", step=0), "zero size image 0x480"),
        (dict(), "unsupported encoding ''"),
        (
            dict(height=2, width=2, encoding="nv21", step=2, data=b"\x00" * 4),
            "unsupported encoding 'nv21' (supported:",
        ),
        (
            dict(height=2, width=2, encoding="16UC1", step=5, data=b"\x00" * 10),
            "step 5 is not a multiple of the element size 2",
        ),
    ],
)
def test_bad_image_msgs_raise(fields, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        image_msg_to_numpy(Image(**fields))


@pytest.mark.parametrize(
    ("image", "encoding"),
    [
        (np.zeros((4, 4, 3), np.uint8), "mono8"),
        (np.zeros((4, 4), np.uint16), "rgb8"),
        (np.zeros((4, 4, 3), np.float32), "rgb8"),
    ],
)
def test_numpy_to_image_msg_rejects_mismatched_arrays(image, encoding):
    with pytest.raises(InvalidImageError):
        numpy_to_image_msg(image, encoding)


def _smooth_bgr(height: int = 24, width: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 7 % 256, yy * 9 % 256, (xx + yy) * 3 % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    ("format_str", "image", "ext", "expected_encoding", "exact"),
    [
        ("jpeg", _smooth_bgr(), ".jpg", "bgr8", False),
        ("png", _smooth_bgr(), ".png", "bgr8", True),
        ("bgr8; jpeg compressed bgr8", _smooth_bgr(), ".jpg", "bgr8", False),
        ("rgb8; jpeg compressed bgr8", _smooth_bgr(), ".jpg", "bgr8", False),
        ("mono8; jpeg compressed mono8", _smooth_bgr()[..., 0].copy(), ".jpg", "mono8", False),
        (
            "16UC1; png compressed",
            (np.arange(24 * 32, dtype=np.uint16) * 80).reshape(24, 32),
            ".png",
            "16UC1",
            True,
        ),
        (
            "mono16; png compressed",
            (np.arange(24 * 32, dtype=np.uint16) * 80).reshape(24, 32),
            ".png",
            "mono16",
            True,
        ),
    ],
)
def test_compressed_msg_to_numpy_with_format_strings(
    format_str, image, ext, expected_encoding, exact
):
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    msg = CompressedImage(format=format_str, header=_header())
    msg.data = array.array("B", encoded.tobytes())
    decoded, encoding = compressed_msg_to_numpy(msg)
    assert encoding == expected_encoding
    assert decoded.shape == image.shape and decoded.dtype == image.dtype
    if exact:
        np.testing.assert_array_equal(decoded, image)
    else:
        assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3.0


@pytest.mark.parametrize(
    ("encoding", "fmt", "format_str", "expected_encoding"),
    [
        ("rgb8", "jpeg", "rgb8; jpeg compressed bgr8", "bgr8"),
        ("bgr8", "png", "bgr8; png compressed bgr8", "bgr8"),
        ("mono8", "png", "mono8; png compressed", "mono8"),
        ("mono16", "png", "mono16; png compressed", "mono16"),
        ("16UC1", "png", "16UC1; png compressed", "16UC1"),
        ("rgba8", "png", "rgba8; png compressed bgra8", "bgra8"),
    ],
)
def test_compressed_msg_round_trip(encoding, fmt, format_str, expected_encoding):
    image = _random_image(encoding) if fmt == "png" else _smooth_bgr()[..., ::-1].copy()
    msg = numpy_to_compressed_msg(image, encoding, fmt, header=_header())
    assert msg.format == format_str
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.sec == 12
    assert isinstance(msg.data, array.array)
    decoded, decoded_encoding = compressed_msg_to_numpy(msg)
    assert decoded_encoding == expected_encoding
    if encoding.startswith("rgb"):
        # Colour comes back in OpenCV's BGR order, labelled bgr.
        order = [2, 1, 0, 3][: image.shape[2]]
        image = image[..., order]
    if fmt == "png":
        np.testing.assert_array_equal(decoded, image)
    else:
        assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3.0


@pytest.mark.parametrize(
    ("data", "format_str", "message"),
    [
        (b"\x00" * 12, "jpeg", "could not decode compressed image (format 'jpeg', 12 bytes)"),
        (b"", "rgb8; jpeg compressed bgr8", "(format 'jpeg', 0 bytes)"),
        (b"\x00" * 5, "h264", "unsupported compressed format 'h264'"),
    ],
)
def test_bad_compressed_msgs_raise(data, format_str, message):
    msg = CompressedImage(format=format_str)
    msg.data = array.array("B", data)
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        compressed_msg_to_numpy(msg)


def test_numpy_to_compressed_msg_rejects_16bit_jpeg():
    with pytest.raises(InvalidImageError, match="jpeg supports 8-bit images only"):
        numpy_to_compressed_msg(np.zeros((4, 4), np.uint16), "mono16", "jpeg")
