"""How often the tests' waits look at their condition (tests/support/staging.py's `wait_until`)."""

from __future__ import annotations

import pytest

from tests.support.staging import QUICK_POLL, SLOW_POLL, poll_interval, wait_until


@pytest.mark.parametrize(
    ("waited", "interval"),
    [
        pytest.param(0.0, QUICK_POLL, id="at-the-start"),
        pytest.param(1.99, QUICK_POLL, id="just-before-two-seconds"),
        pytest.param(2.0, SLOW_POLL, id="from-two-seconds"),
        pytest.param(120.0, SLOW_POLL, id="a-long-wait"),
    ],
)
def test_poll_interval(waited: float, interval: float) -> None:
    """Ten looks a second for the first two seconds of a wait, four a second after."""
    assert poll_interval(waited) == interval


class _Clock:
    """A monotonic clock that moves only when the wait sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_wait_sleeps_the_schedule_and_an_interval_overrides_it() -> None:
    """A condition met after 3 s was looked at every 0.1 s, then every 0.25 s; ``interval`` fixes it."""
    clock = _Clock()
    wait_until(
        lambda: clock.now >= 3.0, timeout=10, what="three seconds", clock=clock.monotonic, sleep=clock.sleep
    )
    assert set(clock.sleeps) == {QUICK_POLL, SLOW_POLL}
    assert clock.sleeps.index(SLOW_POLL) in (19, 20)  # float sums of 0.1 reach 2.0 a step early or late
    clock.sleeps.clear()
    clock.now = 0.0
    wait_until(
        lambda: clock.now >= 3.0,
        timeout=10,
        what="three seconds",
        interval=0.5,
        clock=clock.monotonic,
        sleep=clock.sleep,
    )
    assert clock.sleeps == [0.5] * 6


def test_a_wait_that_times_out_says_what_it_waited_for() -> None:
    """Never met: an AssertionError naming the condition and the last error the condition raised."""
    clock = _Clock()

    def failing() -> bool:
        raise ValueError("not yet")

    with pytest.raises(AssertionError, match=r"timed out after 5s waiting for the thing .*not yet"):
        wait_until(failing, timeout=5, what="the thing", clock=clock.monotonic, sleep=clock.sleep)
