"""A steady, bounded trickle of requests through the load balancer, recording every outcome."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

from tests.support.served import get


@dataclass
class Outcome:
    """One request: the status (0 for a connection failure) and the body or the error."""

    at: float
    status: int
    body: str
    took: float = 0.0  # seconds the request took (a failure's start is ``at - took``)


@dataclass
class Load:
    """GET http://<address>:<port>/ with ``Host: <host>`` every ``interval`` s, for at most ``limit`` s."""

    address: str
    host: str
    port: int = 80
    interval: float = 0.02
    limit: float = 120.0
    timeout: float = 10.0  # per request
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.outcomes.append(self._one())
            self._stop.wait(self.interval)

    def _one(self) -> Outcome:
        started = time.monotonic()
        try:
            status, body = get(self.address, self.host, port=self.port, timeout=self.timeout)
        except Exception as exc:  # refused, reset, cut off mid-body (IncompleteRead): all failures
            return Outcome(time.time(), 0, repr(exc), time.monotonic() - started)
        return Outcome(time.time(), status, body, time.monotonic() - started)

    @property
    def failures(self) -> list[Outcome]:
        """Every request that did not get a 200."""
        return [o for o in list(self.outcomes) if o.status != 200]

    def bodies_since(self, since: float) -> set[str]:
        """The distinct answers of successful requests after ``since``."""
        return {o.body for o in list(self.outcomes) if o.at > since and o.status == 200}
