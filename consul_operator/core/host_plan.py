"""What one host does about its containers: its desires and actions (``plan_host``, every agent).

`host_pass.decide_host` calls these once per pass, with the back-offs it keeps
in the agent's memory.

Nothing here does I/O or reads a clock: time comes in as arguments (wall
clock ``now`` for Docker's times, monotonic ``mono`` for the agent's own
deadlines), every input is plain data from ``model.py``, and the same input
always gives the same output in the same order.

The host plan (every agent: ``plan_host``)
==========================================

Input: what this host should run of each service (``ServiceDesire``, only for
services that have a manifest in KV), our containers on the host, our
registrations on the host's Consul agent, the actions still in flight or
held by their back-off, the per-service back-off, and the time on two clocks:
``now`` (wall, Unix seconds) is compared only with Docker's start and finish
times; ``mono`` (the agent's monotonic clock) with back-off deadlines, which
the agent set on that clock. Output: a ``HostActions`` of actions, one report
per service, when (``mono``) to look again by itself, and the back-off of
each service after the crashes the plan counted.

- **Busy containers** (an action from an earlier pass is still running on
  them) are neither counted nor acted on, nor are their registrations: an
  action is never issued twice. Pending starts count as replicas.
- **Deleted service** (containers or registrations, but no manifest key):
  every running container is drained (with the default drain and stop
  grace, as there is no manifest to read them from), every dead one removed,
  every registration dropped.
- **Invalid manifest: hands off.** No action at all on the service's
  containers or registrations; the report carries the error.
- **Valid manifest:**

  - a dead container is removed; it *crashed* when it ended on its own less
    than ``MIN_RUN_SECONDS`` after starting, or never started. Killed by a
    signal from outside (exit 137/143 without an OOM kill: `docker kill`, an
    engine restart) is not a crash. A crash is a
    failure for the back-off; the plan counts the crashes it removes (once
    per container: ``counted`` holds those counted before), so the
    replacement waits for the back-off instead of racing the removal.
  - running containers are *current* (labelled with the manifest's spec
    hash) or *outdated*.
  - too few (current + pending starts < desired): start the missing ones,
    unless the service is in back-off; then start nothing and wake up when
    the back-off ends.
  - too many current ones: drain the surplus, unhealthy ones first, then the
    youngest (the oldest have proved themselves). Pending starts do not make
    current containers surplus: a start can still fail, and capacity is kept
    until the new containers run (they are drained later if still surplus).
  - outdated containers are drained only as far as current ones replace
    them: current + outdated never drops below desired because of a spec
    change. This is the fallback for a spec change the leader does not pace
    (a service placed before rollouts existed, without a kept revision);
    normally the leader paces it with ``plan_rollout`` and each host follows
    per-spec counts.
  - a service with named volumes (``volumes: [{name: ...}]``) is replaced in
    place: its outdated containers are drained at once, and each start takes
    the lowest *slot* below the wanted count that no container of the
    service on this host holds, in any state (``StartContainer.slot``; the
    slot names the Docker volumes it mounts). A start with no free slot
    waits: the old container's removal wakes the next pass.
  - every running container that is kept and publishes a port, of a service
    with a port, has a registration that names it (service ID = container
    name), its container ID, spec hash and host port; otherwise it is
    (re-)registered; with ``ports:``, each other published port has a
    registration of its own too (ID ``<container>-<name>``), and only the
    replica's own counts it healthy. A right registration whose check Consul
    restored critical after its agent restarted (``Registration.restored``)
    is registered again, passing, if the replica's own check passes
    (``Register.restored``): the restart costs no passing replica.
- **Registrations** that name no such container are deregistered, except
  those of an invalid service, those in flight, and those of containers this
  plan drains or removes (draining and removing deregister first by
  themselves).
- **Failed actions back off.** An action that failed (a removal Docker
  refuses, a registration Consul refuses) is held until its back-off runs out
  (``InFlight.held_until``, by `action_key`): the plan leaves it out and wakes
  when the earliest hold ends, instead of trying again on every pass.

Crashes and the back-off
========================

After the n-th consecutive failure of a service on a host (a crash, or a
start that failed) the next start waits ``backoff.backoff_delay(n)``
seconds: 1, 2, 4, ... 60 s; a failing action (per container or
registration and kind) waits the same. A container that has run for
``MIN_RUN_SECONDS`` (``healthy_run``, on the wall clock against Docker's start
time) ends the streak. The agent's memory keeps the ``Backoff`` values
(`host_pass.HostMemory`), with deadlines on its monotonic clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from consul_operator.core.backoff import Backoff, backoff_after_failure
from consul_operator.core.desired_state import (
    DEFAULT_DRAIN,
    DEFAULT_STOP_GRACE,
    Manifest,
    ManifestError,
    capabilities_refused,
    host_paths_refused,
)
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    DrainContainer,
    HostActions,
    InFlight,
    Register,
    Registration,
    RemoveDead,
    ServiceDesire,
    ServiceReport,
    StartContainer,
    action_key,
    extra_port_id,
)
from consul_operator.core.records import Hold, PlacementRecord, frozen_map

MIN_RUN_SECONDS: Final = 10.0
"""A container that ends on its own sooner than this after starting counts as a crash."""

Revisions = Mapping[tuple[str, str], Manifest]
"""Kept manifests of specs other than the one in ``services/``, by (service, spec hash)."""


# --- what this host should run ---------------------------------------------------------


def revisions_wanted(
    host: str, manifests: Mapping[str, Manifest | ManifestError], placements: Mapping[str, PlacementRecord]
) -> list[tuple[str, str]]:
    """(service, spec) of every kept revision `host_desires` needs: a spec placed on ``host``
    that is not the manifest's (a rollout, or a change the leader has not paced yet)."""
    wanted: list[tuple[str, str]] = []
    for name, manifest in sorted(manifests.items()):
        record = placements.get(name)
        if not isinstance(manifest, Manifest) or record is None:
            continue
        spec = manifest.spec_hash()
        if record.specs or record.spec_hash != spec:
            wanted.extend((name, s) for s in sorted(record.spec_counts(host)) if s != spec)
    return wanted


