"""The leader's scheduling loop: manifests + live hosts -> placements, fenced writes.

Runs on every agent but does nothing unless this agent holds the leader
lock. Every pass re-reads the manifests, the hosts and the current
placements, computes the pure `schedule`, and writes only the records that
changed, in transactions that check the lock (`LeaderElection.fenced_write`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from consul_operator import metrics
from consul_operator.consul_client import ConsulClient
from consul_operator.desired_state import Manifest
from consul_operator.keys import Layout
from consul_operator.kv_state import read_manifests, read_placements
from consul_operator.leader import LeaderElection
from consul_operator.loop import PassResult
from consul_operator.model import HostInfo, PlacementRecord
from consul_operator.presence import read_hosts
from consul_operator.reconcile import next_schedule_wakeup, schedule

log = structlog.get_logger()

# Consul 1.8 accepts at most 64 operations per transaction; one is the lock check.
MAX_WRITES_PER_TXN = 63


@dataclass
class Scheduler:
    """The leader's pass."""

    consul: ConsulClient
    layout: Layout
    election: LeaderElection
    cluster: str
    lost_grace: float
    clock: Callable[[], float] = time.time
    # When this leader first saw each host not live; a new leader starts afresh,
    # which only ever lengthens a grace period, never shortens it.
    lost_since: dict[str, float] = field(default_factory=dict)

    def reconcile(self) -> PassResult:
        """One scheduling pass (a no-op unless we lead)."""
        if not self.election.is_leader:
            self.lost_since.clear()
            return PassResult()
        now = self.clock()
        manifests = read_manifests(self.consul, self.layout)
        current = read_placements(self.consul, self.layout)
        hosts = self._hosts(current, now)
        valid = {n: (m if isinstance(m, Manifest) else None) for n, m in manifests.items()}
        decided = schedule(valid, hosts, current, now, self.lost_grace)

        writes: dict[str, bytes | None] = {
            self.layout.placement_key(name): record.to_json()
            for name, record in decided.items()
            if not record.same_decision(current.get(name))
        }
        writes.update({self.layout.placement_key(n): None for n in current if n not in decided})
        items = sorted(writes.items())
        for start in range(0, len(items), MAX_WRITES_PER_TXN):
            self.election.fenced_write(dict(items[start : start + MAX_WRITES_PER_TXN]))
        if writes:
            metrics.placement_writes.inc(len(writes))
            log.info("placements written", changed=sorted(k.rsplit("/", 1)[1] for k in writes))
        self._export(manifests, decided)

        wake = next_schedule_wakeup(hosts, self.lost_grace, now)
        return PassResult(requeue_after=None if wake is None else max(0.0, wake - now) + 0.05)

    def _hosts(self, current: dict[str, PlacementRecord], now: float) -> list[HostInfo]:
        """Every host we know of: registered agents, and hosts that still hold replicas."""
        known = read_hosts(self.consul, self.cluster)
        for record in current.values():
            for host in record.hosts:
                known.setdefault(host, (False, {}))
        hosts = []
        for name, (live, labels) in sorted(known.items()):
            if live:
                self.lost_since.pop(name, None)
            else:
                self.lost_since.setdefault(name, now)
            hosts.append(HostInfo(name, labels, live, None if live else self.lost_since[name]))
        return hosts

    def _export(self, manifests: Mapping[str, object], decided: dict[str, PlacementRecord]) -> None:
        for name, manifest in manifests.items():
            metrics.manifest_valid.labels(name).set(1 if isinstance(manifest, Manifest) else 0)
            if isinstance(manifest, Manifest):
                metrics.desired_replicas.labels(name).set(manifest.replicas)
            if name in decided:
                metrics.unplaced_replicas.labels(name).set(decided[name].unplaced)
