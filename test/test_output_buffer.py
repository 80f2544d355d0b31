"""OutputBuffer: results in order, never blocking the producer, bounded."""

from __future__ import annotations

import threading

import pytest

from sam3_ros.core.output_buffer import OutputBuffer


def test_items_come_out_in_order():
    buffer: OutputBuffer[int] = OutputBuffer(capacity=4)
    for value in (1, 2, 3):
        buffer.put(value)
    assert buffer.waiting() == 3
    assert [buffer.take(0.1) for _ in range(3)] == [1, 2, 3]
    assert buffer.take(0.01) is None  # timeout
    assert buffer.discarded == 0


def test_a_full_buffer_discards_the_oldest_and_counts_it():
    buffer: OutputBuffer[int] = OutputBuffer(capacity=2)
    for value in range(5):
        buffer.put(value)  # never blocks
    assert buffer.discarded == 3
    assert [buffer.take(0.1), buffer.take(0.1)] == [3, 4]


def test_close_releases_a_waiting_take_and_drops_later_puts():
    buffer: OutputBuffer[int] = OutputBuffer()
    got = []
    taker = threading.Thread(target=lambda: got.append(buffer.take()))
    taker.start()
    buffer.close()
    taker.join(5)
    assert not taker.is_alive() and got == [None]
    buffer.put(1)
    assert buffer.waiting() == 0 and buffer.take(0.01) is None
    buffer.reopen()
    buffer.put(2)
    assert buffer.take(0.1) == 2


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity):
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        OutputBuffer(capacity=capacity)
