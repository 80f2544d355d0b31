"""Unit tests of `sam3_ros.core.image_codec` (pure: numpy + OpenCV, no rclpy)."""

from __future__ import annotations

import array
import re
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.image_codec import (
    SUPPORTED_ENCODINGS,
    compressed_format_string,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
    parse_compressed_format,
    to_rgb8,
)

_CHANNELS = {"mono8": 1, "8UC1": 1, "mono16": 1, "16UC1": 1, "rgba8": 4, "bgra8": 4, "8UC4": 4}
_YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")


def _random_image(encoding: str, height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    """Random array with the dtype and shape `encoding` needs."""
    rng = np.random.default_rng(seed)
    if encoding in _YUV:
        channels = 2
    elif encoding.endswith(("rgba16", "bgra16")):
        channels = 4
    elif encoding.endswith(("rgb16", "bgr16")):
        channels = 3
    else:
        channels = 1 if encoding.startswith("bayer_") else _CHANNELS.get(encoding, 3)
    sixteen = "16" in encoding
    dtype = np.uint16 if sixteen else np.uint8
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


# ----------------------------------------------------------------------------- decode_raw


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_round_trip_every_encoding(encoding):
    image = _random_image(encoding)
    data, step = encode_raw(image, encoding)
    assert step == image.shape[1] * image.itemsize * (1 if image.ndim == 2 else image.shape[2])
    decoded = decode_raw(bytes(data), image.shape[1], image.shape[0], encoding, step, 0)
    assert decoded.dtype == image.dtype and decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "yuyv", "bgra8"])
def test_encode_raw_is_zero_copy_for_contiguous_arrays(encoding):
    image = _random_image(encoding)
    data, _ = encode_raw(image, encoding)
    assert np.shares_memory(np.frombuffer(data, np.uint8), image)
    decoded = decode_raw(data, image.shape[1], image.shape[0], encoding, len(data) // 6, 0)
    assert np.shares_memory(decoded, image)


def test_encode_raw_copies_strided_arrays_to_c_order():
    image = _random_image("rgb8", width=16)[:, ::2]
    data, step = encode_raw(image, "rgb8")
    assert step == 8 * 3 and len(data) == 6 * 8 * 3
    np.testing.assert_array_equal(decode_raw(data, 8, 6, "rgb8", step, 0), image)


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        memoryview,
        lambda b: array.array("B", b),
        lambda b: np.frombuffer(b, np.uint8),
    ],
    ids=["bytes", "bytearray", "memoryview", "array.array", "ndarray"],
)
def test_decode_raw_accepts_every_buffer_type(wrap):
    image = _random_image("bgr8")
    data, step = encode_raw(image, "bgr8")
    np.testing.assert_array_equal(decode_raw(wrap(bytes(data)), 8, 6, "bgr8", step, False), image)


def test_padded_step_gives_correct_pixels_as_a_view():
    width, height, step = 5, 3, 20  # 15 bytes of pixels + 5 bytes of padding per row
    image = _random_image("rgb8", height, width)
    rows = np.full((height, step), 0xEE, np.uint8)  # padding filled with a marker value
    rows[:, : width * 3] = image.reshape(height, -1)
    buffer = rows.reshape(-1)
    decoded = decode_raw(buffer, width, height, "rgb8", step, 0)
    np.testing.assert_array_equal(decoded, image)
    assert np.shares_memory(decoded, buffer)
    assert decoded.strides == (step, 3, 1)


