"""An agent's presence in Consul: who is live, with which labels.

Each agent registers a service ``operator-agent`` on its host's Consul agent,
with its host name and labels in the service meta and a TTL check that it
keeps passing from a heartbeat thread. The leader reads the live hosts from
the health of that service: a host is live when its TTL check *and* its
node's serfHealth pass, so both a killed agent and a dead host drop out.
The same TTL check backs the leader session (`leader.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import structlog

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.desired_state import (
    LABEL_KEY_RE,
    RESERVED_SERVICE_NAMES,
    Resources,
    format_cpus,
    format_memory,
    parse_cpus,
    parse_memory,
)
from consul_operator.core.errors import ConsulError
from consul_operator.core.model import META_CLUSTER, META_HOST, META_MANAGED_BY, ServiceInstance
from consul_operator.core.ownership import AgentHost

log = structlog.get_logger()

AGENT_SERVICE = "operator-agent"
assert AGENT_SERVICE in RESERVED_SERVICE_NAMES  # no manifest may register under it
LABEL_META_PREFIX = "label-"
META_CAPACITY_MEMORY = "capacity-memory"
META_CAPACITY_CPUS = "capacity-cpus"


def agent_service_id(host: str) -> str:
    """The Consul service id of the agent of ``host``."""
    return f"{AGENT_SERVICE}-{host}"


def ttl_check_id(host: str) -> str:
    """The id of the agent's TTL check, which its leader session is tied to."""
    return f"{agent_service_id(host)}-ttl"


def parse_label(text: str) -> tuple[str, str]:
    """Parse a ``--label key=value`` flag."""
    key, sep, value = text.partition("=")
    if not sep or not LABEL_KEY_RE.fullmatch(key) or len(value) > 256:
        raise ValueError(
            f"a label must look like key=value with a key of letters, digits, '-' or '_', got {text!r}"
        )
    return key, value


class Presence:
    """Registers this agent in Consul and keeps its TTL check passing."""

    def __init__(
        self,
        consul: ConsulClient,
        *,
        host: str,
        cluster: str,
        advertise: str,
        labels: dict[str, str],
        ttl: float,
        capacity: Resources | None = None,
    ) -> None:
        self.consul = consul
        self.host = host
        self.cluster = cluster
        self.advertise = advertise
        self.labels = labels
        self.ttl = ttl
        self.capacity = capacity
        self.registered = threading.Event()

    def register(self) -> None:
        """(Re-)register the agent service and its TTL check, passing from the start."""
        meta = {META_HOST: self.host, META_CLUSTER: self.cluster}
        meta.update({LABEL_META_PREFIX + k: v for k, v in self.labels.items()})
        if self.capacity is not None:
            meta.update(capacity_meta(self.capacity))
        self.consul.register_service(
            {
                "ID": agent_service_id(self.host),
                "Name": AGENT_SERVICE,
                "Address": self.advertise,
                "Meta": meta,
                "Check": {
                    "CheckID": ttl_check_id(self.host),
                    "Name": f"operator agent of {self.host} is alive",
                    "TTL": f"{int(self.ttl * 1000)}ms",
                    "Status": "passing",
                },
            },
            # Within the TTL, as every beat: a re-registration is a beat too.
            timeout=self.ttl / 3,
        )
        self.registered.set()

    def heartbeat(self, stop: threading.Event) -> None:
        """Pass the TTL check every third of its TTL until ``stop``; re-register when it is gone."""
        while not stop.is_set():
            try:
                if not self.registered.is_set():
                    self.register()
                # A third of the TTL: a slow Consul fails the beat in time for the next one.
                self.consul.check_pass(ttl_check_id(self.host), timeout=self.ttl / 3)
            except ConsulError as exc:
                # The local agent lost the check (restarted without its data) or is away:
                # register again on the next beat.
                self.registered.clear()
                log.warning("heartbeat failed", host=self.host, error=str(exc))
            stop.wait(self.ttl / 3)


def is_agent_registration(instance: ServiceInstance) -> bool:
    """Whether an ``operator-agent`` instance is an agent's own registration, not a look-alike.

    An agent registers exactly the ID `agent_service_id` of the host in its
    meta, and never the meta our replicas carry: anything else (a replica
    registered under the name, a hand-made entry) says nothing about a host.
    """
    host = instance.meta.get(META_HOST, "")
    return (
        bool(host) and instance.service_id == agent_service_id(host) and META_MANAGED_BY not in instance.meta
    )


def agent_registrations(consul: ConsulClient, cluster: str | None) -> list[ServiceInstance]:
    """Every agent's own registration of ``cluster`` (of any cluster for None), passing or not.

    One read serves both views below: which hosts are live (`hosts_of`) and
    which agents vouch for instances (`agents_of`).
    """
    return [
        inst
        for inst in consul.health_service(AGENT_SERVICE).value
        if (cluster is None or inst.meta.get(META_CLUSTER) == cluster) and is_agent_registration(inst)
    ]


def hosts_of(registrations: Iterable[ServiceInstance]) -> dict[str, tuple[bool, dict[str, str]]]:
    """Every agent host: host -> (live, labels)."""
    hosts: dict[str, tuple[bool, dict[str, str]]] = {}
    for inst in registrations:
        host = inst.meta.get(META_HOST, "")
        labels = {
            k[len(LABEL_META_PREFIX) :]: v for k, v in inst.meta.items() if k.startswith(LABEL_META_PREFIX)
        }
        live = inst.status == "passing"
        # A host registered twice (an old node name) counts as live if any instance is.
        previous_live = hosts.get(host, (False, {}))[0]
        hosts[host] = (live or previous_live, labels)
    return hosts


def capacity_meta(capacity: Resources) -> dict[str, str]:
    """The agent's meta advertising its capacity: ``capacity-memory: 7680Mi``, ``capacity-cpus: 1.8``."""
    return {
        META_CAPACITY_MEMORY: format_memory(capacity.memory),
        META_CAPACITY_CPUS: format_cpus(capacity.millicpus),
    }


def capacity_of(meta: Mapping[str, str]) -> Resources | None:
    """The capacity an agent advertises; None (unlimited) without one, or with one we cannot read."""
    try:
        return Resources(parse_memory(meta[META_CAPACITY_MEMORY]), parse_cpus(meta[META_CAPACITY_CPUS]))
    except (KeyError, ValueError):
        return None


def capacities_of(registrations: Iterable[ServiceInstance]) -> dict[str, Resources]:
    """Every agent host that advertises a capacity: host -> capacity."""
    capacities: dict[str, Resources] = {}
    for inst in registrations:
        capacity = capacity_of(inst.meta)
        if capacity is not None:
            capacities[inst.meta.get(META_HOST, "")] = capacity
    return capacities


def agents_of(registrations: Iterable[ServiceInstance]) -> list[AgentHost]:
    """The agents with their advertised addresses, live or not.

    Registered, live or not: an agent restarting (systemd, an upgrade) or
    briefly away must not pull its running, passing replicas out of the load
    balancer (static stability). A host that is down fails its instances'
    own checks and its node's serfHealth, so they are not passing anyway.
    """
    return [
        AgentHost(inst.meta.get(META_CLUSTER, ""), inst.meta.get(META_HOST, ""), inst.address)
        for inst in registrations
    ]


def read_agents(consul: ConsulClient, cluster: str | None) -> list[AgentHost]:
    """The registered agents of ``cluster`` (of every cluster for None), with their addresses."""
    return agents_of(agent_registrations(consul, cluster))
