"""`loop.Batched`: a burst of wake-ups makes one pass per window, and none is lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from consul_operator.adapters.timers import Timers
from consul_operator.daemons.loop import Batched, Trigger
from tests.support.staging import wait_until


class Counting(Trigger):
    """A trigger that counts how often it was fired."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = 0
        self._lock = threading.Lock()

    def fire(self) -> None:
        with self._lock:
            self.fired += 1
        super().fire()


@pytest.fixture
def timers() -> Iterator[Timers]:
    """A timer thread, closed afterwards."""
    t = Timers("test-batched")
    yield t
    t.close()


def test_a_burst_of_wakeups_fires_at_once_and_once_more_after_the_window(timers: Timers) -> None:
    """A hundred fires within the window wake the loop at once, and once more when the window ends."""
    target = Counting()
    batched = Batched(target, 0.5, timers)
    for _ in range(100):
        batched.fire()
    assert target.fired == 1, "the first fire of a burst must wake at once"
    wait_until(lambda: target.fired == 2, timeout=10, what="the wake-up for the rest of the burst")
    assert timers.pending == 0
    assert target.fired == 2


def test_a_lone_wakeup_after_the_window_fires_at_once(timers: Timers) -> None:
    """A fire after a quiet window is answered at once, not held back."""
    target = Counting()
    now = [0.0]
    batched = Batched(target, 0.1, timers, clock=lambda: now[0])
    batched.fire()
    assert target.fired == 1
    now[0] = 0.2
    batched.fire()
    assert target.fired == 2
