"""The leader's loop: read the cluster once, decide purely, write fenced, export metrics and logs.

Runs on every agent but does nothing unless this agent holds the leader
lock. A pass is four steps:

1. **read** (`snapshot.read_cluster_state`): manifests, placements, rollouts,
   revisions, rollback requests, the agents, their status records, the
   passing instances of the services whose rollout is paced
   (`leader_plan.paced_services`) and every service's passing count;
2. **decide** (`leader_plan.decide_leader`, pure): placements, rollout
   records, KV writes and deletes, the next wake-up, the events to log;
3. **write** the plan's writes fenced (`LeaderElection.fenced_write`) with the
   session the pass was decided under, grouped per service and packed into
   transactions within Consul's limits (`txn.pack_writes`); a transaction
   Consul refuses is retried one service at a time, and a service whose own
   writes are refused backs off alone (logged, counted in
   ``operator_leader_write_failures_total``): it never blocks the others;
4. **metrics and logs**.

Durations (lost-host grace, min_healthy, convergence time) are measured on
the monotonic clock; the rollout deadline with `rollout.time_rollout`. The
wall clock only stamps records for people.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.kv_state import TreeMirror
from consul_operator.adapters.presence import AGENT_SERVICE
from consul_operator.adapters.snapshot import read_cluster_state
from consul_operator.core import events
from consul_operator.core.backoff import Backoff, backoff_after_failure
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import (
    ConsulError,
    ConsulPermissionDenied,
    ConsulUnavailable,
    NotLeader,
    consul_trouble,
    refusal_reason,
)
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import (
    LeaderMemory,
    LeaderPlan,
    LeaderSettings,
    Now,
    decide_leader,
    paced_services,
)
from consul_operator.core.records import ROLLOUT_STATES, record_bound
from consul_operator.core.spread import SpreadSettings
from consul_operator.core.txn import pack_writes, send_groups
from consul_operator.daemons.leader import LeaderElection
from consul_operator.daemons.loop import PassResult

log = structlog.get_logger()


@dataclass
class Scheduler:
    """The leader's pass: read -> decide -> fenced write -> metrics and logs."""

    consul: ConsulClient
    layout: Layout
    election: LeaderElection
    cluster: str
    lost_grace: float
    # Spreading replicas again when a host returns (`spread.py`): --no-rebalance, --rebalance-settle.
    spread: SpreadSettings = field(default_factory=SpreadSettings)
    # Durations within this process: monotonic, so that a step of the wall clock
    # (NTP) neither keeps a dead host's replicas nor ends a grace at once.
    clock: Callable[[], float] = time.monotonic
    # Stamps for people in the records (a rollout's "started") only.
    wall_clock: Callable[[], float] = time.time
    # What the leader carries from pass to pass (`decide_leader`); empty for a new leader.
    memory: LeaderMemory = field(default_factory=LeaderMemory)
    # Per service whose writes Consul refused: the back-off before trying them again.
    write_backoffs: dict[str, Backoff] = field(default_factory=dict)
    # Invalid manifests whose first problem was recorded as an event: service -> problem.
    invalid_seen: dict[str, str] = field(default_factory=dict)
    # Deleted services with event records left: when nothing else of each was first seen (mono).
    records_gone: Mapping[str, float] = field(default_factory=dict)
    # The manifests as last read: each pass reads only what changed (`kv_state.TreeMirror`).
    services: TreeMirror | None = None

    def reconcile(self) -> PassResult:
        """One scheduling pass (a no-op unless we lead)."""
        # Taken once: every write of this pass is fenced with the session it was
        # decided under, never with one acquired while the pass ran.
        session = self.election.session
        if not self.election.is_leader or session is None:
            if self.memory.observed or self.write_backoffs:
                self._forget()
            return PassResult()
        now = Now(self.clock(), self.wall_clock())
        if self.services is None:
            self.services = TreeMirror(self.layout.services_prefix)
        state = read_cluster_state(
            self.consul,
            self.layout,
            self.cluster,
            passing_of=partial(paced_services, rebalance=self.spread.enabled),
            leader=True,
            services=self.services,
        )
        self._check_view(state)
        plan = decide_leader(
            state,
            self.memory,
            now,
            LeaderSettings(self.election.host, self.layout, self.lost_grace, self.spread),
        )
        self.memory = plan.memory
        self._log_decisions(plan)
        written = self._write(session, plan.writes, now.mono)
        if written:
            metrics.placement_writes.inc(len(written))
            log.info("placements written", changed=sorted({self.layout.service_of(k) or k for k in written}))
        self._record_events(state, plan, written)
        self._observe(state, plan)
        try:
            cleanup = self._remove_event_records(session, state, now.mono)
        except ConsulError as exc:
            if consul_trouble(exc):
                raise
            # A clean-up for people's sake: never a reason to fail the pass that placed replicas.
            log.warning("event records of deleted services not looked at", error=str(exc)[:300])
            cleanup = None

        wake = plan.wake_at
        if cleanup is not None:
            wake = cleanup if wake is None else min(wake, cleanup)
        retries = [b.retry_at for b in self.write_backoffs.values() if b.retry_at > now.mono]
        if retries:
            wake = min([*retries, *([] if wake is None else [wake])])
        return PassResult(requeue_after=None if wake is None else max(0.0, wake - now.mono) + 0.05)

    def _remove_event_records(self, session: str, state: ClusterState, now: float) -> float | None:
        """Remove, fenced, the event records of services deleted and gone (`events.expire_records`);
        when to look again. The leader is their one remover: agents and the load balancer only
        ever write their own records, and no one else knows when a service is gone everywhere."""
        prefix = self.layout.events_prefix
        listed = self.consul.kv_keys(prefix, separator="/").value
        with_records = {key[len(prefix) :].rstrip("/") for key in listed if key.endswith("/")}
        cleanup = events.expire_records(with_records, state, self.records_gone, now)
        self.records_gone = cleanup.gone
        if cleanup.remove:
            groups: dict[str, dict[str, bytes | None]] = {
                name: dict.fromkeys(self.consul.kv_keys(f"{prefix}{name}/").value) for name in cleanup.remove
            }
            too_large = ConsulError("too large (413): beyond Consul's limits, not sent", status=413)
            sent = send_groups(pack_writes(groups), lambda w: self._transaction(session, w), too_large)
            if sent.groups:
                log.info("event records of deleted services removed", services=list(sent.groups))
            for name, refused in sorted(sent.refused.items()):
                log.warning("event records not removed", service=name, error=str(refused)[:300])
        return cleanup.wake_at

    def _check_view(self, state: ClusterState) -> None:
        """Refuse to schedule from a partial view: the leader must see itself live."""
        if not state.live(self.election.host):
            # The leader is live by definition (its lock hangs on its own checks). Not
            # seeing itself means a partial view, typically a token without node or
            # service read, for which Consul filters instead of refusing: scheduling
            # from it would move every replica away from "lost" hosts.
            raise ConsulPermissionDenied(
                f"the leader {self.election.host} does not see itself live in the health of "
                f"{AGENT_SERVICE!r}: the ACL token needs read on every node and service "
                '(node_prefix "" and service_prefix "" read); not scheduling from a partial view'
            )

    # --- fenced writes, isolated per service ---------------------------------------------

    def _write(self, session: str, writes: Mapping[str, bytes | None], now: float) -> list[str]:
        """Write ``writes`` fenced with ``session``, in transactions within Consul's limits; the keys written.

        A service's writes go together; a refused transaction is retried one
        service at a time, and a service Consul refuses backs off alone. Losing
        the lock, or Consul, ends the pass (`NotLeader`, `ConsulUnavailable`).
        """
        groups: dict[str, dict[str, bytes | None]] = {}
        for key, value in writes.items():
            groups.setdefault(self.layout.service_of(key) or "", {})[key] = value
        for service in [s for s in self.write_backoffs if s not in groups]:
            del self.write_backoffs[service]  # nothing left to write: nothing to back off
        for service in sorted(groups):
            backoff = self.write_backoffs.get(service)
            if backoff is not None and not backoff.ready(now):
                del groups[service]  # refused before: wait for its back-off
        too_large = ConsulError(
            "too large (413): a record over its bound or Consul's limits, not sent", status=413
        )
        packing = pack_writes(groups, max_value=lambda key: record_bound(self.layout, key))
        sent = send_groups(packing, lambda w: self._transaction(session, w), too_large)
        for service in sent.groups:
            self.write_backoffs.pop(service, None)
        for service, refused in sorted(sent.refused.items()):
            self._write_failed(service, refused, now)
        return list(sent.keys)

    def _transaction(self, session: str, writes: Mapping[str, bytes | None]) -> ConsulError | None:
        """One fenced transaction: None once written, or the refusal of one service's writes.

        Losing the lock or Consul itself is no one service's fault: it ends the pass (raised).
        """
        try:
            self.election.fenced_write(dict(writes), session=session)
        except (NotLeader, ConsulUnavailable):
            raise
        except ConsulError as exc:
            if consul_trouble(exc):
                raise
            return exc
        return None

    def _write_failed(self, service: str, exc: ConsulError, now: float) -> None:
        """Count, log and back off a service whose writes Consul refused."""
        reason = refusal_reason(exc)
        error = str(exc)[:300]
        backoff = backoff_after_failure(self.write_backoffs.get(service, Backoff()), now, error)
        self.write_backoffs[service] = backoff
        metrics.leader_write_failures.labels(reason).inc()
        log.warning(
            "writes of one service refused; the others go on",
            service=service,
            reason=reason,
            status=exc.status,
            error=error,
            failures=backoff.failures,
            retry_in=round(backoff.retry_at - now, 3),
        )

    # --- metrics and logs ---------------------------------------------------------------

    def _log_decisions(self, plan: LeaderPlan) -> None:
        """Log what the pass decided, and the metrics of rollouts whose state changed."""
        for event in plan.events:
            getattr(log, event.level)(event.message, **event.fields)
        for rollout in plan.rollout_changes:
            for state in ROLLOUT_STATES:
                metrics.rollout_state.labels(rollout.service, state).set(1 if state == rollout.state else 0)
            if not rollout.active:
                metrics.rollouts_total.labels(rollout.state).inc()

    def _record_events(self, state: ClusterState, plan: LeaderPlan, written: list[str]) -> None:
        """Record the pass's decisions as events (buffered: `event_log`), for what was written."""
        layout = self.layout
        occurred = events.leader_events(
            state,
            plan.placements,
            plan.rollouts,
            written,
            lambda k: layout.record_of(layout.placement_prefix, k),
            lambda k: layout.record_of(layout.rollout_prefix, k),
        )
        invalid, self.invalid_seen = events.invalid_events(state.manifests, self.invalid_seen)
        for event in [*occurred, *invalid]:
            event_log.record(event.service, event.reason, event.message)
        placed = set(written)
        for move in plan.rebalanced:  # counted once its placement is written
            if layout.placement_key(move.service) in placed:
                event_log.record(move.service, events.REBALANCED, move.message)
                metrics.rebalanced_replicas.inc()

    def _observe(self, state: ClusterState, plan: LeaderPlan) -> None:
        """Export what only the leader knows: desired, healthy, drift, validity, convergence time."""
        for name in plan.forgotten:
            self._drop_service(name)
        for name, manifest in state.manifests.items():
            valid = manifest if isinstance(manifest, Manifest) else None
            metrics.manifest_valid.labels(name).set(1 if valid else 0)
            if name in plan.placements:
                record = plan.placements[name]
                metrics.set_unplaced(name, record.unplaced, record.cause.value)
            if valid is None:
                continue
            healthy = state.passing_counts.get(name, 0)
            metrics.desired_replicas.labels(name).set(valid.replicas)
            metrics.healthy_replicas.labels(name).set(healthy)
            metrics.drift_replicas.labels(name).set(valid.replicas - healthy)
        for done in plan.converged:
            metrics.convergence_seconds.labels(done.service).observe(done.seconds)
            log.info(
                "converged", service=done.service, seconds=round(done.seconds, 3), replicas=done.replicas
            )

    def _drop_service(self, name: str) -> None:
        """A deleted service: stop exporting its figures (bounded label sets)."""
        for metric in (*metrics.LEADER_SERVICE_GAUGES, metrics.convergence_seconds):
            with contextlib.suppress(KeyError):  # a metric never set for this service
                metric.remove(name)
        for state in ROLLOUT_STATES:
            with contextlib.suppress(KeyError):
                metrics.rollout_state.remove(name, state)
        metrics.drop_unplaced(name)

    def _forget(self) -> None:
        """No longer the leader: drop the leader's state and metrics."""
        self.memory = LeaderMemory()
        self.write_backoffs.clear()
        self.invalid_seen.clear()
        self.records_gone = {}
        metrics.rollout_state.clear()
        metrics.convergence_seconds.clear()
        for gauge in metrics.LEADER_SERVICE_GAUGES:
            gauge.clear()
        metrics.drop_unplaced(None)
