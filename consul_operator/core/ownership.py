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
   which only an agent token may write.

A forged registration with our own meta at an agent host's address (its
Consul port, say) passes 1-3 and fails 4. The reasons are a bounded set:
they are metric labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consul_operator.core.model import META_CLUSTER, META_HOST, ServiceInstance
from consul_operator.core.records import StatusRecord

FOREIGN_CLUSTER = "foreign_cluster"
UNKNOWN_HOST = "unknown_host"
WRONG_ADDRESS = "wrong_address"
UNREPORTED = "unreported"
OWNERSHIP_REASONS = (FOREIGN_CLUSTER, UNKNOWN_HOST, WRONG_ADDRESS, UNREPORTED)


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
        elif inst.service_id not in _reported(statuses.get(inst.service, {}).get(host)):
            rejected.append(
                Disowned(inst, UNREPORTED, f"the agent of {host} does not report {inst.service_id!r}")
            )
        else:
            kept.append(inst)
    return Ownership(tuple(kept), tuple(rejected))


def _reported(record: StatusRecord | None) -> tuple[str, ...]:
    """The instance ids an agent's status record lists (none without a record)."""
    return () if record is None else record.instances
