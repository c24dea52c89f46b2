"""Restart back-off: capped exponential waits after failures, reset by a healthy run."""

from __future__ import annotations

import datetime
import time

import pytest
from freezegun import freeze_time

from consul_operator.core.backoff import BACKOFF_CAP, Backoff, backoff_after_failure, backoff_delay
from consul_operator.core.desired_state import Manifest
from consul_operator.core.host_plan import (
    MIN_RUN_SECONDS,
    backoff_after_crash,
    ends_streak,
    healthy_run,
    plan_host,
)
from consul_operator.core.model import (
    ContainerInfo,
    InFlight,
    RemoveDead,
    ServiceDesire,
    StartContainer,
)

NOW = 1_700_000_000.0
WEB = Manifest(name="web", image="hello:1", replicas=1, port=5000)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        pytest.param(0, 0.0, id="no-failure-no-wait"),
        pytest.param(1, 1.0, id="first-failure-1s"),
        pytest.param(2, 2.0, id="second-2s"),
        pytest.param(3, 4.0, id="third-4s"),
        pytest.param(6, 32.0, id="sixth-32s"),
        pytest.param(7, BACKOFF_CAP, id="seventh-capped"),
        pytest.param(10_000, BACKOFF_CAP, id="long-streak-capped-no-overflow"),
    ],
)
def test_delay_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    """The wait doubles with every consecutive failure and stops at the cap."""
    assert backoff_delay(failures) == delay


def test_failures_grow_capped_and_success_resets() -> None:
    """Driven by the clock: each failure waits twice as long up to 60 s; a success resets."""
    waits: list[float] = []
    with freeze_time("2024-05-01 12:00:00") as frozen:
        backoff = Backoff()
        for attempt in range(9):
            now = time.time()
            assert backoff.ready(now), f"attempt {attempt} should be allowed"
            backoff = backoff_after_failure(backoff, now, f"exited with code {attempt}")
            waits.append(backoff.retry_at - now)
            frozen.tick(datetime.timedelta(seconds=backoff.retry_at - now - 0.5))
            assert not backoff.ready(time.time()), "still waiting half a second before retry_at"
            frozen.tick(datetime.timedelta(seconds=0.5))
        assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
        assert backoff.failures == 9
        assert backoff.last_error == "exited with code 8"

        backoff = Backoff()  # a long enough run ends the streak (`ends_streak`): a fresh count
        assert backoff.ready(time.time())
        assert backoff_after_failure(backoff, time.time(), "again").retry_at == time.time() + 1


def test_crash_records_crash_looping_error() -> None:
    """A crashed container's removal becomes a failure whose error says it is crash-looping."""
    dead = ContainerInfo("d1", "web-d1", "web", "h", "exited", exit_code=1)
    removed = RemoveDead(dead, crashed=True, reason="exited with code 1 after 0.1s")
    backoff = backoff_after_crash(Backoff(failures=3, retry_at=NOW - 1), NOW, removed)
    assert backoff == Backoff(
        failures=4,
        retry_at=NOW + 8,
        last_error="crash-looping: exited with code 1 after 0.1s",
        spec_hash="h",
    )


def container(state: str, started_ago: float | None) -> ContainerInfo:
    started = None if started_ago is None else NOW - started_ago
    return ContainerInfo("c1", "web-c1", "web", WEB.spec_hash(), state, started_at=started)


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        pytest.param(container("running", MIN_RUN_SECONDS), True, id="ran-min-run"),
        pytest.param(container("running", 3600), True, id="ran-long"),
        pytest.param(container("running", MIN_RUN_SECONDS - 0.1), False, id="too-young"),
        pytest.param(container("running", None), False, id="start-unknown"),
        pytest.param(container("exited", 3600), False, id="not-running"),
    ],
)
def test_healthy_run(c: ContainerInfo, expected: bool) -> None:
    """A container counts as a success once it has been running MIN_RUN_SECONDS."""
    assert healthy_run(c, NOW) is expected


