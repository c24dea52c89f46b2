"""The plain data the decisions work on: what is desired, what is observed, what to do.

Everything here is a frozen dataclass with no behaviour that touches the
world. `reconcile.py` turns these into plans; the watches and actuators fill
them in and carry the plans out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consul_operator.desired_state import Manifest

# Labels on every container the operator starts. The operator lists, changes
# and removes only containers that carry LABEL_CLUSTER with its own cluster name.
LABEL_CLUSTER = "consul-operator.cluster"
LABEL_SERVICE = "consul-operator.service"
LABEL_HOST = "consul-operator.host"
LABEL_SPEC = "consul-operator.spec-hash"

# Meta on every Consul registration the operator makes, so that it can find
# (and clean up) exactly its own registrations on an agent.
META_MANAGED_BY = "managed-by"
MANAGED_BY = "consul-operator"
META_CLUSTER = "cluster"
META_HOST = "host"
META_CONTAINER = "container"
META_SPEC = "spec-hash"


def frozen_map(data: Mapping[str, int] | None = None) -> Mapping[str, int]:
    """A read-only copy, so that frozen dataclasses stay frozen all the way down."""
    return MappingProxyType(dict(data or {}))


# --- cluster level: hosts and placements ---------------------------------------------


@dataclass(frozen=True, slots=True)
class HostInfo:
    """An app host as the leader sees it: its labels, and whether its agent is live.

    ``lost_since`` is when the leader first saw the host not live (None while
    it is live); the scheduler moves its replicas once that is older than the
    grace period.
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    live: bool = True
    lost_since: float | None = None


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """The leader's decision for one service: replicas per host.

    Stored as JSON in ``operator/placement/<service>``. ``unplaced`` counts
    replicas that no host could take (placement rules, too few hosts).
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
        return body

    def to_json(self) -> bytes:
        """The KV form; stable, so that an unchanged decision gives the same bytes."""
        body = {**self._decision(), "written_by": self.written_by}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PlacementRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        try:
            body = json.loads(data)
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
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a placement record: {exc}") from exc

    def same_decision(self, other: PlacementRecord | None) -> bool:
        """Whether writing ``self`` over ``other`` would change no decision (the writer may differ)."""
        return other is not None and self._decision() == other._decision()


# --- host level: what runs here ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceDesire:
    """What this host should run of one service.

    ``manifest`` is None when the manifest in KV is invalid: then nothing of the
    service is touched ("hands off"), and ``error`` says why.
    """

    service: str
    manifest: Manifest | None
    count: int
    error: str | None = None
    # Set while the leader paces a rollout: replicas of each spec hash on this
    # host, and the manifest of each spec (from operator/revisions/). A spec
    # without a manifest here is left alone.
    specs: Mapping[str, int] = field(default_factory=frozen_map)
    revisions: Mapping[str, Manifest] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """One of our containers on this host, as Docker reports it.

    ``state`` is Docker's: created, running, paused, restarting, removing,
    exited or dead. Times are Unix seconds; ``started_at`` and ``finished_at``
    are None when Docker has none.
    """

    id: str
    name: str
    service: str
    spec_hash: str
    state: str
    host_port: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str = ""
    oom_killed: bool = False

    @property
    def running(self) -> bool:
        """Counts as a running replica."""
        return self.state in ("running", "restarting", "paused")

    @property
    def dead(self) -> bool:
        """Needs removing: it exited, died, or was created and never started."""
        return self.state in ("exited", "dead", "created")


@dataclass(frozen=True, slots=True)
class Registration:
    """One of our service registrations on this host's Consul agent."""

    service_id: str
    service: str
    container_id: str
    spec_hash: str
    address: str
    port: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class InFlight:
    """Actions started by earlier passes that have not finished yet.

    The plan leaves busy containers alone and counts pending starts as
    replicas, so that a slow action is never issued twice.
    """

    busy_containers: frozenset[str] = frozenset()
    pending_starts: Mapping[str, int] = field(default_factory=frozen_map)
    # Pending starts per "service/spec hash".
    pending_spec_starts: Mapping[str, int] = field(default_factory=frozen_map)
    busy_registrations: frozenset[str] = frozenset()
    # Actions that failed and wait for their back-off: action key (`action_key`)
    # -> monotonic time from which they may be tried again.
    held_until: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartContainer:
    """Create, start and register one new replica of ``manifest``."""

    manifest: Manifest