def host_desires(
    host: str,
    manifests: Mapping[str, Manifest | ManifestError],
    placements: Mapping[str, PlacementRecord],
    revisions: Revisions,
    allowed_caps: frozenset[str] = frozenset(),
    allowed_host_paths: tuple[str, ...] = (),
) -> dict[str, ServiceDesire]:
    """What ``host`` should run of every service with a manifest, from the leader's placements.

    * an invalid manifest, or one the leader has not placed yet: hands off
      (``hold`` says why), whatever runs keeps running;
    * a placement per spec (a rollout the leader paces): the leader's count
      of each spec, each spec's manifest from ``revisions`` (a spec without
      one is left as it runs);
    * a changed manifest whose placement still names the spec in use, kept
      in ``revisions``: keep to that spec until the leader paces the change
      (without a revision, from before rollouts, the host plan replaces);
    * a manifest whose ``cap_add`` names a capability this host's agent does
      not allow (``allowed_caps``, its ``--allow-cap``): hands off, with an
      error naming the field and the capabilities (no hold: the host is at
      fault for the service, and `operator status` shows it degraded); the same for a
      ``host_path`` volume outside the agent's ``--allow-host-path`` directories;
    * a manifest with secrets runs only as the leader resolved it (their versions, `resolve.py`): from
      the revision of the placed spec; without it, hands off (``hold``);
    * otherwise the placed count of the manifest's spec.

    ``revisions`` holds what `revisions_wanted` asked for (absent: not kept).
    """
    desires: dict[str, ServiceDesire] = {}
    for name, manifest in manifests.items():
        record = placements.get(name)
        if not isinstance(manifest, Manifest):
            error = f"Invalid: {manifest.problems[0]}"
            desires[name] = ServiceDesire(name, None, 0, error=error, hold=Hold.INVALID)
        elif refused := capabilities_refused(manifest, allowed_caps):
            error = (
                f"cap_add: {', '.join(refused)} not allowed on {host} (its agent's --allow-cap); "
                "nothing of the service is started or changed here"
            )
            desires[name] = ServiceDesire(name, None, record.hosts.get(host, 0) if record else 0, error=error)
        elif refused_paths := host_paths_refused(manifest, allowed_host_paths):
            error = (
                f"volumes: host path {', '.join(refused_paths)} not allowed on {host} (its agent's "
                "--allow-host-path); nothing of the service is started or changed here"
            )
            desires[name] = ServiceDesire(name, None, record.hosts.get(host, 0) if record else 0, error=error)
        elif record is None:
            # No decision yet: keep whatever runs rather than guess a count.
            desires[name] = ServiceDesire(name, None, 0, error="Pending: not placed yet", hold=Hold.UNPLACED)
        elif record.specs:
            desires[name] = _paced_desire(manifest, record.spec_counts(host), revisions)
        elif record.spec_hash != manifest.spec_hash() and (name, record.spec_hash) in revisions:
            # The placed spec is kept (and placed here): `revisions_wanted` asked for it.
            desires[name] = _paced_desire(manifest, record.spec_counts(host), revisions)
        elif manifest.needs_resolving and record.spec_hash != manifest.spec_hash():
            # Its secrets' versions are in the leader's kept revision only: never run it as written.
            error = f"Pending: the leader's revision {record.spec_hash} of its secrets is not here yet"
            desires[name] = ServiceDesire(name, None, 0, error=error, hold=Hold.UNPLACED)
        else:
            desires[name] = ServiceDesire(name, manifest, record.hosts.get(host, 0))
    return desires


