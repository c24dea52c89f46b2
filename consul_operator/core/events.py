"""Events: why the cluster does what it does, per service, as plain data (pure: no I/O, no clock).

The leader and every agent record one event per decision (`REASONS`); the
adapter `event_log` buffers them in memory and flushes them in batches into
``operator/events/<service>/<host>`` (`keys.Layout.events_key`): one JSON
record per service per writing host, so that every key has exactly one
writer and a flush is a plain transaction of sets. Each record is bounded
(`retain`): the last `MAX_EVENTS` events of the last `MAX_AGE` seconds,
whichever is less; readers merge the records of a service (`merge_records`)
and bound the result the same way.

A storm is collapsed the way Kubernetes does (`collapse`): an event that
repeats the last event of its service, host and reason within
`COLLAPSE_WINDOW` seconds (the same message, or any message for the storm
reasons: crashes, starts, stops) bumps that event's ``count`` and takes its
time and message instead of adding a new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import ManifestError
from consul_operator.core.records import (
    MAX_EVENT_RECORD_BYTES,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    bounded_text,
)

MAX_EVENTS: Final = 100
"""The most events kept per service (and per record)."""
MAX_AGE: Final = 3600.0
"""Seconds an event is kept."""
COLLAPSE_WINDOW: Final = 600.0
"""An event repeating the last one of its kind within this many seconds is collapsed into it."""
MAX_MESSAGE: Final = 512
"""Characters of a message kept (Docker and Consul error texts can be long)."""
MAX_MESSAGE_BYTES: Final = 1024
"""A message's JSON form at most (`records.bounded_text`): 512 characters of emoji or
control characters are 6 KiB in it."""
MAX_RECORD_BYTES: Final = MAX_EVENT_RECORD_BYTES
"""An ``operator/events/<service>/<host>`` record's KV form at most: the oldest events go
first to fit (`record_json`). 100 distinct messages at their bound take 100 KiB and more;
unbounded, a record had passed Consul's 512 KiB and every later write of the daemon's
events failed with it."""

# Reasons: one per kind of decision.
PLACED: Final = "Placed"
MOVED: Final = "Moved"
UNPLACEABLE: Final = "Unplaceable"
ROLLOUT_STEP: Final = "RolloutStep"
ROLLED_BACK: Final = "RolledBack"
REBALANCED: Final = "Rebalanced"
INVALID: Final = "InvalidManifest"
STARTED: Final = "Started"
START_FAILED: Final = "StartFailed"
CRASHED: Final = "Crashed"
REGISTERED: Final = "Registered"
DRAINED: Final = "Drained"
STOPPED: Final = "Stopped"
RELOAD_REFUSED: Final = "ReloadRefused"
VOLUME_REMOVED: Final = "VolumeRemoved"
"""A deleted service's volume removed from a host (``operator delete NAME --volumes``)."""
VOLUME_CREATED: Final = "VolumeCreated"
"""A replica starts with a fresh (empty) volume: its first start on the host, or it moved here."""
TEMPLATE_REFRESHED: Final = "TemplateRefreshed"
"""A running replica's signal template written anew and its signal sent (``change_mode: signal``)."""
REASONS: Final = (
    PLACED,
    MOVED,
    UNPLACEABLE,
    ROLLOUT_STEP,
    ROLLED_BACK,
    REBALANCED,
    INVALID,
    STARTED,
    START_FAILED,
    CRASHED,
    REGISTERED,
    DRAINED,
    STOPPED,
    RELOAD_REFUSED,
    VOLUME_CREATED,
    VOLUME_REMOVED,
    TEMPLATE_REFRESHED,
)
STORM_REASONS: Final = frozenset(
    {STARTED, START_FAILED, CRASHED, REGISTERED, DRAINED, STOPPED, RELOAD_REFUSED}
)
"""Reasons collapsed whatever their message: a crash loop is one event with a count."""
WARNINGS: Final = frozenset({UNPLACEABLE, ROLLED_BACK, INVALID, START_FAILED, CRASHED, RELOAD_REFUSED})


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """One decision: when (wall-clock seconds), where, about what, why, and what happened.

    ``count`` events collapsed into this one, the first at ``first``.
    """

    time: float
    host: str
    service: str
    reason: str
    message: str
    count: int = 1
    first: float | None = None

    @property
    def warning(self) -> bool:
        """Whether it says something went wrong."""
        return self.reason in WARNINGS

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (records, ``--json``)."""
        return {
            "time": round(self.time, 3),
            "host": self.host,
            "service": self.service,
            "reason": self.reason,
            "message": self.message,
            "count": self.count,
            "first": round(self.first, 3) if self.first is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ServiceEvent:
        """Parse the JSON form; raises ValueError on a malformed event."""
        try:
            return cls(
                time=float(raw["time"]),
                host=str(raw["host"]),
                service=str(raw["service"]),
                reason=str(raw["reason"]),
                message=str(raw["message"]),
                count=int(raw.get("count", 1)),
                first=float(raw["first"]) if raw.get("first") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an event: {exc}") from exc


def new_event(time: float, host: str, service: str, reason: str, message: str) -> ServiceEvent:
    """An event with its message cut to `MAX_MESSAGE` characters and `MAX_MESSAGE_BYTES`."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return ServiceEvent(time, host, service, reason, bounded_text(message, MAX_MESSAGE_BYTES))


