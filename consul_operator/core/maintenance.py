"""Hosts in maintenance, as pure decisions: cordon, drain and its deadline (the leader's).

* `cordoned_hosts`, `open_hosts`: a cordoned host (any ``operator/hosts/<host>``
  record) gets no new replicas; the schedule's candidate filter;
* `time_drains`: which drains are paced and which are past their deadline
  (forced), on the leader's monotonic clock;
* `keep_stuck`: a replica that no other host takes stays on its draining
  host, shown as stuck, unless the drain is forced (``operator drain
  --force``) and past its deadline: a drain never stops what cannot move
  (``kubectl drain`` refuses without ``--force``; Nomad's drain leaves system
  jobs unless asked);
* `plan_drain`: one pacing step of one service off its draining hosts,
  computed like a rollout step (`rollout.plan_rollout`): a replacement is
  placed elsewhere first, and a replica on the draining host goes only once
  enough replacements have passed ``min_healthy``, within the service's
  ``update`` limits (``max_surge``, ``max_unavailable``);
* `drain_remains`, `only_stuck_left`: what of ours still runs on a host, and
  whether only stuck replicas do (`operator wait --drained`).

Level-triggered: each pass recomputes the step from the placement record,
the agents' status records and the passing instances; nothing of a drain's
progress lives in memory. Only the deadline is timed in memory, from when
this leader first saw the drain: a new leader times it afresh, so a leader
change can lengthen a deadline, never shorten it (as for a lost host's
grace). No I/O and no clock: times are arguments.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from consul_operator.core.desired_state import UpdatePolicy
from consul_operator.core.records import HostRecord, PlacementRecord, StatusRecord, frozen_map


def cordoned_hosts(records: Mapping[str, HostRecord]) -> frozenset[str]:
    """Every host with a maintenance record: cordoned (draining or not)."""
    return frozenset(records)


def open_hosts(live: Iterable[str], cordoned: Collection[str]) -> list[str]:
    """The live hosts that may take new replicas: the cordon filter of the schedule's candidates."""
    return [host for host in live if host not in cordoned]


@dataclass(frozen=True, slots=True)
class DrainTimer:
    """This leader's measure of one drain: first seen at ``since`` (monotonic), for the drain
    identified by its record's (``started``, ``deadline``); a new ``operator drain`` restarts it."""

    started: float | None
    deadline: float | None
    since: float
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Drains:
    """The drains of one leader pass."""

    cordoned: frozenset[str] = frozenset()
    """Every host in maintenance: no new replicas there."""
    paced: frozenset[str] = frozenset()
    """Draining hosts within their deadline: their replicas move paced (`plan_drain`)."""
    forced: frozenset[str] = frozenset()
    """Draining hosts past their deadline: what is left is moved at once (what can move)."""
    force: frozenset[str] = frozenset()
    """Draining hosts whose drain is forced (``operator drain --force``): past the deadline,
    even replicas that no other host takes are stopped."""
    newly_forced: tuple[str, ...] = ()
    """The hosts whose deadline ran out in this pass (to log once)."""
    timers: Mapping[str, DrainTimer] = field(default_factory=dict)
    """What the leader keeps for the next pass."""
    wake_at: float | None = None
    """When the next deadline runs out (monotonic), or None."""

    @property
    def draining(self) -> frozenset[str]:
        """Every draining host, paced or forced: the schedule places none of its replicas there."""
        return self.paced | self.forced

    @property
    def holding(self) -> frozenset[str]:
        """The draining hosts that keep the replicas no other host takes (`keep_stuck`): all but
        those forced (``--force``) and past their deadline."""
        return self.draining - (self.forced & self.force)