def _paced_desire(manifest: Manifest, counts: Mapping[str, int], revisions: Revisions) -> ServiceDesire:
    """The leader's count per spec, each spec's manifest from its revision (or the manifest itself)."""
    known = {manifest.spec_hash(): manifest}
    for spec in counts:
        kept = revisions.get((manifest.name, spec))
        if spec not in known and kept is not None:
            known[spec] = kept
    return ServiceDesire(
        manifest.name, manifest, sum(counts.values()), specs=frozen_map(counts), revisions=known
    )


# --- the host plan ---------------------------------------------------------------------

REASON_DELETED: Final = "service deleted"
REASON_SCALE_DOWN: Final = "scale down"
REASON_SPEC_CHANGED: Final = "spec changed"


def backoff_after_crash(previous: Backoff, mono: float, removed: RemoveDead) -> Backoff:
    """``backoff_after_failure`` for a crashed container, with a "crash-looping" error text."""
    return backoff_after_failure(
        previous, mono, f"crash-looping: {removed.reason}", removed.container.spec_hash
    )


def ends_streak(backoff: Backoff, container: ContainerInfo, now: float) -> bool:
    """Whether ``container`` ran long enough, and is of the failing spec, to end ``backoff``'s streak.

    ``now`` is wall-clock time: it is compared with Docker's start time.
    """
    same_spec = not backoff.spec_hash or container.spec_hash == backoff.spec_hash
    return backoff.failures > 0 and same_spec and healthy_run(container, now)


def healthy_run(container: ContainerInfo, now: float) -> bool:
    """Whether ``container`` has been running at least MIN_RUN_SECONDS (a success); ``now`` is wall time."""
    return (
        container.running
        and container.started_at is not None
        and now - container.started_at >= MIN_RUN_SECONDS
    )


# --- host plan -----------------------------------------------------------------------


