"""The operator's records in Consul KV, typed: one class per kind of key, with its JSON form.

| key | class | written by |
| --- | --- | --- |
| ``operator/leader`` | `LeaderRecord` | the leader (`leader.py`) |
| ``operator/placement/<name>`` | `PlacementRecord` | the leader, fenced |
| ``operator/rollout/<name>`` | `RolloutRecord` | the leader, fenced |
| ``operator/status/<name>/<host>`` | `StatusRecord` | the agent of ``host`` |
| ``operator/rollback/<name>`` | `RollbackRequest` | ``operator rollback`` |
| ``operator/hosts/<host>`` | `HostRecord` | ``operator cordon`` / ``drain`` (the admin role) |

(``services/<name>`` and ``operator/revisions/<name>/<spec>`` hold manifests:
`desired_state.Manifest`.) Every record is parsed here and only here:
``from_json`` raises ValueError for a value that is not such a record at all
(not JSON, not an object, a required field missing); within a readable record,
a field of the wrong type reads as its empty value, as the status view always
did. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType


def frozen_map(data: Mapping[str, int] | None = None) -> Mapping[str, int]:
    """A read-only copy, so that frozen dataclasses stay frozen all the way down."""
    return MappingProxyType(dict(data or {}))


def _dumps(body: Mapping[str, object]) -> bytes:
    """The stable KV form: sorted keys, no spaces, so that an equal record gives equal bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _object(data: bytes | str, what: str) -> dict[str, object]:
    """``data`` as a JSON object; ValueError when it is not one."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not a {what} record: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"not a {what} record: not a JSON object")
    return body


def _count(value: object) -> int:
    """A count out of a JSON record; anything but a non-negative integer counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def _timestamp(value: object) -> float | None:
    """A Unix time out of a JSON record, None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    stamp = float(value)
    return stamp if math.isfinite(stamp) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# --- operator/placement/<name> ---------------------------------------------------------


class UnplacedCause(StrEnum):
    """What kept replicas from every host (the ``cause`` label of ``operator_unplaced_replicas``).

    When hosts were refused for several causes, the one nearest to placing
    names it: a resource of a host that matches everything else first.
    """

    NONE = "none"
    """Every replica is placed."""
    MEMORY = "memory"
    """A live host that matches the manifest's rules has too little memory free."""
    CPUS = "cpus"
    """A live host that matches the manifest's rules has too few CPUs free."""
    MAX_PER_HOST = "max_per_host"
    """Every live host that matches holds ``placement.max_per_host`` replicas already."""
    LABELS = "labels"
    """Live hosts exist, but none has the labels ``placement.labels`` asks for."""
    NO_HOSTS = "no_hosts"
    """No live host is allowed (``placement.hosts``, lost hosts, no agents)."""


