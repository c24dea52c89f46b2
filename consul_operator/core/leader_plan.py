"""The leader's whole decision, as one pure computation: `decide_leader(state, memory, now) -> LeaderPlan`.

The counterpart of the host side's `plan_host` (and of Nomad's
``allocReconciler.Compute``): `scheduler.py` reads a `ClusterState`, calls
`decide_leader`, writes the plan's KV writes fenced, and turns the plan into
metrics and log lines. Nothing here does I/O or reads a clock: ``now`` holds
the leader's monotonic time (every duration it measures) and its wall-clock
time (stamps for people), and what the leader remembers between passes comes
in as a `LeaderMemory` and goes out, updated, in the plan.

One pass:

1. **Hosts**: every registered agent, and every host that still holds a
   placement or a status record; one not live is *lost* from the first pass
   that saw it so (``memory.lost_since``; a new leader starts afresh, which
   only ever lengthens a grace).
2. **Placements**: `placement.schedule` over the valid manifests (None for an
   invalid one: hands off).
3. **Rollouts** (`rollout.py`): per valid, placed service, the rollout state
   machine (`next_rollout`: a changed spec with a kept revision of the
   running one starts a rollout; a rolled back or failed one waits for a new
   manifest), a rollback request (`operator rollback`) turns it around, and an
   active (or failed, frozen) rollout is paced by `plan_rollout` from the
   agents' running counts of live hosts and the passing instances per spec
   (first-seen times in ``memory.first_passing``, for ``min_healthy``). The
   deadline counts the rollout's ``elapsed`` (`time_rollout`).
4. **Drains** (`maintenance.py`): a cordoned host (``operator/hosts/<host>``)
   gets no new replicas; a draining one none at all, and each service not in
   an active (or failed) rollout moves off it one `plan_drain` step a pass,
   replacements passing ``min_healthy`` before the replicas they replace go,
   within its ``update`` limits. Past the drain's deadline (timed from when
   this leader first saw it: ``memory.drain_timers``) the rest moves at once.
   A replica that no other host takes stays on its draining host, stuck
   (`maintenance.keep_stuck`), unless the drain is forced and past its deadline.
   During a rollout the rollout paces the move: the draining host's target is 0.
   **Spread** (`spread.py`): a service otherwise converged whose replicas are
   uneven over its eligible hosts (one came back) moves replicas to the hosts
   live and uncordoned for ``settings.spread.settle`` s (``memory.open_since``),
   paced like a drain; its record says so (``rebalancing``).
5. **Writes**: changed placements, rollout records (on a change, and their
   ``elapsed`` every few seconds), the revision of every spec in use, and
   deletes: placements and rollouts of deleted services, revisions no longer
   needed, rollback requests handled or dropped, status records of hosts lost
   past the grace.
6. **Wake-up**: when the next grace, drain deadline or host's settling time runs
   out, and every ``ROLLOUT_POLL`` s while a rollout, a drain or a spread is active.
7. **Convergence**: the time from a manifest change to every replica passing
   (``operator_convergence_seconds``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from consul_operator.core.cluster_state import ClusterState, spec_of
from consul_operator.core.convergence import unconverged
from consul_operator.core.desired_state import Manifest, Resources, revision_json
from consul_operator.core.keys import Layout
from consul_operator.core.maintenance import DrainTimer, keep_stuck, placed_on, plan_drain, time_drains
from consul_operator.core.model import META_HOST, Event, HostInfo, ServiceInstance
from consul_operator.core.placement import (
    ScheduleMemo,
    Usage,
    gone_statuses,
    live_running,
    next_schedule_wakeup,
    schedule_usage,
    sizes_by_service,
)
from consul_operator.core.records import (
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.resolve import rendered_record
from consul_operator.core.rollout import (
    RolloutTimer,
    SpecCounts,
    SpecsByHost,
    dropped_rollback_requests,
    frozen_placement,
    next_rollout,
    orphaned_revisions,
    plan_rollout,
    rollout_needs_write,
    spec_charge,
    time_rollout,
    within_capacity,
)
from consul_operator.core.spread import Candidate, Move, Spreading, SpreadSettings, may_move, plan_spreading

ROLLOUT_POLL = 0.5
"""How often (seconds) the leader looks at an active rollout (health, min_healthy, drains)."""

Writes = dict[str, bytes | None]
"""KV key -> new value, or None to delete it."""


@dataclass(frozen=True, slots=True)
class Now:
    """The leader's two clocks at the start of a pass."""

    mono: float
    """Monotonic seconds: every duration the leader measures (grace, min_healthy, deadline)."""
    wall: float
    """Unix seconds: stamps for people in records (a rollout's ``started``)."""


