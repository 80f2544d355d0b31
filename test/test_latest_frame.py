"""Latest-frame semantics (pure core)."""

import threading
import time

from sam3_ros.core.latest_frame import LatestSlot


def test_newest_item_wins_and_replaced_items_count_as_dropped():
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(0) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(0) is None


def test_slow_consumer_never_builds_a_queue():
    slot: LatestSlot[int] = LatestSlot()
    taken: list[int] = []

    def worker():
        while (item := slot.take(1.0)) is not None:
            taken.append(item)
            time.sleep(0.01)  # a model 10x slower than the producer

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(200):
        slot.put(i)
        time.sleep(0.001)
    time.sleep(0.05)
    slot.close()
    thread.join(2)
    assert taken[-1] == 199  # the last frame is always processed
    assert taken == sorted(taken)  # never an older frame after a newer one
    assert len(taken) + slot.dropped == 200


def test_close_releases_waiter_and_clear_discards():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    slot.clear()
    assert slot.dropped == 0
    result = []
    thread = threading.Thread(target=lambda: result.append(slot.take(5)))
    thread.start()
    slot.close()
    thread.join(2)
    assert result == [None]