@dataclass(slots=True)
class _Pass:
    """What one plan_host pass has decided so far."""

    actions: list[Action] = field(default_factory=list)
    reports: list[ServiceReport] = field(default_factory=list)
    wake_at: float | None = None
    # Registrations to keep (service IDs), and why the rest of a kept
    # container's registrations go (ID -> reason); read by _deregistrations.
    wanted: set[str] = field(default_factory=set)
    unregistrable: dict[str, str] = field(default_factory=dict)
    # Service IDs of containers this pass drains or removes: those actions
    # deregister by themselves.
    handled: set[str] = field(default_factory=set)
    # Container ids whose crash is in the back-offs given already, and the
    # back-off of each service after the crashes this pass counts.
    counted_before: frozenset[str] = frozenset()
    counted: dict[str, Backoff] = field(default_factory=dict)
    # Slots held by a container of each service on this host, in any state, busy ones included.
    slots: dict[str, set[int]] = field(default_factory=dict)

    def wake(self, at: float) -> None:
        """Wake up no later than ``at``."""
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


def plan_host(
    desires: Mapping[str, ServiceDesire],
    containers: Sequence[ContainerInfo],
    registrations: Sequence[Registration],
    inflight: InFlight,
    backoffs: Mapping[str, Backoff],
    now: float,
    *,
    mono: float,
    counted: frozenset[str] = frozenset(),
    pull_backoffs: Mapping[str, Backoff] = MappingProxyType({}),
) -> HostActions:
    """The actions that bring ``host`` to its desires, one report per service (module doc).

    ``desires`` holds the services that have a manifest in KV (``manifest``
    None: invalid, hands off); ``containers`` and ``registrations`` are ours on
    this host. ``now`` is wall-clock time (for Docker's times), ``mono`` the
    agent's monotonic time (for ``backoffs`` and ``inflight.held_until``).
    ``counted``: the dead containers whose crash ``backoffs`` hold already (a
    removal that failed is planned again, and its crash must not count twice).
    ``pull_backoffs``: per image, its failed pulls: no start of it until that back-off ends.
    """
    busy = inflight.busy_containers
    idle = sorted((c for c in containers if c.id not in busy), key=lambda c: (c.name, c.id))
    plan = _Pass(counted_before=counted)
    for c in containers:
        if c.slot is not None:
            plan.slots.setdefault(c.service, set()).add(c.slot)
    reported = set(desires) | {c.service for c in containers}
    # Grouped and indexed once a pass: per service, a walk over every container and registration of the
    # host made a pass O(services x replicas), 0.05 s of 0.13 at 1,000 services (bench.host_profile).
    by_service: dict[str, list[ContainerInfo]] = {}
    for c in idle:
        by_service.setdefault(c.service, []).append(c)
    regs = _Registered.of(registrations)
    for service in sorted(reported):
        mine = by_service.get(service, [])
        desire = desires.get(service)
        if desire is None:
            _plan_deleted(plan, service, mine, regs)
        elif desire.manifest is None:
            report = _report(service, desire.count, mine, regs, "", desire.error)
            plan.reports.append(dataclasses.replace(report, hold=desire.hold))
        else:
            backoff = backoffs.get(service, Backoff())
            if any(ends_streak(backoff, c, now) for c in mine):
                backoff = Backoff()  # a long enough run: the streak is over (the agent forgets it too)
            pulls = _Pulls(pull_backoffs)
            _plan_valid(plan, desire, desire.manifest, mine, regs, inflight, backoff, mono, pulls)
    plan.actions.extend(_deregistrations(plan, desires, containers, registrations, inflight))
    actions = _not_held(plan, inflight.held_until, mono)
    counted_now = MappingProxyType(plan.counted)
    return HostActions(actions, tuple(plan.reports), wake_at=plan.wake_at, counted=counted_now)


