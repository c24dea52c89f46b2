"""What ``/healthz`` answers: the loops' last good pass and the reachability of dependencies.

Two kinds of facts are recorded, both cheap and thread-safe:

* every loop (`loop.run_loop`) says when it started, its resync period and
  when its last pass succeeded;
* the clients of Consul and Docker report every request's outcome
  (reachable or not, with the reason), and a daemon may register a *probe*
  asked at check time (the load balancer: can NGINX be connected to).

`problems` is the decision, a pure function of those facts and ``now``
(monotonic seconds): a loop is stale when it has not completed a pass
within ``STALE_FACTOR`` times its resync (measured from its start before
its first pass); a dependency is down when its last report says so. The
answer names each failing loop or dependency, one per line.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

STALE_FACTOR = 3.0  # a loop without a good pass for this many resync periods is unhealthy
DEPENDENCIES = ("consul", "docker", "nginx")


@dataclass(frozen=True, slots=True)
class LoopState:
    """One loop as health sees it: monotonic times of its start and last good pass."""

    resync: float
    started: float
    last_ok: float | None = None


@dataclass(frozen=True, slots=True)
class Reachability:
    """The last outcome reported for one dependency."""

    ok: bool
    reason: str = ""


def problems(
    loops: Mapping[str, LoopState],
    dependencies: Mapping[str, Reachability],
    now: float,
    *,
    factor: float = STALE_FACTOR,
    exclude: Collection[str] = (),
) -> list[str]:
    """Why the daemon is unhealthy, one line per loop or dependency; empty when healthy.

    Dependencies named in ``exclude`` are not judged (Kubernetes' ``/livez?exclude=etcd``):
    keepalived's check of `operator lb` leaves Consul to its own check, which knows a
    restart of the local agent from a cut (deploy/keepalived/consul-has-leader).
    """
    found: list[str] = []
    for name, dep in sorted(dependencies.items()):
        if not dep.ok and name not in exclude:
            found.append(f"{name}: unreachable: {dep.reason}" if dep.reason else f"{name}: unreachable")
    for name, loop in sorted(loops.items()):
        limit = factor * loop.resync
        since = loop.last_ok if loop.last_ok is not None else loop.started
        age = now - since
        if age > limit:
            what = "no successful pass" if loop.last_ok is None else "last successful pass"
            limits = f"limit {limit:.0f}s = {factor:g}x resync {loop.resync:g}s"
            found.append(f"loop {name}: {what} for {age:.0f}s ({limits})")
    return found


class Health:
    """The facts of one process, recorded by its loops and clients, read by ``/healthz``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._loops: dict[str, LoopState] = {}
        self._deps: dict[str, Reachability] = {}
        self._probes: dict[str, Callable[[], str | None]] = {}

    def loop_started(self, name: str, resync: float, now: float | None = None) -> None:
        """A loop begins: it has ``STALE_FACTOR`` x ``resync`` for its first good pass."""
        with self._lock:
            self._loops[name] = LoopState(resync, self._clock() if now is None else now)

    def loop_passed(self, name: str, now: float | None = None) -> None:
        """A pass of loop ``name`` succeeded."""
        at = self._clock() if now is None else now
        with self._lock:
            state = self._loops.get(name) or LoopState(float("inf"), at)
            self._loops[name] = LoopState(state.resync, state.started, at)

    def report(self, dependency: str, ok: bool, reason: str = "") -> None:
        """The outcome of a request to ``dependency`` (one of `DEPENDENCIES`)."""
        value = Reachability(ok, "" if ok else reason)
        if self._deps.get(dependency) == value:
            return  # the common case, every request: no lock needed to keep it
        with self._lock:
            self._deps[dependency] = value

    def add_probe(self, dependency: str, probe: Callable[[], str | None]) -> None:
        """Ask ``probe`` at every check: None when ``dependency`` is reachable, else the reason."""
        with self._lock:
            self._probes[dependency] = probe

    def problems(self, exclude: Collection[str] = ()) -> list[str]:
        """What `problems` finds now, probes asked first (but those of ``exclude``d dependencies)."""
        with self._lock:
            probes = {name: probe for name, probe in self._probes.items() if name not in exclude}
        for dependency, probe in probes.items():
            try:
                reason = probe()
            except Exception as exc:  # a probe must never take /healthz down
                reason = f"probe failed: {exc}"
            self.report(dependency, reason is None, reason or "")
        with self._lock:
            loops, deps = dict(self._loops), dict(self._deps)
        return problems(loops, deps, self._clock(), exclude=exclude)

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._loops.clear()
            self._deps.clear()
            self._probes.clear()


# The process's one record, like Prometheus' default registry.
HEALTH = Health()


def report(dependency: str, ok: bool, reason: str = "") -> None:
    """Record a request's outcome in the process's record."""
    HEALTH.report(dependency, ok, reason)


def tcp_probe(address: str, *, timeout: float = 1.0) -> Callable[[], str | None]:
    """A probe that connects to ``host:port`` (``0.0.0.0`` and ``::`` mean the loopback)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)

    def probe() -> str | None:
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return None
        except OSError as exc:
            return f"cannot connect to {address}: {exc.strerror or exc}"

    return probe
