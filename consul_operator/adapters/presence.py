"""An agent's presence in Consul: who is live, with which labels.

Each agent registers a service ``operator-agent`` on its host's Consul agent,
with its host name and labels in the service meta and a TTL check that it
keeps passing from a heartbeat thread. The leader reads the live hosts from
the health of that service: a host is live when its TTL check *and* its
node's serfHealth pass, so both a killed agent and a dead host drop out.
The same TTL check backs the leader session (`leader.py`).

A registration counts only on its own host's Consul node: the agent writes
that node's name to ``operator/agents/<host>`` (`records.AgentRecord`), and a
registration of ``host`` on any other node is a look-alike
(`is_agent_registration`). Anyone allowed to register services can put an
``operator-agent-host-9`` in the catalog (on a node of theirs, or through
the catalog API), but writing under ``operator/`` takes an agent's (or an
admin's) token: a phantom host would get replicas that never run or move.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient, KVEntry
from consul_operator.adapters.interfaces import ClusterReads
from consul_operator.core.backoff import RETRY_CAP, exponential
from consul_operator.core.desired_state import (
    LABEL_KEY_RE,
    RESERVED_SERVICE_NAMES,
    Resources,
    format_cpus,
    format_memory,
    parse_cpus,
    parse_memory,
)
from consul_operator.core.errors import ConsulError, ConsulUnavailable
from consul_operator.core.keys import Layout
from consul_operator.core.model import META_CLUSTER, META_HOST, META_MANAGED_BY, ServiceInstance
from consul_operator.core.ownership import AgentHost
from consul_operator.core.records import AgentRecord

log = structlog.get_logger()

AGENT_SERVICE = "operator-agent"
assert AGENT_SERVICE in RESERVED_SERVICE_NAMES  # no manifest may register under it
LABEL_META_PREFIX = "label-"
META_CAPACITY_MEMORY = "capacity-memory"
META_CAPACITY_CPUS = "capacity-cpus"
META_READS_WORK = "reads-work"
"""An agent's meta ``reads-work: "1"``: it reads its work keys, not every placement (issue 31). While a
live agent lacks it (one not upgraded yet), the leader's placements are what it runs from."""
META_WRITES_REPORTS = "writes-reports"
"""An agent's meta ``writes-reports: "1"``: it writes ``operator/reports/<host>`` after its status
records (`core/reports.py`). While a registered agent lacks it, the leader reads every status record
whenever one moved, as before reports."""
CLAIM_EVERY = 10
"""Heartbeats between two checks of the agent's node claim (``operator/agents/<host>``)."""
AWAY_BEAT = 0.1
"""Seconds between two beats while Consul is away: its return is seen at once (a restart restores our
replicas' checks critical, and the host pass registers them again passing before Consul's first sync)."""


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
        layout: Layout | None = None,
        node: str = "",
        on_return: Callable[[], None] = lambda: None,
        reads_work: bool = True,
    ) -> None:
        self.consul = consul
        self.reads_work = reads_work
        self.on_return = on_return
        self.layout = layout
        self.node = node
        self.host = host
        self.cluster = cluster
        self.advertise = advertise
        self.labels = labels
        self.ttl = ttl
        self.capacity = capacity
        self.registered = threading.Event()

    def claim_node(self) -> None:
        """Write ``operator/agents/<host>`` with our Consul node, unless it says so already.

        The read gives up after a third of the TTL, as a beat does: it needs Consul's
        Raft leader, and a host cut off from the majority has none for as long as
        the cut lasts, while its own agent still takes the beats.
        """
        if self.layout is None or not self.node:
            return
        key, record = self.layout.agent_key(self.host), AgentRecord(self.host, self.node)
        entry = self.consul.kv_get(key, timeout=self.ttl / 3).value
        if entry is None or entry.value != record.to_json():
            self.consul.kv_put(key, record.to_json())

    def register(self) -> None:
        """(Re-)register the agent service and its TTL check, passing from the start; claim our node."""
        self.claim_node()
        meta = {META_HOST: self.host, META_CLUSTER: self.cluster}
        meta.update({LABEL_META_PREFIX + k: v for k, v in self.labels.items()})
        if self.capacity is not None:
            meta.update(capacity_meta(self.capacity))
        if self.reads_work:  # an agent from before work keys is from before reports too
            meta[META_READS_WORK] = "1"
            meta[META_WRITES_REPORTS] = "1"
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
        metrics.agent_registrations.inc()
        self.registered.set()

    def heartbeat(self, stop: threading.Event) -> None:
        """Pass the TTL check every third of its TTL until ``stop``; re-register when Consul lost it.

        Only an answer makes a registration again: a beat that times out or
        finds Consul away beats again (a stalled Consul would otherwise queue
        one registration per beat and run them all when it resumes, issue 33;
        a restarted one restores the check from its data directory, and the next
        beat passes it). A failed registration is tried again after a capped
        exponential back-off (a third of the TTL, doubling, at most
        `backoff.RETRY_CAP`), beats going on meanwhile. Every `CLAIM_EVERY`
        beats the node claim is checked again (an admin's clean-up of ``operator/``).
        """
        beats = 0
        failed_registrations = 0
        register_after = 0.0  # monotonic
        away = False  # the last beat found Consul away
        while not stop.is_set():
            try:
                beats += 1
                if not self.registered.is_set():
                    if time.monotonic() < register_after:
                        stop.wait(self.ttl / 3)
                        continue
                    try:
                        self.register()
                        failed_registrations = 0
                    except ConsulError:
                        failed_registrations += 1
                        wait = exponential(failed_registrations, self.ttl / 3, RETRY_CAP)
                        register_after = time.monotonic() + wait
                        raise
                # A third of the TTL: a slow Consul fails the beat in time for the next one.
                self.consul.check_pass(ttl_check_id(self.host), timeout=self.ttl / 3)
                if away:
                    log.info("Consul answers heartbeats again", host=self.host)
                    self.on_return()
                away = False
                # After the beat, never before it: a claim that cannot be read (a host cut off
                # from the Raft majority) must not cost the beat, and with it the TTL check
                # (a node run: critical locally during a cut, and stale-critical in the
                # catalog for over 30 s after the heal, so the host was not live).
                if beats % CLAIM_EVERY == 0:
                    # No Raft leader on our side (a cut): the next claim check tries again.
                    with contextlib.suppress(ConsulUnavailable):
                        self.claim_node()
            except ConsulUnavailable as exc:
                # Slow or away: the check is still there (or comes back with Consul's data).
                if not away:
                    log.warning("heartbeat failed", host=self.host, error=str(exc))
                away = True
            except ConsulError as exc:
                # Consul answered that it lacks the check (restarted without its data): register again.
                self.registered.clear()
                log.warning("heartbeat refused: registering again", host=self.host, error=str(exc))
            stop.wait(AWAY_BEAT if away else self.ttl / 3)