def _not_held(plan: _Pass, held_until: Mapping[str, float], mono: float) -> tuple[Action, ...]:
    """The planned actions less those still in their back-off; wake when the first hold ends."""
    kept: list[Action] = []
    for action in plan.actions:
        key = action_key(action)
        until = held_until.get(key) if key is not None else None
        if until is not None and mono < until:
            plan.wake(until)
        else:
            kept.append(action)
    return tuple(kept)


def _plan_deleted(
    plan: _Pass,
    service: str,
    containers: Sequence[ContainerInfo],
    regs: _Registered,
) -> None:
    """A service whose manifest was deleted: drain what runs, remove what is dead."""
    for c in containers:
        if c.dead:
            plan.actions.append(RemoveDead(c, crashed=False, reason=REASON_DELETED))
            plan.handled.add(c.name)
    for c in containers:
        if c.running:
            # No manifest says how any more: what the replica was started with, else the defaults.
            drain = DEFAULT_DRAIN if c.drain is None else c.drain
            stop_grace = DEFAULT_STOP_GRACE if c.stop_grace is None else c.stop_grace
            plan.actions.append(DrainContainer(c, drain, stop_grace, reason=REASON_DELETED))
            plan.handled.add(c.name)
    plan.reports.append(_report(service, 0, containers, regs, "", None))


def _plan_valid(
    plan: _Pass,
    desire: ServiceDesire,
    manifest: Manifest,
    containers: Sequence[ContainerInfo],
    regs: _Registered,
    inflight: InFlight,
    backoff: Backoff,
    mono: float,
    pulls: _Pulls,
) -> None:
    """A service with a valid manifest: remove dead, start missing, drain surplus, register."""
    if desire.specs:
        _plan_specs(plan, desire, manifest, containers, regs, inflight, backoff, mono, pulls)
        return
    spec = manifest.spec_hash()
    want = desire.count
    removals = [_removal(c) for c in containers if c.dead]
    backoff = _count_crashes(plan, desire.service, removals, backoff, mono)

    running = [c for c in containers if c.running]
    current = [c for c in running if c.spec_hash == spec]
    surplus, stale = _to_drain(running, spec, want, regs.healthy)
    if manifest.named_volumes:  # replaced in place: the new replica needs the old one's slot
        stale = [c for c in running if c.spec_hash != spec]
    missing = max(0, want - len(current) - inflight.pending_starts.get(desire.service, 0))

    plan.actions.extend(removals)
    plan.actions.extend(_drain(c, manifest, REASON_SCALE_DOWN) for c in surplus)
    plan.actions.extend(_drain(c, manifest, REASON_SPEC_CHANGED) for c in stale)
    backoff = pulls.holding(backoff, manifest.image, mono) if missing else backoff
    if missing and backoff.ready(mono):
        plan.actions.extend(_starts(plan, manifest, missing, want))
    elif missing:
        plan.wake(backoff.retry_at)
    plan.handled.update(r.container.name for r in removals)
    plan.handled.update(c.name for c in [*surplus, *stale])

    drained = {c.id for c in [*surplus, *stale]}
    kept = [c for c in running if c.id not in drained]
    _plan_registrations(plan, manifest, kept, regs, inflight)

    error = desire.error or ("" if backoff.ready(mono) else _backoff_error(backoff, mono))
    plan.reports.append(_report(desire.service, want, containers, regs, spec, error))


