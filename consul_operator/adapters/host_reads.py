"""What a host pass reads out of Consul KV: its own work (or, for upgrades only, every manifest and
placement), the revisions it runs, and this host's own status records.

`WorkKVReader` (the default, issue 31) reads ``operator/work/<host>/``, the
work the leader wrote for this host, and the lock's holder in one read-only
transaction; the spec of each entry comes from ``operator/revisions/<name>/<spec>``,
which never changes once written, so it is read once and cached by (name, spec).
A missing work key, or one written under an older leader's session, means "keep
what runs": the last current work is kept (none yet: `WorkPending`, the pass
decides nothing). `HostKVReader` is the reader of agents before work keys
(``--read-placements``, for rolling upgrades only): ``services/`` and
``operator/placement/`` in full.

Either reads again only once a watch fired (`KVChanged`), at the latest every
`KV_MAX_AGE` seconds: a pass woken only by its own actions or Docker reuses its
last read (at 1,000 services, 100 agents reading the whole prefixes on every
finished start kept three Consul servers saturated: docs/benchmarks.md, *Scale*).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

import structlog

from consul_operator.adapters.interfaces import KVStore
from consul_operator.adapters.kv_state import (
    ManifestResult,
    TreeMirror,
    manifests_of,
    placements_of,
    read_revision,
    read_revisions,
    read_statuses,
)
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import WorkPending
from consul_operator.core.host_plan import revisions_wanted
from consul_operator.core.keys import Layout
from consul_operator.core.records import PlacementRecord, StatusRecord
from consul_operator.core.work import HostWork, current_work, specs_wanted, work_view

log = structlog.get_logger()

KV_MAX_AGE = 60.0
"""Seconds a pass may reuse its last read of KV at most, whatever the watches say: a safety net."""

HostKV = tuple[dict[str, ManifestResult], dict[str, PlacementRecord], dict[tuple[str, str], Manifest]]
"""Manifests, placements, and the kept revisions a host needs by (service, spec)."""


class KVChanged:
    """Whether what a host pass reads from KV may have changed: fired by the watches on it, taken by the pass.

    Starts fired.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._event.set()

    def fire(self) -> None:
        """A watch saw a change: the next pass reads KV again."""
        self._event.set()

    def take(self) -> bool:
        """Whether a change was seen since the last `take`; clears it."""
        fired = self._event.is_set()
        self._event.clear()
        return fired


class HostReader(Protocol):
    """What a host pass reads its `HostKV` with (`WorkKVReader`, or `HostKVReader` for upgrades)."""

    def read(self) -> HostKV:
        """Manifests, placements and the revisions wanted here (a failed read raises)."""
        ...

    def settle(self, services: Collection[str]) -> None:
        """``services`` have containers on this host now: what the reader keeps of others may go."""
        ...