UNPLACED_CAUSES = tuple(UnplacedCause)
"""Every value of the ``cause`` label."""


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """The leader's decision for one service: replicas per host.

    Stored as JSON in ``operator/placement/<service>``. ``unplaced`` counts
    replicas that no host could take (placement rules, capacity, too few
    hosts); ``cause`` and ``reason`` say why (``reason``: for people, naming
    each host's free resources or why it does not match).
    ``written_by`` names the leader that wrote it (for people and the chaos
    test's fencing check); it is not part of the decision.
    """

    service: str
    spec_hash: str
    hosts: Mapping[str, int]
    unplaced: int = 0
    written_by: str = ""
    # During a rollout: replicas per host per spec hash (``hosts`` holds the
    # totals, so readers that ignore specs still see the counts). Empty: every
    # replica is of ``spec_hash``.
    specs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    cause: UnplacedCause = UnplacedCause.NONE
    reason: str = ""
    # While the leader spreads the service again (`spread.py`): why, for people
    # (``operator status`` shows ``Rebalancing``). Empty otherwise.
    rebalancing: str = ""

    @property
    def total(self) -> int:
        """Replicas placed on some host."""
        return sum(self.hosts.values())

    def spec_counts(self, host: str) -> dict[str, int]:
        """Replicas of each spec placed on ``host``."""
        if self.specs:
            return {s: n for s, n in self.specs.get(host, {}).items() if n > 0}
        count = self.hosts.get(host, 0)
        return {self.spec_hash: count} if count > 0 else {}

    def _decision(self) -> dict[str, object]:
        body: dict[str, object] = {
            "service": self.service,
            "spec_hash": self.spec_hash,
            "hosts": {h: n for h, n in sorted(self.hosts.items()) if n > 0},
            "unplaced": self.unplaced,
        }
        specs = {h: {s: n for s, n in sorted(c.items()) if n > 0} for h, c in sorted(self.specs.items())}
        specs = {h: c for h, c in specs.items() if c}
        if specs:  # absent outside a rollout: the form of records written before rollouts
            body["specs"] = specs
        if self.unplaced:  # absent when all is placed: the form of records written before causes
            body["cause"] = self.cause.value
            body["reason"] = self.reason
        if self.rebalancing:  # absent when not rebalancing: the form of records written before
            body["rebalancing"] = self.rebalancing
        return body

    def to_json(self) -> bytes:
        """The KV form; stable, so that an unchanged decision gives the same bytes."""
        return _dumps({**self._decision(), "written_by": self.written_by})

    @classmethod
    def from_json(cls, data: bytes) -> PlacementRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        try:
            body = json.loads(data)
            cause = body.get("cause", "none")
            hosts = {str(h): int(n) for h, n in dict(body["hosts"]).items()}
            specs = {
                str(h): MappingProxyType({str(s): int(n) for s, n in dict(c).items() if int(n) > 0})
                for h, c in dict(body.get("specs") or {}).items()
            }
            return cls(
                service=str(body["service"]),
                spec_hash=str(body["spec_hash"]),
                hosts=frozen_map({h: n for h, n in hosts.items() if n > 0}),
                unplaced=int(body.get("unplaced", 0)),
                written_by=str(body.get("written_by", "")),
                specs=MappingProxyType({h: c for h, c in specs.items() if c}),
                cause=UnplacedCause(cause) if cause in UNPLACED_CAUSES else UnplacedCause.NONE,
                reason=_text(body.get("reason")),
                rebalancing=_text(body.get("rebalancing")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a placement record: {exc}") from exc

    def same_decision(self, other: PlacementRecord | None) -> bool:
        """Whether writing ``self`` over ``other`` would change no decision (the writer may differ)."""
        return other is not None and self._decision() == other._decision()


# --- operator/rollout/<name> -----------------------------------------------------------


class RolloutState(StrEnum):
    """Where a rollout is; ``progressing``, ``held`` and ``rolling_back`` are the active states.

    ``held``: a forward rollout that wants new replicas where none fits (the
    capacity filter); the old replicas keep running, the record's ``reason``
    says why, and it goes on (``progressing``) once one fits, or fails at its
    deadline like any other.
    """

    PROGRESSING = "progressing"
    HELD = "held"
    COMPLETE = "complete"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Whether the leader is still moving replicas."""
        return self in (RolloutState.PROGRESSING, RolloutState.HELD, RolloutState.ROLLING_BACK)


ROLLOUT_STATES = tuple(RolloutState)
"""Every state of a rollout, in the order of the enum."""


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """The leader's rollout of one service from one spec hash to another.

    Stored as JSON in ``operator/rollout/<service>``. ``from_spec`` is the last
    fully converged spec (the one a rollback returns to), ``to_spec`` the one
    being rolled out; while rolling back, ``to_spec`` is that previous spec.
    ``updated`` counts replicas of ``to_spec`` that passed for min_healthy,
    out of ``total``.

    ``started`` is a wall-clock stamp, for people only. The deadline is
    measured by ``elapsed``: seconds the rollout has been in its state, as
    leaders measured them with their own monotonic clocks (`time_rollout`).
    Hosts' clocks may disagree, or one may step (NTP); a duration each
    leader measures itself and hands on in the record does not care. A new
    leader resumes from the last ``elapsed`` written, so a leader change can
    only lengthen a deadline (by at most ``ROLLOUT_ELAPSED_EVERY``), never
    shorten it.
    """

    service: str
    from_spec: str
    to_spec: str
    state: RolloutState
    started: float
    reason: str = ""
    updated: int = 0
    total: int = 0
    elapsed: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the leader is still moving replicas."""
        return self.state.active

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "service": self.service,
                "from": self.from_spec,
                "to": self.to_spec,
                "state": self.state.value,
                "started": self.started,
                "reason": self.reason,
                "updated": self.updated,
                "total": self.total,
                "elapsed": round(self.elapsed, 3),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> RolloutRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        try:
            body = json.loads(data)
            state = str(body["state"])
            if state not in RolloutState.__members__.values():
                raise ValueError(f"unknown state {state!r}")
            return cls(
                service=str(body["service"]),
                from_spec=str(body["from"]),
                to_spec=str(body["to"]),
                state=RolloutState(state),
                started=float(body["started"]),
                reason=str(body.get("reason", "")),
                updated=int(body.get("updated", 0)),
                total=int(body.get("total", 0)),
                elapsed=max(0.0, float(body.get("elapsed", 0.0))),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a rollout record: {exc}") from exc


# --- operator/status/<name>/<host> -------------------------------------------------------


class Hold(StrEnum):
    """Why an agent leaves a service's containers and registrations exactly as they are."""

    INVALID = "invalid"
    """The manifest in KV does not validate (the error names the first problem)."""
    UNPLACED = "unplaced"
    """The leader has not placed the service yet."""


@dataclass(frozen=True, slots=True)
class ReplicaMark:
    """What an agent vouches for about one replica it runs: its host port, container and spec.

    ``container`` is the container id's first `CONTAINER_ID_CHARS` characters
    (Docker's short id): enough to tell two containers apart, and a third of
    the full id's bytes in a record that lists every replica (`ownership.owned`
    compares it with the registration's ``container`` meta).
    """

    port: int
    container: str
    spec: str

    def to_json(self) -> list[object]:
        """The compact KV form: ``[port, container, spec]``."""
        return [self.port, self.container, self.spec]

    @classmethod
    def from_json(cls, value: object) -> ReplicaMark | None:
        """Parse ``[port, container, spec]``; None for anything else."""
        if not isinstance(value, list) or len(value) != 3:
            return None
        port, container, spec = value
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return None
        if not isinstance(container, str) or not isinstance(spec, str):
            return None
        return cls(port, container, spec)


CONTAINER_ID_CHARS = 12
"""Characters of a container id that a status record keeps (`ReplicaMark.container`)."""


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """What the agent of ``host`` runs of ``service``: ``operator/status/<service>/<host>``.

    ``desired``, ``running`` and ``healthy`` count containers; ``specs`` the
    running ones per spec hash, draining ones included (the leader's surge
    limit); ``instances`` the running containers' names, i.e. the Consul
    service ids this agent vouches for (`ownership.owned`). ``error`` is for
    people; ``hold`` says, when set, that the agent leaves the service alone
    and why, so that a hands-off service's error is not taken for a failure of
    the host. ``since`` is the wall-clock time of the last change (None when
    unknown).
    """

    service: str
    host: str
    spec_hash: str = ""
    desired: int = 0
    running: int = 0
    healthy: int = 0
    error: str = ""
    hold: Hold | None = None
    specs: Mapping[str, int] = field(default_factory=frozen_map)
    instances: tuple[str, ...] = ()
    since: float | None = None
    node: str = ""
    replicas: Mapping[str, ReplicaMark] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def says_nothing(self) -> bool:
        """Nothing of the service is placed, runs or fails on the host: no record says the same.

        Agents write no such record (and delete theirs once it says nothing):
        every host reporting every service made 100 hosts x 1,000 services
        100,000 records, 99,000 of them empty (docs/benchmarks.md, *Scale*).
        "Not placed yet" with nothing here says nothing about the host either
        (every host would write it for every new service of a bulk apply). An
        invalid manifest's record stays: each host says it holds, and why.
        """
        return (
            self.desired == 0
            and self.running == 0
            and self.healthy == 0
            and not self.specs
            and not self.instances
            and (not self.error or self.hold == Hold.UNPLACED)
        )

    def same_report(self, other: StatusRecord | None) -> bool:
        """Whether ``other`` says the same as ``self`` but for ``since`` (then nothing is rewritten)."""
        return other is not None and replace(other, since=self.since) == self

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "host": self.host,
                "service": self.service,
                "spec_hash": self.spec_hash,
                "desired": self.desired,
                "running": self.running,
                "healthy": self.healthy,
                "error": self.error,
                "hold": None if self.hold is None else self.hold.value,
                "specs": dict(sorted(self.specs.items())),
                "instances": list(self.instances),
                "since": self.since,
                "node": self.node,
                "replicas": {name: mark.to_json() for name, mark in sorted(self.replicas.items())},
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, service: str, host: str) -> StatusRecord:
        """Parse the record stored under ``operator/status/<service>/<host>`` (the key names both).

        ValueError when it is not a JSON object; a field of the wrong type reads as empty.
        """
        body = _object(data, "status")
        raw_specs = body.get("specs")
        specs: dict[str, int] = {}
        if isinstance(raw_specs, dict):
            try:
                specs = {str(spec): int(n) for spec, n in raw_specs.items()}
            except (ValueError, TypeError):
                specs = {}
        raw_instances = body.get("instances")
        listed = raw_instances if isinstance(raw_instances, list) else []
        hold = _text(body.get("hold"))
        raw_replicas = body.get("replicas")
        marks = {
            str(name): mark
            for name, value in (raw_replicas.items() if isinstance(raw_replicas, dict) else ())
            if (mark := ReplicaMark.from_json(value)) is not None
        }
        return cls(
            service=service,
            host=host,
            spec_hash=_text(body.get("spec_hash")),
            desired=_count(body.get("desired")),
            running=_count(body.get("running")),
            healthy=_count(body.get("healthy")),
            error=_text(body.get("error")),
            hold=Hold(hold) if hold in Hold.__members__.values() else None,
            specs=frozen_map(specs),
            instances=tuple(item for item in listed if isinstance(item, str)),
            since=_timestamp(body.get("since")),
            node=_text(body.get("node")),
            replicas=MappingProxyType(marks),
        )


# --- operator/leader, operator/rollback/<name> --------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """The value of the leader lock ``operator/leader``: who leads, since when (wall clock)."""

    host: str
    since: float

    def to_json(self) -> bytes:
        """The KV form."""
        return json.dumps({"host": self.host, "since": self.since}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> LeaderRecord:
        """Parse the lock's value; raises ValueError when it is not ours."""
        body = _object(data, "leader")
        host, since = body.get("host"), _timestamp(body.get("since"))
        if host is None or since is None:
            raise ValueError("not a leader record: no host or no time")
        return cls(host=str(host), since=since)


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    """``operator rollback NAME``'s request to the leader; ``requested`` is a wall-clock stamp for people."""

    requested: float

    def to_json(self) -> bytes:
        """The KV form."""
        return json.dumps({"requested": self.requested}).encode()


# --- operator/hosts/<host> -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A host in maintenance: ``operator/hosts/<host>``, written by ``operator cordon`` / ``drain``.

    A record means the host is *cordoned*: it gets no new replicas.
    ``draining`` asks the leader to move every replica elsewhere, each
    replacement passing before the replica it replaces is drained, within
    ``deadline`` seconds; what is left then is moved at once. ``started``
    is a wall-clock stamp, for people only: the leader times the deadline on
    its own monotonic clock from when it first sees the drain (`maintenance.time_drains`).
    ``operator uncordon`` deletes the record.
    """

    host: str
    draining: bool = False
    deadline: float | None = None
    started: float | None = None

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "host": self.host,
                "cordoned": True,
                "draining": self.draining,
                "deadline": self.deadline,
                "started": self.started,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, host: str) -> HostRecord:
        """Parse the record stored under ``operator/hosts/<host>`` (the key names the host).

        ValueError when it is not a JSON object; a field of the wrong type reads as
        empty (a drain without a readable deadline has none: it waits for its replacements).
        """
        body = _object(data, "host")
        deadline = _timestamp(body.get("deadline"))
        return cls(
            host=host,
            draining=body.get("draining") is True,
            deadline=None if deadline is None or deadline < 0 else deadline,
            started=_timestamp(body.get("started")),
        )
