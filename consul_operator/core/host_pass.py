"""One host's whole pass, as one pure decision: `decide_host(state, memory, now, settings) -> HostPlan`.

The host side's counterpart of `leader_plan.decide_leader`: `host_agent.py`
reads a `HostState` once (manifests, placements and kept revisions, our
containers, our registrations, what is in flight, how the actions finished
since the last pass ended, and this host's status records as KV holds them),
calls `decide_host`, hands the actions to the executor, writes the status
changes, and logs, records and exports what the plan carries. Nothing here
does I/O or reads a clock: ``now`` holds both clocks, and what the agent
remembers between passes comes in as a `HostMemory` and goes out, updated,
in the plan (and, once the status writes are sent, from `after_writes`).

One pass:

1. **Outcomes** (`model.Outcome`, from the executor): a failed start backs
   its service off (`Backoff`, 1 s doubling to 60 s), unless the Docker
   engine was away; a start that failed pulling its image backs the *image*
   off instead (``pull_backoffs``, as the kubelet's ``ImagePullBackOff``):
   every start of that image on this host waits, whatever service, and the
   starts that waited for one failed pull count it once; a start of the
   image that succeeds clears it. A failed action backs off by its
   `action_key`, and a success clears that key.
2. **Forgetting**: the back-offs of actions on containers and registrations
   no longer there, and of images no manifest or kept revision names; a
   service's streak ends once a container of its failing spec has run
   `host_plan.MIN_RUN_SECONDS` (`ends_streak`).
3. **Actions**: `host_plan.host_desires` and `host_plan.plan_host` (its
   module doc says how), with the actions still held by their back-off left
   out. A crash is counted once per container, when the plan first removes
   it (``memory.ended``), so that a removal that fails and is planned again
   counts nothing twice, and the replacement waits for the back-off at once.
4. **Events and logs**: ``Crashed`` for every container the plan removes for
   the first time that ended (with the back-off before the next start), and a
   log line for every (de)registration.
5. **Status**: one `StatusRecord` per service that has something placed,
   running or failing here (`StatusRecord.says_nothing`), compared with what
   KV holds (not with what the agent remembers writing: a record deleted or
   changed by anyone is written again); a record KV holds that says nothing
   now is deleted.
6. **Metrics**: running, healthy and consecutive failures of each reported
   service; the gauges of services no longer reported go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from consul_operator.core import events
from consul_operator.core.backoff import Backoff, backoff_after_failure, backoff_delay
from consul_operator.core.desired_state import Manifest, ManifestError
from consul_operator.core.events import Occurred
from consul_operator.core.host_plan import Revisions, ends_streak, host_desires, plan_host
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    Event,
    InFlight,
    Now,
    Outcome,
    Register,
    Registration,
    RemoveDead,
    ServiceReport,
    action_subject,
)
from consul_operator.core.records import (
    CONTAINER_ID_CHARS,
    PlacementRecord,
    ReplicaMark,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.registry import PULL_BACKOFF


@dataclass(frozen=True, slots=True)
class HostSettings:
    """What an agent is told about its host: its name, its Consul node, the capabilities it allows."""

    host: str
    node: str = ""
    """The Consul node our replicas are registered on, named in every status record (ownership.py)."""
    allowed_caps: frozenset[str] = frozenset()
    """--allow-cap: what a manifest's ``cap_add`` may name here."""
    allowed_host_paths: tuple[str, ...] = ()
    """--allow-host-path: the directories a manifest's volumes may mount here."""


@dataclass(frozen=True, slots=True)
class HostState:
    """Everything one host pass reads, once, at its start."""

    manifests: Mapping[str, Manifest | ManifestError]
    placements: Mapping[str, PlacementRecord]
    revisions: Revisions
    """The kept revisions `host_plan.revisions_wanted` asked for."""
    containers: tuple[ContainerInfo, ...] = ()
    """Ours on this host, busy ones included."""
    registrations: tuple[Registration, ...] = ()
    """Ours on this host's Consul agent."""
    inflight: InFlight = field(default_factory=InFlight)
    """What the executor is doing (its ``held_until`` comes from the memory instead)."""
    outcomes: tuple[Outcome, ...] = ()
    """How the actions that finished since the last pass ended, oldest first."""
    statuses: Mapping[str, StatusRecord] = field(default_factory=dict)
    """This host's status records as KV holds them, of at least `status_services`."""


