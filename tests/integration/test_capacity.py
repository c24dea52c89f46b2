"""Resources, capacity, label constraints and container defaults, on the real staging environment.

The test environment's agents differ (conftest, `staging.HOSTS_APART`): host-1
advertises 16Gi and zone=a, host-2 4Gi and zone=b. Containers are inspected
in the real Docker engine; placements and reasons read as a user reads them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.cluster import Cluster, operator
from tests.support.execs import output_of
from tests.support.staging import wait_until

MI = 1024 * 1024


def placement(cluster: Cluster, service: str) -> Any:
    """The leader's placement record of ``service``."""
    return cluster.kv_json(cluster.layout.placement_key(service))


def status_json(cluster: Cluster, service: str) -> Any:
    """`operator status --json NAME`'s entry for ``service``."""
    result = operator(cluster, "status", "--json", service)
    return json.loads(result.stdout)["services"][0]


@pytest.mark.parametrize(
    ("fields", "memory", "nano_cpus", "pids"),
    [
        pytest.param(
            {"resources": {"memory": "96Mi", "cpus": 0.5}, "pids_limit": 128}, 96 * MI, 500_000_000, 128,
            id="manifest-resources",
        ),
        pytest.param({}, 256 * MI, 250_000_000, 1024, id="defaults"),
    ],
)  # fmt: skip
def test_container_runs_with_its_limits_and_safe_defaults(
    cluster: Cluster, service_name: str, fields: dict[str, Any], memory: int, nano_cpus: int, pids: int
) -> None:
    """A replica's container has the memory limit (no extra swap), CPU quota and pids limit, and
    no-new-privileges, restart policy no and a size-capped json-file log."""
    cluster.put(service_name, 1, **fields)
    cluster.wait_converged(service_name, 1)
    (container,) = cluster.containers(service_name)
    host = container.attrs["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"]) == (
        memory,
        memory,
        nano_cpus,
        pids,
    )
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["RestartPolicy"]["Name"] == "no"
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    # The kernel holds the container to it: the process sees its own cgroup's pids limit.
    limit = output_of(
        container, "sh", "-c", "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
    )
    assert limit.strip() == str(pids)


def test_replicas_go_only_where_they_fit(cluster: Cluster, service_name: str) -> None:
    """With 5Gi per replica, only host-1 (16Gi) fits: all three replicas run there, none on host-2 (4Gi)."""
    cluster.put(service_name, 3, resources={"memory": "5Gi", "cpus": 0.1})
    cluster.wait_converged(service_name, 3)
    assert cluster.per_host(service_name) == {"host-1": 3}
    assert placement(cluster, service_name)["unplaced"] == 0


def test_a_replica_that_fits_nowhere_is_unplaceable_naming_the_resource(
    cluster: Cluster, service_name: str
) -> None:
    """A fourth 5Gi replica fits on no host: Unplaceable, the reason names memory and each host's free
    amount, counted under cause memory; the three that fit still run."""
    cluster.put(service_name, 4, resources={"memory": "5Gi", "cpus": 0.1})
    wait_until(
        lambda: status_json(cluster, service_name)["state"] == "Unplaceable",
        timeout=60,
        what=f"{service_name} Unplaceable",
    )
    cluster.wait_converged(service_name, 3)
    errors = status_json(cluster, service_name)["errors"]
    assert len(errors) == 1, errors
    assert re.fullmatch(
        r"1 of 4 replicas fit on no host \(each needs memory=5Gi cpus=0\.1\): "
        r"host-1: memory \d+(Mi|Gi) free; host-2: memory \d+(Mi|Gi) free",
        errors[0],
    ), errors
    leader = cluster.leader()
    assert leader is not None
    wait_until(
        lambda: (
            cluster.scrape(leader).get("operator_unplaced_replicas", service=service_name, cause="memory")
            == 1
        ),
        timeout=30,
        what="unplaced_replicas{cause=memory} = 1",
    )
    waited = operator(cluster, "wait", service_name, "--timeout", "1s")
    assert waited.returncode == 1
    assert "1 cannot be placed: 1 of 4 replicas fit on no host" in waited.stdout + waited.stderr


def test_placement_labels_limit_a_service_to_the_labelled_host(cluster: Cluster, service_name: str) -> None:
    """placement.labels zone=b puts every replica on host-2; a zone no host has leaves them unplaced,
    naming the hosts that do not match."""
    cluster.put(service_name, 3, placement={"labels": {"zone": "b"}})
    cluster.wait_converged(service_name, 3)
    assert cluster.per_host(service_name) == {"host-2": 3}

    cluster.put(service_name, 3, placement={"labels": {"zone": "c"}})
    wait_until(lambda: placement(cluster, service_name)["unplaced"] == 3, timeout=60, what="3 unplaced")
    record = placement(cluster, service_name)
    assert record["cause"] == "labels"
    assert record["reason"].endswith("host-1: lacks label zone=c; host-2: lacks label zone=c")
    wait_until(lambda: not cluster.containers(service_name), timeout=60, what="replicas drained")
