"""Issue 28 against real Consul, Docker and NGINX: forged replicas, redirecting health checks,
and the status page's server under idle connections and load."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.snapshot import read_cluster_state
from consul_operator.core.model import META_HOST
from tests.support.bounds import LB_UPDATE_S, REACT_S
from tests.support.cluster import Cluster
from tests.support.served import get
from tests.support.staging import wait_until


@pytest.fixture
def forge(cluster: Cluster) -> Iterator[list[tuple[ConsulClient, str]]]:
    """Registrations a test forges, as (Consul agent, service id); all deregistered afterwards."""
    made: list[tuple[ConsulClient, str]] = []
    yield made
    for client, sid in made:
        client.deregister_service(sid)


def consul_answered(status: int, body: str) -> bool:
    """Whether an answer came from Consul's HTTP API (agent/self is JSON with a Config and a Member)."""
    return status == 200 and '"Config"' in body and '"Member"' in body


def test_a_forged_entry_with_a_real_replicas_id_is_never_proxied_nor_counted(
    cluster: Cluster, service_name: str, forge: list[tuple[ConsulClient, str]]
) -> None:
    """A real replica's id, meta and address, registered on another node at Consul's port: never ours."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="NGINX to serve both")
    real = cluster.passing(service_name)
    victim = next(i for i in real if i.meta.get(META_HOST) == "host-1")
    before = cluster.metric("host-3", "operator_lb_rejected_total", reason="wrong_node")
    # On host-2's Consul agent and on the load balancer's: the id, meta and address host-1 vouches for.
    for host in ("host-2", "host-3"):
        client = ConsulClient(cluster.staging.consul_addr(host))
        client.register_service(
            {
                "ID": victim.service_id,
                "Name": service_name,
                "Address": victim.address,
                "Port": 8500,
                "Meta": dict(victim.meta),
            }
        )
        forge.append((client, victim.service_id))
    # Consul shows them passing (no check): the catalog alone would serve them.
    wait_until(lambda: len(cluster.passing(service_name)) == 4, timeout=REACT_S, what="the forgeries")
    wait_until(
        lambda: cluster.metric("host-3", "operator_lb_rejected_total", reason="wrong_node") >= before + 2,
        timeout=REACT_S,
        what="the load balancer to reject both forgeries",
    )

    answers = [get(cluster.lb_address, service_name, path="/v1/agent/self") for _ in range(40)]
    assert not [a for a in answers if consul_answered(*a)], "a request reached Consul's API"
    assert ":8500" not in cluster.staging.nginx_conf()
    assert cluster.lb_serves(service_name, 2)

    # What the leader paces a rollout by: the two real replicas, at their own ports.
    state = read_cluster_state(
        cluster.consul, cluster.layout, cluster.staging.name, passing_of=lambda _: {service_name}, leader=True
    )
    counted = sorted((i.node, i.service_id, i.port) for i in state.passing[service_name])
    assert counted == sorted((i.node, i.service_id, i.port) for i in real)