@dataclass(frozen=True, slots=True)
class LeaderSettings:
    """What an agent is told about leading: its host, the KV layout, the lost-host grace."""

    host: str
    layout: Layout
    lost_grace: float
    spread: SpreadSettings = field(default_factory=SpreadSettings)
    """Spreading replicas again when a host returns: on or off, and the settling time."""


@dataclass(frozen=True, slots=True)
class LeaderMemory:
    """What the leader carries from one pass to the next (all on its monotonic clock).

    A new leader starts from an empty memory: a grace or ``min_healthy`` is
    timed afresh (only ever longer), a rollout's deadline resumes from its record.
    """

    lost_since: Mapping[str, float] = field(default_factory=dict)
    """When this leader first saw each host not live."""
    first_passing: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Per paced service, per instance id: when this leader first saw it passing (``min_healthy``)."""
    rollout_timers: Mapping[str, RolloutTimer] = field(default_factory=dict)
    """Per service: this leader's own measure of its rollout (the deadline)."""
    seen: Mapping[str, Manifest] = field(default_factory=dict)
    """Per service: its valid manifest last seen (a change starts a convergence timer)."""
    changed_at: Mapping[str, float] = field(default_factory=dict)
    """Per service whose change has not converged yet: when the leader saw the change."""
    exported: frozenset[str] = frozenset()
    """The services with a manifest, valid or not, at the last pass (their figures are exported)."""
    drain_timers: Mapping[str, DrainTimer] = field(default_factory=dict)
    """Per draining host: when this leader first saw its drain (the deadline)."""
    open_since: Mapping[str, float] = field(default_factory=dict)
    """Per host live and uncordoned: since when this leader has seen it so (the spread's settling time)."""
    schedule: ScheduleMemo = field(default_factory=ScheduleMemo)
    """The services the last pass's schedule found settled, reused while nothing of theirs changed
    (`placement.ScheduleMemo`); empty for a new leader, which schedules every service."""
    observed: bool = False
    """Whether this leader has had a pass: a service first seen after it is new (a change to time);
    on its first pass every service is only new to this leader."""


@dataclass(frozen=True, slots=True)
class Converged:
    """A service whose last manifest change has every replica passing, ``seconds`` after the change."""

    service: str
    seconds: float
    replicas: int


@dataclass(frozen=True, slots=True)
class LeaderPlan:
    """Everything one leader pass decided."""

    placements: Mapping[str, PlacementRecord]
    """The placement of every service with a manifest (an invalid one's kept as it is)."""
    rollouts: Mapping[str, RolloutRecord]
    """The rollout record of every valid, placed service that has one, after this pass."""
    rollout_changes: tuple[RolloutRecord, ...]
    """Rollouts whose state (or target spec) changed this pass: their metrics change."""
    writes: Writes
    """KV writes and deletes, to be made fenced."""
    wake_at: float | None
    """Monotonic time of the next pass this plan asks for (None: on a change, or the resync)."""
    events: tuple[Event, ...]
    """What to log."""
    converged: tuple[Converged, ...]
    """Services that converged this pass."""
    forgotten: tuple[str, ...]
    """Services whose manifest, valid or not, is gone since the last pass (their figures go)."""
    memory: LeaderMemory
    """What the next pass starts from."""
    active_rollouts: bool = False
    """Whether a rollout is active (the pass asks to look again within ``ROLLOUT_POLL``)."""
    draining: tuple[str, ...] = ()
    """The services moving off a draining host, paced, after this pass."""
    rebalanced: tuple[Move, ...] = ()
    """Replacements placed this pass to spread a service again (the ``Rebalanced`` events)."""


