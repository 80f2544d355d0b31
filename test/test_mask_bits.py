"""Bit-packed masks (pure numpy, no ROS)."""

from __future__ import annotations

import array

import numpy as np
import pytest

from sam3_ros.core.errors import InvalidDetectionsError
from sam3_ros.core.mask_bits import pack_mask_bits, packed_size, unpack_mask_bits


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (1, 1), (3, 5), (8, 8), (7, 13), (480, 640)])
def test_round_trip(shape):
    mask = np.random.default_rng(sum(shape)).random(shape) > 0.5
    bits = pack_mask_bits(mask)
    assert bits.dtype == np.uint8 and bits.shape == (packed_size(*shape),)
    back = unpack_mask_bits(bits, *shape)
    assert back.dtype == bool and back.shape == shape
    np.testing.assert_array_equal(back, mask)


def test_layout_row_major_msb_first_trailing_zero():
    mask = np.zeros((2, 5), bool)
    mask[0, 0] = mask[1, 2] = True  # bits 0 and 7
    assert pack_mask_bits(mask).tolist() == [0b1000_0001, 0b0000_0000]
    mask[1, 4] = True  # bit 9: the second byte's second bit; the other 6 are padding
    assert pack_mask_bits(mask).tolist() == [0b1000_0001, 0b0100_0000]


def test_any_nonzero_value_and_strided_views():
    mono8 = np.zeros((20, 30), np.uint8)
    mono8[5:9, 10:17] = 255
    view = mono8[3:12, 8:20]  # not C-contiguous
    np.testing.assert_array_equal(unpack_mask_bits(pack_mask_bits(view), 9, 12), view > 0)


def test_unpack_accepts_buffers():
    bits = pack_mask_bits(np.eye(4, dtype=bool))
    for buffer in (bits.tobytes(), array.array("B", bits.tobytes()), memoryview(bits)):
        np.testing.assert_array_equal(unpack_mask_bits(buffer, 4, 4), np.eye(4, dtype=bool))


@pytest.mark.parametrize(
    ("bits", "height", "width", "error"),
    [
        (np.zeros(1, np.uint8), 3, 5, "5x3 mask has 2 bytes.*got 1"),
        (np.zeros(3, np.uint8), 3, 5, "5x3 mask has 2 bytes.*got 3"),
        (np.zeros(2, np.uint8), -1, 5, "must be >= 0"),
        (np.zeros(2, np.uint16), 3, 5, "uint16"),
        (np.zeros((1, 2), np.uint8), 3, 5, r"shape \(1, 2\)"),
        (np.array([0, 0b0000_0001], np.uint8), 3, 5, "last 1 bits.*must be 0, got last byte 0x01"),
        ([0, 0], 3, 5, "byte buffer, got list"),
        (array.array("H", [0]), 1, 16, "items of 2 bytes"),
    ],
)
def test_unpack_rejects_inconsistent_input(bits, height, width, error):
    with pytest.raises(InvalidDetectionsError, match=error):
        unpack_mask_bits(bits, height, width)


def test_pack_rejects_non_2d():
    with pytest.raises(InvalidDetectionsError, match=r"2-D.*\(2, 3, 4\)"):
        pack_mask_bits(np.zeros((2, 3, 4), bool))
