"""The plain data the decisions work on: what is desired, what is observed, what to do.

Everything here is a frozen dataclass with no behaviour that touches the
world. The pure decisions (`reconcile.py` names them) turn these into plans; the watches and actuators fill
them in and carry the plans out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consul_operator.core.backoff import Backoff
from consul_operator.core.desired_state import Manifest, Resources
from consul_operator.core.records import Hold, frozen_map

# Labels on every container the operator starts. The operator lists, changes
# and removes only containers that carry LABEL_CLUSTER with its own cluster name.
LABEL_CLUSTER = "consul-operator.cluster"
LABEL_SERVICE = "consul-operator.service"
LABEL_HOST = "consul-operator.host"
LABEL_SPEC = "consul-operator.spec-hash"
LABEL_SLOT = "consul-operator.slot"
"""A replica's slot on its host (0, 1, ...; a service with named volumes only): which volumes it mounts."""
LABEL_VOLUME = "consul-operator.volume"
LABEL_PORT = "consul-operator.port"
"""The container port registered as the replica itself (with ``ports:``, a replica publishes several)."""
LABEL_DRAIN = "consul-operator.drain"
LABEL_STOP_GRACE = "consul-operator.stop-grace"
"""The manifest's ``drain`` and ``stop_grace`` (seconds) when the replica was started: what it drains and
stops with once its service's manifest is deleted, when no manifest says it any more. A pod keeps its
``terminationGracePeriodSeconds`` the same way."""

# Meta on every Consul registration the operator makes, so that it can find
# (and clean up) exactly its own registrations on an agent.
META_MANAGED_BY = "managed-by"
MANAGED_BY = "consul-operator"
META_CLUSTER = "cluster"
META_HOST = "host"
META_CONTAINER = "container"
META_SPEC = "spec-hash"
# With ``ports:`` only: the port's name (also the registration's tag); on the registration of
# a port other than the primary one, META_EXTRA_PORT (its ID is ``<container>-<name>``); and on
# a replica the load balancer must not serve (a TCP service), META_LB = "no".
META_PORT = "port"
META_EXTRA_PORT = "extra-port"
META_LB = "lb"


EXTRA_PORT_CHECK_SUFFIX = "-extra-port-check"
"""The end of an extra port's check ID (a replica's own is ``<container>-check``, and container names end
in hex digits): what tells an extra port from a replica where only checks are read (`passing_instances`)."""


def extra_port_id(container_name: str, port_name: str) -> str:
    """The Consul service ID of a replica's extra port ``port_name``."""
    return f"{container_name}-{port_name}"


def is_extra_port(instance: ServiceInstance) -> bool:
    """Whether ``instance`` is a replica's extra port, not the replica (counted nowhere as one)."""
    return bool(instance.meta.get(META_EXTRA_PORT))


def load_balanced(instance: ServiceInstance) -> bool:
    """Whether the load balancer may serve ``instance``: the replica itself, of an HTTP service."""
    return not is_extra_port(instance) and instance.meta.get(META_LB) != "no"


# --- cluster level: hosts and the catalog ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """One instance of a service as the health endpoint reports it."""

    node: str
    node_address: str
    service_id: str
    service: str
    address: str
    port: int
    meta: Mapping[str, str]
    status: str  # aggregated: "passing", "warning" or "critical"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """An app host as the leader sees it: its labels, and whether its agent is live.

    ``lost_since`` is when the leader first saw the host not live (None while
    it is live); the scheduler moves its replicas once that is older than the
    grace period. ``capacity`` is what its agent advertises; None (an agent
    older than capacities) counts as unlimited.
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    live: bool = True
    lost_since: float | None = None
    capacity: Resources | None = None


