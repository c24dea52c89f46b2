"""A partial partition: the leader reaches one node only, and the majority still gets a leader.

The leading app host is cut off, both ways, from every node but host-4 (the
second LB host, a Consul client). host-4 still hears it and answers the
majority's indirect probes for it, so gossip never declares it failed: its
``serfHealth`` stays passing, and its agent's TTL check, which its own Consul
agent runs, cannot reach the servers to fail there. Before the session had a
TTL of its own, the session, and the lock with it, lived on for as long as the
cut did (CI, the node run's ``one_way`` while it spared host-4: no leader in
the majority for 60 s). Now the leader cannot renew its session on the servers,
Consul ends it within twice `SESSION_TTL`, and the other agent leads.
"""

from __future__ import annotations

import time

from consul_operator.daemons.leader import SESSION_TTL
from tests.support.autopilot import three_healthy_voters
from tests.support.cluster import Cluster
from tests.support.nodes import APP_HOSTS, NODE_HOSTS, Nodes
from tests.support.staging import wait_until

SPARED = "host-4"
"""The one node the cut-off leader still reaches."""
TAKEOVER_S = 2 * SESSION_TTL + 30.0
"""Consul ends an unrenewed session within twice its TTL; then the lock-delay, a pass, a loaded machine."""


def autopilot_healthy(cluster: Cluster) -> bool:
    """Consul's autopilot, through the cluster's client: healthy, three healthy voters."""
    address = cluster.consul.address
    return three_healthy_voters(f"{address.host}:{address.port}")


def test_a_leader_that_reaches_one_node_only_loses_the_lock_to_the_majority(
    node_cluster: Cluster, nodes: Nodes
) -> None:
    """Cut from every node but host-4, the leader's session ends for want of renewal, and the
    other app host leads within twice the session TTL (and a margin); healed, all is well again."""
    wait_until(lambda: autopilot_healthy(node_cluster), timeout=120, what="three healthy Consul voters")
    leader = str(wait_until(node_cluster.leader, timeout=60, what="a leader"))
    successor = next(h for h in APP_HOSTS if h != leader)
    cut = [h for h in NODE_HOSTS if h not in (leader, SPARED)]
    started = time.monotonic()
    for other in cut:
        nodes.cut_link(leader, other)
    try:
        # Read through host-3's Consul (the cluster's client), a server of the majority.
        wait_until(
            lambda: node_cluster.leader() == successor, timeout=TAKEOVER_S, what=f"{successor} to lead"
        )
        took = time.monotonic() - started
        alive = "serfHealth=passing" in node_cluster.consul.health_node(leader).value
        print(
            f"partial partition: {successor} led {took:.1f}s after the cut; {leader} alive in gossip: {alive}"
        )
    finally:
        nodes.heal()
    wait_until(lambda: autopilot_healthy(node_cluster), timeout=120, what="three healthy Consul voters again")
    wait_until(
        lambda: "serfHealth=passing" in node_cluster.consul.health_node(leader).value,
        timeout=60,
        what=f"{leader} back in gossip",
    )
