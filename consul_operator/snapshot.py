"""Reading everything `operator status`, `wait` and `plan` look at out of Consul, in one place."""

from __future__ import annotations

from collections.abc import Mapping

from consul_operator.consul_client import ConsulClient
from consul_operator.desired_state import is_dns_label
from consul_operator.keys import Layout
from consul_operator.kv_state import (
    read_leader,
    read_manifests,
    read_placements,
    read_rollouts,
    read_statuses,
)
from consul_operator.model import META_HOST
from consul_operator.ownership import AgentHost, owned
from consul_operator.presence import agent_registrations, agents_of, hosts_of
from consul_operator.records import StatusRecord
from consul_operator.status import ClusterSnapshot, HostRow


def read_passing(
    consul: ConsulClient,
    services: list[str],
    cluster: str | None,
    agents: list[AgentHost],
    statuses: Mapping[str, Mapping[str, StatusRecord]],
) -> dict[str, dict[str, int]]:
    """Instances of ours passing in Consul, per service and host (`ownership.owned` decides what is ours)."""
    passing: dict[str, dict[str, int]] = {}
    for name in services:
        if not is_dns_label(name):
            continue
        per_host: dict[str, int] = {}
        instances = consul.health_service(name, passing=True).value
        for inst in owned(instances, cluster, agents, statuses).kept:
            host = inst.meta.get(META_HOST) or inst.node
            per_host[host] = per_host.get(host, 0) + 1
        passing[name] = per_host
    return passing


def read_snapshot(consul: ConsulClient, layout: Layout, cluster: str | None, now: float) -> ClusterSnapshot:
    """Everything the status view is built from; raises `ConsulError` when Consul cannot be read."""
    leader = read_leader(consul, layout)
    registrations = agent_registrations(consul, cluster)
    hosts = tuple(
        HostRow(name, live, labels) for name, (live, labels) in sorted(hosts_of(registrations).items())
    )
    manifests = read_manifests(consul, layout)
    placements = read_placements(consul, layout)
    statuses = read_statuses(consul, layout)
    names = sorted(set(manifests) | set(placements) | set(statuses))
    return ClusterSnapshot(
        now=now,
        leader=None if leader is None else leader.host,
        leader_since=None if leader is None else leader.since,
        hosts=hosts,
        manifests=manifests,
        placements=placements,
        statuses=statuses,
        passing=read_passing(consul, names, cluster, agents_of(registrations), statuses),
        rollouts=read_rollouts(consul, layout),
    )