# --- host level: what runs here ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceDesire:
    """What this host should run of one service.

    ``manifest`` is None when the agent leaves the service alone ("hands
    off"): nothing of it is touched; ``hold`` says why (its manifest is
    invalid, or the leader has not placed it yet) and ``error`` says it to people.
    """

    service: str
    manifest: Manifest | None
    count: int
    error: str | None = None
    hold: Hold | None = None
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
    # Every published port on the advertise address: (container port, host port), sorted.
    host_ports: tuple[tuple[int, int], ...] = ()
    slot: int | None = None  # `LABEL_SLOT`: a replica of a service with named volumes
    # `LABEL_DRAIN`, `LABEL_STOP_GRACE`: None for a replica started before they were labelled.
    drain: float | None = None
    stop_grace: float | None = None

    @property
    def running(self) -> bool:
        """Counts as a running replica."""
        return self.state in ("running", "restarting", "paused")

    @property
    def dead(self) -> bool:
        """Needs removing: it exited, died, or was created and never started."""
        return self.state in ("exited", "dead", "created")


def seconds_label(text: str | None, limit: float) -> float | None:
    """A label's seconds (`LABEL_DRAIN`, `LABEL_STOP_GRACE`), or None when absent or not a number in
    [0, ``limit``]: anyone may put our labels on a container, so a label is read as untrusted text."""
    if not text or len(text) > 32:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds <= limit else None  # NaN and infinities fail both


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
    extra_port: str = ""  # the port's name when this registers an extra port, not the replica
    restored: bool = False
    """Critical, and Consul has not run its check since it loaded it (no output): its agent restarted
    and restored the check critical, as Consul does, until the first run (up to one interval later)."""


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
    """Create, start and register one new replica of ``manifest`` (in ``slot``: its named volumes)."""

    manifest: Manifest
    slot: int | None = None


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
    """(Re-)register a running container in Consul, with its health check.

    ``restored``: its registrations are right but Consul restored checks critical (`Registration.restored`):
    the replica's own, its extra ports' or both, named in ``restored_ids``; once each one's check passes
    when we run it, deregister and register it again, passing (registering a check Consul knows keeps
    its status); else fail, and back off.
    """

    container: ContainerInfo
    manifest: Manifest
    restored: bool = False
    restored_ids: tuple[str, ...] = ()


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


def action_subject(key: str) -> str:
    """What an action key (`action_key`: ``kind:subject``) acts on: a container id or a service id."""
    return key.partition(":")[2]


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
    hold: Hold | None = None


@dataclass(frozen=True, slots=True)
class HostActions:
    """What `host_plan.plan_host` decides: the actions, one report per service, and when to look again.

    ``wake_at`` is the earliest monotonic time at which the plan would change
    by itself (a back-off that expires), so that the loop can sleep until then.
    ``counted`` holds, per service, its back-off after the crashes this plan
    counted (dead containers it removes as crashes, not counted before).
    """

    actions: tuple[Action, ...]
    reports: tuple[ServiceReport, ...]
    wake_at: float | None = None
    counted: Mapping[str, Backoff] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one action ended, as the executor reports it to the next host pass.

    ``error`` is empty for a success; ``at`` is the executor's monotonic time
    at the end; ``key`` the action's back-off key (`action_key`; None for a
    start, which backs its whole service off); ``spec_hash`` a start's spec.
    ``engine_away``: the action failed because the Docker engine was away, not
    through any fault of the service (a start then backs nothing off).
    ``image``: a start's image; ``pull_failed``: the start failed pulling it (the
    image backs off, not the service: `host_pass`).
    """

    kind: str
    service: str
    key: str | None
    error: str
    at: float
    spec_hash: str = ""
    engine_away: bool = False
    image: str = ""
    pull_failed: bool = False


@dataclass(frozen=True, slots=True)
class Now:
    """A pass's two clocks, read once at its start."""

    mono: float
    """Monotonic seconds: every deadline the process sets for itself (back-offs, wake-ups)."""
    wall: float
    """Unix seconds: compared with Docker's times, and stamps for people in records."""


# --- what to log ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A decision worth a log line, as data: a pure decision returns it, its caller logs it."""

    message: str
    fields: Mapping[str, object] = field(default_factory=dict)
    level: str = "info"
