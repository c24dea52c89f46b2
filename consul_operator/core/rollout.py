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

from consul_operator.core.desired_state import Manifest, UpdatePolicy
from consul_operator.core.model import Event
from consul_operator.core.records import PlacementRecord, RolloutRecord, RolloutState, frozen_map

SpecCounts = Mapping[str, Mapping[str, int]]
"""Replicas per host per spec hash."""

SpecsByHost = dict[str, dict[str, dict[str, int]]]
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
    back to, and otherwise replaces without pacing; while rolling back, the
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
    elif old.state == S.PROGRESSING:
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
        return old, Event(warning, {"service": name}, "warning")
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
) -> RolloutStep:
    """One pacing step of a rollout from every other spec to ``rollout.to_spec``.

    ``target`` is where the ``replicas`` should end up (the schedule's hosts),
    ``placed`` the current placement per host and spec, ``running`` what the
    agents report running (draining containers included), ``passing`` the
    passing instances per spec and ``matured`` those passing for at least
    ``policy.min_healthy``. Old-spec replicas go only as new ones mature and
    never below ``replicas - max_unavailable`` passing; new ones are added
    while placed-or-running stays within ``replicas + max_surge`` and no more
    than ``max_surge + max_unavailable`` (and fewer than the number of target
    hosts) are unproven. Past the deadline (``rollout.elapsed``, see
    `time_rollout`) a forward rollout fails: it rolls back with
    ``auto_rollback``, else it stops changing anything. ``now`` (wall clock)
    only stamps a rollback's ``started``, for people.
    """
    counts = {h: {s: n for s, n in c.items() if n > 0} for h, c in placed.items()}
    if not rollout.active:
        return RolloutStep(counts, rollout)
    to = rollout.to_spec
    new_placed = sum(c.get(to, 0) for c in counts.values())
    if rollout.state == RolloutState.PROGRESSING and rollout.elapsed > policy.deadline:
        reason = f"new replicas not healthy within {policy.deadline:g}s"
        if not policy.auto_rollback:
            updated = min(matured.get(to, 0), new_placed)
            return RolloutStep(
                counts, replace(rollout, state=RolloutState.FAILED, reason=reason, updated=updated)
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

    # Old replicas go: the unhealthy ones freely, healthy ones while enough stay passing.
    removable = min(old_placed, (old_placed - passing_old) + max(0, matured_new + passing_old - floor))
    for _ in range(removable):
        host = min(
            (h for h, c in counts.items() if any(s != to for s in c)),
            key=lambda h: (-(sum(counts[h].values()) - target.get(h, 0)), h),
        )
        spec = min(s for s in counts[host] if s != to)
        counts[host][spec] -= 1
        if counts[host][spec] == 0:
            del counts[host][spec]

    # New replicas come: within the surge (draining ones count), a few unproven at a time.
    target_hosts = sum(1 for n in target.values() if n > 0)
    in_flight_cap = max(1, min(policy.max_surge + policy.max_unavailable, target_hosts - 1))
    while new_placed < replicas and new_placed - matured_new < in_flight_cap:
        if _occupancy(counts, running) >= replicas + policy.max_surge:
            break
        deficits = [(target.get(h, 0) - counts.get(h, {}).get(to, 0), h) for h in target]
        _, host = min(((-d, h) for d, h in deficits if d > 0), default=(0, ""))
        if not host:
            break
        counts.setdefault(host, {})[to] = counts.get(host, {}).get(to, 0) + 1
        new_placed += 1

    old_placed = sum(n for c in counts.values() for s, n in c.items() if s != to)
    old_running = sum(n for c in running.values() for s, n in c.items() if s != to)
    state = rollout.state
    if new_placed >= replicas and matured_new >= replicas and old_placed == 0 and old_running == 0:
        state = RolloutState.COMPLETE if state == RolloutState.PROGRESSING else RolloutState.ROLLED_BACK
    counts = {h: c for h, c in counts.items() if c}
    return RolloutStep(counts, replace(rollout, state=state, updated=matured_new, total=replicas))


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
