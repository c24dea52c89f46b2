"""Which catalog instances this cluster's agents made: the one rule, as a pure function.

Anyone who can register a service in Consul (any agent token, or anyone on
the network while ACLs are off) can put a passing instance under a served
name. The load balancer, the leader's rollout pacing, ``operator status``
and ``operator wait`` count an instance only when all of these hold:

1. its meta ``cluster`` is our cluster (with no cluster given: the cluster
   of the agent host it names);
2. its meta ``host`` names a registered agent of that cluster (its own
   ``operator-agent`` registration, live or not: an agent restarting must
   not pull its running replicas out of the load balancer, and a host that
   is down fails its instances' checks anyway);
3. its address is that agent's advertised address;
4. that host's agent itself lists the instance (its service id, the
   container's name) in its status record ``operator/status/<svc>/<host>``,
   which only an agent token may write;
5. the instance is registered on the Consul node that the record names
   (the agent's own node: it registers its replicas on its local Consul
   agent);
6. its port, its ``container`` meta and its ``spec-hash`` meta are the ones
   the record gives for that replica (`records.ReplicaMark`).

A forged registration with our own meta at an agent host's address (its
Consul port, say) passes 1-3 and fails 4. Replica ids are public (they are
in the catalog), so one that reuses a real replica's id passes 4 too; it
fails 5 when registered on any other node, and 6 when it names another
port (Consul's 8500, say) on the host's own node, where it can only replace
the real registration, which the agent then puts back. A record without a
node comes from an agent older than 5 and 6 (during an upgrade): for it, 1-4
decide, as they did. The reasons are a bounded set: they are metric labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consul_operator.core.model import META_CLUSTER, META_CONTAINER, META_HOST, META_SPEC, ServiceInstance
from consul_operator.core.records import StatusRecord

FOREIGN_CLUSTER = "foreign_cluster"
UNKNOWN_HOST = "unknown_host"
WRONG_ADDRESS = "wrong_address"
UNREPORTED = "unreported"
WRONG_NODE = "wrong_node"
WRONG_PORT = "wrong_port"
WRONG_CONTAINER = "wrong_container"
WRONG_SPEC = "wrong_spec"
OWNERSHIP_REASONS = (
    FOREIGN_CLUSTER,
    UNKNOWN_HOST,
    WRONG_ADDRESS,
    UNREPORTED,
    WRONG_NODE,
    WRONG_PORT,
    WRONG_CONTAINER,
    WRONG_SPEC,
)


@dataclass(frozen=True, slots=True)
class AgentHost:
    """A live agent: its cluster, its host name and the address it advertises."""

    cluster: str
    host: str
    address: str


@dataclass(frozen=True, slots=True)
class Disowned:
    """An instance not counted, and why (``reason`` is one of `OWNERSHIP_REASONS`)."""

    instance: ServiceInstance
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Ownership:
    """The instances our agents made, and the others with the reason each is left out."""

    kept: tuple[ServiceInstance, ...]
    rejected: tuple[Disowned, ...]


def owned(
    instances: Iterable[ServiceInstance],
    cluster: str | None,
    agents: Iterable[AgentHost],
    statuses: Mapping[str, Mapping[str, StatusRecord]],
) -> Ownership:
    """Split ``instances`` into those this cluster's agents made and the rest.

    ``cluster`` is ours (None: any cluster, each instance judged against its own
    cluster's agents); ``agents`` the registered agents; ``statuses`` the status
    records, service -> host -> record, as read from our own KV prefix.
    """
    by_key = {(a.cluster, a.host): a for a in agents}
    kept: list[ServiceInstance] = []
    rejected: list[Disowned] = []
    for inst in instances:
        their_cluster = inst.meta.get(META_CLUSTER, "")
        host = inst.meta.get(META_HOST, "")
        agent = by_key.get((their_cluster, host))
        if cluster is not None and their_cluster != cluster:
            rejected.append(Disowned(inst, FOREIGN_CLUSTER, f"cluster {their_cluster!r}, not {cluster!r}"))
        elif agent is None:
            rejected.append(
                Disowned(inst, UNKNOWN_HOST, f"host {host!r} is no agent of cluster {their_cluster!r}")
            )
        elif inst.address != agent.address:
            rejected.append(
                Disowned(
                    inst, WRONG_ADDRESS, f"address {inst.address!r}, but {host} advertises {agent.address!r}"
                )
            )
        else:
            refusal = _vouched(inst, host, statuses.get(inst.service, {}).get(host))
            if refusal is None:
                kept.append(inst)
            else:
                rejected.append(refusal)
    return Ownership(tuple(kept), tuple(rejected))


def _vouched(inst: ServiceInstance, host: str, record: StatusRecord | None) -> Disowned | None:
    """Rules 4-6: None when ``host``'s status record vouches for ``inst``, else why not."""
    sid = inst.service_id
    if record is None or sid not in record.instances:
        return Disowned(inst, UNREPORTED, f"the agent of {host} does not report {sid!r}")
    if not record.node:
        return None  # an agent older than nodes and marks: rules 1-4 only
    if inst.node != record.node:
        return Disowned(inst, WRONG_NODE, f"on node {inst.node!r}, but {host} registers on {record.node!r}")
    mark = record.replicas.get(sid)
    if mark is None or inst.port != mark.port:
        port = "none" if mark is None else mark.port
        return Disowned(inst, WRONG_PORT, f"port {inst.port}, but the agent of {host} reports {port}")
    container = inst.meta.get(META_CONTAINER, "")
    if not mark.container or not container.startswith(mark.container):
        return Disowned(
            inst, WRONG_CONTAINER, f"container {container[:12]!r}, but {host} runs {mark.container!r}"
        )
    if inst.meta.get(META_SPEC, "") != mark.spec:
        return Disowned(inst, WRONG_SPEC, f"spec {inst.meta.get(META_SPEC, '')!r}, not {mark.spec!r}")
    return None
