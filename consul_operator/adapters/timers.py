"""Callbacks at deadlines on the monotonic clock, all run by one thread per `Timers`.

What used to be a thread per wait (a `threading.Timer` per Docker event, a
worker sleeping through a drain) is an entry in a heap here. Callbacks run on
the timer thread and must be quick: fire a trigger, queue work.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable

import structlog

log = structlog.get_logger()


class Timers:
    """A heap of (deadline, callback) and the one daemon thread that runs them when due.

    The thread starts with the first entry and ends with `close`; entries
    still pending then are dropped.
    """

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._latest: dict[Hashable, float] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def call_later(
        self, delay: float, callback: Callable[[], None], *, key: Hashable = None, coalesce: float = 0.0
    ) -> None:
        """Run ``callback`` ``delay`` seconds from now; see `call_at` for ``key`` and ``coalesce``."""
        self.call_at(self.clock() + delay, callback, key=key, coalesce=coalesce)

    def call_at(
        self, deadline: float, callback: Callable[[], None], *, key: Hashable = None, coalesce: float = 0.0
    ) -> None:
        """Run ``callback`` at ``deadline`` (monotonic seconds).

        With a ``key``: skip this entry when one of the same key is already due
        at most ``coalesce`` seconds before ``deadline`` and has not run yet
        (a burst of events then costs a few entries, not one per event).
        """
        with self._cond:
            if self._closed:
                return
            if key is not None:
                latest = self._latest.get(key)
                if latest is not None and latest <= deadline < latest + coalesce and latest >= self.clock():
                    return
                self._latest[key] = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Entries not run yet."""
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        """Drop pending entries and end the thread."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > self.clock()):
                    timeout = self._heap[0][0] - self.clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                log.exception("timer callback failed", timers=self.name)