@dataclass(frozen=True, slots=True)
class HostMemory:
    """What a host agent carries from one pass to the next (deadlines on its monotonic clock).

    A new agent starts from an empty memory: nothing is in back-off, and its
    first pass reads every status record of its host (`status_services`).
    """

    backoffs: Mapping[str, Backoff] = field(default_factory=dict)
    """Per service: its failed starts and crashes in a row."""
    action_backoffs: Mapping[str, Backoff] = field(default_factory=dict)
    """Per action key (`action_key`): the failures in a row of that action."""
    pull_backoffs: Mapping[str, Backoff] = field(default_factory=dict)
    """Per image: its failed pulls in a row (every service's starts of it wait)."""
    ended: frozenset[str] = frozenset()
    """Container ids the plan has removed as ended: their crash is counted, their event recorded."""
    written: Mapping[str, StatusRecord] = field(default_factory=dict)
    """Per service: this host's status record as KV holds it, after the last pass's writes."""
    refused_passes: int = 0
    """Passes in a row in which Consul refused a status record."""
    gauged: frozenset[str] = frozenset()
    """The services whose gauges the last pass set."""


@dataclass(frozen=True, slots=True)
class Gauges:
    """One service's figures on this host (``operator_running_replicas`` and its siblings)."""

    running: int
    healthy: int
    failures: int


@dataclass(frozen=True, slots=True)
class HostPlan:
    """Everything one host pass decided."""

    actions: tuple[Action, ...]
    """For the executor, in order."""
    status_writes: Mapping[str, StatusRecord | None]
    """Per service: its status record to write, or None to delete it."""
    gauges: Mapping[str, Gauges]
    """The figures of every service reported here."""
    dropped_gauges: tuple[str, ...]
    """Services no longer reported here: their gauges go."""
    events: tuple[Occurred, ...]
    """To record (`event_log`)."""
    logs: tuple[Event, ...]
    """To log."""
    wake_at: float | None
    """Monotonic time at which the plan would change by itself (a back-off ends); None: on a change."""
    memory: HostMemory
    """What the next pass starts from, before the status writes (`after_writes` adds them)."""


def decide_host(state: HostState, memory: HostMemory, now: Now, settings: HostSettings) -> HostPlan:
    """The host pass over ``state`` (see the module doc): actions, status writes, events, metrics."""
    containers = state.containers
    backoffs, action_backoffs, pulls = _fold_outcomes(memory, state.outcomes)
    named = {m.image for m in state.manifests.values() if isinstance(m, Manifest)}
    named |= {m.image for m in state.revisions.values()}
    pulls = {image: b for image, b in pulls.items() if image in named}
    present = {c.id for c in containers} | {c.name for c in containers}
    present |= {r.service_id for r in state.registrations}
    action_backoffs = {k: b for k, b in action_backoffs.items() if action_subject(k) in present}
    for service, backoff in backoffs.items():
        if any(c.service == service and ends_streak(backoff, c, now.wall) for c in containers):
            backoffs[service] = Backoff()  # a long enough run: the streak is over
    ended = memory.ended & {c.id for c in containers}

    desires = host_desires(
        settings.host,
        state.manifests,
        state.placements,
        state.revisions,
        settings.allowed_caps,
        settings.allowed_host_paths,
    )
    held = MappingProxyType({k: b.retry_at for k, b in action_backoffs.items()})
    inflight = dataclasses.replace(state.inflight, held_until=held)
    decided = plan_host(
        desires,
        containers,
        state.registrations,
        inflight,
        backoffs,
        now.wall,
        mono=now.mono,
        counted=ended,
        pull_backoffs=pulls,
    )
    backoffs.update(decided.counted)
    removed = [a for a in decided.actions if isinstance(a, RemoveDead) and a.container.id not in ended]
    occurred = [_ended_event(r, backoffs.get(r.container.service, Backoff()), now.mono) for r in removed]

    wanted = _status_records(decided.reports, containers, now.wall, settings)
    writes, written = _status_diff(wanted, state.statuses, memory.written)
    gauges = {
        service: Gauges(report.running, report.healthy, _failures(service, backoffs, pulls, state.manifests))
        for report in decided.reports
        if (service := report.service) in wanted
    }
    return HostPlan(
        actions=decided.actions,
        status_writes=writes,
        gauges=gauges,
        dropped_gauges=tuple(sorted(memory.gauged - set(wanted))),
        events=tuple(e for e in occurred if e is not None),
        logs=tuple(_log_lines(decided.actions)),
        wake_at=decided.wake_at,
        memory=HostMemory(
            backoffs=backoffs,
            action_backoffs=action_backoffs,
            pull_backoffs=pulls,
            ended=ended | {r.container.id for r in removed},
            written=written,
            refused_passes=memory.refused_passes,
            gauged=frozenset(wanted),
        ),
    )


