"""The leader's work keys on the real loop (issue 31): ``operator/work/<host>/`` follows the placements."""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Iterator

import pytest

from consul_operator.core.reports import StatusReport, record_digest
from consul_operator.core.work import WorkShard
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster
from tests.support.staging import Staging, wait_until


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


def status_reads(cluster: Cluster, daemon: str, read: str) -> float:
    """The leader's reads of ``operator/status/`` of one kind (whole, reported, unmoved)."""
    return cluster.metric(
        daemon, "operator_kv_prefix_reads_total", prefix=cluster.layout.status_prefix, read=read
    )


def reports_name_every_record(cluster: Cluster) -> bool:
    """Whether each app host's report names exactly its status records, by their bytes' digests."""
    records = cluster.consul.kv_list(cluster.layout.status_prefix, consistent=True).value
    for host in ("host-1", "host-2"):
        entry = cluster.consul.kv_get(cluster.layout.report_key(host), consistent=True).value
        if entry is None:
            return False
        held = {
            of[0]: record_digest(e.value)
            for e in records
            if (of := cluster.layout.status_of(e.key)) is not None and of[1] == host
        }
        if StatusReport.from_json(entry.value, host=host).records != held:
            return False
    return True


def test_each_agent_reports_its_records_and_the_leader_reads_only_what_moved(
    cluster: Cluster, service_name: str
) -> None:
    """Every agent advertises and writes its report (`core/reports.py`), which names its status
    records as they settle; the leader reads the records through the reports, not the whole prefix."""
    assert agent_meta(cluster, "host-1").get("writes-reports") == "1"
    leader = cluster.leader()
    assert leader is not None
    reported = status_reads(cluster, leader, "reported")
    cluster.put(service_name, 2, placement={"max_per_host": 1})
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: reports_name_every_record(cluster), timeout=REACT_S, what="reports of every record")
    assert status_reads(cluster, leader, "reported") > reported
    cluster.delete(service_name)
    wait_until(
        lambda: (
            cluster.consul.kv_keys(f"{cluster.layout.status_prefix}{service_name}/").value == []
            and reports_name_every_record(cluster)
        ),
        timeout=CONVERGE_S,
        what="the service's records gone, and from the reports",
    )


def agent_meta(cluster: Cluster, host: str) -> dict[str, str]:
    """The meta of ``host``'s agent registration."""
    instances = cluster.consul.health_service("operator-agent").value
    return next(dict(i.meta) for i in instances if i.meta.get("host") == host and i.meta.get("cluster"))


@pytest.fixture
def old_host_2(staging: Staging, cluster: Cluster) -> Iterator[None]:
    """host-2's agent as before work keys (``--read-placements``) for one test; the session's after it."""
    args = f"{dict(staging.extra_env).get('AGENT_ARGS_HOST2', '')} --read-placements".strip()
    old = dataclasses.replace(staging, extra_env=(*staging.extra_env, ("AGENT_ARGS_HOST2", args)))
    cluster.kill("agent-host-2", signal.SIGTERM)
    old.run("up")
    yield
    cluster.kill("agent-host-2", signal.SIGTERM)
    staging.run("up")


def test_an_old_and_a_new_agent_run_one_service_together(
    cluster: Cluster, service_name: str, old_host_2: None
) -> None:
    """A rolling upgrade half done: host-1's agent reads its work key, host-2's (``--read-placements``)
    every placement. Each advertises what it reads, the leader counts the old one, and a service
    placed on both starts, scales and drains on both."""
    assert agent_meta(cluster, "host-1").get("reads-work") == "1"
    assert "reads-work" not in agent_meta(cluster, "host-2")
    assert "writes-reports" not in agent_meta(cluster, "host-2")
    leader = cluster.leader()
    assert leader is not None
    wait_until(
        lambda: cluster.metric(leader, "operator_agents_reading_placements") == 1,
        timeout=REACT_S,
        what="the leader counting one agent that reads placements",
    )
    # The old agent writes no report: the leader reads the status records as a prefix, never
    # through reports, for as long as it is registered.
    reported = status_reads(cluster, leader, "reported")

    cluster.put(service_name, 2, placement={"max_per_host": 1})
    cluster.wait_converged(service_name, 2)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    cluster.put(service_name, 4, placement={"max_per_host": 2})
    cluster.wait_converged(service_name, 4)
    assert cluster.per_host(service_name) == {"host-1": 2, "host-2": 2}
    assert status_reads(cluster, leader, "reported") == reported
    cluster.delete(service_name)
    wait_until(
        lambda: not cluster.containers(service_name, all_states=True),
        timeout=CONVERGE_S,
        what="the service's containers drained on both hosts",
    )