def decide_leader(
    state: ClusterState, memory: LeaderMemory, now: Now, settings: LeaderSettings
) -> LeaderPlan:
    """The leader's pass over ``state`` (see the module doc): placements, rollouts, writes, wake-up."""
    layout = settings.layout
    running_all = running_specs(state.statuses)
    hosts, lost_since = known_hosts(state, running_all, memory.lost_since, now.mono)
    valid = state.valid_manifests()
    drains = time_drains(state.maintenance, memory.drain_timers, now.mono)
    running_live = live_running(running_all, hosts)
    decided, used, schedule_memo = schedule_usage(
        valid,
        hosts,
        state.placements,
        now.mono,
        settings.lost_grace,
        cordoned=drains.cordoned,
        draining=drains.draining,
        running=running_live,
        sizes=state.spec_sizes,
        memo=memory.schedule,
    )
    decided = {n: keep_stuck(r, state.placements.get(n), drains.holding) for n, r in decided.items()}
    room = _Capacity(hosts, used, state, drains.cordoned)
    rollouts = _Rollouts(state, memory, now, layout, running_live, room)
    rollouts.run(valid, decided)
    moving = _pace_drains(state, valid, decided, rollouts, drains.paced, running_live, now.mono)
    busy = {*moving, *placed_on(state.placements, drains.draining, running_live)}
    spreading = _spread(
        state,
        valid,
        decided,
        rollouts,
        busy,
        hosts,
        drains.cordoned,
        running_live,
        memory,
        now.mono,
        settings,
    )
    decided.update(spreading.placements)

    writes: Writes = {
        layout.placement_key(name): dataclasses.replace(record, written_by=settings.host).to_json()
        for name, record in decided.items()
        if not record.same_decision(state.placements.get(name))
    }
    writes.update({layout.placement_key(n): None for n in state.placements if n not in decided})
    writes.update(rollouts.writes)
    events = list(rollouts.events)
    events.extend(
        Event("rebalancing", {"service": m.service, "frm": m.source, "to": m.target}) for m in spreading.moves
    )
    for host in drains.newly_forced:
        stuck = "stopped (forced)" if host in drains.force else "stay (operator drain --force stops them)"
        fields = {"host": host, "nowhere_else_to_go": stuck}
        events.append(Event("drain deadline passed: moving the rest at once", fields, "warning"))
    gone = gone_statuses(running_all, hosts, now.mono, settings.lost_grace)
    writes.update({layout.status_key(service, host): None for service, host in gone})
    # Its report goes with them, after them (`leader_writes`): a reader holding its records reads them again.
    writes.update({layout.report_key(host): None for host in {host for _, host in gone}})
    if gone:
        events.append(
            Event("removing status records of lost hosts", {"records": [f"{s}/{h}" for s, h in gone]})
        )

    own_graces = (m.placement.lost_grace for m in valid.values() if m and m.placement.lost_grace is not None)
    wake = next_schedule_wakeup(hosts, settings.lost_grace, now.mono, own_graces)
    if drains.wake_at is not None:
        wake = drains.wake_at if wake is None else min(wake, drains.wake_at)
    if spreading.wake_at is not None:
        wake = spreading.wake_at if wake is None else min(wake, spreading.wake_at)
    # Waiting on health, min_healthy, drains, or a rollout just completed: look again. The look
    # after a completion is what places a count changed during the rollout's last step: no other
    # wake-up need come (a quiet cluster writes nothing to KV that would).
    if rollouts.active or rollouts.completed or moving or spreading.moving:
        poll = now.mono + ROLLOUT_POLL
        wake = poll if wake is None else min(wake, poll)
    seen, changed_at, converged = _convergence(state, decided, rollouts.records, memory, now.mono)
    return LeaderPlan(
        placements=decided,
        rollouts=rollouts.records,
        rollout_changes=tuple(rollouts.changes),
        writes=writes,
        wake_at=wake,
        events=tuple(events),
        converged=tuple(converged),
        forgotten=tuple(sorted(memory.exported - set(state.manifests))),
        memory=LeaderMemory(
            lost_since=lost_since,
            first_passing=rollouts.first_passing,
            rollout_timers=rollouts.timers,
            drain_timers=drains.timers,
            open_since=spreading.open_since,
            seen=seen,
            changed_at=changed_at,
            exported=frozenset(state.manifests),
            schedule=schedule_memo,
            observed=True,
        ),
        active_rollouts=rollouts.active,
        draining=tuple(moving),
        rebalanced=spreading.moves,
    )


