"""`loop.Batched`: a burst of wake-ups makes one pass per window, and none is lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from consul_operator.loop import Batched, Trigger
from consul_operator.timers import Timers
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


def test_a_burst_of_wakeups_fires_once(timers: Timers) -> None:
    """A hundred fires within the window wake the loop once, after the window."""
    target = Counting()
    batched = Batched(target, 0.5, timers)
    for _ in range(100):
        batched.fire()
    assert target.fired == 0, "fired before its window was over"
    wait_until(lambda: target.fired == 1, timeout=10, what="the one wake-up")
    assert target.wait(0) is True


def test_a_wakeup_after_the_window_fires_again(timers: Timers) -> None:
    """A fire after the window has passed is not swallowed: it makes a pass of its own."""
    target = Counting()
    batched = Batched(target, 0.05, timers)
    batched.fire()
    wait_until(lambda: target.fired == 1, timeout=10, what="the first wake-up")
    batched.fire()
    wait_until(lambda: target.fired == 2, timeout=10, what="the second wake-up")
