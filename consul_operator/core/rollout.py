"""Rolling updates, as pure decisions: the rollout state machine and its pacing (the leader's).

* `next_rollout`: what a manifest change does to a service's rollout record
  (starts one, keeps rolling back, waits for a new manifest after a failure);
* `plan_rollout`: one pacing step of an active rollout, per host and spec;
* `time_rollout`, `rollout_needs_write`: the deadline on the leaders' own
  monotonic clocks, handed on in the record's ``elapsed``;
* `frozen_placement`: a failed rollout's spec mix, on the hosts the schedule chose;
* `dropped_rollback_requests`, `orphaned_revisions`: requests and kept
  revisions that go.

No I/O and no clock: times are arguments. `leader_plan.decide_leader` puts
them together; docs/architecture.md ("Rolling updates") describes the policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from consul_operator.core.desired_state import Manifest, Resources, UpdatePolicy, format_cpus, format_memory
from consul_operator.core.model import Event
from consul_operator.core.records import PlacementRecord, RolloutRecord, RolloutState, frozen_map

SpecCounts = Mapping[str, Mapping[str, int]]
"""Replicas per host per spec hash."""

SpecsByHost = Mapping[str, Mapping[str, Mapping[str, int]]]
"""Per service, per host, per spec: running containers (the agents' status records)."""


def next_rollout(
    name: str,
    spec: str,
    old: RolloutRecord | None,
    record: PlacementRecord | None,
    revisions: Collection[tuple[str, str]],
    now: float,
) -> tuple[RolloutRecord | None, Event | None]:
    """The rollout record after the manifest's spec is ``spec`` (``old`` when nothing new starts).

    The state machine: a first deployment (no placement yet) is no rollout;
    a spec other than the one in use starts one (``progressing``) if the
    spec in use has a kept revision (``revisions``: (service, spec)) to roll
    back to, and otherwise replaces without pacing (no record: a record of
    another spec goes, as it would keep the service from `Converged`); a
    ``held`` rollout is a ``progressing`` one waiting for room; while rolling back, the
    bad spec still in ``services/`` keeps rolling back; after ``rolled_back``
    or ``failed`` the service stays until a person writes another manifest;
    a manifest back at the spec in use completes at once. ``now`` (wall
    clock) only stamps ``started``. The event says what to log.
    """
    if record is None:
        return old, None  # a first deployment is not a rollout
    S = RolloutState
    if old is None:
        in_use = record.spec_hash
        if spec == in_use:
            return None, None
    elif old.state in (S.PROGRESSING, S.HELD):
        if spec == old.to_spec:
            return old, None
        in_use = old.from_spec
    elif old.state == S.ROLLING_BACK:
        if spec in (old.from_spec, old.to_spec):
            return old, None  # the bad spec is still in services/: keep rolling back
        in_use = old.to_spec
    elif old.state in (S.ROLLED_BACK, S.FAILED):
        failed_spec = old.from_spec if old.state == S.ROLLED_BACK else old.to_spec
        if spec == failed_spec:
            return old, None  # stay where we are until a person writes a new manifest
        in_use = old.to_spec if old.state == S.ROLLED_BACK else old.from_spec
    else:  # complete
        if spec == old.to_spec:
            return old, None
        in_use = old.to_spec
    if spec == in_use:
        return RolloutRecord(name, in_use, spec, S.COMPLETE, now, "back to the running spec"), None
    if (name, in_use) not in revisions:
        warning = "no revision of the running spec: replacing without a paced rollout"
        return None, Event(warning, {"service": name}, "warning")
    started = RolloutRecord(name, in_use, spec, S.PROGRESSING, now)
    return started, Event("rollout started", {"service": name, "frm": in_use, "to": spec})


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """What one leader pass decides for a rollout: the per-host per-spec placement and the record."""

    specs: dict[str, dict[str, int]]
    rollout: RolloutRecord


def plan_rollout(
    rollout: RolloutRecord,
    replicas: int,
    policy: UpdatePolicy,
    target: Mapping[str, int],
    placed: SpecCounts,
    running: SpecCounts,
    passing: Mapping[str, int],
    matured: Mapping[str, int],
    now: float,
    *,
    free: Mapping[str, Resources | None] | None = None,
    need: Mapping[str, Resources] | None = None,
    closed: Mapping[str, str] | None = None,
    max_per_host: int | None = None,
    failing: Collection[str] = frozenset(),
) -> RolloutStep:
    """One pacing step of a rollout from every other spec to ``rollout.to_spec``.

    ``target`` is where the ``replicas`` should end up (the schedule's hosts),
    ``placed`` the current placement per host and spec, ``running`` what the
    agents report running (draining containers included), ``passing`` the
    passing instances per spec and ``matured`` those passing for at least
    ``policy.min_healthy``. Old-spec replicas go only as new ones mature and
    never below ``replicas - max_unavailable`` passing, failing ones first but
    never below that many proven (old running, new matured); new ones are added
    while placed-or-running stays within ``replicas + max_surge`` and no more
    than ``max_surge + max_unavailable`` (and fewer than the number of target
    hosts) are unproven. Past the deadline (``rollout.elapsed``, see
    `time_rollout`) a forward rollout fails: it rolls back with
    ``auto_rollback``, else it stops changing anything. ``now`` (wall clock)
    only stamps a rollback's ``started``, for people.

    Capacity (``free``, ``need``): a new replica, surge included, goes only to
    a host where it fits. ``free`` is what the other services leave of each
    host's capacity (None: unlimited; no map: no capacity check), ``need``
    what one replica of each spec takes (a spec it lacks takes what the
    target spec does). This service's charge on a host is, per spec, the
    larger of the replicas placed and running there (`spec_charge`): a
    draining replica still takes its room. A forward rollout that wants a new
    replica where none fits, with nothing in flight that could free room, is
    ``held`` (the reason names each host's free resources): the old replicas
    keep running.

    ``closed``: target hosts that take no new replica, with why (lost in its
    grace, cordoned). Their replicas are replaced on the open target hosts
    (the fewest new replicas first, within ``max_per_host``), as a Nomad
    destructive update places its allocations again; their old ones go as
    the new ones mature.

    ``failing``: hosts whose agent reports the service failing there (an
    error or a hold in its status record: a crash loop, a failed pull). Only
    there does an old replica placed but not running count as idle, beyond
    the cap. Elsewhere it may be starting right now, its agent's record not
    read yet: counted idle, a new spec written just after the first replicas
    started replaced them all at once (docs/architecture.md, *Rolling updates*).
    """
    counts = {h: {s: n for s, n in c.items() if n > 0} for h, c in placed.items()}
    if not rollout.active:
        return RolloutStep(counts, rollout)
    to = rollout.to_spec
    new_placed = sum(c.get(to, 0) for c in counts.values())
    forward = (RolloutState.PROGRESSING, RolloutState.HELD)
    if rollout.state in forward and rollout.elapsed > policy.deadline:
        reason = f"new replicas not healthy within {policy.deadline:g}s"
        if rollout.state == RolloutState.HELD:
            reason = f"held past the deadline ({policy.deadline:g}s): {rollout.reason}"
        if not policy.auto_rollback:
            updated = min(matured.get(to, 0), new_placed)
            return RolloutStep(
                counts,
                replace(rollout, state=RolloutState.FAILED, reason=reason, updated=updated, total=replicas),
            )
        rollout = replace(
            rollout,
            state=RolloutState.ROLLING_BACK,
            from_spec=to,
            to_spec=rollout.from_spec,
            started=now,
            elapsed=0.0,
            reason=reason,
        )
        to = rollout.to_spec
        new_placed = sum(c.get(to, 0) for c in counts.values())

    floor = replicas - policy.max_unavailable
    old_placed = sum(n for c in counts.values() for s, n in c.items() if s != to)
    passing_old = min(old_placed, sum(n for s, n in passing.items() if s != to))
    matured_new = min(matured.get(to, 0), new_placed)

    # Old replicas go: the unhealthy ones first, healthy ones while enough stay passing; in all
    # no more than the proven replicas (old running, new matured) above the floor, as Kubernetes
    # caps a rolling update's scale-down (``maxScaledDown``). An old replica whose check failed
    # once under load is still a replica: without the cap it went at once, and with a new spec
    # that never passes the service ran one short until the rollback put it back. Old replicas
    # placed but not running (crashed, never started) are beyond the cap: they serve nothing
    # and hold room that a fix's new replicas may need. But only where the host's agent says so
    # (``failing``): elsewhere "placed, not running" may be a start its record has not told yet,
    # and such a replica counts as running.
    starting = sum(
        max(0, _old(c, to) - _old(running.get(h, {}), to)) for h, c in counts.items() if h not in failing
    )
    idle_old = max(0, old_placed - sum(_old(c, to) for c in running.values()) - starting)
    removable = min(
        old_placed,
        (old_placed - passing_old) + max(0, matured_new + passing_old - floor),
        max(0, old_placed - idle_old + matured_new - floor) + idle_old,
    )
    for _ in range(removable):
        host = min(
            (h for h, c in counts.items() if any(s != to for s in c)),
            key=lambda h: (-(sum(counts[h].values()) - target.get(h, 0)), h),
        )
        spec = min(s for s in counts[host] if s != to)
        counts[host][spec] -= 1
        if counts[host][spec] == 0:
            del counts[host][spec]

    # New replicas come: within the surge (draining ones count), a few unproven at a time,
    # and only where they fit.
    sizes = dict(need or {})
    size = sizes.get(to, Resources())

    def room(host: str) -> bool:
        left = None if free is None else free.get(host)
        if left is None or need is None:
            return True
        grown = {**counts.get(host, {}), to: counts.get(host, {}).get(to, 0) + 1}
        return left.covers(spec_charge(grown, running.get(host, {}), sizes, size))

    shut = closed or {}
    open_hosts = sorted(h for h, n in target.items() if n > 0 and h not in shut)

    def spill() -> list[str]:
        """Open target hosts that may take a closed host's replacement, fewest new replicas first."""
        if not any(target.get(h, 0) > counts.get(h, {}).get(to, 0) for h in shut if h in target):
            return []
        under_cap = [
            h for h in open_hosts if max_per_host is None or counts.get(h, {}).get(to, 0) < max_per_host
        ]
        return sorted(under_cap, key=lambda h: (counts.get(h, {}).get(to, 0), h))

    target_hosts = sum(1 for n in target.values() if n > 0)
    in_flight_cap = max(1, min(policy.max_surge + policy.max_unavailable, target_hosts - 1))
    added, short = 0, []
    while new_placed < replicas and new_placed - matured_new < in_flight_cap:
        if _occupancy(counts, running) >= replicas + policy.max_surge:
            break
        wanting = sorted((-(target.get(h, 0) - counts.get(h, {}).get(to, 0)), h) for h in open_hosts)
        candidates = [h for d, h in wanting if d < 0] or spill()
        host = next((h for h in candidates if room(h)), "")
        if not host:
            short = candidates or sorted(h for h in shut if target.get(h, 0) > counts.get(h, {}).get(to, 0))
            break
        counts.setdefault(host, {})[to] = counts.get(host, {}).get(to, 0) + 1
        new_placed += 1
        added += 1

    old_placed = sum(n for c in counts.values() for s, n in c.items() if s != to)
    old_running = sum(n for c in running.values() for s, n in c.items() if s != to)
    state, reason = rollout.state, rollout.reason
    if state in forward:
        # Held: a new replica is wanted, fits nowhere, and nothing pending (an unproven new
        # replica, an old one leaving) may free room.
        stuck = short and not added and new_placed == matured_new and old_running <= old_placed
        state, reason = (
            (
                RolloutState.HELD,
                _held_reason(replicas - new_placed, short, counts, running, free, sizes, size, shut),
            )
            if stuck
            else (RolloutState.PROGRESSING, "")
        )
    if new_placed >= replicas and matured_new >= replicas and old_placed == 0 and old_running == 0:
        state = RolloutState.COMPLETE if state in forward else RolloutState.ROLLED_BACK
        reason = "" if state == RolloutState.COMPLETE else reason
    counts = {h: c for h, c in counts.items() if c}
    return RolloutStep(
        counts, replace(rollout, state=state, reason=reason, updated=matured_new, total=replicas)
    )


def spec_charge(
    placed: Mapping[str, int], running: Mapping[str, int], need: Mapping[str, Resources], default: Resources
) -> Resources:
    """What one service takes of one host: per spec, the larger of the replicas placed and running
    there, each taking what a replica of its spec takes (``need``; a spec it lacks: ``default``)."""
    total = Resources(0, 0)
    for spec in set(placed) | set(running):
        count = max(placed.get(spec, 0), running.get(spec, 0))
        if count > 0:
            total = total + need.get(spec, default).times(count)
    return total


def within_capacity(
    specs: SpecCounts,
    before: SpecCounts,
    running: SpecCounts,
    free: Mapping[str, Resources | None],
    need: Mapping[str, Resources],
    default: Resources,
) -> tuple[dict[str, dict[str, int]], int]:
    """``specs`` with the replicas it adds (beyond what ``before`` placed or runs there) cut, the
    largest first, on each host whose charge would pass ``free``; and how many were cut.

    For the placements that are not paced step by step: a failed rollout's frozen spec mix
    (`frozen_placement`) and a rolled-back one's, whose specs differ from the one the schedule
    sized its new replicas by.
    """
    out = {h: dict(c) for h, c in specs.items()}
    cut = 0
    for host, counts in out.items():
        left = free.get(host)
        ran, had = running.get(host, {}), before.get(host, {})
        while left is not None and not left.covers(spec_charge(counts, ran, need, default)):
            added = [s for s, n in counts.items() if n > max(had.get(s, 0), ran.get(s, 0))]
            if not added:
                break
            spec = max(added, key=lambda s: (need.get(s, default).memory, need.get(s, default).millicpus, s))
            counts[spec] -= 1
            cut += 1
            if counts[spec] == 0:
                del counts[spec]
    return {h: c for h, c in out.items() if c}, cut


def _held_reason(
    missing: int,
    hosts: Iterable[str],
    counts: SpecCounts,
    running: SpecCounts,
    free: Mapping[str, Resources | None] | None,
    need: Mapping[str, Resources],
    size: Resources,
    closed: Mapping[str, str],
) -> str:
    """E.g. "2 new replicas fit on no host (each needs memory=8Gi cpus=0.25): h1: memory 1Gi free"."""
    why = []
    for host in sorted(hosts):
        if host in closed:
            why.append(f"{host}: {closed[host]}")
            continue
        left = None if free is None else free.get(host)
        if left is None:
            continue
        room = left - spec_charge(counts.get(host, {}), running.get(host, {}), need, size)
        parts = []
        if room.memory < size.memory:
            parts.append(f"memory {format_memory(max(0, room.memory))} free")
        if room.millicpus < size.millicpus:
            parts.append(f"cpus {format_cpus(max(0, room.millicpus))} free")
        why.append(f"{host}: {', '.join(parts)}")
    head = f"{missing} new replica{'s' if missing != 1 else ''} fit on no host (each needs {size.text()})"
    return f"{head}: {'; '.join(why[:MAX_HELD_HOSTS])}" if why else head


MAX_HELD_HOSTS: Final = 10
"""A held rollout's reason names at most this many hosts."""


def _old(counts: Mapping[str, int], to: str) -> int:
    """Replicas of every spec but ``to`` in one host's counts."""
    return sum(n for s, n in counts.items() if s != to)


def _occupancy(counts: SpecCounts, running: SpecCounts) -> int:
    """Replicas that are placed or still run, per host and spec: what the surge limit counts."""
    total = 0
    for host in set(counts) | set(running):
        placed, ran = counts.get(host, {}), running.get(host, {})
        total += sum(max(placed.get(s, 0), ran.get(s, 0)) for s in set(placed) | set(ran))
    return total


ROLLOUT_ELAPSED_EVERY: Final = 5.0
"""An active rollout's ``elapsed`` is written at least this often (seconds): what a
leader change can add to its deadline."""


@dataclass(frozen=True, slots=True)
class RolloutTimer:
    """This leader's own measure of one rollout: it had been in its state ``elapsed`` s at ``at``.

    ``at`` is on the leader's monotonic clock; the timer belongs to the rollout
    identified by (``to_spec``, ``state``, ``started``) and restarts when that changes.
    """

    to_spec: str
    state: str
    started: float
    at: float
    elapsed: float


def time_rollout(
    record: RolloutRecord, timer: RolloutTimer | None, now: float
) -> tuple[RolloutRecord, RolloutTimer]:
    """``record`` with ``elapsed`` measured up to ``now`` (monotonic), and the timer to keep.

    A leader starts timing a rollout from the ``elapsed`` in its record when it
    first sees it, then adds what its own monotonic clock measures: no wall
    clock of any host is compared with another's, and a step of this host's
    wall clock changes nothing. Only an active rollout's time runs.
    """
    identity = (record.to_spec, record.state, record.started)
    if timer is None or (timer.to_spec, timer.state, timer.started) != identity:
        timer = RolloutTimer(record.to_spec, record.state, record.started, now, record.elapsed)
    if not record.active:
        return record, timer
    return replace(record, elapsed=timer.elapsed + max(0.0, now - timer.at)), timer


def rollout_needs_write(old: RolloutRecord | None, new: RolloutRecord) -> bool:
    """Whether ``new`` differs from the stored ``old`` in more than time, or its time is due.

    ``elapsed`` alone changes every pass; it is written with any other change,
    and at least every ``ROLLOUT_ELAPSED_EVERY`` seconds while the rollout is active.
    """
    if old is None or replace(old, elapsed=0.0) != replace(new, elapsed=0.0):
        return True
    return new.active and new.elapsed - old.elapsed >= ROLLOUT_ELAPSED_EVERY


def frozen_placement(record: PlacementRecord, decided: PlacementRecord, keep: str) -> PlacementRecord:
    """A failed rollout's placement: ``record``'s spec mix, frozen, on the hosts of ``decided``.

    A failed rollout changes no replica's spec, but a lost host's replicas must
    still move: ``decided`` (the schedule) says how many replicas each host
    has; each host keeps the specs it had in ``record``, and a host that
    gains replicas takes the specs the lost hosts had. Where a host has fewer
    replicas than before, specs other than ``keep`` (the known-good one) go
    first; replicas beyond ``record``'s total are of ``keep``.
    """
    specs: dict[str, dict[str, int]] = {}
    for host, count in sorted(decided.hosts.items()):
        kept = dict(record.spec_counts(host))
        for spec in sorted(kept, key=lambda s: (s == keep, s)):  # ``keep`` last: it goes last
            cut = min(kept[spec], max(0, sum(kept.values()) - count))
            kept[spec] -= cut
        specs[host] = {s: n for s, n in kept.items() if n > 0}
    had: Counter[str] = Counter()
    for host in record.hosts:
        had.update(record.spec_counts(host))
    for counts in specs.values():
        had.subtract(counts)
    moving = [s for s in sorted(had, key=lambda s: (s != keep, s)) for _ in range(max(0, had[s]))]
    for host, count in sorted(decided.hosts.items()):
        while sum(specs[host].values()) < count:
            spec = moving.pop(0) if moving else keep
            specs[host][spec] = specs[host].get(spec, 0) + 1
    return replace(
        decided,
        spec_hash=record.spec_hash,
        hosts=frozen_map({h: sum(c.values()) for h, c in specs.items() if c}),
        specs={h: frozen_map(c) for h, c in specs.items() if c},
    )


def dropped_rollback_requests(requests: Iterable[str], manifests: Mapping[str, Manifest | None]) -> list[str]:
    """Rollback requests to delete unheard: the service's manifest is invalid or gone.

    A request is acted on against a valid manifest only; kept, it would wait
    for the manifest to be fixed and then turn that good rollout into a rollback.
    """
    return sorted(name for name in requests if manifests.get(name) is None)


def orphaned_revisions(
    revisions: Iterable[tuple[str, str]], manifests: Mapping[str, object]
) -> list[tuple[str, str]]:
    """The kept revisions (service, spec) that go: their service's manifest is gone (not merely invalid)."""
    return sorted({(name, spec) for name, spec in revisions if name not in manifests})