def paced_services(state: ClusterState, *, rebalance: bool = True) -> list[str]:
    """The services whose rollout, drain or spread `decide_leader` will pace on ``state``: whose
    passing instances it needs.

    The same state machine as the pass itself (`next_rollout`, a rollback
    request), so that the reader asks Consul for the health of exactly these;
    every valid service with replicas placed on a draining host; and those a
    spread may move (`spread.may_move`; ``rebalance``: the agent's flag).
    """
    draining = {host for host, record in state.maintenance.items() if record.draining}
    valid = state.valid_manifests()
    running = running_specs(state.statuses)  # once: a copy of every status record's counts
    on = placed_on(state.placements, draining, running)
    paced: list[str] = [n for n in on if valid.get(n) is not None]
    hosts, _ = known_hosts(state, running, {}, 0.0)
    paced.extend(may_move(valid, state.placements, hosts, set(state.maintenance), enabled=rebalance))
    for name, manifest in sorted(valid.items()):
        record = state.placements.get(name)
        if manifest is None or record is None:
            continue
        rollout, _ = next_rollout(
            name, manifest.spec_hash(), state.rollouts.get(name), record, state.revisions, 0.0
        )
        rollout, _ = _requested(rollout, name in state.rollback_requests, 0.0)
        if rollout is not None and (rollout.active or rollout.state == RolloutState.FAILED):
            paced.append(name)
    return sorted(set(paced))


def running_specs(records: Mapping[str, Mapping[str, StatusRecord]]) -> SpecsByHost:
    """Per service, per host, per spec: running containers, from the agents' status records.

    A record without readable counts counts nothing but is listed (its host's records may be gone).
    The counts are the records' own (read-only) mappings: a copy of each, twice a pass, was a tenth
    of an idle leader pass at 1,000 services (issue 31).
    """
    return {
        service: {host: record.specs for host, record in per_host.items()}
        for service, per_host in records.items()
    }


def failing_hosts(records: Mapping[str, StatusRecord]) -> frozenset[str]:
    """The hosts whose agent reports one service failing there (an error or a hold in its record).

    Only there may a rollout count an old replica that is placed and not running as idle
    (`rollout.plan_rollout`'s ``failing``); on any other host it may be starting.
    """
    return frozenset(host for host, record in records.items() if record.error or record.hold is not None)


def known_hosts(
    state: ClusterState, running: SpecsByHost, lost_since: Mapping[str, float], now: float
) -> tuple[list[HostInfo], dict[str, float]]:
    """Every host we know of: registered agents, hosts that still hold replicas or records; and when
    each host not live was first seen so (``now`` for one seen lost for the first time)."""
    known: dict[str, tuple[bool, Mapping[str, str]]] = dict(state.hosts)
    # Hosts named only by a placement or a status record (one set union each: a host's name
    # set once per replica was most of this, twice a leader pass).
    named = set().union(*(r.hosts for r in state.placements.values()), *running.values())
    for host in named - known.keys():
        known[host] = (False, {})
    since = {name: t for name, t in lost_since.items() if name in known}
    hosts: list[HostInfo] = []
    for name, (live, labels) in sorted(known.items()):
        if live:
            since.pop(name, None)
        else:
            since.setdefault(name, now)
        hosts.append(
            HostInfo(name, dict(labels), live, None if live else since[name], state.capacities.get(name))
        )
    return hosts, since


def _requested(
    rollout: RolloutRecord | None, requested: bool, wall: float
) -> tuple[RolloutRecord | None, Event | None]:
    """A rollback request turns a progressing, complete or failed rollout around."""
    if not requested or rollout is None:
        return rollout, None
    if rollout.state in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK):
        return rollout, None
    back = RolloutRecord(
        rollout.service,
        rollout.to_spec,
        rollout.from_spec,
        RolloutState.ROLLING_BACK,
        wall,
        "rollback requested",
    )
    return back, Event("rollback requested", {"service": rollout.service, "to": back.to_spec})


