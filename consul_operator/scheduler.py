"""The leader's scheduling loop: manifests + live hosts -> placements, fenced writes.

Runs on every agent but does nothing unless this agent holds the leader
lock. Every pass re-reads the manifests, the hosts and the current
placements, computes the pure `schedule`, and writes only the records that
changed, in transactions that check the lock (`LeaderElection.fenced_write`)
with the session the pass was decided under.

Writes are grouped per service and packed into transactions within Consul's
limits (`txn.pack_writes`); a transaction Consul refuses is retried one
service at a time, and a service whose own writes are refused backs off
alone (logged, counted in ``operator_leader_write_failures_total``): it never
blocks the other services' placements.

Durations (lost-host grace, min_healthy, convergence time) are measured on
the monotonic clock; the rollout deadline with `reconcile.time_rollout`. The
wall clock only stamps records for people.
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
from consul_operator.desired_state import Manifest, revision_json
from consul_operator.errors import ConsulError, ConsulPermissionDenied, ConsulUnavailable, NotLeader
from consul_operator.keys import Layout
from consul_operator.kv_state import read_manifests, read_placements, read_rollouts
from consul_operator.leader import LeaderElection
from consul_operator.loop import PassResult
from consul_operator.model import (
    ROLLOUT_STATES,
    Backoff,
    HostInfo,
    PlacementRecord,
    RolloutRecord,
    frozen_map,
)
from consul_operator.ownership import AgentHost, owned
from consul_operator.presence import AGENT_SERVICE, agent_registrations, agents_of, hosts_of
from consul_operator.reconcile import (
    RolloutTimer,
    backoff_after_failure,
    dropped_rollback_requests,
    frozen_placement,
    gone_statuses,
    live_running,
    next_schedule_wakeup,
    orphaned_revisions,
    plan_rollout,
    rollout_needs_write,
    schedule,
    time_rollout,
)
from consul_operator.snapshot import read_statuses
from consul_operator.txn import pack_writes

log = structlog.get_logger()

SpecsByHost = dict[str, dict[str, dict[str, int]]]
"""Per service, per host, per spec: running containers (the agents' status records)."""


@dataclass(frozen=True, slots=True)
class _Owners:
    """What decides which instances are ours (`ownership.owned`), read once per pass."""

    agents: list[AgentHost]
    statuses: Mapping[str, Mapping[str, Mapping[str, object]]]


def running_specs(records: Mapping[str, Mapping[str, Mapping[str, object]]]) -> SpecsByHost:
    """Per service, per host, per spec: running containers, from the agents' status records.

    A record without readable counts counts nothing but is listed (its host's records may be gone).
    """
    result: SpecsByHost = {}
    for service, per_host in records.items():
        for host, record in per_host.items():
            raw = record.get("specs")
            try:
                specs = {str(spec): int(n) for spec, n in raw.items()} if isinstance(raw, dict) else {}
            except (ValueError, TypeError):
                specs = {}
            result.setdefault(service, {})[host] = specs
    return result


# How often the leader looks at an active rollout (health, min_healthy, drains).
ROLLOUT_POLL = 0.5


@dataclass
class Scheduler:
    """The leader's pass."""

    consul: ConsulClient
    layout: Layout
    election: LeaderElection
    cluster: str
    lost_grace: float
    # Durations within this process: monotonic, so that a step of the wall clock
    # (NTP) neither keeps a dead host's replicas nor ends a grace at once.
    clock: Callable[[], float] = time.monotonic
    # Stamps for people in the records (a rollout's "started") only.
    wall_clock: Callable[[], float] = time.time
    # When this leader first saw each host not live; a new leader starts afresh,
    # which only ever lengthens a grace period, never shortens it.
    lost_since: dict[str, float] = field(default_factory=dict)
    # Per service: the manifest last seen, and when it changed if that change
    # has not converged yet (for operator_convergence_seconds).
    seen: dict[str, Manifest | None] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    # Whether this leader has had a pass: a service first seen after it is a new
    # one (a change to time); on its first pass every service is only new to it.
    observed: bool = False
    # Services this leader exports figures of, valid or not: a deleted one's go.
    exported: set[str] = field(default_factory=set)
    # Instance ID -> when this leader first saw it passing (for update.min_healthy).
    first_passing: dict[str, float] = field(default_factory=dict)
    # Per service: this leader's monotonic measure of its rollout (for the deadline).
    rollout_timers: dict[str, RolloutTimer] = field(default_factory=dict)
    # Per service whose writes Consul refused: the back-off before trying them again.
    write_backoffs: dict[str, Backoff] = field(default_factory=dict)

    def reconcile(self) -> PassResult:
        """One scheduling pass (a no-op unless we lead)."""
        # Taken once: every write of this pass is fenced with the session it was
        # decided under, never with one acquired while the pass ran.
        session = self.election.session
        if not self.election.is_leader or session is None:
            if self.observed:
                self._forget()
            return PassResult()
        now = self.clock()
        manifests = read_manifests(self.consul, self.layout)
        current = read_placements(self.consul, self.layout)
        # Read once per pass, shared by every decision below: the agents' own
        # registrations (live hosts, and who vouches for instances) and their
        # status records (running counts, and the instances they report).
        registrations = agent_registrations(self.consul, self.cluster)
        records = read_statuses(self.consul, self.layout, consistent=True, keep_unreadable=True)
        statuses = running_specs(records)
        hosts = self._hosts(hosts_of(registrations), current, statuses, now)
        valid = {n: (m if isinstance(m, Manifest) else None) for n, m in manifests.items()}
        decided = schedule(valid, hosts, current, now, self.lost_grace)
        running = live_running(statuses, hosts)
        owners = _Owners(agents_of(registrations), records)
        rollout_writes, active = self._rollouts(manifests, valid, current, decided, running, owners, now)

        me = self.election.host
        writes: dict[str, bytes | None] = {
            self.layout.placement_key(name): dataclasses.replace(record, written_by=me).to_json()
            for name, record in decided.items()
            if not record.same_decision(current.get(name))
        }
        writes.update({self.layout.placement_key(n): None for n in current if n not in decided})
        writes.update(rollout_writes)
        gone = gone_statuses(statuses, hosts, now, self.lost_grace)
        writes.update({self.layout.status_key(service, host): None for service, host in gone})
        if gone:
            log.info("removing status records of lost hosts", records=[f"{s}/{h}" for s, h in gone])
        written = self._write(session, writes, now)
        if written:
            metrics.placement_writes.inc(len(written))
            log.info("placements written", changed=sorted({self.layout.service_of(k) or k for k in written}))
        self._observe(manifests, decided, now)

        wake = next_schedule_wakeup(hosts, self.lost_grace, now)
        if active:  # a rollout waits on health, min_healthy and drains: look again soon
            wake = now + ROLLOUT_POLL if wake is None else min(wake, now + ROLLOUT_POLL)
        retries = [b.retry_at for b in self.write_backoffs.values() if b.retry_at > now]
        if retries:
            wake = min([*retries, *([] if wake is None else [wake])])
        return PassResult(requeue_after=None if wake is None else max(0.0, wake - now) + 0.05)

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
        written: list[str] = []
        for batch in pack_writes(groups):
            refused = self._transaction(session, batch.writes)
            if refused is None:
                written.extend(batch.writes)
                for service in batch.groups:
                    self.write_backoffs.pop(service, None)
            elif len(batch.groups) == 1:
                self._write_failed(batch.groups[0], refused, now)
            else:
                for service in batch.groups:  # find the one at fault; the others go through
                    written.extend(self._write_alone(session, service, groups[service], now))
        return written

    def _write_alone(
        self, session: str, service: str, writes: Mapping[str, bytes | None], now: float
    ) -> list[str]:
        """One service's writes in transactions of their own; on a refusal, that service backs off."""
        written: list[str] = []
        for batch in pack_writes({service: writes}):
            refused = self._transaction(session, batch.writes)
            if refused is not None:
                self._write_failed(service, refused, now)
                return written
            written.extend(batch.writes)
        self.write_backoffs.pop(service, None)
        return written

    def _transaction(self, session: str, writes: Mapping[str, bytes | None]) -> ConsulError | None:
        """One fenced transaction: None once written, or the refusal of one service's writes.

        Losing the lock or Consul itself is no one service's fault: it ends the pass (raised).
        """
        try:
            self.election.fenced_write(dict(writes), session=session)
        except (NotLeader, ConsulUnavailable):
            raise
        except ConsulError as exc:
            if _consul_trouble(exc):
                raise
            return exc
        return None

    def _write_failed(self, service: str, exc: ConsulError, now: float) -> None:
        """Count, log and back off a service whose writes Consul refused."""
        if exc.status == 413:
            reason = "too_large"
        elif isinstance(exc, ConsulPermissionDenied):
            reason = "permission_denied"
        else:
            reason = "refused"
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

    # --- rollouts ---------------------------------------------------------------------

    def _rollouts(
        self,
        manifests: Mapping[str, object],
        valid: Mapping[str, Manifest | None],
        current: Mapping[str, PlacementRecord],
        decided: dict[str, PlacementRecord],
        running: SpecsByHost,
        owners: _Owners,
        now: float,
    ) -> tuple[dict[str, bytes | None], bool]:
        """Start, pace and finish rollouts; adjusts ``decided`` in place; the KV writes besides placements.

        ``now`` is monotonic; ``running`` counts live hosts only.
        """
        wall = self.wall_clock()
        rollouts = read_rollouts(self.consul, self.layout)
        revisions = {e.key for e in self.consul.kv_list(self.layout.revisions_prefix).value}
        requests = {
            e.key[len(self.layout.rollback_prefix) :]
            for e in self.consul.kv_list(self.layout.rollback_prefix).value
        }
        writes: dict[str, bytes | None] = {}
        for name in dropped_rollback_requests(requests, valid):
            writes[self.layout.rollback_key(name)] = None
            requests.discard(name)
            why = "its manifest is invalid" if name in manifests else "it has no manifest"
            log.warning("rollback request dropped", service=name, reason=why)
        for name in [n for n in self.rollout_timers if n not in rollouts]:
            del self.rollout_timers[name]
        active = False
        for name in sorted(valid):
            manifest = valid[name]
            if manifest is None or name not in decided:
                continue
            spec = manifest.spec_hash()
            old = rollouts.get(name)
            timed = old
            if old is not None:
                timed, self.rollout_timers[name] = time_rollout(old, self.rollout_timers.get(name), now)
            rollout = self._next_rollout(name, spec, timed, current.get(name), revisions, wall)
            if name in requests:
                writes[self.layout.rollback_key(name)] = None
                if rollout is not None and rollout.state in ("progressing", "complete", "failed"):
                    rollout = RolloutRecord(
                        name, rollout.to_spec, rollout.from_spec, "rolling_back", wall, "rollback requested"
                    )
                    log.info("rollback requested", service=name, to=rollout.to_spec)
            key = self.layout.revision_key(name, spec)
            if key not in revisions:
                writes[key] = revision_json(manifest)
                revisions.add(key)
            if rollout is None:
                continue
            if (rollout.active or rollout.state == "failed") and name in current:
                rollout = self._pace(
                    rollout, manifest, current[name], decided, running.get(name, {}), owners, now
                )
                active = active or rollout.active
            elif rollout.state == "rolled_back":
                record = decided[name]
                specs = {h: frozen_map({rollout.to_spec: n}) for h, n in record.hosts.items()}
                decided[name] = dataclasses.replace(record, spec_hash=rollout.to_spec, specs=specs)
            if rollout_needs_write(old, rollout):
                writes[self.layout.rollout_key(name)] = rollout.to_json()
                self._count(old, rollout)
            keep = {self.layout.revision_key(name, s) for s in (rollout.from_spec, rollout.to_spec, spec)}
            for stale in sorted(
                k for k in revisions if k.startswith(f"{self.layout.revisions_prefix}{name}/")
            ):
                if stale not in keep:
                    writes[stale] = None
        for name in rollouts:
            if name not in valid:
                writes[self.layout.rollout_key(name)] = None
        kept = [
            (name, spec)
            for name, _, spec in (k[len(self.layout.revisions_prefix) :].partition("/") for k in revisions)
        ]
        for name, spec in orphaned_revisions(kept, manifests):
            writes[self.layout.revision_key(name, spec)] = None
        return writes, active

    def _next_rollout(
        self,
        name: str,
        spec: str,
        old: RolloutRecord | None,
        record: PlacementRecord | None,
        revisions: set[str],
        now: float,
    ) -> RolloutRecord | None:
        """The rollout record after a manifest change (or ``old`` when nothing new starts)."""
        if record is None:
            return old  # a first deployment is not a rollout
        if old is None:
            in_use = record.spec_hash
            if spec == in_use:
                return None
        elif old.state == "progressing":
            if spec == old.to_spec:
                return old
            in_use = old.from_spec
        elif old.state == "rolling_back":
            if spec in (old.from_spec, old.to_spec):
                return old  # the bad spec is still in services/: keep rolling back
            in_use = old.to_spec
        elif old.state in ("rolled_back", "failed"):
            failed_spec = old.from_spec if old.state == "rolled_back" else old.to_spec
            if spec == failed_spec:
                return old  # stay where we are until a person writes a new manifest
            in_use = old.to_spec if old.state == "rolled_back" else old.from_spec
        else:  # complete
            if spec == old.to_spec:
                return old
            in_use = old.to_spec
        if spec == in_use:
            return RolloutRecord(name, in_use, spec, "complete", now, "back to the running spec")
        if self.layout.revision_key(name, in_use) not in revisions:
            log.warning("no revision of the running spec: replacing without a paced rollout", service=name)
            return old
        log.info("rollout started", service=name, frm=in_use, to=spec)
        return RolloutRecord(name, in_use, spec, "progressing", now)

    def _pace(
        self,
        rollout: RolloutRecord,
        manifest: Manifest,
        record: PlacementRecord,
        decided: dict[str, PlacementRecord],
        running: dict[str, dict[str, int]],
        owners: _Owners,
        now: float,
    ) -> RolloutRecord:
        """One pacing step of an active (or failed: frozen) rollout; sets ``decided[name]``."""
        name = manifest.name
        placed = {h: record.spec_counts(h) for h in record.hosts}
        passing: dict[str, int] = {}
        matured: dict[str, int] = {}
        seen: set[str] = set()
        instances = self.consul.health_service(name).value
        for instance in owned(instances, self.cluster, owners.agents, owners.statuses).kept:
            if instance.status != "passing":
                continue
            seen.add(f"{name}/{instance.service_id}")
            since = self.first_passing.setdefault(f"{name}/{instance.service_id}", now)
            spec = instance.meta.get("spec-hash", "")
            passing[spec] = passing.get(spec, 0) + 1
            if now - since >= manifest.update.min_healthy:
                matured[spec] = matured.get(spec, 0) + 1
        for sid in [s for s in self.first_passing if s.startswith(f"{name}/") and s not in seen]:
            del self.first_passing[sid]
        target = dict(decided[name].hosts)
        step = plan_rollout(
            rollout,
            manifest.replicas,
            manifest.update,
            target,
            placed,
            running,
            passing,
            matured,
            self.wall_clock(),
        )
        if step.rollout.state == "failed":
            # No spec changes any more, but a lost host's replicas still move.
            decided[name] = frozen_placement(record, decided[name], step.rollout.from_spec)
        else:
            specs = {h: frozen_map(c) for h, c in step.specs.items()}
            hosts = frozen_map({h: sum(c.values()) for h, c in step.specs.items()})
            decided[name] = dataclasses.replace(
                decided[name], spec_hash=step.rollout.to_spec, hosts=hosts, specs=specs
            )
            if step.rollout.state == "complete":
                decided[name] = dataclasses.replace(decided[name], specs={})
        return step.rollout

    def _count(self, old: RolloutRecord | None, new: RolloutRecord) -> None:
        """Metrics and logs of a rollout's state change."""
        if old is not None and old.state == new.state and old.to_spec == new.to_spec:
            return
        for state in ROLLOUT_STATES:
            metrics.rollout_state.labels(new.service, state).set(1 if state == new.state else 0)
        if not new.active:
            metrics.rollouts_total.labels(new.state).inc()
        log.info("rollout", service=new.service, state=new.state, reason=new.reason, to=new.to_spec)

    def _hosts(
        self,
        known: dict[str, tuple[bool, dict[str, str]]],
        current: dict[str, PlacementRecord],
        statuses: SpecsByHost,
        now: float,
    ) -> list[HostInfo]:
        """Every host we know of: registered agents (``known``), hosts that still hold replicas or records."""
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
        for per_host in statuses.values():
            for host in per_host:
                known.setdefault(host, (False, {}))
        for name in [n for n in self.lost_since if n not in known]:
            del self.lost_since[name]
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
        for name in self.exported - set(manifests):
            self._drop_service(name)
        self.exported = set(manifests)
        passing = self.consul.passing_instances()  # one request for every service
        for name, manifest in manifests.items():
            valid = manifest if isinstance(manifest, Manifest) else None
            metrics.manifest_valid.labels(name).set(1 if valid else 0)
            if name in decided:
                metrics.unplaced_replicas.labels(name).set(decided[name].unplaced)
            if valid is None:
                continue
            if (name in self.seen and self.seen[name] != valid) or (name not in self.seen and self.observed):
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
        self.observed = True

    def _drop_service(self, name: str) -> None:
        """A deleted service: forget it and stop exporting its figures (bounded label sets)."""
        self.seen.pop(name, None)
        self.changed_at.pop(name, None)
        for metric in (*metrics.LEADER_SERVICE_GAUGES, metrics.convergence_seconds):
            with contextlib.suppress(KeyError):  # a metric never set for this service
                metric.remove(name)
        for state in ROLLOUT_STATES:
            with contextlib.suppress(KeyError):
                metrics.rollout_state.remove(name, state)

    def _forget(self) -> None:
        """No longer the leader: drop the leader's state and metrics."""
        self.lost_since.clear()
        self.changed_at.clear()
        self.seen.clear()
        self.observed = False
        self.exported.clear()
        self.first_passing.clear()
        self.rollout_timers.clear()
        self.write_backoffs.clear()
        metrics.rollout_state.clear()
        metrics.convergence_seconds.clear()
        for gauge in metrics.LEADER_SERVICE_GAUGES:
            gauge.clear()


def _consul_trouble(exc: ConsulError) -> bool:
    """A server-side failure (5xx, e.g. no Raft leader): Consul's trouble, not one service's records.

    It ends the pass, and the loop retries it; a refusal (4xx) is the service's own.
    """
    return exc.status is not None and exc.status >= 500
