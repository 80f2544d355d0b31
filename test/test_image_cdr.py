"""Tests of `sam3_ros.core.image_cdr` (serialized Image / CompressedImage read in place) and
`image_conversions.image_fields`, against rclpy's own serialization."""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("rclpy")
sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg")

import numpy as np  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from sam3_ros.core.errors import InvalidImageError  # noqa: E402
from sam3_ros.core.image_cdr import (  # noqa: E402
    MAX_STRING_BYTES,
    CompressedImageFields,
    ImageFields,
    UnsupportedEncapsulationError,
    read_compressed_image,
    read_image,
    read_stamp_sec,
)
from sam3_ros.ros.image_conversions import (  # noqa: E402
    compressed_msg_to_numpy,
    fields_header,
    image_fields,
    image_msg_to_numpy,
    numpy_to_compressed_msg,
    numpy_to_image_msg,
)

Image = sensor_msgs_msg.Image
CompressedImage = sensor_msgs_msg.CompressedImage

pytestmark = pytest.mark.ros

INT32_MIN, INT32_MAX, UINT32_MAX = -(2**31), 2**31 - 1, 2**32 - 1


def _image(frame_id: str, encoding: str, height: int, width: int, step: int,
           is_bigendian: int = 0, sec: int = 12, nanosec: int = 345) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=is_bigendian,
                step=step)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = frame_id
    msg.data = np.arange(step * height, dtype=np.uint64).astype(np.uint8).tobytes()
    return msg


def _assert_image_fields(fields: ImageFields, msg: Image) -> None:
    assert (fields.stamp_sec, fields.stamp_nanosec, fields.frame_id) == (
        msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
    assert (fields.height, fields.width, fields.encoding, fields.is_bigendian, fields.step) == (
        msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step)
    assert fields.data.tobytes() == msg.data.tobytes()


# Frame ids and encodings of every length modulo 4 move the later fields across alignments.
@pytest.mark.parametrize("frame_id", ["", "c", "ca", "cam", "camera_optical_frame", "kämera/öß"])
@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "bgra8", "yuv422_yuy2", ""])
def test_read_image_matches_rclpy(frame_id, encoding):
    msg = _image(frame_id, encoding, height=3, width=5, step=17, is_bigendian=1)
    sample = serialize_message(msg)
    fields = read_image(sample)
    _assert_image_fields(fields, msg)
    # The message object gives the same fields.
    assert image_fields(msg, compressed=False) == image_fields(sample, compressed=False)


@pytest.mark.parametrize("sec,nanosec", [(0, 0), (INT32_MIN, 0), (INT32_MAX, 999_999_999),
                                         (-1, UINT32_MAX)])
def test_stamps_at_type_limits(sec, nanosec):
    sample = serialize_message(_image("f", "mono8", 1, 1, 1, sec=sec, nanosec=nanosec))
    fields = read_image(sample)
    assert (fields.stamp_sec, fields.stamp_nanosec) == (sec, nanosec)
    assert fields.stamp_ns == sec * 1_000_000_000 + nanosec
    assert read_stamp_sec(sample) == sec
    header = fields_header(fields)
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (sec, nanosec, "f")


def test_pixels_are_a_view_of_the_sample():
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    sample = serialize_message(numpy_to_image_msg(rgb, "rgb8"))
    fields = image_fields(sample, compressed=False)
    array = image_msg_to_numpy(fields)
    np.testing.assert_array_equal(array, rgb)
    assert np.shares_memory(array, np.frombuffer(sample, np.uint8))
    assert not array.flags.writeable  # bytes: nothing may write into the received frame


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
@pytest.mark.parametrize("frame_id", ["", "wrist", "wrist_cam"])
def test_read_compressed_image_matches_rclpy(fmt, frame_id):
    rgb = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    msg = numpy_to_compressed_msg(rgb, "rgb8", fmt)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = 7
    sample = serialize_message(msg)
    fields = read_compressed_image(sample)
    assert isinstance(fields, CompressedImageFields)
    assert (fields.stamp_sec, fields.frame_id, fields.format) == (7, frame_id, msg.format)
    assert fields.data.tobytes() == msg.data.tobytes()
    assert image_fields(msg, compressed=True) == image_fields(sample, compressed=True)
    from_sample, encoding = compressed_msg_to_numpy(fields)
    from_msg, encoding_msg = compressed_msg_to_numpy(msg)
    assert encoding == encoding_msg
    np.testing.assert_array_equal(from_sample, from_msg)


@pytest.mark.parametrize("reader", [read_image, read_compressed_image])
def test_every_truncation_is_refused(reader):
    if reader is read_image:
        sample = serialize_message(_image("cam", "rgb8", 2, 2, 6))
    else:
        sample = serialize_message(CompressedImage(format="jpeg", data=b"\xff\xd8\xff"))
    reader(sample)  # whole: fine
    for size in range(len(sample)):
        cut = sample[:size]
        # A cut inside the trailing CDR padding still holds every field (the data here ends
        # in a non-zero byte).
        if size >= len(sample.rstrip(b"\x00")):
            continue
        with pytest.raises(InvalidImageError):
            reader(cut)