def test_padded_step_mono16_and_extra_trailing_bytes():
    width, height, step = 3, 2, 10
    image = np.array([[1, 2, 3], [400, 500, 65535]], np.uint16)
    rows = np.zeros((height, step // 2), np.uint16)
    rows[:, :width] = image
    data = rows.tobytes() + b"\x00" * 7  # more data than step*height is tolerated
    decoded = decode_raw(data, width, height, "mono16", step, sys.byteorder == "big")
    np.testing.assert_array_equal(decoded, image)


def test_big_endian_mono16_is_byte_swapped():
    image = np.array([[0x0102, 0xFF00, 7], [65535, 256, 1]], np.uint16)
    data = image.astype(">u2").tobytes()
    decoded = decode_raw(data, 3, 2, "mono16", 6, 1)
    np.testing.assert_array_equal(decoded, image)
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative


def test_little_endian_16bit_on_little_endian_host_is_not_copied():
    if sys.byteorder != "little":
        pytest.skip("host is big-endian")
    buffer = np.arange(12, dtype="<u2").view(np.uint8)
    decoded = decode_raw(buffer, 2, 2, "bgr16", 12, 0)
    assert np.shares_memory(decoded, buffer)
    np.testing.assert_array_equal(decoded.reshape(-1), np.arange(12))


def test_eight_bit_ignores_is_bigendian():
    image = _random_image("mono8")
    np.testing.assert_array_equal(decode_raw(image.tobytes(), 8, 6, "mono8", 8, 1), image)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(data=b"\x00" * 100, width=640, height=480, encoding="mono8", step=640),
            "data has 100 bytes, expected at least step*height = 307200",
        ),
        (
            dict(data=b"\x00" * 100, width=640, height=1, encoding="rgb8", step=1920),
            "data has 100 bytes, expected at least step*height = 1920",
        ),
        (
            dict(data=b"\x00" * 300, width=10, height=10, encoding="rgb8", step=10),
            "step 10 < width*bytes_per_pixel 30",
        ),
        (
            dict(data=b"", width=0, height=480, encoding="rgb8", step=0),
            "zero size image 0x480",
        ),
        (
            dict(data=b"", width=640, height=0, encoding="mono8", step=640),
            "zero size image 640x0",
        ),
        (
            dict(data=b"\x00" * 64, width=8, height=8, encoding="nv21", step=8),
            "unsupported encoding 'nv21' (supported: rgb8, bgr8",
        ),
        (
            dict(data=b"\x00" * 64, width=8, height=8, encoding="RGB8", step=24),
            "unsupported encoding 'RGB8'",
        ),
        (
            dict(data=b"\x00" * 100, width=4, height=4, encoding="mono16", step=9),
            "step 9 is not a multiple of the element size 2 of mono16",
        ),
        (
            dict(data=b"\x00" * 100, width=5, height=2, encoding="yuv422", step=10),
            "yuv422 needs an even width, got 5",
        ),
        (
            dict(data=np.zeros(64, np.float32), width=4, height=4, encoding="mono8", step=4),
            "data must be uint8, got dtype float32",
        ),
        (
            dict(data=[0] * 16, width=4, height=4, encoding="mono8", step=4),
            "data must be bytes-like",
        ),
        (
            dict(data=array.array("H", [0] * 16), width=4, height=4, encoding="mono8", step=4),
            "data must have 1-byte elements, got itemsize 2",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decode_raw_errors(kwargs, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        decode_raw(is_bigendian=0, **kwargs)


# ----------------------------------------------------------------------------- to_rgb8


def test_to_rgb8_returns_rgb8_unchanged():
    image = _random_image("rgb8")
    assert to_rgb8(image, "rgb8") is image


@pytest.mark.parametrize(
    ("encoding", "to_rgb"),
    [
        ("bgr8", lambda a: a[..., ::-1]),
        ("rgba8", lambda a: a[..., :3]),
        ("bgra8", lambda a: a[..., 2::-1]),
        ("mono8", lambda a: np.repeat(a[..., None], 3, axis=2)),
        ("8UC1", lambda a: np.repeat(a[..., None], 3, axis=2)),
    ],
)
def test_to_rgb8_eight_bit(encoding, to_rgb):
    image = _random_image(encoding)
    out = to_rgb8(image, encoding)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, to_rgb(image))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_to_rgb8_sixteen_bit_scales_by_dtype_max(encoding):
    values = np.array([[0, 257, 128 * 257], [65535, 128, 129]], np.uint16)
    out = to_rgb8(values, encoding)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))
    assert out[0, 1, 0] == 1 and out[1, 0, 0] == 255


def test_to_rgb8_bgr16():
    image = _random_image("bgr16")
    expected = np.round(image[..., ::-1].astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb8(image, "bgr16"), expected)


def test_to_rgb8_handles_padded_views():
    image = _random_image("bgr8", width=5, height=3)
    rows = np.zeros((3, 20), np.uint8)
    rows[:, :15] = image.reshape(3, -1)
    view = decode_raw(rows.tobytes(), 5, 3, "bgr8", 20, 0)
    np.testing.assert_array_equal(to_rgb8(view, "bgr8"), image[..., ::-1])


