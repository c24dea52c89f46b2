"""What `operator status` and `operator wait` show, built from a snapshot of Consul.

Pure: a `ClusterSnapshot` (read out of Consul elsewhere, see `snapshot.py`)
goes in; a `StatusView` comes out, and is rendered as a table or as JSON. No
I/O and no clock: the snapshot carries `now`. The states, columns and JSON
fields are documented in `docs/status.md`; `JSON_FIELDS` is the contract the
docs and tests check the JSON against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from consul_operator.core.convergence import unconverged
from consul_operator.core.desired_state import Manifest, ManifestError, Resources
from consul_operator.core.floating import LBHost, floating_problems
from consul_operator.core.maintenance import drain_remains
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
)
from consul_operator.core.terminal import clean

PROGRESS_DEADLINE: Final = 120.0
"""Seconds without a status change before a service that is not converged counts as Degraded."""


class ServiceState(StrEnum):
    """A service's state in `operator status` (docs/status.md, "States")."""

    CONVERGED = "Converged"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    UNPLACEABLE = "Unplaceable"
    INVALID = "Invalid"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    REBALANCING = "Rebalancing"


CONVERGED: Final = ServiceState.CONVERGED
PROGRESSING: Final = ServiceState.PROGRESSING
DEGRADED: Final = ServiceState.DEGRADED
UNPLACEABLE: Final = ServiceState.UNPLACEABLE
INVALID: Final = ServiceState.INVALID
ROLLING_BACK: Final = ServiceState.ROLLING_BACK
FAILED: Final = ServiceState.FAILED
ROLLED_BACK: Final = ServiceState.ROLLED_BACK
REBALANCING: Final = ServiceState.REBALANCING
STATES: Final = tuple(ServiceState)
"""Every state; the text shown (``ServiceStatus.state``) may add a detail: ``Invalid: <first problem>``."""

BEING_DELETED: Final = "being deleted"
HOST_LOST: Final = "host is lost"

JSON_FIELDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "top": ("leader", "hosts", "load_balancers", "services", "converged"),
        "leader": ("host", "since"),
        "load_balancer": ("node", "address", "listen", "floating_address", "holds", "live", "state"),
        "host": ("name", "live", "labels", "cordoned", "drain"),
        "drain": ("started", "deadline", "remaining", "done", "stuck"),
        "service": (
            "name",
            "image",
            "desired",
            "running",
            "healthy",
            "drift",
            "state",
            "placement",
            "errors",
            "last_change",
            "rollout",
        ),
        "placement": ("desired", "running", "healthy"),
        "rollout": ("state", "from", "to", "updated", "total", "reason"),
    }
)
"""The stable field names of `to_json`, per level (a placement entry is per host)."""

_GREEN: Final = "\x1b[32m"
_YELLOW: Final = "\x1b[33m"
_RED: Final = "\x1b[31m"
_RESET: Final = "\x1b[0m"


@dataclass(frozen=True, slots=True)
class DrainView:
    """A host's drain as `operator status` shows it."""

    started: float | None
    """When ``operator drain`` was run (wall clock of whoever ran it)."""
    deadline: float | None
    """Seconds the drain may take before what is left is moved at once (None: no deadline)."""
    remaining: int
    """Services with something still on the host (placed, running or passing there)."""
    stuck: int = 0
    """Replicas held there because no other host takes them (`maintenance.keep_stuck`)."""

    @property
    def done(self) -> bool:
        """Whether nothing of ours is on the host any more."""
        return self.remaining == 0


