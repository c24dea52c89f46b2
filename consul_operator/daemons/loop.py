"""Level-triggered loops: wake-ups without payload, and the one place that handles outcomes.

A `Trigger` only says "look again"; every pass re-reads the world. `run_loop`
is the counterpart of controller-runtime's ``reconcileHandler``: it turns the
outcome of a pass into the next wait, a retry with capped exponential
back-off, metric labels and a log level. Nothing else in the operator
decides how to react to a failed pass.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.health import HEALTH, Health
from consul_operator.adapters.timers import Timers
from consul_operator.core.backoff import retry_delay
from consul_operator.core.errors import (
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnavailable,
    DockerError,
    DockerUnavailable,
    NotLeader,
    OperatorError,
    WorkPending,
)

log = structlog.get_logger()


class Trigger:
    """A level-triggered wake-up: many `fire()`s before a wait count as one."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def fire(self) -> None:
        """Ask the loop to run a pass soon."""
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until fired or ``timeout``; True when fired. Clears the trigger."""
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired


class Batched:
    """Wake-ups of one kind, at most one per ``window`` seconds: a burst of them makes two passes.

    A fire wakes ``target`` at once when the last wake-up is ``window`` or
    more ago; fires within the window are gathered into one wake-up at its
    end (leading and trailing edge, like the load balancer's ``--coalesce``).
    For wake-ups that come in bursts (every replica's check changing as a
    deploy comes up, every finished action): a lone one is answered at once,
    a burst of 30 costs a few passes, not one per event.
    """

    def __init__(
        self, target: Trigger, window: float, timers: Timers, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.target = target
        self.window = window
        self._timers = timers
        self._clock = clock
        self._lock = threading.Lock()
        self._quiet_from = float("-inf")  # monotonic time from which a fire may wake at once
        self._pending = False

    def fire(self) -> None:
        """Wake ``target`` now, or at the end of the current window."""
        with self._lock:
            now = self._clock()
            if now >= self._quiet_from:
                self._quiet_from = now + self.window
            elif not self._pending:
                self._pending = True
                self._timers.call_at(self._quiet_from, self._flush)
                return
            else:
                return
        self.target.fire()

    def _flush(self) -> None:
        with self._lock:
            self._pending = False
            self._quiet_from = self._clock() + self.window
        self.target.fire()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: how a daemon is asked to stop (main thread only).

    The Python handler does nothing: CPython writes each signal's number to the wakeup pipe
    (`signal.set_wakeup_fd`) before it, and a thread of its own reads the pipe, logs the signal
    and sets the event. A handler that logged itself ran inside whatever the main thread was
    doing; when that was writing a log line, structlog's write lock was held by the very thread
    the handler interrupted, and the daemon hung for good: an agent sent SIGTERM 0.3 s after
    it started, while it logged "agent started", ran on past the test's 60 s (CI).
    """
    stop = threading.Event()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # CPython's requirement: a full pipe never blocks a handler
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _noted_by_the_wakeup_pipe)

    def relay() -> None:
        while not stop.is_set():
            for signum in os.read(read_end, 64):
                if signum in STOP_SIGNALS:
                    log.info("signal received, stopping", signal=signal.Signals(signum).name)
                    stop.set()

    threading.Thread(target=relay, name="signals", daemon=True).start()
    return stop


def _noted_by_the_wakeup_pipe(_signum: int, _frame: FrameType | None) -> None:
    """Nothing: the signal's number is in the wakeup pipe already (`stop_on_signals`)."""


def wait_for_stop(stop: threading.Event) -> None:
    """Block the main thread until ``stop`` is set.

    Short waits: the event is set by the thread that reads the wakeup pipe
    (`stop_on_signals`); a short wait also keeps the main thread able to run
    Python's (empty) handler soon.
    """
    while not stop.wait(0.2):
        pass


@dataclass(frozen=True, slots=True)
class PassResult:
    """What a successful pass asks of the loop: run again at the latest after ``requeue_after``."""

    requeue_after: float | None = None


def error_reason(exc: BaseException) -> str:
    """The bounded metric label for a failed pass."""
    if isinstance(exc, ConsulUnavailable):
        return "consul_unavailable"
    if isinstance(exc, ConsulPermissionDenied):
        return "permission_denied"
    if isinstance(exc, ConsulError):
        return "consul_error"
    if isinstance(exc, DockerUnavailable):
        return "docker_unavailable"
    if isinstance(exc, DockerError):
        return "docker_error"
    if isinstance(exc, NotLeader):
        return "not_leader"
    if isinstance(exc, WorkPending):
        return "work_pending"
    return "internal"


def run_loop(
    name: str,
    reconcile: Callable[[], PassResult],
    trigger: Trigger,
    stop: threading.Event,
    *,
    resync: float,
    clock: Callable[[], float] = time.monotonic,
    health: Health = HEALTH,
) -> None:
    """Run ``reconcile`` on every wake-up until ``stop`` is set.

    A pass runs when the trigger fires, when the pass's own ``requeue_after``
    expires, or every ``resync`` seconds as a safety net against a missed
    wake-up. A failed pass is retried with capped back-off; expected failures
    (a dependency away) log a warning, anything else an error with its traceback.
    Every good pass is recorded in ``health``: ``/healthz`` fails when the loop
    has had none for 3x ``resync``.
    """
    health.loop_started(name, resync, clock())
    failures = 0
    timeout: float | None = 0.0  # the first pass runs at once
    while not stop.is_set():
        fired = trigger.wait(timeout)
        if stop.is_set():
            return
        started = clock()
        log.debug("pass", loop=name, woken_by="trigger" if fired else "timer")
        try:
            result = reconcile()
        except Exception as exc:
            failures += 1
            reason = error_reason(exc)
            metrics.reconcile_errors.labels(name, reason).inc()
            timeout = retry_delay(failures)
            event = log.warning if isinstance(exc, OperatorError) else log.error
            event(
                "pass failed",
                loop=name,
                reason=reason,
                error=str(exc),
                retry_in=timeout,
                failures=failures,
                exc_info=not isinstance(exc, OperatorError),
            )
        else:
            if failures:
                log.info("pass succeeded again", loop=name, after_failures=failures)
            failures = 0
            metrics.last_successful_sync.labels(name).set_to_current_time()
            health.loop_passed(name, clock())
            wanted = result.requeue_after
            timeout = resync if wanted is None else max(0.0, min(wanted, resync))
        finally:
            metrics.reconcile_duration.labels(name).observe(clock() - started)
