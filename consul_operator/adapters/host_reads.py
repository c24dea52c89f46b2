"""What a host pass reads out of Consul KV: manifests, placements and kept revisions (again only after
a change), and this host's own status records.

The manifests, placements and revisions are read again only once a watch on
them fired (`KVChanged`), at the latest every `KV_MAX_AGE` seconds: a pass
woken only by its own actions or Docker reuses its last read instead of
reading the whole prefixes again (at 1,000 services, 100 agents doing so on
every finished start kept three Consul servers saturated:
docs/benchmarks.md, *Scale*).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from consul_operator.adapters.interfaces import KVStore
from consul_operator.adapters.kv_state import (
    ManifestResult,
    TreeMirror,
    manifests_of,
    placements_of,
    read_revision,
    read_statuses,
)
from consul_operator.core.desired_state import Manifest
from consul_operator.core.host_plan import revisions_wanted
from consul_operator.core.keys import Layout
from consul_operator.core.records import PlacementRecord, StatusRecord

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


class HostKVReader:
    """Reads `HostKV` for ``host``; with ``changed``, again only after it fired (or `KV_MAX_AGE`),
    else on every read."""

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
