"""The status page's reads: the cluster as `operator status` sees it and the recent events (`page`).

Read at most once per refresh interval (`page.fresh`), whatever the request
rate: fifty requests a second to ``/`` made fifty snapshots of Consul a
second, each several requests, unauthenticated. One request reads; those
that come meanwhile get the last page's data (or, before the first read,
wait for it); a read that fails is remembered for the interval too, so that
a Consul outage is not hammered either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.event_log import read_events
from consul_operator.adapters.metrics import PageFn
from consul_operator.adapters.snapshot import read_snapshot
from consul_operator.core.desired_state import Resources
from consul_operator.core.events import ServiceEvent
from consul_operator.core.keys import Layout
from consul_operator.core.page import fresh, render_main, render_page
from consul_operator.core.status import StatusView, build_status


@dataclass(frozen=True, slots=True)
class PageData:
    """One read of what the page shows."""

    view: StatusView
    events: tuple[ServiceEvent, ...]
    capacities: dict[str, Resources]


class ReadEvery:
    """The page's data, read again only once it is older than the refresh interval (`page.fresh`).

    ``get(now)`` takes the monotonic time; ``read`` is called with none of
    this object's locks but its own reading one held, so a slow Consul
    stalls only the requests that have no data at all yet.
    """

    def __init__(self, read: Callable[[], PageData]) -> None:
        self._read = read
        self._reading = threading.Lock()
        self._last: PageData | Exception | None = None
        self._read_at: float | None = None

    def get(self, now: float) -> PageData:
        """The page's data as of the last read within the interval; raises what that read raised."""
        seen = self._read_at
        # One reader; the others serve the last data meanwhile (or wait for the first).
        if not fresh(seen, now) and self._reading.acquire(blocking=self._last is None):
            try:
                if self._read_at == seen:  # nobody read while this one waited
                    self._last = self._read_now()
                    self._read_at = now
            finally:
                self._reading.release()
        last = self._last
        if isinstance(last, Exception):
            raise last
        assert last is not None  # the first request waited for the first read
        return last

    def _read_now(self) -> PageData | Exception:
        metrics.status_page_reads.inc()
        try:
            return self._read()
        except Exception as exc:  # remembered for the interval, raised to each request
            return exc


def status_page(
    consul: ConsulClient,
    layout: Layout,
    cluster: str,
    served_by: str,
    *,
    mono: Callable[[], float] = time.monotonic,
) -> PageFn:
    """The page function `metrics.serve` serves on ``/``: Consul read at most once per refresh, rendered."""

    def read() -> PageData:
        now = time.time()
        snapshot = read_snapshot(consul, layout, cluster, now)
        events = read_events(consul, layout, now=now)
        return PageData(build_status(snapshot), tuple(events), dict(snapshot.capacities))

    cache = ReadEvery(read)

    def page(fragment: bool) -> str:
        data = cache.get(mono())
        if fragment:
            return render_main(data.view, data.events, data.capacities)
        return render_page(
            data.view, data.events, cluster=cluster, served_by=served_by, capacities=data.capacities
        )

    return page
