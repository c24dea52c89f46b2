"""The leader's scheduling loop: manifests + live hosts -> placements, fenced writes.

Runs on every agent but does nothing unless this agent holds the leader
lock. Every pass re-reads the manifests, the hosts and the current
placements, computes the pure `schedule`, and writes only the records that
changed, in transactions that check the lock (`LeaderElection.fenced_write`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from consul_operator import metrics
from consul_operator.consul_client import ConsulClient
from consul_operator.desired_state import Manifest
from consul_operator.errors import ConsulPermissionDenied
from consul_operator.keys import Layout
from consul_operator.kv_state import read_manifests, read_placements
from consul_operator.leader import LeaderElection
from consul_operator.loop import PassResult
from consul_operator.model import HostInfo, PlacementRecord
from consul_operator.presence import AGENT_SERVICE, read_hosts
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
    # Per service: the manifest last seen, and when it changed if that change
    # has not converged yet (for operator_convergence_seconds).
    seen: dict[str, Manifest | None] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)

    def reconcile(self) -> PassResult:
        """One scheduling pass (a no-op unless we lead)."""
        if not self.election.is_leader:
            if self.seen:
                self._forget()
            return PassResult()
        now = self.clock()
        manifests = read_manifests(self.consul, self.layout)
        current = read_placements(self.consul, self.layout)
        hosts = self._hosts(current, now)
        valid = {n: (m if isinstance(m, Manifest) else None) for n, m in manifests.items()}
        decided = schedule(valid, hosts, current, now, self.lost_grace)

        me = self.election.host
        writes: dict[str, bytes | None] = {
            self.layout.placement_key(name): dataclasses.replace(record, written_by=me).to_json()
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
        self._observe(manifests, decided, now)

        wake = next_schedule_wakeup(hosts, self.lost_grace, now)
        return PassResult(requeue_after=None if wake is None else max(0.0, wake - now) + 0.05)

    def _hosts(self, current: dict[str, PlacementRecord], now: float) -> list[HostInfo]:
        """Every host we know of: registered agents, and hosts that still hold replicas."""
        known = read_hosts(self.consul, self.cluster)
        if not known.get(self.election.host, (False, {}))[0]:
            # The leader is live by definition (its lock hangs on its own checks). Not
            # seeing itself means a partial view, typically a token without node or
            # service read, for which Consul filters instead of refusing: scheduling
            # from it would move every replica away from "lost" hosts.
            raise ConsulPermissionDenied(
                f"the leader {self.election.host} does not see itself live in the health of "
                f"{AGENT_SERVICE!r}: the ACL token needs read on every node and service "
                '(node_prefix "" and service_prefix "" read); not scheduling from a partial view'
            )
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

    def _observe(
        self, manifests: Mapping[str, object], decided: Mapping[str, PlacementRecord], now: float
    ) -> None:
        """Export what only the leader knows: desired, healthy, drift, validity, convergence time."""
        for name in set(self.seen) - set(manifests):
            self._drop_service(name)
        passing = self.consul.passing_instances()  # one request for every service
        for name, manifest in manifests.items():
            valid = manifest if isinstance(manifest, Manifest) else None
            metrics.manifest_valid.labels(name).set(1 if valid else 0)
            if name in decided:
                metrics.unplaced_replicas.labels(name).set(decided[name].unplaced)
            if valid is None:
                continue
            if name in self.seen and self.seen[name] != valid:
                self.changed_at[name] = now
            self.seen[name] = valid
            healthy = passing.get(name, 0)
            metrics.desired_replicas.labels(name).set(valid.replicas)
            metrics.healthy_replicas.labels(name).set(healthy)
            metrics.drift_replicas.labels(name).set(valid.replicas - healthy)
            record = decided.get(name)
            done = healthy == valid.replicas and record is not None and record.unplaced == 0
            if done and name in self.changed_at:
                seconds = now - self.changed_at.pop(name)
                metrics.convergence_seconds.labels(name).observe(seconds)
                log.info("converged", service=name, seconds=round(seconds, 3), replicas=valid.replicas)

    def _drop_service(self, name: str) -> None:
        self.seen.pop(name, None)
        self.changed_at.pop(name, None)
        for gauge in metrics.LEADER_SERVICE_GAUGES:
            with contextlib.suppress(KeyError):  # a gauge never set for this service
                gauge.remove(name)

    def _forget(self) -> None:
        """No longer the leader: drop the leader's state and metrics."""
        self.lost_since.clear()
        self.changed_at.clear()
        self.seen.clear()
        for gauge in metrics.LEADER_SERVICE_GAUGES:
            gauge.clear()
