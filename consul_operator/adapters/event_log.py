"""Recording events (`events`) off the hot path, and reading them back.

`record` only appends to a bounded in-memory buffer: a start, a crash or a
leader pass never waits on Consul for an event. A background flusher
(`start_flusher`) takes what the buffer holds every `FLUSH_EVERY` seconds,
collapses it into this daemon's records (``operator/events/<service>/<host>``,
one writer per key, each within `events.MAX_RECORD_BYTES`) and writes them in
as few transactions as fit (`ConsulClient.write_records`): a record Consul
refuses keeps its events for the next flush, and every other is written.
While Consul is away the buffer keeps the newest `BUFFER_SIZE` events and
drops the oldest (``operator_events_dropped_total``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.interfaces import KVStore
from consul_operator.core.errors import ConsulError, refusal_reason
from consul_operator.core.events import (
    ServiceEvent,
    add_events,
    merge_records,
    new_event,
    parse_record,
    record_json,
)
from consul_operator.core.keys import Layout
from consul_operator.core.records import record_bound

log = structlog.get_logger()

FLUSH_EVERY = 1.0
"""Seconds between flushes."""
BUFFER_SIZE = 1000
"""Events held in memory, at most, waiting for a flush."""


class EventRecorder:
    """The buffer and the flusher of one daemon."""

    def __init__(self, *, size: int = BUFFER_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.host = "local"  # `start_flusher` names the daemon
        self._lock = threading.Lock()
        self._buffer: deque[ServiceEvent] = deque()
        self._size = size
        self._records: dict[str, list[ServiceEvent]] = {}  # key -> what this daemon last wrote there
        self._wake = threading.Event()

    def record(self, service: str, reason: str, message: str, *, host: str | None = None) -> None:
        """Buffer one event; never blocks on I/O."""
        event = new_event(self.clock(), host or self.host, service, reason, message)
        metrics.events_recorded.labels(reason).inc()
        with self._lock:
            if len(self._buffer) >= self._size:
                self._buffer.popleft()
                metrics.events_dropped.inc()
            self._buffer.append(event)

    def pending(self) -> int:
        """Events waiting for a flush."""
        with self._lock:
            return len(self._buffer)

    def flush(self, consul: KVStore, layout: Layout) -> None:
        """Write what the buffer holds; on a failure the events go back to the buffer (oldest dropped)."""
        with self._lock:
            taken = list(self._buffer)
            self._buffer.clear()
        if not taken:
            return
        now = self.clock()
        by_key: dict[str, list[ServiceEvent]] = {}
        for event in taken:
            by_key.setdefault(layout.events_key(event.service, event.host), []).append(event)
        groups: dict[str, dict[str, bytes | None]] = {}
        updated: dict[str, list[ServiceEvent]] = {}
        written: set[str] = set()
        try:
            for key, new in by_key.items():
                if key not in self._records:  # after a restart: what an earlier run of ours wrote
                    self._records[key] = parse_record(_value(consul, key))
                updated[key] = add_events(self._records[key], new, now)
                groups[key] = {key: record_json(updated[key])}
            sent = consul.write_records(groups, max_value=lambda key: record_bound(layout, key))
        except ConsulError as exc:
            metrics.events_flushes.labels("error").inc()
            log.warning("events not written, kept for the next flush", error=str(exc), events=len(taken))
        else:
            for key in sent.groups:
                self._records[key] = updated[key]
                written.add(key)
            if sent.groups:
                metrics.events_flushes.labels("ok").inc()
            for key, refusal in sorted(sent.refused.items()):
                # Its own record only: the events of every other key are written.
                reason = refusal_reason(refusal)
                metrics.kv_write_failures.labels("events", reason).inc()
                metrics.events_flushes.labels("error").inc()
                log.warning(
                    "an event record was not written", key=key, reason=reason, error=str(refusal)[:300]
                )
        again = [e for e in taken if layout.events_key(e.service, e.host) not in written]
        if again:
            with self._lock:
                self._buffer.extendleft(reversed(again))
                while len(self._buffer) > self._size:
                    self._buffer.popleft()
                    metrics.events_dropped.inc()

    def run(self, consul: KVStore, layout: Layout, stop: threading.Event, every: float = FLUSH_EVERY) -> None:
        """Flush every ``every`` seconds until ``stop``, and once more at the end."""
        while not stop.wait(every):
            self.flush(consul, layout)
        self.flush(consul, layout)


def _value(consul: KVStore, key: str) -> bytes | None:
    entry = consul.kv_get(key).value
    return entry.value if entry is not None else None


RECORDER = EventRecorder()
"""The daemon's recorder: the executor, the leader and the LB record into it."""


def record(service: str, reason: str, message: str) -> None:
    """Buffer one event in `RECORDER`."""
    RECORDER.record(service, reason, message)


def start_flusher(consul: ConsulClient, layout: Layout, host: str, stop: threading.Event) -> threading.Thread:
    """Name this daemon's events after ``host`` and flush them in the background."""
    RECORDER.host = host
    thread = threading.Thread(target=RECORDER.run, args=(consul, layout, stop), name="events", daemon=True)
    thread.start()
    return thread


def read_events(
    consul: ConsulClient, layout: Layout, service: str | None = None, *, now: float | None = None
) -> list[ServiceEvent]:
    """The recent events of ``service`` (every service: None), merged over hosts, oldest first."""
    prefix = layout.service_events_prefix(service) if service else layout.events_prefix
    entries = consul.kv_list(prefix).value
    records = [parse_record(e.value) for e in entries]
    when = time.time() if now is None else now
    if service:
        return merge_records(records, when)
    # Across services: each service bounded on its own, then all of them in time order.
    per: dict[str, list[ServiceEvent]] = {}
    for record_ in records:
        for event in record_:
            per.setdefault(event.service, []).append(event)
    merged = [e for events in per.values() for e in merge_records([events], when)]
    return sorted(merged, key=lambda e: e.time)
