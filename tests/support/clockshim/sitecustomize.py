"""A wall-clock step for one process, for the chaos run's ``clock_step`` fault (tests only).

Python imports ``sitecustomize`` at start-up when it is on the path: staging.sh
puts this directory there for the agents when ``CLOCK_OFFSET_DIR`` is set.
``time.time()`` and ``time.time_ns()`` then add the number of seconds in the
file ``$CLOCK_OFFSET_FILE`` (re-read at most every 0.2 s), the way an NTP step
moves a host's wall clock; the monotonic clock is left alone, as NTP leaves it.

Debian's libfaketime (0.9.10) was tried first: with FAKETIME_DONT_FAKE_MONOTONIC=1
every timed wait of CPython 3.11 (clock_nanosleep / pthread_cond_timedwait on
CLOCK_MONOTONIC) fails with EINVAL, and without it the monotonic clock jumps
with the wall clock and timed waits hang.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("CLOCK_OFFSET_FILE")

if _FILE:
    _PATH: str = _FILE
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _cache = {"offset": 0.0, "read_at": -1.0}

    def _offset() -> float:
        now = _monotonic()
        if now - _cache["read_at"] >= 0.2:
            _cache["read_at"] = now
            try:
                with open(_PATH) as handle:
                    _cache["offset"] = float(handle.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _cache["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