@dataclass(frozen=True, slots=True)
class HostRow:
    """An app host: whether its agent is live, its labels, and whether it is cordoned or draining."""

    name: str
    live: bool
    labels: Mapping[str, str]
    cordoned: bool = False
    drain: DrainView | None = None


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything the status view is built from, as read out of Consul at ``now`` (Unix seconds).

    ``statuses`` holds the ``operator/status/<service>/<host>`` records
    (service -> host -> record); ``passing`` counts the instances passing in
    Consul (service -> host -> count).
    """

    now: float
    leader: str | None
    leader_since: float | None
    hosts: tuple[HostRow, ...]
    manifests: Mapping[str, Manifest | ManifestError]
    placements: Mapping[str, PlacementRecord]
    statuses: Mapping[str, Mapping[str, StatusRecord]]
    passing: Mapping[str, Mapping[str, int]]
    rollouts: Mapping[str, RolloutRecord] = field(default_factory=dict)
    maintenance: Mapping[str, HostRecord] = field(default_factory=dict)
    """The hosts cordoned or draining (``operator/hosts/<host>``)."""
    capacities: Mapping[str, Resources] = field(default_factory=dict)
    """What each agent advertises (the status page shows it)."""
    load_balancers: tuple[LBHost, ...] = ()
    """The registered ``operator lb`` daemons (`floating.lb_hosts`)."""


@dataclass(frozen=True, slots=True)
class HostPlacement:
    """One service on one host: replicas placed there, running there, passing there."""

    desired: int
    running: int
    healthy: int


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service as `operator status` shows it; ``drift`` is desired - healthy.

    ``phase`` is the state; ``state`` the text shown for it, which may add a
    detail (``Invalid: <first problem>``, ``Progressing (rollout 1/2)``).
    """

    name: str
    image: str
    desired: int
    running: int
    healthy: int
    drift: int
    state: str
    placement: Mapping[str, HostPlacement]
    errors: tuple[str, ...]
    last_change: float | None
    rollout: RolloutRecord | None = None
    phase: ServiceState = ServiceState.PROGRESSING
    host_errors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The errors of ``errors`` that concern one host (its report, or that it is lost), by host."""
    unplaced_reason: str = ""
    """Why the leader could place no more replicas (also the first of ``errors``)."""
    pending: str = ""
    """Why a valid service is not converged (`convergence.unconverged`); "" when it is."""


@dataclass(frozen=True, slots=True)
class StatusView:
    """The whole status: leader, hosts (by name) and services (by name)."""

    now: float
    leader: str | None
    leader_since: float | None
    hosts: tuple[HostRow, ...]
    services: tuple[ServiceStatus, ...]
    load_balancers: tuple[LBHost, ...] = ()


# --- building ------------------------------------------------------------------------


def build_status(snapshot: ClusterSnapshot) -> StatusView:
    """The status of every service with a manifest, and of every one still being deleted."""
    live = {host.name: host.live for host in snapshot.hosts}
    names = sorted(set(snapshot.manifests) | set(snapshot.statuses))
    services = tuple(_service_status(name, snapshot, live) for name in names)
    return StatusView(
        now=snapshot.now,
        leader=snapshot.leader,
        leader_since=snapshot.leader_since,
        hosts=_host_rows(snapshot),
        services=services,
        load_balancers=snapshot.load_balancers,
    )


def _host_rows(snapshot: ClusterSnapshot) -> tuple[HostRow, ...]:
    """The registered hosts and those in maintenance (a record of an unregistered host shows as lost)."""
    rows = {host.name: host for host in snapshot.hosts}
    for name in snapshot.maintenance:
        rows.setdefault(name, HostRow(name, False, {}))
    result: list[HostRow] = []
    for name, row in sorted(rows.items()):
        record = snapshot.maintenance.get(name)
        if record is None:
            result.append(row)
            continue
        drain = None
        if record.draining:
            remaining = drain_remains(name, snapshot.placements, snapshot.statuses, snapshot.passing)
            stuck = sum(p.stuck.get(name, 0) for p in snapshot.placements.values())
            drain = DrainView(record.started, record.deadline, len(remaining), stuck)
        result.append(HostRow(row.name, row.live, row.labels, cordoned=True, drain=drain))
    return tuple(result)


def _service_status(name: str, snapshot: ClusterSnapshot, live: Mapping[str, bool]) -> ServiceStatus:
    manifest = snapshot.manifests.get(name)
    placement = snapshot.placements.get(name)
    records = snapshot.statuses.get(name, {})
    passing = snapshot.passing.get(name, {})

    placed = {host: n for host, n in placement.hosts.items() if n > 0} if placement else {}
    hosts = sorted(set(placed) | set(records) | set(passing))
    per_host = MappingProxyType(
        {
            host: HostPlacement(
                desired=placed.get(host, 0),
                running=records[host].running if host in records else 0,
                healthy=max(0, passing.get(host, 0)),
            )
            for host in hosts
        }
    )
    running = sum(p.running for p in per_host.values())
    healthy = sum(p.healthy for p in per_host.values())
    stamps = [r.since for r in records.values() if r.since is not None]
    last_change = max(stamps) if stamps else None

    # A host that leaves the service alone (invalid manifest, not placed yet) is not failing.
    failing = [(h, records[h].error) for h in sorted(records) if records[h].error and records[h].hold is None]
    gone = [(h, HOST_LOST) for h in sorted(placed) if not live.get(h, False)]
    by_host: dict[str, tuple[str, ...]] = {}
    for host, error in [*failing, *gone]:
        by_host[host] = (*by_host.get(host, ()), error)
    host_errors = [f"{host}: {error}" for host, error in failing]
    lost = [f"{host}: {error}" for host, error in gone]

    pending = ""
    if manifest is None:
        desired, image, problems = 0, "", [BEING_DELETED]
        phase, state = PROGRESSING, str(PROGRESSING)
    elif isinstance(manifest, ManifestError):
        desired = placement.total if placement else 0
        image, problems = "", [str(p) for p in manifest.problems] or [str(manifest) or "invalid manifest"]
        phase, state = INVALID, f"{INVALID}: {problems[0]}"
    else:
        desired, image, problems = manifest.replicas, manifest.image, []
        if placement is not None and placement.unplaced > 0 and placement.reason:
            problems = [placement.reason]  # which resource, each host's free amount, labels
        if placement is not None:
            problems += [
                f"{host}: {n} stuck on this draining host, nowhere else to go"
                f" (operator drain --force {host} stops them at the deadline)"
                for host, n in sorted(placement.stuck.items())
            ]
        rollout = snapshot.rollouts.get(name)
        if (
            rollout is not None
            and rollout.state == RolloutState.HELD
            and rollout.to_spec == manifest.spec_hash()
        ):
            problems.append(f"rollout held: {rollout.reason}")  # fits nowhere: each host's free resources
        pending = unconverged(manifest, placement, records.values(), healthy, rollout)
        phase = _valid_state(placement, pending, snapshot.now, last_change)
        if phase in (PROGRESSING, REBALANCING) and (host_errors or lost):
            phase = DEGRADED
        phase, state = _rollout_state(rollout, phase)
        if phase == REBALANCING and placement is not None:
            state = f"{REBALANCING}: {placement.rebalancing}"
    return ServiceStatus(
        name=name,
        image=image,
        desired=desired,
        running=running,
        healthy=healthy,
        drift=desired - healthy,
        state=state,
        placement=per_host,
        errors=(*problems, *host_errors, *lost),
        last_change=last_change,
        rollout=snapshot.rollouts.get(name),
        phase=phase,
        host_errors=MappingProxyType(by_host),
        unplaced_reason=placement.reason
        if placement and placement.unplaced and isinstance(manifest, Manifest)
        else "",
        pending=pending,
    )


def _valid_state(
    placement: PlacementRecord | None, pending: str, now: float, last_change: float | None
) -> ServiceState:
    """Unplaceable, Converged (nothing ``pending``: `convergence.unconverged`), Progressing, or
    Degraded by the deadline (host errors: the caller)."""
    if placement is not None and placement.unplaced > 0:
        return UNPLACEABLE
    if placement is not None and placement.rebalancing:
        return REBALANCING  # the leader spreads it again: replicas move, one replacement at a time
    if not pending:
        return CONVERGED
    if last_change is not None and now - last_change > PROGRESS_DEADLINE:
        return DEGRADED
    return PROGRESSING


def _rollout_state(rollout: RolloutRecord | None, phase: ServiceState) -> tuple[ServiceState, str]:
    """The rollout's word on the state, and its text: RollingBack, Failed or RolledBack, or progress."""
    if rollout is None:
        return phase, str(phase)
    if rollout.state == RolloutState.ROLLING_BACK:
        return ROLLING_BACK, f"{ROLLING_BACK} ({rollout.updated}/{rollout.total}): {rollout.reason}"
    if rollout.state == RolloutState.FAILED:
        return FAILED, f"{FAILED}: {rollout.reason}"
    if rollout.state == RolloutState.ROLLED_BACK:
        return ROLLED_BACK, f"{ROLLED_BACK}: {rollout.reason}"
    if rollout.state == RolloutState.PROGRESSING and phase in (PROGRESSING, DEGRADED):
        return phase, f"{phase} (rollout {rollout.updated}/{rollout.total})"
    if rollout.state == RolloutState.HELD and phase in (PROGRESSING, DEGRADED):
        return phase, f"{phase} (rollout held {rollout.updated}/{rollout.total})"
    return phase, str(phase)