class _Capacity:
    """What each host is charged (`placement.Usage`, after the schedule) and can hold, and which
    hosts take no new replica (``closed``, with why): the rollouts' filters, the charge kept up to
    date as each rollout's step changes its service's."""

    def __init__(
        self, hosts: list[HostInfo], used: Usage, state: ClusterState, cordoned: Collection[str]
    ) -> None:
        self.capacity = {h.name: h.capacity for h in hosts}
        self.used = used
        self.sizes = sizes_by_service(state.spec_sizes)
        self.closed = {h.name: "not live" for h in hosts if not h.live}
        self.closed.update({h: "cordoned" for h in cordoned if h not in self.closed})

    def need(self, manifest: Manifest) -> dict[str, Resources]:
        """What one replica of each spec of ``manifest``'s service takes (the kept specs in use)."""
        return {**self.sizes.get(manifest.name, {}), manifest.spec_hash(): manifest.resources}

    def free(self, service: str, hosts: Collection[str]) -> dict[str, Resources | None]:
        """What the other services leave of each host's capacity (None: unlimited)."""
        mine = self.used.of_service(service)
        free: dict[str, Resources | None] = {}
        for host in hosts:
            capacity = self.capacity.get(host)
            free[host] = (
                None if capacity is None else capacity - self.used.on(host) + mine.get(host, Resources(0, 0))
            )
        return free

    def charge(self, manifest: Manifest, specs: SpecCounts, running: SpecCounts) -> None:
        """``manifest``'s service now takes ``specs`` placed, against ``running``."""
        need = self.need(manifest)
        charged = {
            host: spec_charge(specs.get(host, {}), running.get(host, {}), need, manifest.resources)
            for host in set(specs) | set(running)
        }
        self.used.charge(manifest.name, {h: r for h, r in charged.items() if r.memory or r.millicpus})


