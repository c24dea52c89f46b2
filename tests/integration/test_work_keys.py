"""The leader's work keys on the real loop (issue 31): ``operator/work/<host>/`` follows the placements."""

from __future__ import annotations

import json
import signal

from consul_operator.core.work import WorkShard
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster
from tests.support.staging import wait_until


def work_of(cluster: Cluster, host: str) -> dict[str, dict[str, object]]:
    """``host``'s work as KV holds it: every shard's services, once all shards agree (else {})."""
    entries = cluster.consul.kv_list(cluster.layout.host_work_prefix(host), consistent=True).value
    shards = [WorkShard.from_json(e.value, host=host) for e in entries]
    if (
        not shards
        or len({(s.session, s.digest, s.shards) for s in shards}) != 1
        or len(shards) != shards[0].shards
    ):
        return {}
    services: dict[str, dict[str, object]] = {}
    for shard in shards:
        services.update({k: dict(v) for k, v in shard.services.items()})
    return services


def placed(cluster: Cluster, service: str) -> dict[str, int]:
    """The placement record's replicas per host (hosts with none left out)."""
    record = cluster.kv_json(cluster.layout.placement_key(service))
    return {} if record is None else {h: n for h, n in record["hosts"].items() if n}


def work_counts(cluster: Cluster, service: str) -> dict[str, int]:
    """``service``'s count in each app host's work key (hosts without it left out)."""
    counts: dict[str, int] = {}
    for host in ("host-1", "host-2"):
        entry = work_of(cluster, host).get(service)
        if entry is not None:
            counts[host] = int(str(entry["count"]))
    return counts


def test_work_keys_follow_placements_and_a_new_leader_rewrites_them(
    cluster: Cluster, service_name: str
) -> None:
    """Put, scale and delete a service: each app host's work key says what its placement says there,
    with the spec hash of the placement; after the leader's agent is restarted, every work key is
    written again under the new leader's session."""
    cluster.put(service_name, 2, placement={"max_per_host": 1})
    wait_until(
        lambda: (
            placed(cluster, service_name) == {"host-1": 1, "host-2": 1}
            and work_counts(cluster, service_name) == {"host-1": 1, "host-2": 1}
        ),
        timeout=CONVERGE_S,
        what="work keys of 2 replicas",
    )
    spec = cluster.kv_json(cluster.layout.placement_key(service_name))["spec_hash"]
    assert work_of(cluster, "host-1")[service_name]["spec"] == spec

    cluster.put(service_name, 1, placement={"max_per_host": 1})
    wait_until(
        lambda: (
            sum(work_counts(cluster, service_name).values()) == 1
            and work_counts(cluster, service_name) == placed(cluster, service_name)
        ),
        timeout=REACT_S,
        what="work keys of 1 replica",
    )

    leader = cluster.leader()
    assert leader is not None
    sessions = {
        host: json.loads(e.value)["session"]
        for host in ("host-1", "host-2")
        for e in cluster.consul.kv_list(cluster.layout.host_work_prefix(host), consistent=True).value
    }
    # A new leadership: the lock released by the leader's agent on SIGTERM, taken by the other
    # agent (or, once `up` restarted it, by the same host with a new session): a new session.
    cluster.kill(f"agent-{leader}", signal.SIGTERM)
    cluster.staging.run("up")  # starts exactly the stopped agent again
    wait_until(
        lambda: all(
            json.loads(e.value)["session"] != sessions[host]
            for host in ("host-1", "host-2")
            for e in cluster.consul.kv_list(cluster.layout.host_work_prefix(host), consistent=True).value
        ),
        timeout=CONVERGE_S,
        what="every work key written under the new leader's session",
    )

    cluster.delete(service_name)
    wait_until(
        lambda: work_counts(cluster, service_name) == {},
        timeout=REACT_S,
        what="the service gone from every work key",
    )