def _plan_specs(
    plan: _Pass,
    desire: ServiceDesire,
    manifest: Manifest,
    containers: Sequence[ContainerInfo],
    regs: _Registered,
    inflight: InFlight,
    backoff: Backoff,
    mono: float,
    pulls: _Pulls,
) -> None:
    """A service in a rollout: per spec, exactly the leader's count (starts and drains are paced there).

    A spec whose manifest is not known (no revision) keeps what runs of it.
    """
    removals = [_removal(c) for c in containers if c.dead]
    backoff = _count_crashes(plan, desire.service, removals, backoff, mono)
    plan.actions.extend(removals)
    plan.handled.update(r.container.name for r in removals)
    running = [c for c in containers if c.running]
    healthy = regs.healthy
    errors: list[str] = []
    for spec in sorted({c.spec_hash for c in running} | set(desire.specs)):
        want = desire.specs.get(spec, 0)
        mine = [c for c in running if c.spec_hash == spec]
        spec_manifest = desire.revisions.get(spec)
        if want > 0 and spec_manifest is None:
            errors.append(f"no manifest for spec {spec}")
            plan.wanted.update(c.name for c in mine)
            continue
        timings = spec_manifest or manifest
        surplus = _drain_order(mine, healthy)[: max(0, len(mine) - want)]
        reason = REASON_SCALE_DOWN if want else REASON_SPEC_CHANGED
        plan.actions.extend(_drain(c, timings, reason) for c in surplus)
        plan.handled.update(c.name for c in surplus)
        pending = inflight.pending_spec_starts.get(f"{desire.service}/{spec}", 0)
        missing = max(0, want - len(mine) - pending)
        held = backoff
        if missing and spec_manifest is not None:
            held = pulls.holding(backoff, spec_manifest.image, mono)
            if held is not backoff:
                errors.append(_backoff_error(held, mono))
        if missing and spec_manifest is not None and held.ready(mono):
            plan.actions.extend(_starts(plan, spec_manifest, missing, sum(desire.specs.values())))
        elif missing:
            plan.wake(held.retry_at)
        drained = {c.id for c in surplus}
        _plan_registrations(plan, timings, [c for c in mine if c.id not in drained], regs, inflight)
    error = desire.error or ("" if backoff.ready(mono) else _backoff_error(backoff, mono))
    error = error or "; ".join(errors)
    want_total = sum(desire.specs.values())
    plan.reports.append(_report(desire.service, want_total, containers, regs, manifest.spec_hash(), error))


@dataclass(frozen=True, slots=True)
class _Pulls:
    """The images' pull back-offs (`host_pass.HostMemory.pull_backoffs`)."""

    backoffs: Mapping[str, Backoff]

    def holding(self, backoff: Backoff, image: str, mono: float) -> Backoff:
        """What holds a start of ``image``: the image's pull back-off when it ends later than the service's
        ``backoff`` (its error then says ``ImagePullBackOff``), else ``backoff``."""
        pull = self.backoffs.get(image)
        if pull is not None and not pull.ready(mono) and pull.retry_at > backoff.retry_at:
            return pull
        return backoff


def _count_crashes(
    plan: _Pass, service: str, removals: Sequence[RemoveDead], backoff: Backoff, mono: float
) -> Backoff:
    """``backoff`` with the crashes among ``removals`` not counted before: the replacement waits
    for the back-off at once, instead of racing the removal."""
    new = [r for r in removals if r.crashed and r.container.id not in plan.counted_before]
    for crash in new:
        backoff = backoff_after_crash(backoff, mono, crash)
    if new:
        plan.counted[service] = backoff
    return backoff


def _starts(plan: _Pass, manifest: Manifest, missing: int, want: int) -> list[StartContainer]:
    """``missing`` starts of ``manifest``; with named volumes, each in a free slot below ``want`` (a
    slot is free once no container of the service holds it: the old replica is stopped and removed
    first), and only as many as there are free slots (the removal's event wakes the next pass)."""
    if not manifest.named_volumes:
        return [StartContainer(manifest) for _ in range(missing)]
    held = plan.slots.setdefault(manifest.name, set())
    free = [slot for slot in range(want) if slot not in held][:missing]
    held.update(free)
    return [StartContainer(manifest, slot) for slot in free]