def time_drains(records: Mapping[str, HostRecord], timers: Mapping[str, DrainTimer], now: float) -> Drains:
    """The drains of ``records`` at ``now`` (the leader's monotonic clock), with ``timers`` of earlier passes.

    A drain's deadline counts from when this leader first saw it (its timer);
    a drain without a deadline is never forced.
    """
    kept: dict[str, DrainTimer] = {}
    paced: set[str] = set()
    forced: set[str] = set()
    newly: list[str] = []
    wake: float | None = None
    for host, record in sorted(records.items()):
        if not record.draining:
            continue
        timer = timers.get(host)
        if timer is None or (timer.started, timer.deadline) != (record.started, record.deadline):
            timer = DrainTimer(record.started, record.deadline, now)
        due = None if record.deadline is None else timer.since + record.deadline
        if due is not None and now >= due:
            if not timer.forced:
                newly.append(host)
                timer = DrainTimer(timer.started, timer.deadline, timer.since, forced=True)
            forced.add(host)
        else:
            paced.add(host)
            if due is not None:
                wake = due if wake is None else min(wake, due)
        kept[host] = timer
    return Drains(
        cordoned=cordoned_hosts(records),
        paced=frozenset(paced),
        forced=frozenset(forced),
        force=frozenset(h for h, r in records.items() if r.draining and r.force),
        newly_forced=tuple(newly),
        timers=kept,
        wake_at=wake,
    )


def keep_stuck(
    record: PlacementRecord, previous: PlacementRecord | None, holding: Collection[str]
) -> PlacementRecord:
    """The schedule's ``record`` with the replicas that no other host takes kept on their ``holding``
    draining hosts (``stuck``): a drain never stops a replica that has nowhere to go, unless forced.

    The schedule places a draining host's replicas elsewhere; those it cannot
    place are ``unplaced``. Of those, as many as ``previous`` had on holding
    draining hosts stay there (the fullest host first, then by name), counted
    in ``hosts`` (the agent keeps them running), in ``stuck`` (status and
    ``operator wait --drained`` name them) and still in ``unplaced`` (no
    eligible host has them: the service shows the reason). A host that
    comes, or a rule that changes, lets them move on the next pass; a
    scale-down drops them first (``unplaced`` shrinks).
    """
    on = {h: n for h in holding if previous is not None and (n := previous.hosts.get(h, 0)) > 0}
    left = min(record.unplaced, sum(on.values()))
    if left <= 0:
        return record if not record.stuck else replace(record, stuck=frozen_map())
    stuck: dict[str, int] = {}
    for host in sorted(on, key=lambda h: (-on[h], h)):
        stuck[host] = min(on[host], left)
        left -= stuck[host]
        if left == 0:
            break
    hosts = {**record.hosts}
    for host, n in stuck.items():
        hosts[host] = hosts.get(host, 0) + n
    return replace(record, hosts=frozen_map(dict(sorted(hosts.items()))), stuck=frozen_map(stuck))


def plan_drain(
    replicas: int,
    policy: UpdatePolicy,
    target: Mapping[str, int],
    placed: Mapping[str, int],
    draining: Collection[str],
    running: Mapping[str, int],
    passing: Mapping[str, int],
    matured: Mapping[str, int],
) -> dict[str, int]:
    """One pacing step of a service off its ``draining`` hosts: its replicas per host after it.

    ``target`` is where the schedule puts the ``replicas`` with the draining
    hosts left out; ``placed`` the current placement per host; ``running``
    what the agents of live hosts report running (draining containers
    included); ``passing`` the passing instances per host and ``matured``
    those passing for at least ``policy.min_healthy``.

    * A replica on a draining host goes freely when it does not pass; a passing
      one only while the matured replicas elsewhere and the passing ones left
      on the draining hosts stay at ``replicas - max_unavailable`` or more.
    * Replacements come on the other hosts, towards ``target`` (largest
      shortfall first, then name), while placed-or-running stays within
      ``replicas + max_surge`` and at most ``max(1, max_surge +
      max_unavailable)`` of the replicas elsewhere have not matured.

    A replacement that never passes holds its drain until the deadline
    (then the caller moves everything, unpaced). Without anything placed or
    running on a draining host, the step is ``target``. ``target``'s count on
    a draining host (its stuck replicas: `keep_stuck`) is a floor: those never go.
    """
    old = {h: n for h in sorted(draining) if (n := placed.get(h, 0)) > 0}
    if not old and not any(running.get(h, 0) for h in draining):
        return {h: n for h, n in target.items() if n > 0}
    counts = {h: min(placed.get(h, 0), n) for h, n in target.items() if h not in old}
    counts = {h: n for h, n in counts.items() if n > 0}
    elsewhere = sum(counts.values())
    old_total = sum(old.values())
    passing_old = min(old_total, sum(passing.get(h, 0) for h in old))
    matured_else = min(elsewhere, sum(n for h, n in matured.items() if h not in old))
    floor = replicas - policy.max_unavailable
    stuck = {h: min(old.get(h, 0), target.get(h, 0)) for h in old}  # nowhere else to go: they stay

    # Replicas on draining hosts go: the failing ones freely, passing ones as replacements mature.
    removable = min(old_total, (old_total - passing_old) + max(0, matured_else + passing_old - floor))
    removable = min(removable, old_total - sum(stuck.values()))
    for _ in range(removable):
        movable = [h for h in old if old[h] > stuck[h]]
        host = max(movable, key=lambda h: (old[h] - passing.get(h, 0), old[h], h))
        old[host] -= 1
        if old[host] == 0:
            del old[host]

    # Replacements come elsewhere: within the surge (draining containers count), a few unproven at a time.
    wanted = sum(n for h, n in target.items() if h not in draining)
    in_flight_cap = max(1, policy.max_surge + policy.max_unavailable)
    while elsewhere < wanted and elsewhere - matured_else < in_flight_cap:
        occupancy = sum(
            max({**counts, **old}.get(h, 0), running.get(h, 0)) for h in set(counts) | set(old) | set(running)
        )
        if occupancy >= replicas + policy.max_surge:
            break
        _, host = min((counts.get(h, 0) - n, h) for h, n in target.items() if h not in draining)
        counts[host] = counts.get(host, 0) + 1
        elsewhere += 1
    return dict(sorted({**counts, **old}.items()))