def test_crash_loop_end_to_end() -> None:
    """Plan, crash, back-off, retry: the agent's loop waits as the back-off says, then restarts."""
    desires = {"web": ServiceDesire("web", WEB, 1)}
    with freeze_time("2024-05-01 12:00:00") as frozen:
        now = time.time()
        crashed = ContainerInfo(
            "d1", "web-d1", "web", WEB.spec_hash(), "exited",
            started_at=now - 0.3, finished_at=now, exit_code=1,
        )  # fmt: skip
        plan = plan_host(desires, [crashed], [], InFlight(), {}, now, mono=time.monotonic())
        (removal,) = plan.actions
        assert isinstance(removal, RemoveDead) and removal.crashed
        # The agent removes it and records the failure, as the plan already assumed.
        backoff = backoff_after_crash(Backoff(), time.monotonic(), removal)
        assert plan.wake_at == backoff.retry_at

        backoffs = {"web": backoff}
        plan = plan_host(desires, [], [], InFlight(), backoffs, time.time(), mono=time.monotonic())
        assert plan.actions == () and plan.wake_at == backoff.retry_at

        frozen.tick(datetime.timedelta(seconds=plan.wake_at - time.monotonic()))
        plan = plan_host(desires, [], [], InFlight(), backoffs, time.time(), mono=time.monotonic())
        assert len(plan.actions) == 1 and plan.wake_at is None


def test_only_a_long_run_of_the_failing_spec_ends_the_streak() -> None:
    """During a rollout, old-spec containers running fine do not reset the new spec's back-off."""
    backoff = Backoff(failures=3, retry_at=NOW + 4, last_error="crash-looping", spec_hash="new")
    old = ContainerInfo("o1", "web-o1", "web", "old", "running", started_at=NOW - 3600)
    new = ContainerInfo("n1", "web-n1", "web", "new", "running", started_at=NOW - 3600)
    young = ContainerInfo("n2", "web-n2", "web", "new", "running", started_at=NOW - 1)
    assert not ends_streak(backoff, old, NOW)
    assert not ends_streak(backoff, young, NOW)
    assert ends_streak(backoff, new, NOW)


HOUR = 3600.0
MONO = 5_000.0  # a monotonic clock: seconds since some boot, unrelated to the wall clock


@pytest.mark.parametrize(
    ("wall_step", "mono_later", "starts"),
    [
        pytest.param(+HOUR, 0.5, False, id="wall-an-hour-ahead-still-waits"),
        pytest.param(-HOUR, 0.5, False, id="wall-an-hour-back-still-waits"),
        pytest.param(-HOUR, 2.0, True, id="wall-an-hour-back-retries-on-time"),
        pytest.param(0.0, 2.0, True, id="no-step-retries-on-time"),
    ],
)
def test_wall_clock_step_changes_no_backoff(wall_step: float, mono_later: float, starts: bool) -> None:
    """Back-off runs on the monotonic clock: an NTP step of an hour neither skips nor stretches the wait."""
    desires = {"web": ServiceDesire("web", WEB, 1)}
    backoff = backoff_after_failure(Backoff(failures=1), MONO, "start failed")  # second failure: 2 s
    assert backoff.retry_at == MONO + 2
    plan = plan_host(desires, [], [], InFlight(), {"web": backoff}, NOW + wall_step, mono=MONO + mono_later)
    assert (len(plan.actions) == 1) is starts
    assert plan.wake_at == (None if starts else MONO + 2)


@pytest.mark.parametrize(
    ("started_ago", "ends"),
    [
        pytest.param(MIN_RUN_SECONDS + 1, True, id="long-run-ends-streak"),
        pytest.param(1.0, False, id="young-run-keeps-streak"),
    ],
)
def test_streak_ends_on_docker_wall_times(started_ago: float, ends: bool) -> None:
    """The plan ends a streak when Docker's start time is MIN_RUN_SECONDS behind the wall clock."""
    desires = {"web": ServiceDesire("web", WEB, 2)}
    running = ContainerInfo(
        "c1", "web-c1", "web", WEB.spec_hash(), "running", host_port=30000, started_at=NOW - started_ago
    )
    backoff = Backoff(failures=3, retry_at=MONO + 4, last_error="crash-looping: x")
    plan = plan_host(desires, [running], [], InFlight(), {"web": backoff}, NOW, mono=MONO)
    assert any(isinstance(a, StartContainer) for a in plan.actions) is ends
