"""The leader's loop: read the cluster once, decide purely, write fenced, then log and count.

Runs on every agent but does nothing unless this agent holds the leader
lock. A pass is four steps:

1. **read** (`snapshot.read_cluster_state`): manifests, placements, rollouts,
   revisions, rollback requests, the agents, their status records, the
   passing instances of the services whose rollout is paced
   (`leader_plan.paced_services`) and every service's passing count;
2. **decide** (`leader_plan.decide_leader`, pure): placements, rollout
   records, KV writes and deletes, the next wake-up, the events to log;
3. **write** (`leader_writes.write_pass`) the plan's writes fenced with the
   session the pass was decided under, per service (a refused service backs
   off alone), and behind them every host's work key that changed
   (``operator/work/<host>/``, `core.work`);
4. **log, count, record** (`leader_report`) what was written, and only that:
   a refused write is decided, logged and counted again by the pass that writes it.

Durations (lost-host grace, min_healthy, convergence time) are measured on
the monotonic clock; the rollout deadline with `rollout.time_rollout`. The
wall clock only stamps records for people.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog

from consul_operator.adapters.check_counts import PassingCounts
from consul_operator.adapters.interfaces import ClusterReads
from consul_operator.adapters.kv_state import PrefixMirrors, RecordCache, StatusCache, TreeMirror
from consul_operator.adapters.presence import AGENT_SERVICE
from consul_operator.adapters.snapshot import read_cluster_state
from consul_operator.adapters.status_mirror import StatusMirror
from consul_operator.core import events
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied, consul_trouble
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader, paced_services
from consul_operator.core.records import PlacementRecord
from consul_operator.core.spread import SpreadSettings
from consul_operator.core.txn import pack_writes, send_groups
from consul_operator.daemons import leader_report
from consul_operator.daemons.leader_writes import Election, FencedWriter, WorkKeys, write_pass
from consul_operator.daemons.loop import PassResult

log = structlog.get_logger()


@dataclass
class Scheduler:
    """The leader's pass: read -> decide -> fenced write -> metrics and logs."""

    consul: ClusterReads
    layout: Layout
    election: Election
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
    # Invalid manifests whose first problem was recorded as an event: service -> problem.
    invalid_seen: dict[str, str] = field(default_factory=dict)
    # Deleted services with event records left: when nothing else of each was first seen (mono).
    records_gone: Mapping[str, float] = field(default_factory=dict)
    # The manifests as last read: each pass reads only what changed (`kv_state.TreeMirror`).
    services: TreeMirror | None = None
    # The status records as last parsed: reused while their modify index is unchanged.
    statuses: StatusCache = field(default_factory=StatusCache)
    # The placement records as last parsed, the same way.
    placements: RecordCache[PlacementRecord] = field(default_factory=RecordCache)
    # The large prefixes as last read, read again only when they moved (`kv_state.PrefixMirrors`).
    mirrors: PrefixMirrors | None = None
    # Every service's passing count as last read, read again only when a check moved.
    checks: PassingCounts | None = None
    # The status records as last read, brought up to date through the agents' reports.
    reported: StatusMirror | None = None
    # Fenced writes per service, with the back-offs of refused ones (`leader_writes`).
    writer: FencedWriter = field(init=False)
    # Every host's work key as KV holds it (`leader_writes.WorkKeys`).
    work: WorkKeys = field(init=False)

    def __post_init__(self) -> None:
        self.writer = FencedWriter(self.election, self.layout)
        self.work = WorkKeys(self.layout)

    def reconcile(self) -> PassResult:
        """One scheduling pass (a no-op unless we lead)."""
        # Taken once: every write of this pass is fenced with the session it was
        # decided under, never with one acquired while the pass ran.
        session = self.election.session
        if not self.election.is_leader or session is None:
            if self.memory.observed or self.writer.backoffs or self.work.held():
                self._forget()
            return PassResult()
        now = Now(self.clock(), self.wall_clock())
        cpu = time.thread_time()  # the pass's own CPU, for the debug line at its end
        if self.services is None:
            self.services = TreeMirror(self.layout.services_prefix)
        if self.mirrors is None:
            self.mirrors = PrefixMirrors(
                (self.layout.status_prefix, self.layout.placement_prefix, self.layout.revisions_prefix)
            )
        if self.checks is None:
            self.checks = PassingCounts()
        if self.reported is None:
            self.reported = StatusMirror(self.layout)
        state = read_cluster_state(
            self.consul,
            self.layout,
            self.cluster,
            passing_of=partial(paced_services, rebalance=self.spread.enabled),
            leader=True,
            services=self.services,
            statuses=self.statuses,
            placements=self.placements,
            mirrors=self.mirrors,
            checks=self.checks,
            reported=self.reported,
        )
        self._check_view(state)
        read_at = self.clock()
        settings = LeaderSettings(self.election.host, self.layout, self.lost_grace, self.spread)
        plan = decide_leader(state, self.memory, now, settings)
        self.memory = plan.memory
        decided_at = self.clock()
        written = write_pass(
            self.writer, self.work, self.consul, session, state, plan.placements, plan.writes, now.mono
        )
        # Where a pass's time goes (wall seconds per phase, and its CPU seconds: the rest is
        # waiting on Consul or on this process's other threads), for whoever profiles a cluster.
        log.debug(
            "leader pass",
            read_s=round(read_at - now.mono, 4),
            decide_s=round(decided_at - read_at, 4),
            write_s=round(self.clock() - decided_at, 4),
            cpu_s=round(time.thread_time() - cpu, 4),
            writes=len(written.keys),
        )
        keys = [k for k in written.keys if not k.startswith(self.layout.work_prefix)]
        leader_report.log_decisions(plan, self.layout, set(keys), {*written.refused, *written.held})
        if keys:
            leader_report.count_placements(len(keys), sorted({self.layout.service_of(k) or k for k in keys}))
        self.invalid_seen = leader_report.record_events(self.layout, state, plan, keys, self.invalid_seen)
        leader_report.observe(state, plan)
        wake = plan.wake_at
        cleanup = self._cleanup(session, state, now.mono)
        if cleanup is not None:
            wake = cleanup if wake is None else min(wake, cleanup)
        retries = [b.retry_at for b in self.writer.backoffs.values() if b.retry_at > now.mono]
        if retries:
            wake = min([*retries, *([] if wake is None else [wake])])
        return PassResult(requeue_after=None if wake is None else max(0.0, wake - now.mono) + 0.05)

    def _cleanup(self, session: str, state: ClusterState, now: float) -> float | None:
        """`_remove_event_records`, whose failure (but Consul's own) never fails the pass."""
        try:
            return self._remove_event_records(session, state, now)
        except ConsulError as exc:
            if consul_trouble(exc):
                raise
            # A clean-up for people's sake: never a reason to fail the pass that placed replicas.
            log.warning("event records of deleted services not looked at", error=str(exc)[:300])
            return None

    def _remove_event_records(self, session: str, state: ClusterState, now: float) -> float | None:
        """Remove, fenced, the event records of services deleted and gone (`events.expire_records`);
        when to look again. The leader is their one remover: agents and the load balancer only
        ever write their own records, and no one else knows when a service is gone everywhere."""
        listed = self.consul.kv_keys(self.layout.events_prefix, separator="/").value
        with_records = {name for key in listed if (name := self.layout.events_service(key)) is not None}
        cleanup = events.expire_records(with_records, state, self.records_gone, now)
        self.records_gone = cleanup.gone
        if cleanup.remove:
            groups: dict[str, dict[str, bytes | None]] = {
                name: dict.fromkeys(self.consul.kv_keys(self.layout.service_events_prefix(name)).value)
                for name in cleanup.remove
            }
            too_large = ConsulError("too large (413): beyond Consul's limits, not sent", status=413)
            sent = send_groups(pack_writes(groups), lambda w: self.writer.transaction(session, w), too_large)
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

    def _forget(self) -> None:
        """No longer the leader: drop the leader's state and metrics."""
        self.memory = LeaderMemory()
        self.writer.backoffs.clear()
        self.work.forget()
        self.mirrors = None
        self.checks = None
        self.reported = None
        self.invalid_seen.clear()
        self.records_gone = {}
        leader_report.drop_all()
