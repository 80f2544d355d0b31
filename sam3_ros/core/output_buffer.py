"""Hand-off of results from the compute thread to a node's publisher thread."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class OutputBuffer(Generic[T]):
    """Results waiting for a publisher thread: FIFO, never blocks the producer.

    The compute thread serves every camera of the process, so it must not wait for one node's
    publishing. Results go out in order; when more than `capacity` wait (a publisher slower
    than the model), the oldest is discarded and counted, so nothing stale piles up.
    """

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._closed = False
        self.discarded = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.discarded += 1
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout_s: float | None = None) -> T | None:
        """The oldest waiting item; None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout_s):
                return None
            if self._closed:
                return None
            return self._items.popleft()

    def waiting(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Discard what waits and release `take` (returns None until `reopen`)."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self.discarded = 0