def after_writes(plan: HostPlan, refused: Collection[str], mono: float) -> tuple[HostMemory, float | None]:
    """The memory and the wake-up once the plan's status writes are sent, ``refused`` the services
    whose record Consul refused: those are tried again soon, backing off while Consul keeps refusing."""
    written = written_after(plan, refused)
    passes = plan.memory.refused_passes + 1 if refused else 0
    wake = plan.wake_at
    if refused:
        retry = mono + backoff_delay(passes)
        wake = retry if wake is None else min(wake, retry)
    return dataclasses.replace(plan.memory, written=written, refused_passes=passes), wake


def written_after(plan: HostPlan, refused: Collection[str] = ()) -> dict[str, StatusRecord]:
    """This host's records as KV holds them once the plan's status writes are sent, ``refused`` the
    services whose record Consul refused (none: what the pass hopes for, which its report names)."""
    written = dict(plan.memory.written)
    for service, record in plan.status_writes.items():
        if service in refused:
            continue
        if record is None:
            written.pop(service, None)
        else:
            written[service] = record
    return written


def status_services(
    settings: HostSettings,
    manifests: Mapping[str, Manifest | ManifestError],
    placements: Mapping[str, PlacementRecord],
    containers: Sequence[ContainerInfo],
    memory: HostMemory,
) -> set[str]:
    """The services whose status record on this host a pass may write or delete: the records the
    reader must fetch (`HostState.statuses`). Every service placed here, invalid or asking for
    capabilities (whose hold or error each host reports), with containers or a back-off here, or
    with a record written before; the rest says nothing (`StatusRecord.says_nothing`)."""
    host = settings.host
    services = {c.service for c in containers} | set(memory.backoffs) | set(memory.written)
    for name, manifest in manifests.items():
        record = placements.get(name)
        hands_off = not isinstance(manifest, Manifest) or bool(manifest.cap_add)
        if hands_off or (record is not None and (record.hosts.get(host) or record.spec_counts(host))):
            services.add(name)
    return services


# --- the steps ---------------------------------------------------------------------------


def _fold_outcomes(
    memory: HostMemory, outcomes: Sequence[Outcome]
) -> tuple[dict[str, Backoff], dict[str, Backoff], dict[str, Backoff]]:
    """The per-service, per-action and per-image back-offs after ``outcomes``."""
    backoffs, actions = dict(memory.backoffs), dict(memory.action_backoffs)
    pulls = dict(memory.pull_backoffs)
    for outcome in outcomes:
        if outcome.kind == "start" and outcome.pull_failed:
            previous = pulls.get(outcome.image, Backoff())
            # Starts that waited for one pull end with it: a failure while the image's back-off
            # still holds is that same pull, seen by another start (no start began since).
            if previous.ready(outcome.at):
                error = f"{PULL_BACKOFF}: {outcome.error}"
                pulls[outcome.image] = backoff_after_failure(previous, outcome.at, error)
        elif outcome.kind == "start" and not outcome.error:
            pulls.pop(outcome.image, None)
        elif outcome.kind == "start" and outcome.error and not outcome.engine_away:
            # The engine away is not the service failing: the pass retries on the loop's own
            # back-off (its listing fails too); a streak grown during a 10 s engine restart
            # held every start for a minute after the engine was back (chaos seed 42).
            previous = backoffs.get(outcome.service, Backoff())
            error = f"start failed: {outcome.error}"
            backoffs[outcome.service] = backoff_after_failure(previous, outcome.at, error, outcome.spec_hash)
        if outcome.key is None:
            continue
        if outcome.error:
            previous = actions.get(outcome.key, Backoff())
            actions[outcome.key] = backoff_after_failure(previous, outcome.at, outcome.error)
        else:
            actions.pop(outcome.key, None)
    return backoffs, actions, pulls


