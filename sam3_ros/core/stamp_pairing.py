"""Pair a frame with the nearest-stamped item of another stream (message_filters replacement).

`message_filters.ApproximateTimeSynchronizer` is not available everywhere this package runs,
and a synchronizer would hold colour frames back until depth arrives. Here the colour path
never waits: depth messages are kept in a small stamp-sorted buffer as they arrive, and when
a colour frame's detections are ready the nearest depth within `max_dt_ns` is looked up. A
miss says why (nothing received, nearest too old, nearest too new), so diagnostics can report
it; the 2D outputs have already gone out.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Pairing", "StampBuffer"]

T = TypeVar("T")


@dataclass(frozen=True)
class Pairing(Generic[T]):
    """Result of a lookup.

    Attributes:
        item: The paired item, or None when there is none within the tolerance.
        stamp_ns: Its stamp (None without a pairing).
        dt_ns: item stamp - query stamp of the nearest item (None when the buffer is empty),
            also on a miss (then |dt_ns| > max_dt_ns).
        reason: Empty when paired, else why not.
    """

    item: T | None
    stamp_ns: int | None
    dt_ns: int | None
    reason: str


class StampBuffer(Generic[T]):
    """The last `capacity` items of a stream, sorted by stamp; thread-safe.

    Items may arrive out of order; an item with a stamp already held replaces it. When full, the
    oldest stamp is dropped (not the oldest arrival), so a late, old message cannot push out
    newer ones. Two items in a row more than `jump_back_ns` older than the newest held mean
    the stream went back in time (a bag played in a loop, a simulation reset, a clock step):
    the buffer starts afresh with the second; otherwise a full buffer of "future" stamps
    would refuse every new item until deactivation. A single straggler (a relay's late burst)
    changes nothing. `what` names the stream in the reasons.
    """

    def __init__(self, capacity: int = 8, what: str = "depth image",
                 jump_back_ns: int = 1_000_000_000):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if jump_back_ns < 0:
            raise ValueError(f"jump_back_ns must be >= 0, got {jump_back_ns}")
        self._jump_back_ns = jump_back_ns
        self.jumps_back = 0
        self._behind_in_a_row = 0
        self._capacity = capacity
        self._what = what
        self._stamps: list[int] = []
        self._items: list[T] = []
        self._lock = threading.Lock()
        self.received = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def put(self, stamp_ns: int, item: T) -> None:
        """Add an item (cheap: call it from a subscription callback)."""
        with self._lock:
            self.received += 1
            if self._stamps and self._stamps[-1] - stamp_ns > self._jump_back_ns:
                self._behind_in_a_row += 1
                if self._behind_in_a_row >= 2:
                    self.jumps_back += 1
                    self._behind_in_a_row = 0
                    self._stamps.clear()
                    self._items.clear()
            else:
                self._behind_in_a_row = 0
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._items[i] = item
                return
            if len(self._stamps) >= self._capacity:
                if i == 0:
                    return  # older than everything held in a full buffer: the one to drop
                del self._stamps[0], self._items[0]
                i -= 1
            self._stamps.insert(i, stamp_ns)
            self._items.insert(i, item)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()

    def nearest(self, stamp_ns: int, max_dt_ns: int) -> Pairing[T]:
        """The item whose stamp is nearest to `stamp_ns` if within `max_dt_ns` (inclusive);
        ties go to the older item."""
        with self._lock:
            if not self._stamps:
                return Pairing(None, None, None, f"no {self._what} received")
            i = bisect.bisect_left(self._stamps, stamp_ns)
            candidates = [j for j in (i - 1, i) if 0 <= j < len(self._stamps)]
            j = min(candidates, key=lambda c: abs(self._stamps[c] - stamp_ns))
            dt = self._stamps[j] - stamp_ns
            if abs(dt) <= max_dt_ns:
                return Pairing(self._items[j], self._stamps[j], dt, "")
        direction = "older" if dt < 0 else "newer"
        return Pairing(None, None, dt, (
            f"no {self._what} within depth_max_dt {max_dt_ns / 1e6:.1f} ms of the colour stamp "
            f"(nearest is {abs(dt) / 1e6:.1f} ms {direction})"))
