"""Pair a frame with the nearest-stamped item of another stream (message_filters replacement).

`message_filters.ApproximateTimeSynchronizer` is not available everywhere this package runs,
and a synchronizer would hold colour frames back until depth arrives. Here the colour path
never waits: depth messages are kept in a small stamp-sorted buffer as they arrive, and when
a colour frame's detections are ready the nearest depth within `max_dt_ns` is looked up. A
miss says why (nothing received, nearest too old, nearest too new), so diagnostics can report
it; the 2D outputs have already gone out.

The buffer holds a few frames, not seconds of depth (each is a full image), so a colour frame
whose inference outlasts the buffer would find its depth gone. Colour stamps that may still be
paired are therefore held (`hold`): the items nearest to a held stamp are kept past the
capacity until `nearest(..., release=True)` or until newer holds push the hold out.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
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
                 jump_back_ns: int = 1_000_000_000, received_holds: int = 2,
                 taken_holds: int = 8):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if received_holds < 0 or taken_holds < 0:
            raise ValueError(f"hold counts must be >= 0, got {received_holds}, {taken_holds}")
        # Query stamps whose nearest items are kept past the capacity (`hold`).
        self._received_holds: deque[int] = deque(maxlen=received_holds)
        self._taken_holds: deque[int] = deque(maxlen=taken_holds)
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
            self._stamps.insert(i, stamp_ns)
            self._items.insert(i, item)
            self._evict()

    def _evict(self) -> None:
        """Keep the newest `capacity` items and, besides them, those nearest to a held stamp
        (at most capacity + 2 x holds items); drop the rest, oldest first."""
        if len(self._stamps) <= self._capacity:
            return
        kept: set[int] = set()
        for held in (*self._received_holds, *self._taken_holds):
            j = bisect.bisect_left(self._stamps, held)
            kept.update(k for k in (j - 1, j) if 0 <= k < len(self._stamps))
        newest = len(self._stamps) - self._capacity
        drop = [k for k in range(newest) if k not in kept]
        for k in reversed(drop):
            del self._stamps[k], self._items[k]

    def hold(self, stamp_ns: int, taken: bool = False) -> None:
        """Keep the items nearest to `stamp_ns` until it is paired (`nearest(release=True)`).

        Args:
            stamp_ns: A query stamp that may be looked up later (a colour frame's).
            taken: False when the query was only received (the last `received_holds` of those
                are held: a newer colour frame replaces a waiting one); True once it is
                being processed (the last `taken_holds` of those are held, however many
                frames arrive meanwhile).
        """
        with self._lock:
            (self._taken_holds if taken else self._received_holds).append(int(stamp_ns))

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()
            self._received_holds.clear()
            self._taken_holds.clear()

    def nearest(self, stamp_ns: int, max_dt_ns: int, release: bool = False) -> Pairing[T]:
        """The item whose stamp is nearest to `stamp_ns` if within `max_dt_ns` (inclusive);
        ties go to the older item. `release`: the query's holds end (it is paired now)."""
        with self._lock:
            try:
                return self._nearest(stamp_ns, max_dt_ns)
            finally:
                if release:
                    for holds in (self._received_holds, self._taken_holds):
                        while stamp_ns in holds:
                            holds.remove(stamp_ns)
                    self._evict()

    def _nearest(self, stamp_ns: int, max_dt_ns: int) -> Pairing[T]:
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
