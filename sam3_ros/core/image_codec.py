"""Image buffers <-> numpy arrays, without ROS (numpy + OpenCV only).

This is the logic behind `sam3_ros.ros.image_conversions`: raw `sensor_msgs/Image` payloads
(`decode_raw` / `encode_raw`), `sensor_msgs/CompressedImage` payloads (`decode_compressed` /
`encode_compressed`, format strings as written by image_transport) and the conversion to the
model's input (`to_rgb8`). It replaces cv_bridge, which is not available everywhere this
package runs.

Every inconsistent input raises `InvalidImageError` with a message naming what is wrong and
what was expected; nothing here lets a numpy or OpenCV traceback (or a silently wrong image)
through.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sam3_ros.core.errors import InvalidImageError

__all__ = [
    "SUPPORTED_ENCODINGS",
    "compressed_format_string",
    "decode_compressed",
    "decode_raw",
    "decoded_channel_order",
    "encode_compressed",
    "encode_raw",
    "host_is_bigendian",
    "iter_image_folder",
    "parse_compressed_format",
    "to_rgb8",
]


@dataclass(frozen=True)
class _Layout:
    """Memory layout of one ROS encoding: element type and values per pixel."""

    dtype: np.dtype
    channels: int


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)

# Encodings are case-sensitive in ROS (sensor_msgs/image_encodings.hpp); "yuv422" is UYVY
# and "yuv422_yuy2" is YUYV there, "uyvy"/"yuyv" are the newer aliases of the same layouts.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(_U8, 3),
    "bgr8": _Layout(_U8, 3),
    "rgba8": _Layout(_U8, 4),
    "bgra8": _Layout(_U8, 4),
    "mono8": _Layout(_U8, 1),
    "8UC1": _Layout(_U8, 1),
    "8UC3": _Layout(_U8, 3),
    "8UC4": _Layout(_U8, 4),
    "mono16": _Layout(_U16, 1),
    "16UC1": _Layout(_U16, 1),
    "rgb16": _Layout(_U16, 3),
    "bgr16": _Layout(_U16, 3),
    "rgba16": _Layout(_U16, 4),
    "bgra16": _Layout(_U16, 4),
    "yuv422": _Layout(_U8, 2),
    "uyvy": _Layout(_U8, 2),
    "yuv422_yuy2": _Layout(_U8, 2),
    "yuyv": _Layout(_U8, 2),
    # Raw Bayer mosaics (machine-vision drivers): one value per pixel, demosaiced by to_rgb8.
    **{f"bayer_{pattern}{bits}": _Layout(_U8 if bits == 8 else _U16, 1)
       for bits in (8, 16) for pattern in ("rggb", "bggr", "gbrg", "grbg")},
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
"""Encodings `decode_raw` and `encode_raw` accept."""

_UYVY = frozenset({"yuv422", "uyvy"})
_YUYV = frozenset({"yuv422_yuy2", "yuyv"})

# cvtColor codes from each colour encoding to RGB (None = already RGB).
_TO_RGB_CODES: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    # 16-bit encodings: scaled to 8 bit first, then this code.
    "mono16": cv2.COLOR_GRAY2RGB,
    "16UC1": cv2.COLOR_GRAY2RGB,
    "rgb16": None,
    "bgr16": cv2.COLOR_BGR2RGB,
    "rgba16": cv2.COLOR_RGBA2RGB,
    "bgra16": cv2.COLOR_BGRA2RGB,
    # OpenCV names a Bayer pattern by the 2x2 block starting at the second row and column
    # (cv_bridge's mapping): RGGB is OpenCV's BayerBG.
    **{f"bayer_{pattern}{bits}": code for bits in (8, 16) for pattern, code in (
        ("rggb", cv2.COLOR_BayerBG2RGB), ("bggr", cv2.COLOR_BayerRG2RGB),
        ("gbrg", cv2.COLOR_BayerGR2RGB), ("grbg", cv2.COLOR_BayerGB2RGB))},
}

# Codecs OpenCV decodes, by the names a CompressedImage.format may use.
_CODEC_ALIASES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# compressed_depth_image_transport prefixes the PNG with a ConfigHeader
# (int32 format + float32 depthParam[2]).
_COMPRESSED_DEPTH_HEADER_BYTES = 12


def _layout(encoding: str) -> _Layout:
    """Return the layout of `encoding`, or raise InvalidImageError naming the supported ones."""
    try:
        return _LAYOUTS[encoding]
    except (KeyError, TypeError):
        raise InvalidImageError(
            f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        ) from None


def _as_uint8_buffer(data: Any) -> np.ndarray:
    """View `data` (bytes, bytearray, memoryview, array.array('B'), uint8 ndarray) as 1-D uint8.

    Zero-copy for everything except a non-contiguous ndarray (which has to be copied once).
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InvalidImageError(f"data must be uint8, got dtype {data.dtype}")
        return data.reshape(-1)
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidImageError(
            f"data must be bytes-like (bytes, array.array('B'), uint8 ndarray), "
            f"got {type(data).__name__}"
        ) from None
    if view.itemsize != 1:
        raise InvalidImageError(f"data must have 1-byte elements, got itemsize {view.itemsize}")
    if not view.c_contiguous:
        raise InvalidImageError("data must be a contiguous buffer")
    return np.frombuffer(view.cast("B"), _U8)