class WorkKVReader:
    """Reads `HostKV` for ``host`` from its work keys (see the module doc); with ``changed``, again
    only after it fired (or `KV_MAX_AGE`), else on every read."""

    def __init__(
        self,
        consul: KVStore,
        layout: Layout,
        host: str,
        changed: KVChanged | None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consul, self.layout, self.host, self.changed, self.mono = consul, layout, host, changed, mono
        self._last: HostKV | None = None
        self._read_at = 0.0
        self._work: HostWork | None = None  # the last current work read
        self._kept: dict[tuple[str, str], Manifest] = {}  # revisions by (name, spec): never change
        self._gone: dict[str, Manifest] = {}  # left out of the current work, drained with these
        self._stale = False  # the last read found no current work (logged once)

    def read(self) -> HostKV:
        """This host's work as manifests, placements and revisions: read again, or the last read if
        unchanged; the last current one while the work key is missing or of an older leader."""
        changed = self.changed is None or self.changed.take()
        started = self.mono()
        if not changed and self._last is not None and started - self._read_at < KV_MAX_AGE:
            return self._last
        try:
            view = self._read()
        except BaseException:
            if self.changed is not None:
                self.changed.fire()  # not read: the next pass must try again
            raise
        self._last, self._read_at = view, started
        return view

    def _read(self) -> HostKV:
        layout, prefix = self.layout, self.layout.host_work_prefix(self.host)
        trees = self.consul.kv_trees([prefix, layout.leader_key], consistent=True)
        lock = next((e for e in trees[layout.leader_key] if e.key == layout.leader_key), None)
        values = [e.value for e in trees[prefix] if layout.work_host(e.key) is not None]
        work = current_work(self.host, values, None if lock is None else lock.session)
        if work is None:
            if not self._stale:
                log.info("no current work key for this host: keeping what runs", host=self.host)
            self._stale = True
            if self._last is None:
                raise WorkPending(f"no current work key for {self.host} yet (operator/work/{self.host}/)")
            return self._last
        self._stale = False
        if self._work is not None and self._last is not None:
            manifests = self._last[0]
            for name in set(self._work) - set(work):
                last = manifests.get(name)
                if isinstance(last, Manifest):
                    self._gone[name] = last
        for name in set(self._gone) & set(work):
            del self._gone[name]
        wanted = specs_wanted(work)
        missing = wanted - set(self._kept)
        if missing:
            self._kept.update(read_revisions(self.consul, layout, missing))
        self._kept = {k: m for k, m in self._kept.items() if k in wanted}
        self._work = work
        return work_view(self.host, work, self._kept, self._gone)

    def settle(self, services: Collection[str]) -> None:
        """Forget the services left out of the work that no longer have containers here."""
        for name in [n for n in self._gone if n not in services]:
            del self._gone[name]


class HostKVReader:
    """Reads `HostKV` for ``host`` from every manifest and placement (the reader of agents before work
    keys, kept for rolling upgrades: ``--read-placements``); with ``changed``, again only after it
    fired (or `KV_MAX_AGE`), else on every read."""

    def __init__(
        self,
        consul: KVStore,
        layout: Layout,
        host: str,
        changed: KVChanged | None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consul, self.layout, self.host, self.changed, self.mono = consul, layout, host, changed, mono
        self._last: HostKV | None = None
        self._read_at = 0.0
        self._services = TreeMirror(layout.services_prefix)  # only changed manifests are read

    def read(self) -> HostKV:
        """Manifests, placements and the revisions wanted here: read again, or the last read if unchanged.

        Manifests and placements are read consistently; a failed read raises,
        and the next read tries again.
        """
        changed = self.changed is None or self.changed.take()
        started = self.mono()
        if not changed and self._last is not None and started - self._read_at < KV_MAX_AGE:
            return self._last
        try:
            layout = self.layout
            trees = self.consul.kv_trees([layout.placement_prefix], consistent=True)
            manifests = manifests_of(self._services.read(self.consul), layout, by_index=True)
            placements = placements_of(trees[layout.placement_prefix], layout)
            revisions = {
                (name, spec): kept
                for name, spec in revisions_wanted(self.host, manifests, placements)
                if (kept := read_revision(self.consul, layout, name, spec)) is not None
            }
        except BaseException:
            if self.changed is not None:
                self.changed.fire()  # not read: the next pass must try again
            raise
        self._last, self._read_at = (manifests, placements, revisions), started
        return self._last

    def settle(self, services: Collection[str]) -> None:
        """Nothing kept beyond the last read."""


class OwnStatuses:
    """This host's status records of the services a pass reports, as KV holds them, read again only
    when ``operator/status/`` moved (issue 31).

    A host pass compares its reports with what KV holds, not with what it
    remembers writing; at 1,000 services that read was 16 transactions and
    1,000 records parsed on every pass, most of a pass's Consul time
    (`bench.host_profile`). A listing one level deep (a name per service)
    gives the index of every record under the prefix: taken before the read,
    an unmoved index means the records read then are the records now. Any
    host's write moves it, so a busy cluster reads on most passes; an idle
    one and a change elsewhere in KV do not. The pass reads through one, and
    the status check (`HostAgent.status_drifted`) through another (its thread's).
    """

    def __init__(self, consul: KVStore, layout: Layout, host: str) -> None:
        self.consul, self.layout, self.host = consul, layout, host
        self._kept: tuple[int, frozenset[str], dict[str, StatusRecord]] | None = None

    def read(self, services: Collection[str] | None) -> dict[str, StatusRecord]:
        """`read_own_statuses` of ``services`` (None: every record of this host, read whole)."""
        if services is None:
            self._kept = None
            return read_own_statuses(self.consul, self.layout, self.host, None)
        wanted = frozenset(services)
        index = self.consul.kv_keys(self.layout.status_prefix, separator="/").index
        kept = self._kept
        if kept is not None and index > 0 and kept[0] == index and kept[1] == wanted:
            return dict(kept[2])
        held = read_own_statuses(self.consul, self.layout, self.host, wanted)
        self._kept = (index, wanted, dict(held))
        return held


def read_own_statuses(
    consul: KVStore, layout: Layout, host: str, services: Collection[str] | None
) -> dict[str, StatusRecord]:
    """``host``'s status records of ``services`` (None: all of them) as KV holds them now; an
    unreadable one reads as a record with an error (it differs from any the host would write)."""
    if services is None:
        every = read_statuses(consul, layout)
        return {service: per_host[host] for service, per_host in every.items() if host in per_host}
    keys = {layout.status_key(service, host): service for service in services}
    held: dict[str, StatusRecord] = {}
    for key, entry in consul.kv_get_keys(list(keys)).items():
        try:
            held[keys[key]] = StatusRecord.from_json(entry.value, service=keys[key], host=host)
        except ValueError:
            held[keys[key]] = StatusRecord(keys[key], host, error="unreadable")
    return held