def placed_on(
    placements: Mapping[str, PlacementRecord],
    hosts: Collection[str],
    running: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
) -> list[str]:
    """The services with replicas placed on any of ``hosts``, or (``running``: service -> host ->
    spec -> n, the agents' reports) containers still running there, draining ones included."""
    on = {name for name, record in placements.items() if any(record.hosts.get(h) for h in hosts)}
    for name, per_host in (running or {}).items():
        if name in placements and any(sum(per_host.get(h, {}).values()) for h in hosts):
            on.add(name)
    return sorted(on)


def drain_remains(
    host: str,
    placements: Mapping[str, PlacementRecord],
    statuses: Mapping[str, Mapping[str, StatusRecord]],
    passing: Mapping[str, Mapping[str, int]],
) -> list[str]:
    """What of ours is still on ``host``, one line per service ([] once it is drained).

    A service counts while the leader places replicas there, its agent's
    status record reports containers running there (draining ones included:
    ``specs``), or an instance of ours passes there (``passing``: service ->
    host -> count).
    """
    lines: list[str] = []
    for name in sorted(set(placements) | set(statuses) | set(passing)):
        record = placements.get(name)
        placed = record.hosts.get(host, 0) if record else 0
        status = statuses.get(name, {}).get(host)
        running = max(status.running, sum(status.specs.values())) if status else 0
        healthy = passing.get(name, {}).get(host, 0)
        if placed or running or healthy:
            line = f"{name}: {placed} placed, {running} running, {healthy} passing"
            stuck = record.stuck.get(host, 0) if record else 0
            if stuck and record is not None:
                line += f"; {stuck} stuck, nowhere else to go: {record.reason or 'no other host takes them'}"
            lines.append(line)
    return lines


def only_stuck_left(
    host: str,
    placements: Mapping[str, PlacementRecord],
    statuses: Mapping[str, Mapping[str, StatusRecord]],
    passing: Mapping[str, Mapping[str, int]],
) -> bool:
    """Whether all that is left of ours on ``host`` is stuck replicas (and something is): the drain
    has moved everything it can; without ``--force`` it stops no more (`keep_stuck`)."""
    any_stuck = False
    for name in set(placements) | set(statuses) | set(passing):
        record = placements.get(name)
        placed = record.hosts.get(host, 0) if record else 0
        stuck = record.stuck.get(host, 0) if record else 0
        status = statuses.get(name, {}).get(host)
        running = max(status.running, sum(status.specs.values())) if status else 0
        healthy = passing.get(name, {}).get(host, 0)
        if placed > stuck or running > stuck or healthy > stuck:
            return False
        any_stuck = any_stuck or stuck > 0
    return any_stuck