def rollout_ended_badly(service: ServiceStatus) -> bool:
    """Whether the service's rollout failed or was rolled back (`operator wait` gives up on it)."""
    return service.phase in (FAILED, ROLLED_BACK)


# --- queries -------------------------------------------------------------------------


def converged(view: StatusView, names: Sequence[str] | None = None) -> bool:
    """Whether every named service (all when ``names`` is None) exists and is Converged."""
    by_name = {s.name: s for s in view.services}
    wanted = list(by_name) if names is None else names
    return all(name in by_name and by_name[name].state == CONVERGED for name in wanted)


def shortfalls(view: StatusView, names: Sequence[str]) -> list[str]:
    """One line per named service that is not Converged, saying what is missing."""
    by_name = {s.name: s for s in view.services}
    lines: list[str] = []
    for name in dict.fromkeys(names):
        service = by_name.get(name)
        if service is None:
            lines.append(f"{name}: no such service")
        elif service.state != CONVERGED:
            lines.append(_shortfall(view, service))
    return lines


def _shortfall(view: StatusView, service: ServiceStatus) -> str:
    """E.g. "simple: 1/2 healthy (host-2 0/1: crash-looping: exited with code 1 ...)"."""
    if service.phase == INVALID:
        return f"{service.name}: {service.state}"
    if BEING_DELETED in service.errors:
        return f"{service.name}: {BEING_DELETED} ({service.running} running, {service.healthy} healthy)"
    head = f"{service.name}: {service.healthy}/{service.desired} healthy"
    if service.running != service.desired:
        head += f", {service.running} running"
    placed = sum(p.desired for p in service.placement.values())
    if service.state == UNPLACEABLE and service.desired > placed:
        head += f", {service.desired - placed} cannot be placed"
        head += f": {service.unplaced_reason}" if service.unplaced_reason else ""
    elif not service.errors and service.healthy == service.desired == service.running:
        head += (
            f", waiting: {service.pending}"
            if service.pending
            else ", waiting for the current spec and placement"
        )
    if (
        service.state == DEGRADED
        and not service.errors
        and service.last_change is not None
        and view.now - service.last_change > PROGRESS_DEADLINE
    ):
        head += f", no change for {format_age(view.now - service.last_change)}"
    details = []
    for host, p in service.placement.items():
        errors = service.host_errors.get(host, ())
        if p.healthy != p.desired or errors:
            details.append(f"{host} {p.healthy}/{p.desired}" + (f": {'; '.join(errors)}" if errors else ""))
    return head + (f" ({', '.join(details)})" if details else "")


