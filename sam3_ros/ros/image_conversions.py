"""`sensor_msgs/Image` and `sensor_msgs/CompressedImage` <-> numpy (cv_bridge replacement).

Thin adapter: every check and conversion lives in `sam3_ros.core.image_codec` and
`sam3_ros.core.image_cdr`; this module only moves message fields in and out. Errors are
`InvalidImageError` with the core's messages.

The `*_to_numpy` readers take a message or the same fields read from a serialized sample
(`image_fields`: what the nodes' `raw=True` camera subscriptions get).
"""

from __future__ import annotations

import array as pyarray

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from sam3_ros.core.errors import InvalidImageError
from sam3_ros.core.image_cdr import (
    CompressedImageFields,
    ImageFields,
    UnsupportedEncapsulationError,
    read_compressed_image,
    read_image,
)
from sam3_ros.core.image_codec import (
    compressed_format_string,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
    host_is_bigendian,
)

__all__ = [
    "compressed_msg_to_numpy",
    "fields_header",
    "image_fields",
    "image_msg_to_numpy",
    "numpy_to_compressed_msg",
    "numpy_to_image_msg",
]


def _to_byte_array(buffer: bytes | memoryview) -> pyarray.array:
    """Copy a bytes-like buffer into an array.array('B') with one memcpy.

    The generated message setters store an array.array('B') as is (Humble) or with one more
    memcpy (Jazzy/Kilted). Bytes cost about the same on Jazzy/Kilted but ~180 ms for a
    1280x720 rgb8 image on Humble (element-wise checks); memoryviews and ndarrays are
    iterated element by element everywhere (see `image_codec.encode_raw`).
    """
    data = pyarray.array("B")
    data.frombytes(buffer)
    return data


def image_fields(sample: bytes | Image | CompressedImage,
                 compressed: bool) -> ImageFields | CompressedImageFields:
    """The fields of a camera image, from its serialized sample or from a message.

    Args:
        sample: What a `raw=True` subscription delivers (serialized bytes), or a message.
        compressed: The sample is a `CompressedImage` (else an `Image`).

    Returns:
        `ImageFields` or `CompressedImageFields`; `data` is a view of the sample's pixels (of
        `msg.data` for a message), read-only for bytes.

    Raises:
        InvalidImageError: a malformed sample (truncated, oversized strings), also one of
            another encapsulation that rclpy's deserializer refuses.
    """
    if isinstance(sample, (bytes, bytearray, memoryview)):
        try:
            return read_compressed_image(sample) if compressed else read_image(sample)
        except UnsupportedEncapsulationError:
            # Not plain CDR (a middleware with another representation): rclpy reads it.
            try:
                sample = deserialize_message(bytes(sample),
                                             CompressedImage if compressed else Image)
            except Exception as err:  # rclpy raises its RMWError for any malformed sample
                raise InvalidImageError(
                    f"serialized image: encapsulation 0x{bytes(sample[:2]).hex()} is not "
                    f"plain CDR and rclpy cannot read it either: {err}") from err
    stamp, data = sample.header.stamp, memoryview(sample.data)
    if compressed:
        return CompressedImageFields(stamp.sec, stamp.nanosec, sample.header.frame_id,
                                     sample.format, data)
    return ImageFields(stamp.sec, stamp.nanosec, sample.header.frame_id, sample.height,
                       sample.width, sample.encoding, sample.is_bigendian, sample.step, data)


def fields_header(fields: ImageFields | CompressedImageFields) -> Header:
    """A `std_msgs/Header` with the image's stamp and frame id (for the node's outputs)."""
    return Header(stamp=Time(sec=fields.stamp_sec, nanosec=fields.stamp_nanosec),
                  frame_id=fields.frame_id)


def image_msg_to_numpy(msg: Image | ImageFields) -> np.ndarray:
    """View an Image message's pixels as a numpy array (zero-copy where possible).

    Args:
        msg: the message (or its `image_fields`); its encoding must be one of
            `image_codec.SUPPORTED_ENCODINGS`.

    Returns:
        (H, W) or (H, W, C) uint8 / native uint16 array, a view of `msg.data` unless 16-bit
        data had to be byte-swapped. Copy it before modifying it if the message is reused.

    Raises:
        InvalidImageError: the message is inconsistent (size, step, data length, encoding).
    """
    return decode_raw(msg.data, msg.width, msg.height, msg.encoding, msg.step, msg.is_bigendian)


def numpy_to_image_msg(array: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Build an Image message from an array.

    Args:
        array: (H, W) or (H, W, C) array whose dtype and shape match `encoding`.
        encoding: any of `image_codec.SUPPORTED_ENCODINGS`.
        header: stamp and frame to copy into the message; an empty header when None.

    Returns:
        The message: step = W * bytes per pixel (no padding), is_bigendian = host order
        (0 on x86 and ARM), data copied once into an array.array('B').

    Raises:
        InvalidImageError: dtype or shape does not fit the encoding.
    """
    buffer, step = encode_raw(array, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = int(array.shape[0])
    msg.width = int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = host_is_bigendian()
    msg.step = step
    msg.data = _to_byte_array(buffer)
    return msg


def compressed_msg_to_numpy(msg: CompressedImage | CompressedImageFields,
                            max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage message (jpeg or png).

    The codec comes from `msg.format` ("jpeg", "png", "rgb8; jpeg compressed bgr8",
    "16UC1; png compressed", "16UC1; compressedDepth png") or, when the format names none,
    from the data's signature. Colour is returned in the data's channel order and labelled so:
    BGR (image_transport's format says the decoded data is bgr8, even when the original
    encoding was rgb8), or RGB when the format names an RGB decoded encoding
    (`image_codec.decoded_channel_order`); `image_codec.to_rgb8` takes it from there.

    Args:
        msg: the message (or its `image_fields`).
        max_pixels: Largest accepted width x height, read from the header before decoding.

    Returns:
        (array, encoding): mono8 / mono16 / 16UC1 (H, W), bgr8 / bgr16 (H, W, 3) or
        bgra8 / bgra16 (H, W, 4), or their rgb forms.

    Raises:
        InvalidImageError: unsupported format, empty or corrupt data, too large.
    """
    return decode_compressed(msg.data, msg.format, max_pixels=max_pixels)


def numpy_to_compressed_msg(
    array: np.ndarray,
    encoding: str,
    fmt: str = "jpeg",
    header: Header | None = None,
    jpeg_quality: int = 90,
) -> CompressedImage:
    """Build a CompressedImage message the way image_transport's compressed publisher does.

    Args:
        array: (H, W) or (H, W, C) array whose dtype and shape match `encoding`.
        encoding: mono8, 8UC1, mono16, 16UC1, rgb8, bgr8, rgba8, bgra8 or a 16-bit colour one.
        fmt: "jpeg" or "png" (16-bit images need png).
        header: stamp and frame to copy into the message; an empty header when None.
        jpeg_quality: 0..100, used for jpeg.

    Returns:
        The message, format e.g. "rgb8; jpeg compressed bgr8".

    Raises:
        InvalidImageError: unsupported encoding or format, or the array does not fit.
    """
    data = encode_compressed(array, encoding, fmt, jpeg_quality=jpeg_quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = compressed_format_string(encoding, fmt)
    msg.data = _to_byte_array(data)
    return msg
