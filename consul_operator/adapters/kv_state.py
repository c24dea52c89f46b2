"""Reading the shared state out of Consul KV, and watching it with blocking queries.

Reads never guess: a failed read raises (`ConsulError`), so that no loop
ever acts on missing data, and a manifest that does not validate comes back
as its `ManifestError` rather than disappearing. Manifests and placements are
read in Consul's ``consistent`` mode: right after a whole cluster restarts, a
default-mode read was seen to answer with an empty store, which looked like
"every service deleted" and drained everything (found by the outage test).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import structlog

from consul_operator.adapters.consul_client import BlockingQuery, ConsulClient, Indexed, KVEntry
from consul_operator.core.backoff import exponential
from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.errors import ConsulError
from consul_operator.core.keys import Layout
from consul_operator.core.records import (
    HostRecord,
    LeaderRecord,
    PlacementRecord,
    RolloutRecord,
    StatusRecord,
)

log = structlog.get_logger()

R = TypeVar("R")


class Firable(Protocol):
    """What a watch wakes up: a loop's `loop.Trigger` (a watch knows nothing of loops)."""

    def fire(self) -> None:
        """Ask for a pass soon."""


ManifestResult = Manifest | ManifestError

# A watch that lost Consul retries at most this far apart: once Consul is back,
# the loops hear about it within this time.
WATCH_RETRY_CAP = 5.0


def manifests_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, ManifestResult]:
    """The manifests among ``services/``'s entries, by name: parsed, or the reason it is invalid."""
    result: dict[str, ManifestResult] = {}
    for entry in entries:
        name = layout.service_name(entry.key)
        if name is None:
            continue  # "services/" itself, or nested keys: not manifests
        result[name] = _parse(entry.value, name)
    return result


PARSE_CACHE_BYTES = 32 * 1024 * 1024
"""What the parse cache may hold, counted in manifest bytes: a few hundred typical
manifests, or 64 of Consul's largest (512 KiB) values."""


class ParseCache:
    """Parsed manifests by their text, least recently used first out, bounded by bytes.

    Every pass re-reads KV, but YAML parsing of a hundred unchanged manifests
    would be most of an idle agent's CPU: each distinct text is parsed once.
    A count bound is not enough (4096 values of 512 KiB are 2 GiB): the
    texts held, which a parse result is proportional to, stay within
    ``budget`` bytes. A text larger than the budget is parsed and not kept.
    Shared by the host and schedule loops, so it takes a lock.
    """

    def __init__(self, budget: int = PARSE_CACHE_BYTES) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[bytes, str], ManifestResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of manifest text held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, value: bytes, name: str) -> ManifestResult:
        """The parsed manifest, or the reason it is invalid, of ``value`` stored as ``name``."""
        key = (value, name)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        result = _parse_uncached(value, name)
        size = len(value) + len(name)
        if size > self.budget:
            return result
        with self._lock:
            if key not in self._entries:
                self._entries[key] = result
                self._bytes += size
            while self._bytes > self.budget:
                (old_value, old_name), _ = self._entries.popitem(last=False)
                self._bytes -= len(old_value) + len(old_name)
        return result


def _parse_uncached(value: bytes, name: str) -> ManifestResult:
    try:
        return parse_manifest(value, key_name=name)
    except ManifestError as exc:
        return exc


PARSE_CACHE = ParseCache()


def _parse(value: bytes, name: str) -> ManifestResult:
    """Parse once per distinct manifest text (see `ParseCache`)."""
    return PARSE_CACHE.parse(value, name)


def _records_of(
    entries: Sequence[KVEntry], prefix: str, parse: Callable[[bytes], R], what: str
) -> dict[str, R]:
    """The JSON records among ``prefix``'s entries, by service; unreadable ones are skipped and logged."""
    records: dict[str, R] = {}
    for entry in entries:
        try:
            records[entry.key[len(prefix) :]] = parse(entry.value)
        except ValueError as exc:
            log.warning(f"ignoring a {what} record", key=entry.key, error=str(exc))
    return records


def placements_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, PlacementRecord]:
    """The placement records among ``operator/placement/``'s entries, by service."""
    return _records_of(entries, layout.placement_prefix, PlacementRecord.from_json, "placement")


def read_revision(consul: ConsulClient, layout: Layout, name: str, spec: str) -> Manifest | None:
    """The manifest of spec ``spec`` of ``name`` kept by the leader; None when absent or not that spec."""
    entry = consul.kv_get(layout.revision_key(name, spec), consistent=True).value
    if entry is None:
        return None
    manifest = _parse(entry.value, name)
    return manifest if isinstance(manifest, Manifest) and manifest.spec_hash() == spec else None