def collapse(
    events: Sequence[ServiceEvent], event: ServiceEvent, window: float = COLLAPSE_WINDOW
) -> list[ServiceEvent]:
    """``events`` (oldest first) with ``event`` added, or collapsed into the last one like it."""
    out = list(events)
    for i in range(len(out) - 1, -1, -1):
        last = out[i]
        if (last.service, last.host, last.reason) != (event.service, event.host, event.reason):
            continue
        same = last.message == event.message or event.reason in STORM_REASONS
        if same and 0 <= event.time - last.time <= window:
            first = last.first if last.first is not None else last.time
            out[i] = replace(event, count=last.count + event.count, first=first)
            out.append(out.pop(i))  # the newest time: it moves to the end
            return out
        break  # only the last event of its kind collapses
    out.append(event)
    return out


def retain(
    events: Iterable[ServiceEvent], now: float, *, max_events: int = MAX_EVENTS, max_age: float = MAX_AGE
) -> list[ServiceEvent]:
    """The last ``max_events`` of the events of the last ``max_age`` seconds, oldest first."""
    kept = sorted((e for e in events if now - e.time <= max_age), key=lambda e: e.time)
    return kept[-max_events:] if max_events > 0 else []


def add_events(record: Sequence[ServiceEvent], new: Iterable[ServiceEvent], now: float) -> list[ServiceEvent]:
    """A record with ``new`` events collapsed into it, then bounded (`retain`)."""
    out = list(record)
    for event in sorted(new, key=lambda e: e.time):
        out = collapse(out, event)
    return retain(out, now)


def merge_records(records: Iterable[Sequence[ServiceEvent]], now: float) -> list[ServiceEvent]:
    """The events of several records (one service's hosts, or every service), bounded, oldest first."""
    return retain((e for record in records for e in record), now)