def decode_raw(
    data: Any, width: int, height: int, encoding: str, step: int, is_bigendian: int | bool
) -> np.ndarray:
    """View a raw image buffer (the fields of a `sensor_msgs/Image`) as a numpy array.

    The result is a view of `data` whenever possible (no copy), including padded rows
    (`step` > width * bytes per pixel: a strided view). The only copy is the byte swap of
    16-bit data whose byte order differs from the host's. Because the result shares memory
    with `data`, copy it before modifying it if `data` must stay intact; it is read-only when
    `data` is (e.g. bytes).

    Args:
        data: the pixel bytes: bytes, bytearray, memoryview, array.array('B') (what rclpy gives
            for `msg.data`) or a 1-D uint8 ndarray; at least step * height bytes.
        width: pixels per row, > 0.
        height: rows, > 0.
        encoding: one of `SUPPORTED_ENCODINGS` (ROS names, case-sensitive).
        step: bytes per row, >= width * bytes per pixel; a multiple of 2 for 16-bit encodings.
        is_bigendian: byte order of 16-bit data (ignored for 8-bit encodings).

    Returns:
        (H, W) for one-channel encodings, (H, W, C) otherwise: uint8 for 8-bit encodings,
        native-endian uint16 for 16-bit ones; the yuv422 family gives the packed (H, W, 2)
        uint8 array (U/Y, V/Y pairs), which `to_rgb8` converts.

    Raises:
        InvalidImageError: unsupported encoding, zero size, step too small or misaligned, or
            too little data.
    """
    layout = _layout(encoding)
    width, height, step = int(width), int(height), int(step)
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"zero size image {width}x{height} (width x height)")
    itemsize = layout.dtype.itemsize
    pixel_bytes = itemsize * layout.channels
    if layout.channels == 2 and width % 2:
        # YUV 4:2:2 stores one U/V pair per two pixels.
        raise InvalidImageError(f"{encoding} needs an even width, got {width}")
    if step < width * pixel_bytes:
        raise InvalidImageError(
            f"step {step} < width*bytes_per_pixel {width * pixel_bytes} "
            f"({width} * {pixel_bytes} for {encoding})"
        )
    if step % itemsize:
        raise InvalidImageError(
            f"step {step} is not a multiple of the element size {itemsize} of {encoding}"
        )
    buffer = _as_uint8_buffer(data)
    if buffer.size < step * height:
        raise InvalidImageError(
            f"data has {buffer.size} bytes, expected at least step*height = {step * height} "
            f"({step} * {height})"
        )
    big = bool(is_bigendian) and itemsize > 1
    dtype = layout.dtype.newbyteorder(">" if big else "<") if itemsize > 1 else layout.dtype
    shape: tuple[int, ...] = (height, width)
    strides: tuple[int, ...] = (step, pixel_bytes)
    if layout.channels > 1:
        shape += (layout.channels,)
        strides += (itemsize,)
    # np.ndarray over the buffer gives the strided (padded-row) view without copying.
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _check_array(array: np.ndarray, encoding: str) -> _Layout:
    """Raise InvalidImageError unless `array`'s dtype and shape fit `encoding`."""
    layout = _layout(encoding)
    if not isinstance(array, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype.kind != layout.dtype.kind or array.dtype.itemsize != layout.dtype.itemsize:
        raise InvalidImageError(
            f"{encoding} needs dtype {layout.dtype}, got {array.dtype} (shape {array.shape})"
        )
    expected = "(H, W)" if layout.channels == 1 else f"(H, W, {layout.channels})"
    ok_shape = (array.ndim == 2 and layout.channels == 1) or (
        array.ndim == 3 and array.shape[2] == layout.channels
    )
    if not ok_shape:
        raise InvalidImageError(f"{encoding} needs shape {expected}, got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(f"zero size image {array.shape[1]}x{array.shape[0]}")
    if layout.channels == 2 and array.shape[1] % 2:
        raise InvalidImageError(f"{encoding} needs an even width, got {array.shape[1]}")
    return layout


def _uint16_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale uint16 to uint8 by the dtype's full range: round(v * 255 / 65535)."""
    return cv2.convertScaleAbs(array, alpha=255.0 / 65535.0)


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded image to the model's input: (H, W, 3) uint8 RGB.

    - rgb8: returned as is (no copy, may be a strided view).
    - bgr8, rgba8, bgra8: cv2.cvtColor (alpha dropped).
    - mono8, 8UC1: the grey value replicated into three channels.
    - mono16, 16UC1 and the 16-bit colour encodings: scaled by the maximum of the dtype,
      round(v * 255 / 65535), then handled like the 8-bit encoding. The scale is fixed (no
      per-image min-max), so brightness is comparable across frames; depth images in
      millimetres therefore look dark, which is expected.
    - yuv422 / uyvy: cv2.COLOR_YUV2RGB_UYVY; yuv422_yuy2 / yuyv: cv2.COLOR_YUV2RGB_YUYV.
    - bayer_rggb8 / bggr8 / gbrg8 / grbg8 (and their 16-bit forms, scaled first):
      demosaiced by OpenCV's bilinear Bayer conversion.
    - 8UC3 / 8UC4 are refused: they do not say the channel order.

    Args:
        array: (H, W) or (H, W, C) array as returned by `decode_raw` / `decode_compressed`.
        encoding: its encoding.

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        InvalidImageError: the encoding has no colour meaning or the array does not fit it.
    """
    if encoding not in _TO_RGB_CODES:
        _layout(encoding)  # raises for unknown encodings with the list of supported ones
        raise InvalidImageError(
            f"encoding {encoding!r} does not define a channel order; cannot convert to rgb8 "
            f"(publish rgb8, bgr8, rgba8, bgra8, mono8, mono16, a yuv422 or a bayer encoding)"
        )
    layout = _check_array(array, encoding)
    if layout.dtype == _U16:
        array = _uint16_to_uint8(array)
    code = _TO_RGB_CODES[encoding]
    if code is None:
        return array
    return cv2.cvtColor(array, code)


def encode_raw(array: np.ndarray, encoding: str) -> tuple[memoryview, int]:
    """Turn an image array into the raw bytes and step of a `sensor_msgs/Image`.

    Zero-copy for a C-contiguous, native-endian array: the returned memoryview shares its
    memory. A strided array is copied once to C order; 16-bit data is written in the host's
    byte order (set `is_bigendian` to `sys.byteorder == "big"`).

    Filling `Image.data` (measured for a fresh 1280x720 rgb8 message in this rclpy, Kilted
    wheels): copying this buffer into an `array.array('B')` with `.frombytes` and assigning it
    takes 1.6-1.9 ms (mostly first touch of the new 2.7 MB buffer) with or without field
    checks, because the generated setter takes an array.array as is. Assigning `bytes` takes
    1.4 ms with checks off (Jazzy/Kilted default) but 180 ms with ROS_PYTHON_CHECK_FIELDS=1,
    which is what Humble's setter always does (`if __debug__`): it checks every element of
    anything but an array.array. A memoryview or ndarray is iterated element by element
    (90-340 ms). So the message adapter uses `array.array('B').frombytes(data)`.

    Args:
        array: (H, W) or (H, W, C) array matching `encoding` (uint8 or uint16).
        encoding: any of `SUPPORTED_ENCODINGS`.

    Returns:
        (data, step): a flat uint8 memoryview of height * step bytes and the row stride in
        bytes (width * bytes per pixel; no padding).

    Raises:
        InvalidImageError: dtype or shape does not fit the encoding.
    """
    layout = _check_array(array, encoding)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)
    step = array.shape[1] * layout.channels * layout.dtype.itemsize
    return memoryview(array).cast("B"), step


def parse_compressed_format(format_str: str) -> tuple[str | None, str | None, bool]:
    """Parse a `CompressedImage.format` string.

    Handles the plain codec names ("jpeg", "png") and image_transport's
    "<original encoding>; <codec> compressed [<decoded encoding>]" (e.g. "rgb8; jpeg compressed
    bgr8", "16UC1; png compressed") as well as compressed_depth_image_transport's
    "16UC1; compressedDepth png".

    Args:
        format_str: the format field.

    Returns:
        (codec, original_encoding, compressed_depth): codec is "jpeg" / "png" or None when the
        string names none (the data's signature decides then); original_encoding is the
        encoding before compression when the string gives one.
    """
    text = (format_str or "").strip()
    original: str | None = None
    if ";" in text:
        head, text = text.split(";", 1)
        original = head.strip() or None
    words = text.replace(",", " ").split()
    compressed_depth = any(w.lower() == "compresseddepth" for w in words)
    codec = next((_CODEC_ALIASES[w.lower()] for w in words if w.lower() in _CODEC_ALIASES), None)
    if original is not None and codec is None and original.lower() in _CODEC_ALIASES:
        codec, original = _CODEC_ALIASES[original.lower()], None
    return codec, original, compressed_depth


def decoded_channel_order(format_str: str) -> str:
    """"rgb" when a `CompressedImage.format` names an RGB-ordered decoded encoding
    ("rgb8; jpeg compressed rgb8": a publisher that encoded an RGB array as it was), else
    "bgr" (what image_transport's publisher writes for colour: "... compressed bgr8")."""
    words = (format_str or "").split(";")[-1].replace(",", " ").lower().split()
    for i, word in enumerate(words[:-1]):
        if word == "compressed":
            return "rgb" if words[i + 1].startswith("rgb") else "bgr"
    return "bgr"


def check_image_size(width: int, height: int, max_pixels: int | None,
                     limit_name: str = "parameter max_image_pixels") -> None:
    """Raise InvalidImageError when a declared width x height exceeds `max_pixels` (None: no
    limit). Called before anything that scales with the image is allocated."""
    if max_pixels is not None and int(width) * int(height) > max_pixels:
        raise InvalidImageError(
            f"image {int(width)}x{int(height)} ({int(width) * int(height)} pixels) exceeds the "
            f"limit of {max_pixels} pixels ({limit_name})")


# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# Real JPEGs reach their start of frame after a handful of segments (APPn, DQT, DHT).
_JPEG_MAX_MARKERS = 4096
_JPEG_MAX_JUNK_BYTES = 1 << 16


def _first_index(buffer: np.ndarray, start: int, limit: int, value: int,
                 equal: bool) -> int | None:
    """Offset from `start` of the first byte (within `limit` bytes) equal (or not) to
    `value`; None if none. Searched in small windows first: a hostile header of short junk
    runs made every skip scan the whole 64 KiB budget (~20 ms of compute per frame)."""
    offset, window = 0, 64
    while offset < limit:
        chunk = buffer[start + offset:start + min(limit, offset + window)]
        if not chunk.size:
            return None
        hits = np.flatnonzero(chunk == value if equal else chunk != value)
        if hits.size:
            return offset + int(hits[0])
        offset += chunk.size
        window *= 8
    return None


def compressed_image_size(buffer: np.ndarray, codec: str) -> tuple[int, int]:
    """(width, height) a png or jpeg declares in its header, read without decoding.

    Args:
        buffer: The compressed bytes as a 1-D uint8 array.
        codec: "png" or "jpeg".

    Raises:
        InvalidImageError: the header is missing or truncated.
    """
    data = buffer[: 1 << 16].tobytes() if codec == "png" else buffer
    if codec == "png":
        # Signature (8) + IHDR chunk length (4) + "IHDR" (4) + width (4) + height (4).
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImageError("png without an IHDR header: cannot read its size")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    pos, size = 2, buffer.size
    junk_left = _JPEG_MAX_JUNK_BYTES
    for _ in range(_JPEG_MAX_MARKERS):
        if pos + 4 > size:
            break
        if buffer[pos] != 0xFF:
            # Bytes between segments: libjpeg skips them with a warning and decodes the
            # image, so they are skipped here too, within a budget (a hostile buffer must not
            # keep this loop busy).
            skip = _first_index(buffer, pos, junk_left, 0xFF, equal=True)
            if skip is None:
                break
            junk_left -= skip
            pos += skip
            continue
        marker = int(buffer[pos + 1])
        if marker == 0xFF:
            # A run of fill bytes (any number may precede a marker): skipped in one step,
            # charged to the byte budget, not to the marker count.
            skip = _first_index(buffer, pos + 1, junk_left, 0xFF, equal=False)
            if skip is None:
                break
            junk_left -= skip
            pos += skip
            continue
        if marker == 0x00:
            # FF 00 is a stuffed zero, not a marker: libjpeg scans on past it.
            junk_left -= 2
            if junk_left < 0:
                break
            pos += 2
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = (int(buffer[pos + 2]) << 8) | int(buffer[pos + 3])
        if marker in _JPEG_SOF:
            if pos + 9 > size:
                break
            height = (int(buffer[pos + 5]) << 8) | int(buffer[pos + 6])
            width = (int(buffer[pos + 7]) << 8) | int(buffer[pos + 8])
            return width, height
        if length < 2:
            break
        pos += 2 + length
    raise InvalidImageError("jpeg without a readable start-of-frame header: cannot read its size")


def decode_compressed(data: Any, format_str: str = "",
                      max_pixels: int | None = None,
                      limit_name: str = "parameter max_image_pixels") -> tuple[np.ndarray, str]:
    """Decode a jpeg or png buffer (a `CompressedImage` payload) to an array and its encoding.

    Decodes with cv2.IMREAD_UNCHANGED, so grayscale stays one channel, 16-bit png stays
    16-bit and png alpha is kept. Colour comes out in the data's own channel order: BGR
    (OpenCV's; image_transport's format says "... compressed bgr8"), or RGB when the format
    names an RGB decoded encoding ("rgb8; png compressed rgb8", `decoded_channel_order`).

    Args:
        data: the compressed bytes (bytes, array.array('B'), memoryview, uint8 ndarray).
        format_str: the `CompressedImage.format` ("jpeg", "png", "bgr8; jpeg compressed bgr8",
            "16UC1; png compressed", "16UC1; compressedDepth png", ...). Empty: detected.
        max_pixels: Largest accepted width x height, checked from the header before decoding
            (a small png can declare a gigapixel image); None: no limit.
        limit_name: What sets `max_pixels`, named in the error.

    Returns:
        (array, encoding): (H, W) uint8 "mono8", (H, W) uint16 "mono16" ("16UC1" when the
        format says the original was 16UC1), (H, W, 3) "bgr8" / "bgr16" or (H, W, 4)
        "bgra8" / "bgra16" (rgb8 / rgb16 / rgba8 / rgba16 for an RGB decoded order).

    Raises:
        InvalidImageError: unsupported codec, empty or corrupt data, or larger than max_pixels.
    """
    codec, original, compressed_depth = parse_compressed_format(format_str)
    buffer = _as_uint8_buffer(data)
    if compressed_depth:
        if original not in (None, "16UC1", "mono16"):
            raise InvalidImageError(
                f"compressedDepth with encoding {original!r} is not supported (only 16UC1 png)"
            )
        if buffer[:8].tobytes() != _PNG_SIGNATURE:
            buffer = buffer[_COMPRESSED_DEPTH_HEADER_BYTES:]
    if codec is None:
        # Some publishers write only the encoding ("bgr8") or nothing: trust the data's signature.
        head = buffer[:8].tobytes()
        if head.startswith(_PNG_SIGNATURE):
            codec = "png"
        elif head.startswith(_JPEG_SIGNATURE):
            codec = "jpeg"
        elif format_str.strip():
            raise InvalidImageError(
                f"unsupported compressed format {format_str!r} (supported codecs: jpeg, png)"
            )
    shown = codec or format_str
    if buffer.size == 0:
        raise InvalidImageError(f"could not decode compressed image (format {shown!r}, 0 bytes)")
    if max_pixels is not None:
        head = buffer[:8].tobytes()
        actual = ("png" if head.startswith(_PNG_SIGNATURE) else
                  "jpeg" if head.startswith(_JPEG_SIGNATURE) else None)
        if actual is None:
            raise InvalidImageError(
                f"could not decode compressed image (format {shown!r}, {buffer.size} bytes): "
                "neither a png nor a jpeg signature")
        check_image_size(*compressed_image_size(buffer, actual), max_pixels, limit_name)
    decoded: np.ndarray | None
    try:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise InvalidImageError(
            f"could not decode compressed image (format {shown!r}, {buffer.size} bytes)"
        )
    if decoded.dtype not in (_U8, _U16):
        raise InvalidImageError(f"decoded image has unsupported dtype {decoded.dtype}")
    bits = 8 * decoded.dtype.itemsize
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels == 1:
        decoded = decoded.reshape(decoded.shape[:2])
        grey16 = "16UC1" if original == "16UC1" else "mono16"
        encoding = grey16 if bits == 16 else "mono8"
    elif channels == 3:
        encoding = f"{decoded_channel_order(format_str)}{bits}"
    elif channels == 4:
        encoding = f"{decoded_channel_order(format_str)}a{bits}"
    else:
        raise InvalidImageError(f"decoded image has unsupported channel count {channels}")
    return decoded, encoding


# Encodings encode_compressed accepts, and whether they are colour (with alpha).
_COMPRESSIBLE: dict[str, tuple[bool, bool]] = {
    "mono8": (False, False),
    "8UC1": (False, False),
    "mono16": (False, False),
    "16UC1": (False, False),
    "rgb8": (True, False),
    "bgr8": (True, False),
    "rgba8": (True, True),
    "bgra8": (True, True),
    "rgb16": (True, False),
    "bgr16": (True, False),
    "rgba16": (True, True),
    "bgra16": (True, True),
}


def _compressed_target(encoding: str, codec: str) -> tuple[int | None, str]:
    """How image_transport's compressed publisher stores `encoding` with `codec`.

    Returns:
        (cvtColor code into OpenCV's order or None, the decoded encoding it names in the
        format string: "bgr8"/"bgra16"/... for colour, "mono8" for grey jpeg, "" for grey png).
    """
    if encoding not in _COMPRESSIBLE:
        _layout(encoding)  # unknown encodings: the message lists the supported ones
        raise InvalidImageError(
            f"cannot compress encoding {encoding!r} (supported: {', '.join(_COMPRESSIBLE)})"
        )
    colour, alpha = _COMPRESSIBLE[encoding]
    bits = 8 * _LAYOUTS[encoding].dtype.itemsize
    if codec == "jpeg" and bits != 8:
        # OpenCV's jpeg writer would silently truncate 16-bit data to 8 bit.
        raise InvalidImageError(f"jpeg supports 8-bit images only, got {encoding}; use png")
    if not colour:
        return None, "mono8" if codec == "jpeg" else ""
    # jpeg has no alpha channel; png keeps it (as image_transport does).
    keep_alpha = alpha and codec == "png"
    target = f"bgra{bits}" if keep_alpha else f"bgr{bits}"
    is_rgb = encoding.startswith("rgb")
    if not alpha:
        code = cv2.COLOR_RGB2BGR if is_rgb else None
    elif keep_alpha:
        code = cv2.COLOR_RGBA2BGRA if is_rgb else None
    else:
        code = cv2.COLOR_RGBA2BGR if is_rgb else cv2.COLOR_BGRA2BGR
    return code, target


def _codec(fmt: str) -> str:
    """Normalise "jpeg"/"jpg"/"png" (any case) or raise InvalidImageError."""
    codec = _CODEC_ALIASES.get(str(fmt).strip().lower())
    if codec is None:
        raise InvalidImageError(f"unsupported compressed format {fmt!r} (supported: jpeg, png)")
    return codec


def encode_compressed(
    array: np.ndarray, encoding: str, fmt: str = "jpeg", jpeg_quality: int = 90
) -> bytes:
    """Compress an image to jpeg or png bytes (for a `CompressedImage`).

    Follows image_transport's compressed publisher: colour is written in OpenCV's BGR order
    (`decode_compressed` reports it as bgr8 / bgr16), png keeps alpha (bgra), jpeg drops it,
    grey stays one channel. 16-bit images need png (OpenCV's jpeg would silently truncate
    them to 8 bit). Use `compressed_format_string` for the matching format field.

    Args:
        array: (H, W) or (H, W, C) array matching `encoding`.
        encoding: mono8, 8UC1, mono16, 16UC1, rgb8, bgr8, rgba8, bgra8 or their 16-bit colour
            counterparts.
        fmt: "jpeg" (or "jpg") or "png".
        jpeg_quality: 0..100, used for jpeg.

    Returns:
        The compressed bytes.

    Raises:
        InvalidImageError: unsupported encoding or format, array not matching the encoding,
            16-bit image with jpeg, bad quality, or the encoder failed.
    """
    codec = _codec(fmt)
    code, _ = _compressed_target(encoding, codec)
    _check_array(array, encoding)
    if not 0 <= int(jpeg_quality) <= 100:
        raise InvalidImageError(f"jpeg_quality must be in 0..100, got {jpeg_quality}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if code is not None:
        array = cv2.cvtColor(array, code)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else []
    try:
        ok, encoded = cv2.imencode(".jpg" if codec == "jpeg" else ".png", array, params)
    except cv2.error as exc:
        raise InvalidImageError(f"could not encode {encoding} image as {codec}: {exc}") from None
    if not ok:
        raise InvalidImageError(f"could not encode {encoding} image as {codec}")
    return encoded.tobytes()


def compressed_format_string(encoding: str, fmt: str) -> str:
    """The `CompressedImage.format` image_transport writes for `encode_compressed`'s output.

    Args:
        encoding: the encoding of the array given to `encode_compressed`.
        fmt: "jpeg"/"jpg" or "png".

    Returns:
        e.g. "rgb8; jpeg compressed bgr8", "mono8; jpeg compressed mono8",
        "rgba8; png compressed bgra8", "16UC1; png compressed".

    Raises:
        InvalidImageError: unsupported encoding or format.
    """
    codec = _codec(fmt)
    _, target = _compressed_target(encoding, codec)
    return f"{encoding}; {codec} compressed {target}".rstrip()


def host_is_bigendian() -> int:
    """1 on a big-endian host, else 0: the `is_bigendian` of arrays from `encode_raw`."""
    return int(sys.byteorder == "big")


IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg")

IMAGE_FILE_MAX_PIXELS = 16_777_216
"""Default largest image file (width x height) read from a folder (calibration and check
frames), checked from the file's header."""

IMAGE_FILE_MAX_BYTES = 64 << 20
"""Default largest image file read from a folder."""


def iter_image_folder(folder: str, count: int, max_pixels: int = IMAGE_FILE_MAX_PIXELS,
                      max_file_bytes: int = IMAGE_FILE_MAX_BYTES,
                      ) -> Iterator[tuple[str, np.ndarray]]:
    """The first `count` png/jpeg files of `folder` (sorted by name), decoded one at a time.

    Each file's size and its header's width x height are checked before it is read or
    decoded (a small png can declare a gigapixel image); a file is read with at most
    `max_file_bytes` + 1 bytes.

    Args:
        folder: Directory of image files (other files are ignored).
        count: How many files to read (>= 1); fewer when the folder has fewer.
        max_pixels: Largest accepted width x height of one image.
        max_file_bytes: Largest accepted file size.

    Yields:
        (file path, (H, W, 3) uint8 RGB array), in name order.

    Raises:
        InvalidImageError: `count` < 1, not a readable folder, no png/jpeg in it, or a file
            that is too large, unreadable or not a valid image (the file is named).
    """
    from pathlib import Path

    if count < 1:
        raise InvalidImageError(f"count must be >= 1, got {count}")
    path = Path(folder).expanduser()
    try:
        if not path.is_dir():
            raise InvalidImageError(f"{folder!r} is not a folder")
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_FILE_SUFFIXES and p.is_file())
    except OSError as err:
        raise InvalidImageError(f"cannot list {folder!r}: {err}") from None
    if not files:
        raise InvalidImageError(f"no png/jpeg files in {folder!r}")
    for file in files[:count]:
        try:
            with file.open("rb") as stream:
                data = stream.read(max_file_bytes + 1)
        except OSError as err:
            raise InvalidImageError(f"{file}: cannot read it: {err}") from None
        if len(data) > max_file_bytes:
            raise InvalidImageError(f"{file}: larger than the limit of {max_file_bytes} bytes")
        try:
            array, encoding = decode_compressed(data, "", max_pixels, "image files' limit")
            rgb = to_rgb8(array, encoding)
        except InvalidImageError as err:
            raise InvalidImageError(f"{file}: {err}") from None
        del data, array
        yield str(file), rgb