def rollouts_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, RolloutRecord]:
    """The rollout records among ``operator/rollout/``'s entries, by service."""
    return _records_of(entries, layout.rollout_prefix, RolloutRecord.from_json, "rollout")


def host_records_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, HostRecord]:
    """The hosts in maintenance among ``operator/hosts/``'s entries, by host; unreadable ones skipped, logged.

    An unreadable record is left out: its host is not cordoned until someone writes it again.
    """
    prefix = layout.hosts_prefix
    records: dict[str, HostRecord] = {}
    for entry in entries:
        host = entry.key[len(prefix) :]
        if not host or "/" in host:
            continue
        try:
            records[host] = HostRecord.from_json(entry.value, host=host)
        except ValueError as exc:
            log.warning("ignoring a host record", key=entry.key, error=str(exc))
    return records


StatusRecords = dict[str, dict[str, StatusRecord]]
"""``operator/status/`` records by service, then host."""


def read_statuses(
    consul: ConsulClient, layout: Layout, *, consistent: bool = False, keep_unreadable: bool = False
) -> StatusRecords:
    """``operator/status/<service>/<host>`` records: service -> host -> record.

    An unreadable record is left out, or with ``keep_unreadable`` kept as an
    empty record (the leader still sees that its host has a record, and can remove it).
    """
    entries = consul.kv_list(layout.status_prefix, consistent=consistent).value
    return statuses_of(entries, layout, keep_unreadable=keep_unreadable)


def statuses_of(
    entries: Sequence[KVEntry], layout: Layout, *, keep_unreadable: bool = False
) -> StatusRecords:
    """The status records among ``operator/status/``'s entries (`read_statuses`)."""
    statuses: StatusRecords = {}
    for entry in entries:
        service, _, host = entry.key[len(layout.status_prefix) :].partition("/")
        if not service or not host or "/" in host:
            continue
        try:
            record = StatusRecord.from_json(entry.value, service=service, host=host)
        except ValueError:
            if not keep_unreadable:
                continue
            record = StatusRecord(service, host)
        statuses.setdefault(service, {})[host] = record
    return statuses


def read_leader(consul: ConsulClient, layout: Layout) -> LeaderRecord | None:
    """Who holds the leader lock, and since when; None when nobody does."""
    entry = consul.kv_get(layout.leader_key, consistent=True).value
    if entry is None or not entry.session:
        return None
    try:
        return LeaderRecord.from_json(entry.value)
    except ValueError:
        return None


WHILE_IDLE = 0.5
"""Seconds a watch that is not `active` waits between looks at whether it has become so (no request)."""


def watch(
    what: str,
    fetch: Callable[[int, float], Indexed[object]],
    triggers: Sequence[Firable],
    stop: threading.Event,
    active: Callable[[], bool] | None = None,
) -> None:
    """Fire ``triggers`` whenever a blocking query on ``fetch`` sees a change; until ``stop``.

    The data itself is dropped: the loops re-read what they need (level-triggered).
    ``active``: the watch queries Consul only while it says so (the leader's
    watches); when it becomes active again, its first query fires the triggers.
    """
    query: BlockingQuery[object] = BlockingQuery(fetch)
    failures = 0
    while not stop.is_set():
        if active is not None and not active():
            query = BlockingQuery(fetch)  # afresh: the next query returns at once and fires
            stop.wait(WHILE_IDLE)
            continue
        try:
            changed, _ = query.next()
        except ConsulError as exc:
            failures += 1
            if failures == 1:
                log.warning("watch lost Consul", watch=what, error=str(exc))
            query.index = 0  # start afresh: the index may mean nothing to the next server
            stop.wait(exponential(failures, 0.5, WATCH_RETRY_CAP))  # 0.5 s, 1 s, ... 5 s
            continue
        if failures:
            log.info("watch reconnected", watch=what)
            failures = 0
            changed = True
        if changed:
            for trigger in triggers:
                trigger.fire()


def start_watch(
    what: str,
    fetch: Callable[[int, float], Indexed[object]],
    triggers: Sequence[Firable],
    stop: threading.Event,
    active: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Run `watch` in a daemon thread."""
    thread = threading.Thread(
        target=watch, args=(what, fetch, triggers, stop, active), name=f"watch-{what}", daemon=True
    )
    thread.start()
    return thread
