"""The one capped exponential back-off of the operator: how long to wait after n failures.

Pure: no clock, no I/O. Every retry in the operator asks `exponential` for
its wait and keeps its own count of failures:

* a failed loop pass, a lost Docker event stream, a failed NGINX reload:
  `retry_delay` (0.5 s doubling to 10 s: cheap even while a dependency is away);
* a lost watch: ``kv_state.watch`` (0.5 s, then 1 s);
* the agent's own registration with Consul: ``presence.Presence.heartbeat`` (a third of the TTL
  doubling to `RETRY_CAP`);
* a crashing service, a failing container or registration action, a service
  whose leader writes Consul refuses: a `Backoff` value (1 s doubling to 60 s),
  which also remembers when the next try may start and why the last one failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# base * 2**30 passes any cap in use; a bounded exponent keeps a long failure
# streak from overflowing the float conversion.
_MAX_EXPONENT: Final = 30

RETRY_BASE: Final = 0.5
"""Seconds before the first retry of a failed pass."""
RETRY_CAP: Final = 10.0
"""The longest wait between retries of a pass; cheap even while a dependency is away."""

BACKOFF_BASE: Final = 1.0
"""Wait after the first failure of a service or action, in seconds; it doubles with each further one."""
BACKOFF_CAP: Final = 60.0
"""The longest wait between two tries of a failing service or action, in seconds."""


def exponential(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0 for none, then base, 2*base, ... up to cap."""
    if failures <= 0:
        return 0.0
    return float(min(base * 2.0 ** min(failures - 1, _MAX_EXPONENT), cap))


def retry_delay(failures: int) -> float:
    """Capped exponential back-off after ``failures`` consecutive failed passes (at least one)."""
    return exponential(max(failures, 1), RETRY_BASE, RETRY_CAP)


def backoff_delay(failures: int) -> float:
    """Seconds a failing service or action waits after ``failures`` consecutive failures (0 for none)."""
    return exponential(failures, BACKOFF_BASE, BACKOFF_CAP)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Consecutive failures of one service (or one action) on this host, and when to try again.

    ``retry_at`` is on this process's monotonic clock (``time.monotonic``), so
    that a step of the wall clock neither stretches nor skips a wait.
    ``spec_hash`` is the spec that failed: only a long run of a container of
    that spec ends the streak (during a rollout, the old spec's containers
    running fine say nothing about the new one).
    """

    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    spec_hash: str = ""

    def ready(self, mono: float) -> bool:
        """Whether a new try may start at monotonic time ``mono``."""
        return mono >= self.retry_at


def backoff_after_failure(previous: Backoff, mono: float, error: str, spec_hash: str = "") -> Backoff:
    """One more failure (of ``spec_hash``) at monotonic ``mono``: the next try waits twice as long, capped."""
    failures = previous.failures + 1
    return Backoff(
        failures=failures, retry_at=mono + backoff_delay(failures), last_error=error, spec_hash=spec_hash
    )
