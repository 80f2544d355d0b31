"""Latest-frame hand-off between a camera callback and an inference worker."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-element mailbox: a new item replaces the waiting one, which counts as dropped.

    The camera callback `put`s every frame; the inference worker `take`s the newest. A 30 Hz
    camera and a 3 Hz model therefore never build a queue: the worker always starts on the
    newest frame, and latency stays one inference plus at most one frame period.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = 0
        """Items put since construction or `reset_counters`."""
        self.dropped = 0
        """Items replaced before the worker took them."""

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.received += 1
            self._cond.notify()

    def take(self, timeout_s: float | None = None) -> T | None:
        """Wait for an item and remove it; None on timeout or after `close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s):
                return None
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        """Discard the waiting item (not counted as dropped), e.g. on deactivate."""
        with self._cond:
            self._item = None

    def close(self) -> None:
        """Wake and release every waiting `take` (it returns None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def reset_counters(self) -> None:
        with self._cond:
            self.received = 0
            self.dropped = 0