def _with_u32_at(sample: bytes, offset: int, value: int) -> bytes:
    return sample[:offset] + struct.pack("<I", value) + sample[offset + 4:]


@pytest.mark.parametrize("length", [UINT32_MAX, MAX_STRING_BYTES + 1])
def test_hostile_string_length_is_refused(length):
    sample = serialize_message(_image("cam", "rgb8", 1, 1, 3))
    # header.frame_id's length follows the stamp (encapsulation 4 + sec 4 + nanosec 4).
    with pytest.raises(InvalidImageError, match="frame_id"):
        read_image(_with_u32_at(sample, 12, length))


def test_hostile_data_length_is_refused_without_allocating():
    msg = _image("", "rgb8", 1, 1, 3)
    sample = serialize_message(msg)
    # The data length field: the last uint32 3 before the 3 pixel bytes (and padding).
    data_length_at = sample.rfind(struct.pack("<I", 3))
    assert data_length_at > 0
    with pytest.raises(InvalidImageError, match=r"truncated in data: needs 4294967"):
        read_image(_with_u32_at(sample, data_length_at, UINT32_MAX))


def _big_endian(msg: Image) -> bytes:
    """`msg` as plain big-endian CDR, written by hand (rclpy writes little endian only)."""
    out = bytearray(b"\x00\x00\x00\x00")

    def align(n: int) -> None:
        out.extend(b"\x00" * (-(len(out) - 4) % n))

    def u32(value: int, fmt: str = ">I") -> None:
        align(4)
        out.extend(struct.pack(fmt, value))

    def string(text: str) -> None:
        raw = text.encode() + b"\x00"
        u32(len(raw))
        out.extend(raw)

    u32(msg.header.stamp.sec, ">i")
    u32(msg.header.stamp.nanosec)
    string(msg.header.frame_id)
    u32(msg.height)
    u32(msg.width)
    string(msg.encoding)
    out.append(msg.is_bigendian)
    u32(msg.step)
    u32(len(msg.data))
    out.extend(msg.data.tobytes())
    return bytes(out)


def test_big_endian_cdr():
    msg = _image("cam_be", "mono16", 2, 3, 6, is_bigendian=1, sec=-5, nanosec=77)
    sample = _big_endian(msg)
    assert deserialize_message(sample, Image) == msg  # the hand-written sample is valid CDR
    _assert_image_fields(read_image(sample), msg)


def _hand_written(frame_id: bytes, encoding: bytes) -> bytes:
    """A little-endian mono8 1x1 sample whose strings are written byte for byte as given."""
    out = bytearray(b"\x00\x01\x00\x00")

    def u32(value: int) -> None:
        out.extend(b"\x00" * (-(len(out) - 4) % 4))
        out.extend(struct.pack("<I", value))

    u32(7)
    u32(8)
    u32(len(frame_id))
    out.extend(frame_id)
    u32(1)
    u32(1)
    u32(len(encoding))
    out.extend(encoding)
    out.append(0)
    u32(1)
    u32(1)
    out.append(9)
    return bytes(out)


# Strings that break CDR's rule (exactly one NUL, at the end) read as rclpy reads them.
@pytest.mark.parametrize("frame_id,encoding", [
    (b"cam\x00junk\x00", b"mono8\x00"),  # a NUL inside the frame id
    (b"cam\x00", b"mono8\x00xx\x00"),  # ... inside the encoding
    (b"cam", b"mono8"),  # no terminator at all
    (b"\x00", b"mono8\x00\x00\x00"),  # padding NULs
    (b"\xff\xfecam\x00", b"mono8\x00"),  # undecodable bytes
])
def test_strings_without_one_final_nul_read_as_rclpy_reads_them(frame_id, encoding):
    sample = _hand_written(frame_id, encoding)
    expected = deserialize_message(sample, Image)
    _assert_image_fields(read_image(sample), expected)
    assert expected.encoding == "mono8"


def test_other_encapsulations_fall_back_to_rclpy():
    msg = _image("cam", "rgb8", 2, 2, 6)
    sample = serialize_message(msg)
    assert sample[:2] == b"\x00\x01"
    # XCDR2 little endian: for these final types of 1- and 4-byte fields the body is the same.
    xcdr2 = b"\x00\x07" + sample[2:]
    with pytest.raises(UnsupportedEncapsulationError):
        read_image(xcdr2)
    assert deserialize_message(xcdr2, Image) == msg
    _assert_image_fields(image_fields(xcdr2, compressed=False), msg)
    # One rclpy cannot read either is the same InvalidImageError as a malformed plain sample.
    for encapsulation in (b"\x00\x02", b"\xff\xff"):
        with pytest.raises(InvalidImageError, match=f"0x{encapsulation.hex()} is not plain"):
            image_fields(encapsulation + sample[2:], compressed=False)


@pytest.mark.parametrize("sample", [b"", b"\x00", b"\x00\x01\x00"])
def test_too_short_for_a_header(sample):
    with pytest.raises(InvalidImageError, match="shorter than its 4-byte CDR header"):
        read_image(sample)