def _to_drain(
    running: Sequence[ContainerInfo], spec: str, want: int, healthy: AbstractSet[str]
) -> tuple[list[ContainerInfo], list[ContainerInfo]]:
    """The current containers beyond ``want`` and the outdated ones already replaced.

    Pending starts do not make current containers surplus: a start can still
    fail, so capacity stays until the new containers run (if they are then too
    many, the youngest go). Outdated containers go only as far as current ones
    replace them, so current + outdated never drops below ``want`` because of
    a spec change.
    """
    current = [c for c in running if c.spec_hash == spec]
    outdated = [c for c in running if c.spec_hash != spec]
    surplus = _drain_order(current, healthy)[: max(0, len(current) - want)]
    kept_current = len(current) - len(surplus)
    stale_count = min(len(outdated), max(0, kept_current + len(outdated) - want))
    return surplus, _drain_order(outdated, healthy)[:stale_count]


def _removal(container: ContainerInfo) -> RemoveDead:
    """Remove a dead container; it crashed when it never started or ended too soon."""
    if container.state == "created":
        reason = f"never started: {container.error}" if container.error else "never started"
        return RemoveDead(container, crashed=True, reason=reason)
    ran = _run_seconds(container)
    crashed = ran is not None and ran < MIN_RUN_SECONDS and not _killed_from_outside(container)
    return RemoveDead(container, crashed=crashed, reason=_exit_text(container, ran))


# 128 + SIGKILL, 128 + SIGTERM: what `docker kill`, `docker stop` or an engine
# shutdown leave behind.
_SIGNAL_EXITS: Final = (137, 143)


def _killed_from_outside(container: ContainerInfo) -> bool:
    """Ended by a signal from outside (docker kill/stop, an engine restart), not by the kernel's OOM killer.

    Such an end says nothing about the service, so it is not a crash and its
    replacement starts at once; an OOM kill (also 137) is the service's own doing.
    """
    return container.exit_code in _SIGNAL_EXITS and not container.oom_killed


def _run_seconds(container: ContainerInfo) -> float | None:
    """How long a finished container ran, when Docker knows both ends."""
    if container.started_at is None or container.finished_at is None:
        return None
    return container.finished_at - container.started_at


def _exit_text(container: ContainerInfo, ran: float | None) -> str:
    """E.g. "exited with code 1 after 0.3s", plus Docker's error when it gave one."""
    code = "unknown" if container.exit_code is None else str(container.exit_code)
    text = f"exited with code {code}"
    if ran is not None:
        # Tenths, rounded down: a crash at 9.99 s must not read "after 10.0s".
        tenths = math.floor(max(ran, 0.0) * 10 + 1e-6) / 10
        text += f" after {tenths:.1f}s"
    if container.error:
        text += f": {container.error}"
    return text


def _healthy_ids(registrations: Iterable[Registration]) -> set[str]:
    """IDs of the containers that have a passing registration."""
    return {r.container_id for r in registrations if r.healthy and not r.extra_port}


@dataclass(frozen=True, slots=True)
class _Registered:
    """This host's registrations as a pass looks them up: the containers with a passing one, each by ID."""

    healthy: frozenset[str]
    by_id: Mapping[str, Registration]

    @classmethod
    def of(cls, registrations: Iterable[Registration]) -> _Registered:
        listed = list(registrations)
        return cls(frozenset(_healthy_ids(listed)), {r.service_id: r for r in listed})


def _drain_order(containers: Iterable[ContainerInfo], healthy: AbstractSet[str]) -> list[ContainerInfo]:
    """Which containers to drain first: unhealthy ones, then the youngest, then by name.

    The oldest healthy replicas have proved themselves; the newest may still be
    warming up, and an unhealthy one serves nobody.
    """

    def key(c: ContainerInfo) -> tuple[bool, float, str, str]:
        started = c.started_at if c.started_at is not None else c.created_at
        return (c.id in healthy, -started, c.name, c.id)

    return sorted(containers, key=key)