def _synthetic_yuv(height: int = 4, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(UYVY, YUYV) packed (H, W, 2) frames of the same random picture."""
    rng = np.random.default_rng(3)
    y = rng.integers(16, 236, (height, width), dtype=np.uint8)
    u = rng.integers(16, 241, (height, width // 2), dtype=np.uint8)
    v = rng.integers(16, 241, (height, width // 2), dtype=np.uint8)
    chroma = np.empty((height, width), np.uint8)
    chroma[:, 0::2], chroma[:, 1::2] = u, v
    uyvy = np.stack([chroma, y], axis=2)
    yuyv = np.stack([y, chroma], axis=2)
    return uyvy, yuyv


@pytest.mark.parametrize("encoding", _YUV)
def test_to_rgb8_yuv_matches_cv2_reference(encoding):
    uyvy, yuyv = _synthetic_yuv()
    is_uyvy = encoding in ("yuv422", "uyvy")
    packed = uyvy if is_uyvy else yuyv
    code = cv2.COLOR_YUV2RGB_UYVY if is_uyvy else cv2.COLOR_YUV2RGB_YUYV
    data, step = encode_raw(packed, encoding)
    decoded = decode_raw(data, 8, 4, encoding, step, 0)
    assert decoded.shape == (4, 8, 2)
    out = to_rgb8(decoded, encoding)
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, code))
    # Both byte orders describe the same picture: the conversions must agree.
    np.testing.assert_array_equal(out, cv2.cvtColor(uyvy, cv2.COLOR_YUV2RGB_UYVY))


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an (H, W, 3) picture through a Bayer filter named like ROS (rggb: R at (0, 0))."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for i, colour in enumerate(pattern):
        row, col = divmod(i, 2)
        out[row::2, col::2] = rgb[row::2, col::2, channel[colour]]
    return out


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_to_rgb8_demosaics_every_bayer_pattern(pattern, bits):
    # A flat colour through each filter layout comes back as that colour (away from the
    # border), in RGB order: a wrong pattern mapping swaps red and blue or mixes in green.
    colour = np.array([200, 90, 30], np.uint16 if bits == 16 else np.uint8)
    flat = np.broadcast_to(colour * (257 if bits == 16 else 1), (6, 8, 3)).astype(colour.dtype)
    encoding = f"bayer_{pattern}{bits}"
    data, step = encode_raw(_mosaic(flat, pattern), encoding)
    decoded = decode_raw(data, 8, 6, encoding, step, 0)
    out = to_rgb8(decoded, encoding)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2:4, 2:6], np.broadcast_to([200, 90, 30], (2, 4, 3)))


def test_to_rgb8_yuv_grey_and_padded():
    # U = V = 128 is colourless: R == G == B, growing with Y.
    y = np.tile(np.arange(16, 236, 55, dtype=np.uint8), (2, 1))  # (2, 4)
    packed = np.stack([np.full_like(y, 128), y], axis=2)
    rows = np.zeros((2, 12), np.uint8)
    rows[:, :8] = packed.reshape(2, -1)
    out = to_rgb8(decode_raw(rows.tobytes(), 4, 2, "uyvy", 12, 0), "uyvy")
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (np.diff(out[0, :, 0].astype(int)) > 0).all()


@pytest.mark.parametrize(
    ("image", "encoding", "message"),
    [
        (np.zeros((2, 2, 3), np.uint8), "8UC3", "'8UC3' does not define a channel order"),
        (np.zeros((2, 2, 3), np.uint8), "nv21", "unsupported encoding 'nv21'"),
        (np.zeros((2, 2), np.uint8), "rgb8", "rgb8 needs shape (H, W, 3), got (2, 2)"),
        (np.zeros((2, 2, 3), np.float32), "rgb8", "rgb8 needs dtype uint8, got float32"),
        (np.zeros((2, 2), np.uint8), "mono16", "mono16 needs dtype uint16, got uint8"),
        (np.zeros((2, 3, 2), np.uint8), "yuyv", "yuyv needs an even width, got 3"),
        (np.zeros((0, 3, 3), np.uint8), "rgb8", "zero size image 3x0"),
    ],
)
def test_to_rgb8_errors(image, encoding, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        to_rgb8(image, encoding)


@pytest.mark.parametrize(
    ("image", "encoding", "message"),
    [
        (np.zeros((2, 2, 3), np.uint8), "mono8", "mono8 needs shape (H, W), got (2, 2, 3)"),
        (np.zeros((2, 2, 4), np.uint8), "rgb8", "rgb8 needs shape (H, W, 3), got (2, 2, 4)"),
        (np.zeros((2, 2, 3), np.uint16), "bgr8", "bgr8 needs dtype uint8, got uint16"),
        (np.zeros((2, 2), np.int16), "mono16", "mono16 needs dtype uint16, got int16"),
        (np.zeros((2, 2), np.uint8), "jpeg", "unsupported encoding 'jpeg'"),
        ([[0, 1]], "mono8", "expected a numpy array, got list"),
    ],
)
def test_encode_raw_errors(image, encoding, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        encode_raw(image, encoding)


def test_encode_raw_writes_non_native_16bit_in_host_order():
    image = np.array([[1, 2], [300, 65535]], np.uint16)
    data, step = encode_raw(image.astype(image.dtype.newbyteorder("S")), "mono16")
    assert step == 4
    np.testing.assert_array_equal(np.frombuffer(data, np.uint16).reshape(2, 2), image)


# ----------------------------------------------------------------------------- compressed


@pytest.mark.parametrize(
    ("encoding", "expected_encoding", "to_expected"),
    [
        ("bgr8", "bgr8", lambda a: a),
        ("rgb8", "bgr8", lambda a: a[..., ::-1]),
        ("bgra8", "bgra8", lambda a: a),
        ("rgba8", "bgra8", lambda a: a[..., [2, 1, 0, 3]]),
        ("mono8", "mono8", lambda a: a),
        ("mono16", "mono16", lambda a: a),
        ("16UC1", "16UC1", lambda a: a),
        ("rgb16", "bgr16", lambda a: a[..., ::-1]),
    ],
)
def test_png_round_trip_is_exact(encoding, expected_encoding, to_expected):
    image = _random_image(encoding, 12, 10)
    data = encode_compressed(image, encoding, "png")
    assert data.startswith(b"\x89PNG")
    decoded, decoded_encoding = decode_compressed(data, compressed_format_string(encoding, "png"))
    assert decoded_encoding == expected_encoding
    np.testing.assert_array_equal(decoded, to_expected(image))


def _smooth(height: int = 32, width: int = 48, channels: int = 3) -> np.ndarray:
    """A smooth colour gradient (jpeg reproduces it closely, unlike noise)."""
    yy, xx = np.mgrid[0:height, 0:width]
    planes = [(xx * 5) % 256, (yy * 7) % 256, (xx + yy) * 2 % 256, np.full_like(xx, 255)]
    planes = planes[:channels]
    return np.stack(planes, axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    ("encoding", "expected_encoding", "to_expected"),
    [
        ("bgr8", "bgr8", lambda a: a),
        ("rgb8", "bgr8", lambda a: a[..., ::-1]),
        ("rgba8", "bgr8", lambda a: a[..., 2::-1]),
        ("mono8", "mono8", lambda a: a),
    ],
)
def test_jpeg_round_trip_is_close(encoding, expected_encoding, to_expected):
    image = _smooth(channels=4 if encoding == "rgba8" else 3)
    if encoding == "mono8":
        image = image[..., 0].copy()
    data = encode_compressed(image, encoding, "jpeg", jpeg_quality=95)
    assert data.startswith(b"\xff\xd8\xff")
    decoded, decoded_encoding = decode_compressed(data, "jpeg")
    assert decoded_encoding == expected_encoding
    expected = to_expected(image)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 3.0


def test_jpeg_quality_changes_size():
    image = _smooth()
    small = encode_compressed(image, "bgr8", "jpg", jpeg_quality=10)
    large = encode_compressed(image, "bgr8", "jpeg", jpeg_quality=100)
    assert len(small) < len(large)


@pytest.mark.parametrize(
    ("data", "format_str", "message"),
    [
        (b"not a jpeg!!", "jpeg", "could not decode compressed image (format 'jpeg', 12 bytes)"),
        (b"", "png", "could not decode compressed image (format 'png', 0 bytes)"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "png", "(format 'png', 28 bytes)"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 4, "bgr8; jpeg compressed bgr8", "format 'jpeg', 8 bytes"),
        (b"abc", "theora", "unsupported compressed format 'theora'"),
        (b"abc", "", "could not decode compressed image (format '', 3 bytes)"),
        (b"abc", "32FC1; compressedDepth", "compressedDepth with encoding '32FC1'"),
        (np.zeros(4, np.float64), "png", "data must be uint8, got dtype float64"),
    ],
)
def test_decode_compressed_errors(data, format_str, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        decode_compressed(data, format_str)


@pytest.mark.parametrize(
    ("image", "encoding", "fmt", "message"),
    [
        (np.zeros((4, 4), np.uint16), "mono16", "jpeg", "jpeg supports 8-bit images only"),
        (np.zeros((4, 4, 3), np.uint8), "rgb8", "webp", "unsupported compressed format 'webp'"),
        (np.zeros((4, 4, 2), np.uint8), "yuyv", "png", "cannot compress encoding 'yuyv'"),
        (np.zeros((4, 4, 3), np.uint8), "nv21", "png", "unsupported encoding"),
        (np.zeros((4, 4), np.uint8), "bayer_rggb8", "png", "cannot compress encoding"),
        (np.zeros((4, 4), np.uint8), "rgb8", "png", "rgb8 needs shape (H, W, 3), got (4, 4)"),
    ],
)
def test_encode_compressed_errors(image, encoding, fmt, message):
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        encode_compressed(image, encoding, fmt)


def test_encode_compressed_rejects_bad_quality():
    with pytest.raises(
        InvalidImageError, match=re.escape("jpeg_quality must be in 0..100, got 101")
    ):
        encode_compressed(np.zeros((4, 4), np.uint8), "mono8", "jpeg", jpeg_quality=101)


@pytest.mark.parametrize(
    ("format_str", "expected"),
    [
        ("jpeg", ("jpeg", None, False)),
        ("JPG", ("jpeg", None, False)),
        ("png", ("png", None, False)),
        ("bgr8; jpeg compressed bgr8", ("jpeg", "bgr8", False)),
        ("rgb8; jpeg compressed bgr8", ("jpeg", "rgb8", False)),
        ("16UC1; png compressed", ("png", "16UC1", False)),
        ("mono8; png compressed ", ("png", "mono8", False)),
        ("16UC1; compressedDepth png", ("png", "16UC1", True)),
        ("16UC1; compressedDepth", (None, "16UC1", True)),
        ("bgr8", (None, None, False)),
        ("", (None, None, False)),
    ],
)
def test_parse_compressed_format(format_str, expected):
    assert parse_compressed_format(format_str) == expected


@pytest.mark.parametrize(
    ("encoding", "fmt", "expected"),
    [
        ("rgb8", "jpeg", "rgb8; jpeg compressed bgr8"),
        ("bgra8", "jpeg", "bgra8; jpeg compressed bgr8"),
        ("mono8", "jpeg", "mono8; jpeg compressed mono8"),
        ("rgba8", "png", "rgba8; png compressed bgra8"),
        ("rgb16", "png", "rgb16; png compressed bgr16"),
        ("16UC1", "png", "16UC1; png compressed"),
    ],
)
def test_compressed_format_string(encoding, fmt, expected):
    assert compressed_format_string(encoding, fmt) == expected


@pytest.mark.parametrize("format_str", ["", "bgr8", "rgb8; compressed"])
def test_decode_compressed_detects_codec_from_signature(format_str):
    image = _random_image("bgr8")
    decoded, encoding = decode_compressed(encode_compressed(image, "bgr8", "png"), format_str)
    assert encoding == "bgr8"
    np.testing.assert_array_equal(decoded, image)


def test_decode_compressed_depth_skips_config_header():
    depth = np.array([[0, 1000], [2500, 65535]], np.uint16)
    header = struct.pack("<iff", 1, 0.0, 0.0)  # compressed_depth_image_transport ConfigHeader
    payload = header + encode_compressed(depth, "16UC1", "png")
    decoded, encoding = decode_compressed(array.array("B", payload), "16UC1; compressedDepth png")
    assert encoding == "16UC1"
    np.testing.assert_array_equal(decoded, depth)


# ------------------------------------------------------------------ image folders (calibration)


def test_iter_image_folder_yields_the_first_files_by_name_as_rgb(tmp_path):
    from sam3_ros.core.image_codec import iter_image_folder

    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "b.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "a.PNG"), np.full((5, 7), 200, np.uint8))  # mono
    cv2.imwrite(str(tmp_path / "c.jpg"), rgb[:, :, ::-1])
    (tmp_path / "0_readme.txt").write_text("ignored")
    (tmp_path / "d.png").mkdir()  # a folder with an image's name: ignored
    items = list(iter_image_folder(str(tmp_path), 10, max_pixels=1000, max_file_bytes=1 << 20))
    assert [Path(path).name for path, _ in items] == ["a.PNG", "b.png", "c.jpg"]
    frames = [frame for _, frame in items]
    assert [f.shape for f in frames] == [(5, 7, 3), (12, 16, 3), (12, 16, 3)]
    assert all(f.dtype == np.uint8 for f in frames)
    assert (frames[0] == 200).all()
    np.testing.assert_array_equal(frames[1], rgb)  # png: lossless, in RGB order
    assert len(list(iter_image_folder(str(tmp_path), 2, 1000, 1 << 20))) == 2


def test_iter_image_folder_decodes_one_file_at_a_time(tmp_path):
    """A bad file is found when its turn comes, after the frames before it were handed out
    (calibration preprocesses and drops each frame before the next is read)."""
    from sam3_ros.core.image_codec import iter_image_folder

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    frames = iter_image_folder(str(tmp_path), 4, 1000, 1 << 20)
    path, first = next(frames)
    assert Path(path).name == "a.png" and first.shape == (4, 4, 3)
    with pytest.raises(InvalidImageError, match=re.escape("b.jpg:")):
        next(frames)


@pytest.mark.parametrize(("setup", "limits", "message"), [
    ("missing", (1000, 1 << 20), "is not a folder"),
    ("file", (1000, 1 << 20), "is not a folder"),
    ("empty", (1000, 1 << 20), "no png/jpeg files in"),
    ("big_file", (10**6, 20), "x.png: larger than the limit of 20 bytes"),
    ("many_pixels", (100, 1 << 20),
     "image 16x12 (192 pixels) exceeds the limit of 100 pixels (image files' limit)"),
    ("corrupt", (1000, 1 << 20), "x.jpg:"),
])
def test_iter_image_folder_errors_name_the_file_and_the_limit(tmp_path, setup, limits,
                                                               message):
    from sam3_ros.core.image_codec import iter_image_folder

    folder = tmp_path / "frames"
    if setup == "file":
        folder.write_text("a file")
    elif setup != "missing":
        folder.mkdir()
    rgb = np.zeros((12, 16, 3), np.uint8)
    if setup in ("big_file", "many_pixels"):
        cv2.imwrite(str(folder / "x.png"), rgb)
    if setup == "corrupt":
        (folder / "x.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    with pytest.raises(InvalidImageError, match=re.escape(message)):
        list(iter_image_folder(str(folder), 4, *limits))


def test_iter_image_folder_refuses_a_count_below_one(tmp_path):
    from sam3_ros.core.image_codec import iter_image_folder

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    for count in (0, -1):
        with pytest.raises(InvalidImageError, match="count must be >= 1"):
            next(iter_image_folder(str(tmp_path), count, 1000, 1 << 20))


@pytest.mark.parametrize(
    ("format_str", "channels", "expected"),
    [("rgb8; png compressed rgb8", 3, "rgb8"), ("rgba8; png compressed rgba8", 4, "rgba8"),
     ("rgb8; png compressed bgr8", 3, "bgr8"), ("bgr8; png compressed bgr8", 3, "bgr8"),
     ("png", 3, "bgr8"), ("", 4, "bgra8"), ("rgb8; png compressed", 3, "bgr8")])
def test_the_decoded_channel_order_named_by_the_format_is_read(format_str, channels, expected):
    # A publisher that encodes an RGB array as it is says so ("compressed rgb8"): read as
    # bgr8, red came out blue for the model and the overlay.
    red = np.zeros((8, 8, channels), np.uint8)
    red[..., 0] = 255  # red in the order the format names
    if channels == 4:
        red[..., 3] = 255
    ok, png = cv2.imencode(".png", red if expected.startswith("rgb") else red[..., [2, 1, 0,
                                                                                  3][:channels]])
    assert ok
    decoded, encoding = decode_compressed(png.tobytes(), format_str)
    assert encoding == expected
    np.testing.assert_array_equal(to_rgb8(decoded, encoding)[0, 0], [255, 0, 0])
