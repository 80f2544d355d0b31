"""Bit-packed masks: 1 bit per pixel, the wire format of `Detection.mask_bits`.

Layout: the (height, width) mask row-major, rows not padded, 8 pixels per byte, the first
pixel in the most significant bit, 1 = object, ceil(height * width / 8) bytes with the trailing
bits 0 (numpy's `packbits` / `unpackbits` with the default big bit order).
"""

from __future__ import annotations

import numpy as np

from sam3_ros.core.errors import InvalidDetectionsError


def packed_size(height: int, width: int) -> int:
    """Bytes of a packed (height, width) mask: ceil(height * width / 8)."""
    return (height * width + 7) // 8


def pack_mask_bits(mask: np.ndarray) -> np.ndarray:
    """Pack a 2-D mask (nonzero = object) into bits.

    Args:
        mask: (H, W) bool or integer array; any strides (a crop view of a larger mask is
            fine).

    Returns:
        (ceil(H * W / 8),) uint8, C-contiguous.

    Raises:
        InvalidDetectionsError: `mask` is not 2-D.
    """
    if mask.ndim != 2:
        raise InvalidDetectionsError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return np.packbits(mask, axis=None)


def unpack_mask_bits(bits: np.ndarray | bytes | memoryview, height: int,
                     width: int) -> np.ndarray:
    """Unpack a mask packed by `pack_mask_bits`.

    Args:
        bits: ceil(height * width / 8) bytes (numpy uint8, bytes, or any buffer such as the
            array.array of a received message; not copied before unpacking).
        height: Mask rows (>= 0).
        width: Mask columns (>= 0).

    Returns:
        (height, width) bool mask.

    Raises:
        InvalidDetectionsError: negative size, `bits` is not a byte buffer, the byte count does
            not match the size, or a trailing (padding) bit is set.
    """
    if height < 0 or width < 0:
        raise InvalidDetectionsError(f"mask size must be >= 0, got {width}x{height}")
    if isinstance(bits, np.ndarray):
        flat = bits
    else:
        try:
            view = memoryview(bits)
        except TypeError:
            raise InvalidDetectionsError(
                f"mask bits must be a byte buffer, got {type(bits).__name__}") from None
        if view.itemsize != 1:
            raise InvalidDetectionsError(
                f"mask bits must be a byte buffer, got items of {view.itemsize} bytes")
        flat = np.frombuffer(view, np.uint8)
    expected = packed_size(height, width)
    if flat.dtype != np.uint8 or flat.ndim != 1 or flat.size != expected:
        raise InvalidDetectionsError(
            f"a packed {width}x{height} mask has {expected} bytes (uint8, 1-D), got "
            f"{flat.size} ({flat.dtype}, shape {flat.shape})")
    padding = 8 * expected - height * width
    if padding and int(flat[-1]) & ((1 << padding) - 1):
        # Set padding bits mean the producer used another layout (e.g. padded rows).
        raise InvalidDetectionsError(
            f"the last {padding} bits of a packed {width}x{height} mask must be 0, got last "
            f"byte {int(flat[-1]):#04x}")
    return np.unpackbits(flat, count=height * width).reshape(height, width).view(bool)