@dataclass(frozen=True, slots=True)
class DrainContainer:
    """Deregister, wait ``drain`` seconds, stop with ``stop_grace``, remove."""

    container: ContainerInfo
    drain: float
    stop_grace: float
    reason: str


@dataclass(frozen=True, slots=True)
class RemoveDead:
    """Remove a container that is no longer running (and its registration).

    ``crashed`` says it ended on its own too soon: that counts as a failure
    for the service's back-off.
    """

    container: ContainerInfo
    crashed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Register:
    """(Re-)register a running container in Consul, with its health check."""

    container: ContainerInfo
    manifest: Manifest


@dataclass(frozen=True, slots=True)
class Deregister:
    """Remove a registration whose container is gone."""

    service_id: str
    reason: str
    service: str = ""


Action = StartContainer | DrainContainer | RemoveDead | Register | Deregister


def action_key(action: Action) -> str | None:
    """What a failing action backs off by: its kind and the container or registration it acts on.

    None for starts: a failed start backs the whole service off (`Backoff` per service).
    """
    match action:
        case DrainContainer(container=c):
            return f"drain:{c.id}"
        case RemoveDead(container=c):
            return f"remove:{c.id}"
        case Register(container=c):
            return f"register:{c.name}"
        case Deregister(service_id=sid):
            return f"deregister:{sid}"
    return None


def action_service(action: Action) -> str:
    """The service an action works for: the executor shares its workers fairly between services."""
    match action:
        case StartContainer(manifest=m):
            return m.name
        case DrainContainer(container=c) | RemoveDead(container=c) | Register(container=c):
            return c.service
        case Deregister(service=service, service_id=sid):
            return service or sid
    raise AssertionError(action)


@dataclass(frozen=True, slots=True)
class ServiceReport:
    """What the plan found for one service on this host, for status and metrics."""

    service: str
    desired: int
    running: int
    healthy: int
    spec_hash: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class HostPlan:
    """The result of one host reconcile pass.

    ``wake_at`` is the earliest monotonic time at which the plan would change
    by itself (a back-off that expires), so that the loop can sleep until then.
    """

    actions: tuple[Action, ...]
    reports: tuple[ServiceReport, ...]
    wake_at: float | None = None


# --- rollouts ------------------------------------------------------------------------

ROLLOUT_STATES = ("progressing", "complete", "rolling_back", "rolled_back", "failed")
"""Every state of a rollout; ``progressing`` and ``rolling_back`` are the active ones."""


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
    state: str
    started: float
    reason: str = ""
    updated: int = 0
    total: int = 0
    elapsed: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the leader is still moving replicas."""
        return self.state in ("progressing", "rolling_back")

    def to_json(self) -> bytes:
        """The KV form."""
        body = {
            "service": self.service,
            "from": self.from_spec,
            "to": self.to_spec,
            "state": self.state,
            "started": self.started,
            "reason": self.reason,
            "updated": self.updated,
            "total": self.total,
            "elapsed": round(self.elapsed, 3),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        try:
            body = json.loads(data)
            state = str(body["state"])
            if state not in ROLLOUT_STATES:
                raise ValueError(f"unknown state {state!r}")
            return cls(
                service=str(body["service"]),
                from_spec=str(body["from"]),
                to_spec=str(body["to"]),
                state=state,
                started=float(body["started"]),
                reason=str(body.get("reason", "")),
                updated=int(body.get("updated", 0)),
                total=int(body.get("total", 0)),
                elapsed=max(0.0, float(body.get("elapsed", 0.0))),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a rollout record: {exc}") from exc
