"""Host maintenance on the real staging environment: cordon, drain under load, its deadline, uncordon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_rolling_update import sampled
from tests.support.cluster import Cluster, operator
from tests.support.load import Load
from tests.support.staging import wait_until

REPLICAS = 2
UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "2s"}


@pytest.fixture
def host_1(cluster: Cluster) -> Iterator[str]:
    """host-1, uncordoned again after the test whatever happened (the other tests place there)."""
    yield "host-1"
    done = operator(cluster, "uncordon", "host-1")
    assert done.returncode == 0, done.stderr


def host_json(cluster: Cluster, host: str) -> Any:
    """``host`` as `operator status --json` shows it."""
    shown = operator(cluster, "status", "--json")
    assert shown.returncode in (0, 1), shown.stderr
    return next(h for h in json.loads(shown.stdout)["hosts"] if h["name"] == host)


def test_cordon_stops_new_placements_and_uncordon_allows_them(
    cluster: Cluster, service_name: str, host_1: str
) -> None:
    """A cordoned host gets no new replica; uncordoned it gets the next one; nothing moves back at once."""
    cordoned = operator(cluster, "cordon", host_1)
    assert cordoned.returncode == 0, cordoned.stderr
    assert "host-1: cordoned" in cordoned.stdout
    assert host_json(cluster, host_1)["cordoned"] is True
    cluster.put(service_name, REPLICAS)
    cluster.wait_converged(service_name, REPLICAS)
    assert cluster.per_host(service_name) == {"host-2": REPLICAS}

    uncordoned = operator(cluster, "uncordon", host_1)
    assert uncordoned.returncode == 0, uncordoned.stderr
    assert host_json(cluster, host_1) | {"labels": {}} == {
        "name": host_1,
        "live": True,
        "labels": {},
        "cordoned": False,
        "drain": None,
    }
    assert cluster.per_host(service_name) == {"host-2": REPLICAS}, "nothing moves back before host-1 settles"
    cluster.put(service_name, REPLICAS + 1)
    cluster.wait_converged(service_name, REPLICAS + 1)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": REPLICAS}


def test_cordon_refuses_an_unknown_host(cluster: Cluster) -> None:
    """A typo is no host: cordon and drain exit 1 and write nothing."""
    for command in ("cordon", "drain"):
        done = operator(cluster, command, "host-9")
        assert done.returncode == 1
        assert "host-9: no such host" in done.stderr
    assert cluster.consul.kv_get(cluster.layout.host_key("host-9")).value is None


def test_drain_under_load_fails_no_request(cluster: Cluster, service_name: str, host_1: str) -> None:
    """Draining host-1 under load: every replica moves to host-2, 0 failed requests, at most R+1 running."""
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    wait_until(lambda: cluster.lb_serves(service_name, REPLICAS), timeout=30, what="NGINX to serve both")
    lb = cluster.staging.addresses[2]
    with (
        Load(lb, service_name) as load,
        sampled(lambda: len(cluster.containers(service_name))) as running,
        sampled(lambda: len(cluster.passing(service_name))) as passing,
    ):
        wait_until(lambda: len(load.outcomes) > 20, timeout=30, what="load to start")
        started = time.time()
        drained = operator(cluster, "drain", host_1, "--deadline", "2m")
        assert drained.returncode == 0, drained.stderr
        shown = host_json(cluster, host_1)
        assert shown["cordoned"] is True and shown["drain"]["deadline"] == 120.0
        waited = operator(cluster, "wait", "--drained", host_1, "--timeout", "120s")
        took = time.time() - started
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.strip() == "host-1: drained"
        cluster.wait_converged(service_name, REPLICAS)
        done = time.time()
        wait_until(lambda: load.outcomes[-1].at > done + 2, timeout=30, what="load after the drain")
    print(
        f"drain: {took:.1f}s, {len(load.outcomes)} requests, {len(load.failures)} failed, "
        f"running {min(running)}..{max(running)}, passing >= {min(passing)} over {len(running)} samples"
    )
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"
    assert cluster.per_host(service_name) == {"host-2": REPLICAS}
    assert max(running) <= REPLICAS + 1, running
    assert min(passing) >= REPLICAS, passing
    assert len(running) > 20
    assert host_json(cluster, host_1)["drain"] | {"started": None} == {
        "started": None,
        "deadline": 120.0,
        "remaining": 0,
        "done": True,
    }


def test_drain_past_its_deadline_moves_what_cannot_be_replaced(
    cluster: Cluster, service_name: str, host_1: str
) -> None:
    """A replica with nowhere to go (max_per_host 1) stays until the deadline, then goes anyway."""
    cluster.put(service_name, REPLICAS, update=UPDATE, placement={"max_per_host": 1})
    cluster.wait_converged(service_name, REPLICAS)
    drained = operator(cluster, "drain", host_1, "--deadline", "8s")
    assert drained.returncode == 0, drained.stderr
    early = operator(cluster, "wait", "--drained", host_1, "--timeout", "1s")
    assert early.returncode == 1, "within the deadline its replica stays: no replacement can pass first"
    assert f"still on host-1:\n  {service_name}: 1 placed, 1 running, 1 passing" in early.stderr
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    waited = operator(cluster, "wait", "--drained", host_1, "--timeout", "60s")
    assert waited.returncode == 0, waited.stderr
    assert cluster.per_host(service_name) == {"host-2": 1}
    status = operator(cluster, "status", service_name)
    assert status.returncode == 1
    assert "Unplaceable" in status.stdout


def test_wait_drained_exit_codes(cluster: Cluster) -> None:
    """wait --drained: 1 at once for no such host, 2 when Consul cannot be read, 2 for a usage error."""
    unknown = operator(cluster, "wait", "--drained", "host-9", "--timeout", "5s")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "host-9: no such host (no agent of it is registered)",
    )
    away = operator(cluster, "wait", "--drained", "host-1", "--consul", "127.0.0.1:1", "--timeout", "5s")
    assert away.returncode == 2 and "cannot read Consul" in away.stderr
    both = operator(cluster, "wait", "simple", "--drained", "host-1")
    assert both.returncode == 2 and "not both" in both.stderr