def _drain(container: ContainerInfo, manifest: Manifest, reason: str) -> DrainContainer:
    """Drain ``container`` with the manifest's timings."""
    return DrainContainer(container, manifest.drain, manifest.stop_grace, reason=reason)


def _plan_registrations(
    plan: _Pass,
    manifest: Manifest,
    kept: Sequence[ContainerInfo],
    regs: _Registered,
    inflight: InFlight,
) -> None:
    """Register every kept container that publishes the service's port, unless it already is."""
    by_id = regs.by_id
    for c in kept:
        if manifest.port is None:
            plan.unregistrable[c.name] = "service has no port"
            continue
        if c.host_port is None:
            plan.unregistrable[c.name] = "container publishes no port"
            continue
        plan.wanted.add(c.name)
        published = dict(c.host_ports)
        extras = [
            (extra_port_id(c.name, name), published[port])
            for name, port in manifest.extra_ports
            if port in published
        ]
        plan.wanted.update(sid for sid, _ in extras)
        if c.name in inflight.busy_registrations:
            continue  # a (de)registration of it is still in flight
        registration = by_id.get(c.name)
        if (
            registration is None
            or not _registered(registration, c, manifest.name)
            or any(not _registered(by_id.get(sid), c, manifest.name, port) for sid, port in extras)
        ):
            plan.actions.append(Register(c, manifest))
        else:  # right; checks a restarted Consul restored critical, the extra ports' TCP ones too
            restored = tuple(
                sid
                for sid in (c.name, *(sid for sid, _ in extras))
                if (r := by_id.get(sid)) is not None and r.restored and not r.healthy
            )
            if restored:
                plan.actions.append(Register(c, manifest, restored=True, restored_ids=restored))


def _registered(
    registration: Registration | None, container: ContainerInfo, service: str, port: int | None = None
) -> bool:
    """Whether ``registration`` is exactly what ``container`` should have (at ``port``, an extra
    port's host port; by default the replica's own)."""
    return (
        registration is not None
        and registration.service == service
        and registration.container_id == container.id
        and registration.spec_hash == container.spec_hash
        and registration.port == (container.host_port if port is None else port)
    )


def _deregistrations(
    plan: _Pass,
    desires: Mapping[str, ServiceDesire],
    containers: Sequence[ContainerInfo],
    registrations: Sequence[Registration],
    inflight: InFlight,
) -> list[Deregister]:
    """Drop registrations that name no container worth registering (module doc)."""
    invalid = {s for s, d in desires.items() if d.manifest is None}
    busy_names = {c.name for c in containers if c.id in inflight.busy_containers}
    leave_alone = plan.wanted | plan.handled | busy_names | inflight.busy_registrations
    actions: list[Deregister] = []
    for r in sorted(registrations, key=lambda r: r.service_id):
        if r.service in invalid or r.service_id in leave_alone:
            continue
        if r.container_id in inflight.busy_containers:
            continue
        if r.service not in desires:
            reason = REASON_DELETED
        else:
            reason = plan.unregistrable.get(r.service_id, "container gone")
        actions.append(Deregister(r.service_id, reason=reason, service=r.service))
    return actions


def _backoff_error(backoff: Backoff, mono: float) -> str:
    """E.g. "crash-looping: exited with code 1 after 0.1s; next try in 8s"."""
    wait = max(0, math.ceil(backoff.retry_at - mono))
    return f"{backoff.last_error}; next try in {wait}s"


def _report(
    service: str,
    desired: int,
    containers: Sequence[ContainerInfo],
    regs: _Registered,
    spec_hash: str,
    error: str | None,
) -> ServiceReport:
    """What runs of ``service`` (idle containers, current or outdated) and how much is healthy."""
    healthy = regs.healthy
    running = [c for c in containers if c.running]
    return ServiceReport(
        service=service,
        desired=desired,
        running=len(running),
        healthy=sum(1 for c in running if c.id in healthy),
        spec_hash=spec_hash,
        error=error or "",
    )