def _failures(
    service: str,
    backoffs: Mapping[str, Backoff],
    pulls: Mapping[str, Backoff],
    manifests: Mapping[str, Manifest | ManifestError],
) -> int:
    """``operator_consecutive_failures``: the service's streak, or its image's failed pulls if more."""
    manifest = manifests.get(service)
    pulled = pulls.get(manifest.image, Backoff()) if isinstance(manifest, Manifest) else Backoff()
    return max(backoffs.get(service, Backoff()).failures, pulled.failures)


def _ended_event(removal: RemoveDead, backoff: Backoff, mono: float) -> Occurred | None:
    """``Crashed`` for a container that ended (a crash, or an end after a good run); None for one
    that never ran to an end the plan removes for another reason."""
    c = removal.container
    if not removal.crashed and c.state not in ("exited", "dead"):
        return None
    retry_in = max(0.0, backoff.retry_at - mono) if removal.crashed else 0.0
    message = events.crash_message(c.name, c.exit_code, c.oom_killed, c.error, retry_in)
    return Occurred(c.service, events.CRASHED, message)


def _log_lines(actions: Sequence[Action]) -> list[Event]:
    """The decisions worth a log line of their own: registrations made and dropped."""
    lines: list[Event] = []
    for action in actions:
        match action:
            case Register(container=c):
                fields = {"service": c.service, "container": c.name, "reason": "missing or outdated"}
                lines.append(Event("registering", fields))
            case Deregister(service_id=sid, reason=why):
                lines.append(Event("deregistering", {"service_id": sid, "reason": why}))
    return lines


def _status_records(
    reports: Sequence[ServiceReport], containers: Sequence[ContainerInfo], wall: float, settings: HostSettings
) -> dict[str, StatusRecord]:
    """The status record of every reported service that says something here."""
    specs: dict[str, dict[str, int]] = {}
    marks: dict[str, dict[str, ReplicaMark]] = {}
    for c in sorted(containers, key=lambda c: c.name):
        if c.running:  # busy ones too: draining containers count against the leader's surge limit
            per = specs.setdefault(c.service, {})
            per[c.spec_hash] = per.get(c.spec_hash, 0) + 1
            mark = ReplicaMark(c.host_port or 0, c.id[:CONTAINER_ID_CHARS], c.spec_hash)
            marks.setdefault(c.service, {})[c.name] = mark
    wanted: dict[str, StatusRecord] = {}
    for report in reports:
        mine = marks.get(report.service, {})
        record = StatusRecord(
            service=report.service,
            host=settings.host,
            spec_hash=report.spec_hash,
            desired=report.desired,
            running=report.running,
            healthy=report.healthy,
            error=report.error,
            hold=report.hold,
            specs=frozen_map(specs.get(report.service, {})),
            # Our instance ids (container names), our node, each one's port, container
            # and spec: what counts as ours (ownership.py).
            instances=tuple(mine),
            since=wall,
            node=settings.node,
            replicas=MappingProxyType(mine),
        )
        if not record.says_nothing:
            wanted[report.service] = record
    return wanted


def _status_diff(
    wanted: Mapping[str, StatusRecord], held: Mapping[str, StatusRecord], written: Mapping[str, StatusRecord]
) -> tuple[dict[str, StatusRecord | None], dict[str, StatusRecord]]:
    """The writes that make KV hold ``wanted`` (None: delete), and what KV holds of ours already.

    Compared with what KV holds (``held``), not with what this agent wrote:
    a record deleted (an admin, a snapshot restore, the leader's clean-up of
    a host it took for lost) or changed by anyone is written again.
    """
    kept = dict(written)
    writes: dict[str, StatusRecord | None] = {}
    for service, record in sorted(wanted.items()):
        current = held.get(service)
        if record.same_report(current):
            assert current is not None
            kept[service] = current
        else:
            writes[service] = record
    for service in sorted(set(held) - set(wanted)):
        writes[service] = None  # deleted, or nothing of it here any more: its status goes too
    for service in set(kept) - set(wanted) - set(held):
        del kept[service]  # gone from KV already
    return writes, kept