def format_age(seconds: float) -> str:
    """A short age, rounded down: "5s", "3m", "2h", "4d" (negative or NaN: "0s")."""
    if math.isnan(seconds) or seconds < 0:
        return "0s"
    if math.isinf(seconds):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


# --- output --------------------------------------------------------------------------


def to_json(view: StatusView) -> dict[str, object]:
    """The stable JSON form (fields: `JSON_FIELDS`, documented in docs/status.md)."""
    return {
        "leader": {"host": view.leader, "since": view.leader_since},
        "hosts": [
            {
                "name": host.name,
                "live": host.live,
                "labels": dict(sorted(host.labels.items())),
                "cordoned": host.cordoned,
                "drain": _drain_json(host.drain),
            }
            for host in view.hosts
        ],
        "load_balancers": [
            {
                "node": lb.node,
                "address": lb.address,
                "listen": lb.listen,
                "floating_address": lb.floating or None,
                "holds": lb.holds if lb.floating else None,
                "live": lb.live,
                "state": str(lb.state),
            }
            for lb in view.load_balancers
        ],
        "services": [
            {
                "name": s.name,
                "image": s.image,
                "desired": s.desired,
                "running": s.running,
                "healthy": s.healthy,
                "drift": s.drift,
                "state": s.state,
                "placement": {
                    host: {"desired": p.desired, "running": p.running, "healthy": p.healthy}
                    for host, p in s.placement.items()
                },
                "errors": list(s.errors),
                "last_change": s.last_change,
                "rollout": _rollout_json(s.rollout),
            }
            for s in view.services
        ],
        "converged": converged(view),
    }


def _drain_json(drain: DrainView | None) -> dict[str, object] | None:
    if drain is None:
        return None
    return {
        "started": drain.started,
        "deadline": drain.deadline,
        "remaining": drain.remaining,
        "done": drain.done,
        "stuck": drain.stuck,
    }


