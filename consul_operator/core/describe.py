"""`operator describe NAME`: one service's spec, placement, replicas and recent events (pure).

Built from what `operator status` shows (`status.ServiceStatus`), the
manifest as stored, the service's instances in Consul's health endpoint and
its events (`events`). A replica is a container that an agent vouches for in
its status record; its address and health come from Consul, its age from the
Started event that names it, its host's restarts from the Crashed events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consul_operator.core.events import CRASHED, STARTED, ServiceEvent
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import StatusRecord
from consul_operator.core.status import ServiceStatus, format_age
from consul_operator.core.terminal import clean


@dataclass(frozen=True, slots=True)
class Replica:
    """One running container of the service."""

    container: str
    host: str
    address: str
    health: str
    started: float | None
    restarts: int


@dataclass(frozen=True, slots=True)
class Description:
    """Everything `describe` prints."""

    now: float
    status: ServiceStatus
    spec: str
    replicas: tuple[Replica, ...]
    events: tuple[ServiceEvent, ...]


def build_description(
    now: float,
    status: ServiceStatus,
    spec: str,
    records: Mapping[str, StatusRecord],
    instances: Sequence[ServiceInstance],
    events: Sequence[ServiceEvent],
) -> Description:
    """The description of one service out of what was read at ``now``."""
    by_id = {i.service_id: i for i in instances}
    started: dict[str, float] = {}
    restarts: dict[str, int] = {}
    for event in events:
        if event.reason == STARTED:
            for word in event.message.split():
                started[word] = event.time
        elif event.reason == CRASHED:
            restarts[event.host] = restarts.get(event.host, 0) + event.count
    replicas = []
    for host, record in sorted(records.items()):
        for name in record.instances:
            inst = by_id.get(name)
            replicas.append(
                Replica(
                    container=name,
                    host=host,
                    address=f"{inst.address}:{inst.port}" if inst else "-",
                    health=inst.status if inst else "unregistered",
                    started=started.get(name),
                    restarts=restarts.get(host, 0),
                )
            )
    return Description(now, status, spec, tuple(replicas), tuple(events))


def event_line(event: ServiceEvent, now: float) -> str:
    """One event as a line: age, host, reason, message, and ``(xN over AGE)`` when collapsed.

    Cleaned (`terminal.clean`): a message or a host name from KV never reaches the terminal raw.
    """
    times = ""
    if event.count > 1:
        since = event.first if event.first is not None else event.time
        times = f" (x{event.count} over {format_age(event.time - since)})"
    host, reason, message = clean(event.host), clean(event.reason), clean(event.message)
    return f"{format_age(now - event.time):>5}  {host:<10} {reason:<15} {message}{times}"


def render_description(d: Description) -> str:
    r"""The text of `operator describe NAME`, every line cleaned (`terminal.clean`).

    The spec is the manifest as stored, which may hold escape sequences (YAML's
    ``"\e"``) or raw control bytes: each of its lines is shown escaped.
    """
    s = d.status
    lines = [
        f"Name:      {s.name}",
        f"Image:     {s.image}",
        f"State:     {s.state}",
        f"Replicas:  {s.desired} desired, {s.running} running, {s.healthy} healthy, drift {s.drift}",
    ]
    if s.unplaced_reason:
        lines.append(f"Unplaced:  {s.unplaced_reason}")
    for error in s.errors:
        if error != s.unplaced_reason:
            lines.append(f"Error:     {error}")
    lines += ["", "Spec:"]
    spec = [line.removesuffix("\r") for line in d.spec.rstrip("\n").split("\n")] if d.spec else []
    lines += [f"  {line}" for line in spec] or ["  (no manifest)"]
    lines += ["", "Placement:", "  HOST        DESIRED  RUNNING  HEALTHY"]
    for host, p in sorted(s.placement.items()):
        lines.append(f"  {host:<11} {p.desired:>7}  {p.running:>7}  {p.healthy:>7}")
    lines += [
        "",
        "Replicas:",
        "  CONTAINER                     HOST        ADDRESS               HEALTH      AGE  RESTARTS",
    ]
    for r in d.replicas:
        age = format_age(d.now - r.started) if r.started is not None else "?"
        lines.append(
            f"  {r.container:<29} {r.host:<11} {r.address:<21} {r.health:<10} {age:>4}  {r.restarts:>8}"
        )
    lines += ["", "Events (newest last):"]
    lines += [f"  {event_line(e, d.now)}" for e in d.events] or ["  (none)"]
    return "\n".join(clean(line) for line in lines) + "\n"


def description_json(d: Description, status_json: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--json`` form: the service as `operator status --json` shows it, plus spec, replicas, events."""
    return {
        **status_json,
        "spec": d.spec,
        "replicas": [
            {
                "container": r.container,
                "host": r.host,
                "address": r.address,
                "health": r.health,
                "started": r.started,
                "restarts": r.restarts,
            }
            for r in d.replicas
        ],
        "events": [e.to_dict() for e in d.events],
    }
