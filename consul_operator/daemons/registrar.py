"""Where a started replica waits for its own check before it is registered: a thread of its own.

A start's registration waits for the replica's check to pass (`probe`), at
most one check interval (`catalog.CatalogActuator.register_started`). On a
pool shared by every service (four threads), four replicas whose ``/health``
never answered (a check timeout of up to an hour) held every thread, and
every other replica of the host then waited behind them, past the 10 s the
README promises. Here each registration waits on its own thread, so a
health endpoint that hangs delays nobody else's: each waits at most its own
interval. `MAX_PROBING` bounds the threads: past it, a registration does not
wait for its check at all (it starts critical, and Consul's runs decide, as
for any registration), which delays it by nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

MAX_PROBING = 64
"""Registrations waiting for their check at once, at most (each on its own thread)."""


class Registrar:
    """Runs each registration on a thread of its own, up to ``limit`` of them waiting for a check."""

    def __init__(self, limit: int = MAX_PROBING) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._closed = False

    def submit(self, register: Callable[[bool], None]) -> None:
        """Run ``register(probe)`` on its own thread; ``probe`` is False when ``limit`` threads wait
        already (then it registers without waiting for its check)."""
        if self._closed:
            return
        probe = self._slots.acquire(blocking=False)

        def run() -> None:
            try:
                register(probe)
            finally:
                if probe:
                    self._slots.release()

        threading.Thread(target=run, name="register", daemon=True).start()

    def shutdown(self) -> None:
        """Start no more registrations (those waiting finish on their own, each within its interval)."""
        self._closed = True