def record_json(events: Sequence[ServiceEvent], max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The KV form of a record: a JSON list, its oldest events left out until it fits ``max_bytes``.

    Every message is bounded again here (an event read back from KV may be
    anyone's), so that even one event always fits.
    """
    items = [
        json.dumps(
            {**e.to_dict(), "message": bounded_text(e.message, MAX_MESSAGE_BYTES)}, separators=(",", ":")
        )
        for e in events
    ]
    size = 2 + sum(len(item) for item in items) + max(0, len(items) - 1)
    start = 0
    while size > max_bytes and start < len(items):
        size -= len(items[start]) + (1 if start < len(items) - 1 else 0)
        start += 1
    return ("[" + ",".join(items[start:]) + "]").encode()


def parse_record(value: bytes | None) -> list[ServiceEvent]:
    """A record out of KV; a malformed record or event reads as nothing (it is only for people)."""
    if not value:
        return []
    try:
        raw = json.loads(value)
    except ValueError:
        return []
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        try:
            out.append(ServiceEvent.from_dict(item))
        except (ValueError, AttributeError):
            continue
    return out


# --- the leader's events, out of one pass ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Occurred:
    """An event without its time and host: what a pure decision returns."""

    service: str
    reason: str
    message: str


def _counts(hosts: Mapping[str, int]) -> str:
    return ", ".join(f"{h}={n}" for h, n in sorted(hosts.items()) if n) or "none"


def _why_off(state: ClusterState, host: str) -> str:
    """Why the leader takes replicas off ``host``."""
    record = state.maintenance.get(host)
    if record is not None:
        return "host draining" if record.draining else "host cordoned"
    if host not in state.hosts or not state.live(host):
        return "host lost"
    return "rebalanced"


def placement_events(
    state: ClusterState, before: PlacementRecord | None, after: PlacementRecord
) -> list[Occurred]:
    """Placed, Moved and Unplaceable for one service whose placement went ``before`` -> ``after``."""
    out: list[Occurred] = []
    name = after.service
    old = dict(before.hosts) if before else {}
    if dict(after.hosts) != old:
        out.append(Occurred(name, PLACED, f"replicas per host: {_counts(after.hosts)}"))
        for host, count in sorted(old.items()):
            lost = count - after.hosts.get(host, 0)
            why = _why_off(state, host)
            if lost > 0 and why != "rebalanced":
                out.append(Occurred(name, MOVED, f"{lost} replica(s) moved off {host}: {why}"))
    if after.unplaced and (
        before is None or (before.unplaced, before.reason) != (after.unplaced, after.reason)
    ):
        out.append(Occurred(name, UNPLACEABLE, f"{after.unplaced} replica(s) unplaced: {after.reason}"))
    return out


def rollout_events(before: RolloutRecord | None, after: RolloutRecord) -> list[Occurred]:
    """RolloutStep (started, progress, done) and RolledBack for one service."""
    name = after.service
    moved = f"{after.from_spec[:12]} -> {after.to_spec[:12]}"
    if before is not None and (before.state, before.to_spec, before.updated) == (
        after.state,
        after.to_spec,
        after.updated,
    ):
        return []
    if after.state == RolloutState.ROLLING_BACK and (before is None or before.state != after.state):
        why = f": {after.reason}" if after.reason else ""
        return [Occurred(name, ROLLED_BACK, f"rolling back to {after.to_spec[:12]}{why}")]
    what = f"rollout {moved} {after.state.value}: {after.updated}/{after.total} updated"
    if after.state == RolloutState.HELD and after.reason:
        what += f"; {after.reason}"  # what fits nowhere, and each host's free resources
    return [Occurred(name, ROLLOUT_STEP, what)]


def invalid_events(
    manifests: Mapping[str, object], seen: Mapping[str, str]
) -> tuple[list[Occurred], dict[str, str]]:
    """InvalidManifest for every manifest newly invalid or with a new first problem.

    ``seen`` maps each invalid service to the problem already reported; the
    second value is the map for the next pass.
    """
    out: list[Occurred] = []
    now_seen: dict[str, str] = {}
    for name, manifest in sorted(manifests.items()):
        if not isinstance(manifest, ManifestError):
            continue
        first = manifest.problems[0] if manifest.problems else str(manifest)
        now_seen[name] = str(first)
        if seen.get(name) != now_seen[name]:
            out.append(Occurred(name, INVALID, str(first)))
    return out, now_seen


def crash_message(container: str, exit_code: int | None, oom: bool, error: str, retry_in: float) -> str:
    """What a Crashed event says: the container, how it ended, and the back-off before the next start."""
    how = "was OOM killed" if oom else f"exited with code {exit_code if exit_code is not None else '?'}"
    extra = f" ({error})" if error else ""
    wait = f"; back-off {retry_in:.0f}s before the next start" if retry_in > 0 else ""
    return f"container {container} {how}{extra}{wait}"


def leader_events(
    state: ClusterState,
    placements: Mapping[str, PlacementRecord],
    rollouts: Mapping[str, RolloutRecord],
    written: Iterable[str],
    is_placement: Callable[[str], str | None],
    is_rollout: Callable[[str], str | None],
) -> list[Occurred]:
    """The events of a leader pass out of the keys it wrote (``is_placement`` / ``is_rollout`` name
    the service of a placement / rollout key, else None): each compares the record read at the start
    of the pass with the one written."""
    out: list[Occurred] = []
    for key in sorted(written):
        if (name := is_placement(key)) is not None and name in placements:
            out.extend(placement_events(state, state.placements.get(name), placements[name]))
        elif (name := is_rollout(key)) is not None and name in rollouts:
            out.extend(rollout_events(state.rollouts.get(name), rollouts[name]))
    return out


# --- removing a deleted service's records ---------------------------------------------

RECORDS_GRACE: Final = 10.0
"""Seconds a deleted service's event records stay once nothing else of it is left in KV: its
agents' last events (``Stopped``) are flushed within a second or two of their status records'
deletion, and must not land after the removal, recreating a record nobody removes again."""


@dataclass(frozen=True, slots=True)
class RecordsCleanup:
    """What the leader does with event records this pass: the services whose records go, when
    each service left was first seen with nothing else left (the next pass's ``gone``), and when
    to look again (None: nothing pending)."""

    remove: tuple[str, ...]
    gone: Mapping[str, float]
    wake_at: float | None


def expire_records(
    with_records: Iterable[str],
    state: ClusterState,
    gone: Mapping[str, float],
    now: float,
    grace: float = RECORDS_GRACE,
) -> RecordsCleanup:
    """The event records (``operator/events/<name>/``) of deleted services to remove.

    The leader removes them, fenced, `RECORDS_GRACE` seconds after it first
    sees nothing else of the service in KV: no manifest, no placement, no
    status record on any host (every agent has stopped its containers and
    deleted its record). ``with_records`` are the services that have event
    records; ``gone`` (monotonic seconds) and ``now`` come from the last pass
    and the clock. A service that reappears (a manifest again) is kept.
    """
    services = set(with_records)
    first = {
        name: gone.get(name, now)
        for name in sorted(services)
        if name not in state.manifests and name not in state.placements and not state.statuses.get(name)
    }
    remove = tuple(name for name, since in first.items() if now - since >= grace)
    left = {name: since for name, since in first.items() if name not in remove}
    waiting = [
        name
        for name in services
        if name not in state.manifests and name not in first  # its containers are still going
    ]
    wakes = [since + grace for since in left.values()]
    if waiting:
        wakes.append(now + grace)
    return RecordsCleanup(remove, left, min(wakes) if wakes else None)