def is_agent_registration(instance: ServiceInstance, nodes: Mapping[str, str]) -> bool:
    """Whether an ``operator-agent`` instance is an agent's own registration, not a look-alike.

    An agent registers exactly the ID `agent_service_id` of the host in its
    meta, never the meta our replicas carry, and on the Consul node it claimed
    for its host (``nodes``: host -> node, from ``operator/agents/``); a host
    that no agent claimed yet (an agent older than the claim, during an
    upgrade) counts only on a node named after it, as `deploy/consul/hosts/`
    names them (with ACLs, registering on a node takes write on that node's
    name). Anything else (a replica registered under the name, a hand-made
    entry, an entry put in the catalog through another node) says nothing
    about a host.
    """
    host = instance.meta.get(META_HOST, "")
    return (
        bool(host)
        and instance.service_id == agent_service_id(host)
        and META_MANAGED_BY not in instance.meta
        and instance.node == nodes.get(host, host)
    )


def agent_nodes_of(entries: Iterable[KVEntry], layout: Layout) -> dict[str, str]:
    """The Consul node each agent claimed (``operator/agents/<host>``): host -> node; junk is skipped."""
    nodes: dict[str, str] = {}
    for entry in entries:
        host = layout.record_of(layout.agents_prefix, entry.key)
        if host is None:
            continue
        try:
            nodes[host] = AgentRecord.from_json(entry.value, host=host).node
        except ValueError as exc:
            log.warning("ignoring an agent record", key=entry.key, error=str(exc))
    return nodes


def agent_registrations(
    consul: ClusterReads, cluster: str | None, layout: Layout, *, nodes: Mapping[str, str] | None = None
) -> list[ServiceInstance]:
    """Every agent's own registration of ``cluster`` (of any cluster for None), passing or not.

    One read serves both views below: which hosts are live (`hosts_of`) and
    which agents vouch for instances (`agents_of`). ``nodes``: the agents'
    node claims when already read (else they are read here).
    """
    if nodes is None:
        nodes = agent_nodes_of(consul.kv_list(layout.agents_prefix, consistent=True).value, layout)
    return [
        inst
        for inst in consul.health_service(AGENT_SERVICE).value
        if (cluster is None or inst.meta.get(META_CLUSTER) == cluster) and is_agent_registration(inst, nodes)
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


def placement_readers(registrations: Iterable[ServiceInstance]) -> frozenset[str]:
    """The live hosts whose agent does not advertise ``reads-work`` (`META_READS_WORK`): agents from
    before work keys, which run from every manifest and placement (a rolling upgrade under way)."""
    return frozenset(
        inst.meta.get(META_HOST, "")
        for inst in registrations
        if inst.status == "passing" and inst.meta.get(META_READS_WORK) != "1"
    )


def report_writers(registrations: Iterable[ServiceInstance]) -> bool:
    """Whether every registered agent, live or not, writes reports (`META_WRITES_REPORTS`). One
    that does not (a rolling upgrade under way) writes status records that no report names."""
    return all(inst.meta.get(META_WRITES_REPORTS) == "1" for inst in registrations)


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


def read_agents(consul: ConsulClient, cluster: str | None, layout: Layout) -> list[AgentHost]:
    """The registered agents of ``cluster`` (of every cluster for None), with their addresses."""
    return agents_of(agent_registrations(consul, cluster, layout))
