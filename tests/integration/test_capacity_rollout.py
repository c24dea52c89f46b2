"""Capacity holds through spec changes (issue 26), on the real staging environment.

The test environment's hosts (`staging.HOSTS_APART`): host-1 advertises 16Gi
(zone=a), host-2 4Gi (zone=b). What is checked is Docker's own view: the memory
limits of the containers of this environment (by label) that run on each host.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from consul_operator.core.desired_state import GI, MI
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SPEC
from tests.support.bounds import ROLLOUT_S
from tests.support.cluster import Cluster, operator
from tests.support.staging import HOST_CAPACITY_1, HOST_CAPACITY_2, wait_until

UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "1s", "deadline": "10m"}


def _memory(capacity: str) -> int:
    """The memory of a ``--capacity`` value (``memory=16Gi,cpus=8``), in bytes."""
    match = re.search(r"memory=(\d+)(Mi|Gi)", capacity)
    assert match, capacity
    return int(match.group(1)) * (GI if match.group(2) == "Gi" else MI)


CAPACITY = {"host-1": _memory(HOST_CAPACITY_1), "host-2": _memory(HOST_CAPACITY_2)}


def limits_per_host(cluster: Cluster) -> dict[str, int]:
    """The sum of the memory limits (HostConfig.Memory) of this environment's running containers, per host."""
    mine = {"label": [f"{LABEL_CLUSTER}={cluster.staging.name}"]}
    sums: dict[str, int] = {}
    for container in cluster.docker.containers.list(filters=mine, ignore_removed=True):
        host = container.labels[LABEL_HOST]
        sums[host] = sums.get(host, 0) + int(container.attrs["HostConfig"]["Memory"])
    return sums


@contextmanager
def sampled_limits(cluster: Cluster) -> Iterator[list[dict[str, int]]]:
    """`limits_per_host` sampled in a thread while the block runs."""
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            samples.append(limits_per_host(cluster))
            stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=30)


def rollout(cluster: Cluster, name: str) -> Any:
    """The leader's rollout record of ``name``."""
    return cluster.kv_json(cluster.layout.rollout_key(name))


def test_a_spec_too_big_for_a_host_holds_there_and_other_services_are_still_placed(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """3Gi -> 10Gi on one replica per host: host-1 (16Gi) takes its new replica, host-2 (4Gi, 3Gi
    used) cannot: its old replica keeps running and the rollout is held, the reason in status,
    describe and the events; a 256Mi service for zone=b is still placed on host-2; and the real
    containers' memory limits never add up past a host's capacity."""
    cluster.put(service_name, 2, update=UPDATE, resources={"memory": "3Gi", "cpus": 0.1})
    cluster.wait_converged(service_name, 2)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    (old_spec,) = {c.labels[LABEL_SPEC] for c in cluster.containers(service_name)}
    with sampled_limits(cluster) as samples:
        cluster.put(service_name, 2, update=UPDATE, resources={"memory": "10Gi", "cpus": 0.1})
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "held",
            timeout=ROLLOUT_S,
            what="the rollout held",
        )
        record = rollout(cluster, service_name)
        reason = "1 new replica fit on no host (each needs memory=10Gi cpus=0.1): host-2: memory 1Gi free"
        assert (record["reason"], record["updated"], record["total"]) == (reason, 1, 2)
        by_host = {c.labels[LABEL_HOST]: c for c in cluster.containers(service_name)}
        assert sorted(by_host) == ["host-1", "host-2"]
        assert by_host["host-1"].attrs["HostConfig"]["Memory"] == 10 * GI
        assert (by_host["host-2"].labels[LABEL_SPEC], by_host["host-2"].attrs["HostConfig"]["Memory"]) == (
            old_spec,
            3 * GI,
        )

        cluster.put(other_service, 1, resources={"memory": "256Mi"}, placement={"labels": {"zone": "b"}})
        cluster.wait_converged(other_service, 1)
        assert cluster.per_host(other_service) == {"host-2": 1}

    # The reason follows what is free: the small service took 256Mi of host-2.
    now_free = reason.replace("memory 1Gi free", "memory 768Mi free")
    wait_until(lambda: rollout(cluster, service_name)["reason"] == now_free, timeout=ROLLOUT_S, what=now_free)
    status = operator(cluster, "status", service_name)
    assert "Progressing (rollout held 1/2)" in status.stdout, status.stdout
    assert f"! rollout held: {now_free}" in status.stdout, status.stdout
    described = operator(cluster, "describe", service_name)
    assert f"rollout held: {now_free}" in described.stdout, described.stdout
    wait_until(
        lambda: "held: 1/2 updated; " + reason in operator(cluster, "events", service_name).stdout,
        timeout=ROLLOUT_S,
        what="the held event",
    )
    waited = operator(cluster, "wait", service_name, "--timeout", "1s")
    assert waited.returncode == 1, "a held rollout is not converged"
    leader = cluster.leader()
    assert leader is not None
    assert cluster.scrape(leader).get("operator_rollout_state", service=service_name, state="held") == 1

    over = [(s, h) for s in samples for h, used in s.items() if used > CAPACITY[h]]
    print(f"limits per host: at most {max_per_host(samples)} over {len(samples)} samples")
    assert not over, over[:3]
    assert len(samples) > 10


def max_per_host(samples: list[dict[str, int]]) -> dict[str, str]:
    """The largest sum of limits seen per host, for the log."""
    hosts = {h for s in samples for h in s}
    return {h: f"{max(s.get(h, 0) for s in samples) / GI:g}Gi" for h in sorted(hosts)}