def _rollout_json(rollout: RolloutRecord | None) -> dict[str, object] | None:
    if rollout is None:
        return None
    return {
        "state": rollout.state,
        "from": rollout.from_spec,
        "to": rollout.to_spec,
        "updated": rollout.updated,
        "total": rollout.total,
        "reason": rollout.reason,
    }


def render_table(view: StatusView, *, color: bool) -> str:
    """The human form: leader line, host table, service table with errors under each service."""
    lines = [_leader_line(view), ""]
    host_rows = [
        [host.name, "live" if host.live else "lost", _labels(host.labels), _maintenance(host, view.now)]
        for host in view.hosts
    ]
    lines.extend(_table(["HOST", "STATE", "LABELS", "MAINTENANCE"], host_rows))
    lines.append("")
    if view.load_balancers:
        lb_rows = [
            [lb.node, lb.address, lb.listen, lb.floating or "-", str(lb.state)] for lb in view.load_balancers
        ]
        lines.extend(_table(["LOAD BALANCER", "ADDRESS", "LISTEN", "FLOATING", "STATE"], lb_rows))
        lines.extend(f"  ! {problem}" for problem in floating_problems(view.load_balancers))
        lines.append("")
    if not view.services:
        lines.append("No services.")
        return "\n".join(clean(line) for line in lines) + "\n"
    header = ["SERVICE", "IMAGE", "DESIRED", "RUNNING", "HEALTHY", "DRIFT", "PLACEMENT", "AGE", "STATE"]
    rows = [
        [
            s.name,
            s.image or "-",
            str(s.desired),
            str(s.running),
            str(s.healthy),
            str(s.drift),
            _placement_cell(s),
            "-" if s.last_change is None else format_age(view.now - s.last_change),
            s.state,
        ]
        for s in view.services
    ]
    widths = _widths(header, rows)
    out = [clean(line) for line in lines]
    out.append(_row(header, widths))
    for service, row in zip(view.services, rows, strict=True):
        *cells, state = (clean(cell) for cell in row)
        out.append(_row([*cells, _paint(state, _state_colour(service.state), color)], widths))
        out.extend(_paint(f"  ! {clean(error)}", _RED, color) for error in service.errors)
    return "\n".join(out) + "\n"


def _leader_line(view: StatusView) -> str:
    if view.leader is None:
        return "Leader: none"
    if view.leader_since is None:
        return f"Leader: {view.leader}"
    return f"Leader: {view.leader} (for {format_age(view.now - view.leader_since)})"


def _maintenance(host: HostRow, now: float) -> str:
    """``-``, ``cordoned``, ``draining: 2 services left (deadline 5m, for 1m)`` or ``drained``."""
    if host.drain is not None:
        if host.drain.done:
            return "drained"
        left = f"{host.drain.remaining} service{'s' if host.drain.remaining != 1 else ''} left"
        if host.drain.stuck:
            left += f", {host.drain.stuck} replica{'s' if host.drain.stuck != 1 else ''} stuck"
        deadline = (
            "no deadline" if host.drain.deadline is None else f"deadline {format_age(host.drain.deadline)}"
        )
        since = "" if host.drain.started is None else f", for {format_age(now - host.drain.started)}"
        return f"draining: {left} ({deadline}{since})"
    return "cordoned" if host.cordoned else "-"


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _placement_cell(service: ServiceStatus) -> str:
    """``host healthy/desired`` for each host with anything placed, running or passing there."""
    cells = [
        f"{host} {p.healthy}/{p.desired}"
        for host, p in service.placement.items()
        if p.desired or p.running or p.healthy
    ]
    return " ".join(cells) or "-"


def _state_colour(state: str) -> str:
    colours: dict[str, str] = {CONVERGED: _GREEN, PROGRESSING: _YELLOW, REBALANCING: _YELLOW}
    return colours.get(state.partition(":")[0], _RED)


def _paint(text: str, colour: str, color: bool) -> str:
    return f"{colour}{text}{_RESET}" if color else text


def _widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(clean(cell)) for cell in column) for column in zip(header, *rows, strict=True)]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells padded to their column (the last one not padded: it may carry colour codes)."""
    padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths, strict=False)]
    return "  ".join([*padded, cells[-1]])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    cleaned = [[clean(cell) for cell in row] for row in rows]
    widths = _widths(header, cleaned)
    return [_row(header, widths), *(_row(row, widths) for row in cleaned)]