class _Rollouts:
    """Step 3 of `decide_leader`: every service's rollout, the placements it paces, its writes."""

    def __init__(
        self,
        state: ClusterState,
        memory: LeaderMemory,
        now: Now,
        layout: Layout,
        running: SpecsByHost,
        capacity: _Capacity,
    ) -> None:
        self.state = state
        self.capacity = capacity
        self.now = now
        self.layout = layout
        self.running = running
        self.first_passing = dict(memory.first_passing)
        self.timers = {n: t for n, t in memory.rollout_timers.items() if n in state.rollouts}
        self.records: dict[str, RolloutRecord] = {}
        self.changes: list[RolloutRecord] = []
        self.writes: Writes = {}
        self.events: list[Event] = []
        self.active = False
        # A rollout completed this pass: its placement holds the counts it paced, and a count the
        # manifest changed meanwhile is the schedule's to place, at the next pass.
        self.completed = False
        # Per service, its kept specs (``operator/revisions/``) and those this pass writes.
        self.kept: dict[str, set[str]] = {}

    def run(self, valid: Mapping[str, Manifest | None], decided: dict[str, PlacementRecord]) -> None:
        """Start, pace and finish rollouts; sets the paced services' ``decided`` records."""
        state, layout = self.state, self.layout
        requests = set(state.rollback_requests)
        revisions = set(state.revisions)
        for name, spec in revisions:  # each service's kept specs: its stale ones without a walk of all
            self.kept.setdefault(name, set()).add(spec)
        for name in dropped_rollback_requests(requests, valid):
            self.writes[layout.rollback_key(name)] = None
            requests.discard(name)
            why = "its manifest is invalid" if name in state.manifests else "it has no manifest"
            self.events.append(Event("rollback request dropped", {"service": name, "reason": why}, "warning"))
        for name in sorted(valid):
            manifest = valid[name]
            if manifest is not None and name in decided:
                self._service(name, manifest, name in requests, revisions, decided)
        for name in state.rollouts:
            if name not in valid:
                self.writes[layout.rollout_key(name)] = None
        for name, spec in orphaned_revisions(revisions, state.manifests):
            self.writes[layout.revision_key(name, spec)] = None
        self._rendered(valid, decided)

    def _rendered(self, valid: Mapping[str, Manifest | None], decided: dict[str, PlacementRecord]) -> None:
        """``operator/rendered/<name>`` where its signal templates' text changed; gone with the
        manifest (an invalid one's, or one whose template does not render, is kept as it is)."""
        for name in sorted(valid):
            manifest = valid[name]
            if manifest is None or name not in decided:
                continue
            want = rendered_record(manifest) if manifest.resolved.live else None
            if want != self.state.rendered.get(name):
                self.writes[self.layout.rendered_key(name)] = None if want is None else want.to_json()
        for name in sorted(self.state.rendered):
            if name not in self.state.manifests:
                self.writes[self.layout.rendered_key(name)] = None

    def _service(
        self,
        name: str,
        manifest: Manifest,
        requested: bool,
        revisions: set[tuple[str, str]],
        decided: dict[str, PlacementRecord],
    ) -> None:
        layout, wall = self.layout, self.now.wall
        spec = manifest.spec_hash()
        current = self.state.placements.get(name)
        old = self.state.rollouts.get(name)
        timed = old
        if old is not None:
            timed, self.timers[name] = time_rollout(old, self.timers.get(name), self.now.mono)
        rollout, event = next_rollout(name, spec, timed, current, revisions, wall)
        if event is not None:
            self.events.append(event)
        if rollout is None and old is not None:
            self.writes[layout.rollout_key(name)] = (
                None  # replaced without pacing: its record is of another spec
            )
        if requested:
            self.writes[layout.rollback_key(name)] = None
            rollout, event = _requested(rollout, True, wall)
            if event is not None:
                self.events.append(event)
        if (name, spec) not in revisions:
            self.writes[layout.revision_key(name, spec)] = revision_json(manifest)
            revisions.add((name, spec))
            self.kept.setdefault(name, set()).add(spec)
        if rollout is None:
            return
        if (rollout.active or rollout.state == RolloutState.FAILED) and current is not None:
            rollout = self._pace(rollout, manifest, current, decided)
            self.active = self.active or rollout.active
        elif rollout.state == RolloutState.ROLLED_BACK:
            record = decided[name]
            specs = {h: frozen_map({rollout.to_spec: n}) for h, n in record.hosts.items()}
            decided[name] = dataclasses.replace(record, spec_hash=rollout.to_spec, specs=specs)
            self._fit(manifest, current, decided)
        self.records[name] = rollout
        if rollout_needs_write(old, rollout):
            self.writes[layout.rollout_key(name)] = rollout.to_json()
            if old is None or old.state != rollout.state or old.to_spec != rollout.to_spec:
                self.changes.append(rollout)
                fields = {"service": name, "state": rollout.state, "reason": rollout.reason}
                self.events.append(Event("rollout", {**fields, "to": rollout.to_spec}))
        keep = {rollout.from_spec, rollout.to_spec, spec}
        for stale in sorted(s for s in self.kept.get(name, ()) if s not in keep):
            self.writes[layout.revision_key(name, stale)] = None

    def _pace(
        self,
        rollout: RolloutRecord,
        manifest: Manifest,
        record: PlacementRecord,
        decided: dict[str, PlacementRecord],
    ) -> RolloutRecord:
        """One pacing step of an active (or failed: frozen) rollout; sets ``decided[name]``."""
        name = manifest.name
        placed = {h: record.spec_counts(h) for h in record.hosts}
        passing, matured = self._health(name, self.state.passing.get(name, ()), manifest.update.min_healthy)
        target = dict(decided[name].hosts)
        running = self.running.get(name, {})
        step = plan_rollout(
            rollout,
            manifest.replicas,
            manifest.update,
            target,
            placed,
            running,
            passing,
            matured,
            self.now.wall,
            free=self.capacity.free(name, set(target) | set(placed)),
            need=self.capacity.need(manifest),
            closed=self.capacity.closed,
            max_per_host=manifest.placement.max_per_host,
            failing=failing_hosts(self.state.statuses.get(name, {})),
        )
        if step.rollout.state == RolloutState.FAILED:
            # No spec changes any more, but a lost host's replicas still move.
            decided[name] = frozen_placement(record, decided[name], step.rollout.from_spec)
            self._fit(manifest, record, decided)
            return step.rollout
        specs = {h: frozen_map(c) for h, c in step.specs.items()}
        hosts = frozen_map({h: sum(c.values()) for h, c in step.specs.items()})
        decided[name] = dataclasses.replace(
            decided[name], spec_hash=step.rollout.to_spec, hosts=hosts, specs=specs
        )
        if step.rollout.state == RolloutState.COMPLETE:
            decided[name] = dataclasses.replace(decided[name], specs={})
            self.completed = self.completed or rollout.active
        after = decided[name]
        self.capacity.charge(manifest, {h: after.spec_counts(h) for h in after.hosts}, running)
        return step.rollout

    def _fit(
        self, manifest: Manifest, before: PlacementRecord | None, decided: dict[str, PlacementRecord]
    ) -> None:
        """Cut what ``decided[name]`` adds past a host's capacity (`rollout.within_capacity`): a
        frozen or rolled-back spec mix is not the spec the schedule sized new replicas by."""
        name, record = manifest.name, decided[manifest.name]
        running = self.running.get(name, {})
        placed = {h: record.spec_counts(h) for h in record.hosts}
        had = {h: before.spec_counts(h) for h in before.hosts} if before else {}
        free = self.capacity.free(name, set(placed))
        specs, cut = within_capacity(
            placed, had, running, free, self.capacity.need(manifest), manifest.resources
        )
        if cut:
            decided[name] = dataclasses.replace(
                record,
                hosts=frozen_map({h: sum(c.values()) for h, c in specs.items()}),
                specs={h: frozen_map(c) for h, c in specs.items()},
                unplaced=record.unplaced + cut,
                reason=record.reason or f"{cut} replicas fit on no host at their spec's resources",
            )
        self.capacity.charge(manifest, specs, running)

    def _health(
        self, name: str, instances: Collection[ServiceInstance], min_healthy: float
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Passing instances per spec, and those passing for ``min_healthy``; first-seen times kept."""
        mono = self.now.mono
        passing: dict[str, int] = {}
        matured: dict[str, int] = {}
        before = self.first_passing.get(name, {})
        first: dict[str, float] = {}  # only the instances passing now: the others are forgotten
        for instance in instances:
            if instance.status != "passing":
                continue
            since = first[instance.service_id] = before.get(instance.service_id, mono)
            spec = spec_of(instance)
            passing[spec] = passing.get(spec, 0) + 1
            if mono - since >= min_healthy:
                matured[spec] = matured.get(spec, 0) + 1
        self.first_passing[name] = first
        return passing, matured


def _pace_drains(
    state: ClusterState,
    valid: Mapping[str, Manifest | None],
    decided: dict[str, PlacementRecord],
    rollouts: _Rollouts,
    draining: frozenset[str],
    running: SpecsByHost,
    mono: float,
) -> list[str]:
    """Step 4 of `decide_leader`: one `plan_drain` step per service on a paced draining host
    (placed there, or its containers still running there).

    Sets those services' ``decided`` records (the schedule's, with the replicas
    still on the draining hosts and the replacements placed so far) and their
    first-passing times in ``rollouts.first_passing``; returns the services
    still moving. A service in an active or failed rollout is left to the
    rollout (whose target leaves the draining host out).
    """
    moving: list[str] = []
    for name in placed_on(state.placements, draining, running):
        manifest = valid.get(name)
        rollout = rollouts.records.get(name)
        if manifest is None or name not in decided:
            continue
        if rollout is not None and (rollout.active or rollout.state == RolloutState.FAILED):
            continue
        record = decided[name]
        passing, matured = _host_health(
            state.passing.get(name, ()), rollouts.first_passing, name, manifest.update.min_healthy, mono
        )
        hosts = plan_drain(
            manifest.replicas,
            manifest.update,
            record.hosts,
            state.placements[name].hosts,
            draining,
            {h: sum(specs.values()) for h, specs in running.get(name, {}).items()},
            passing,
            matured,
        )
        specs = {h: frozen_map({record.spec_hash: n}) for h, n in hosts.items()} if record.specs else {}
        decided[name] = dataclasses.replace(record, hosts=frozen_map(hosts), specs=specs)
        stuck = record.stuck
        if any(
            hosts.get(h, 0) > stuck.get(h, 0)
            or sum(running.get(name, {}).get(h, {}).values()) > hosts.get(h, 0)
            for h in draining
        ):
            moving.append(name)  # what stays stuck is not moving: no need to look again soon
    return moving


def _spread(
    state: ClusterState,
    valid: Mapping[str, Manifest | None],
    decided: dict[str, PlacementRecord],
    rollouts: _Rollouts,
    draining: Collection[str],
    hosts: list[HostInfo],
    cordoned: Collection[str],
    running: SpecsByHost,
    memory: LeaderMemory,
    mono: float,
    settings: LeaderSettings,
) -> Spreading:
    """Step 4b of `decide_leader`: `spread.plan_spreading` over every valid, placed service; one in
    an active or failed rollout, or on a draining host (``draining``), is busy (left to those)."""
    candidates: dict[str, Candidate] = {}
    for name, manifest in valid.items():
        current = state.placements.get(name)
        if manifest is None or current is None or name not in decided:
            continue
        rollout = rollouts.records.get(name)
        busy = name in draining or (
            rollout is not None and (rollout.active or rollout.state == RolloutState.FAILED)
        )
        passing: Mapping[str, int] = {}
        matured: Mapping[str, int] = {}
        if name in state.passing and not busy:
            passing, matured = _host_health(
                state.passing[name], rollouts.first_passing, name, manifest.update.min_healthy, mono
            )
        run = {h: sum(specs.values()) for h, specs in running.get(name, {}).items()}
        candidates[name] = Candidate(manifest, current, decided[name], run, passing, matured, busy)
    return plan_spreading(
        candidates, valid, decided, hosts, cordoned, memory.open_since, settings.spread, mono
    )


def _host_health(
    instances: Collection[ServiceInstance],
    first_passing: dict[str, Mapping[str, float]],
    name: str,
    min_healthy: float,
    mono: float,
) -> tuple[dict[str, int], dict[str, int]]:
    """Passing instances per host, and those passing for ``min_healthy``; first-seen times kept."""
    before = first_passing.get(name, {})
    first: dict[str, float] = {}  # only the instances passing now: the others are forgotten
    passing: dict[str, int] = {}
    matured: dict[str, int] = {}
    for instance in instances:
        if instance.status != "passing":
            continue
        since = first[instance.service_id] = before.get(instance.service_id, mono)
        host = instance.meta.get(META_HOST) or instance.node
        passing[host] = passing.get(host, 0) + 1
        if mono - since >= min_healthy:
            matured[host] = matured.get(host, 0) + 1
    first_passing[name] = first
    return passing, matured


def _convergence(
    state: ClusterState,
    decided: Mapping[str, PlacementRecord],
    rollouts: Mapping[str, RolloutRecord],
    memory: LeaderMemory,
    now: float,
) -> tuple[dict[str, Manifest], dict[str, float], list[Converged]]:
    """The manifests seen, the changes not converged yet, and the services that converged now
    (`convergence.unconverged` over this pass's placement and rollout)."""
    seen = {n: m for n, m in memory.seen.items() if n in state.manifests}
    changed_at = {n: t for n, t in memory.changed_at.items() if n in state.manifests}
    converged: list[Converged] = []
    for name, manifest in state.valid_manifests().items():
        if manifest is None:
            continue
        before = seen.get(name)
        if (before is not None and before is not manifest and before != manifest) or (
            before is None and memory.observed
        ):
            changed_at[name] = now
        seen[name] = manifest
        if name not in changed_at:
            continue  # converged since its last change: nothing to time (most services, most passes)
        healthy = state.passing_counts.get(name, 0)
        records = state.statuses.get(name, {}).values()
        if not unconverged(manifest, decided.get(name), records, healthy, rollouts.get(name)):
            converged.append(Converged(name, now - changed_at.pop(name), manifest.replicas))
    return seen, changed_at, converged
