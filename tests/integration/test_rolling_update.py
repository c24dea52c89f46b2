"""Rolling updates on the real staging environment: paced by the leader, under load, with rollback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.cluster import Cluster
from tests.support.load import Load
from tests.support.staging import wait_until

REPLICAS = 2
SURGE = 1
UPDATE = {"max_surge": SURGE, "max_unavailable": 0, "min_healthy": "2s", "deadline": "2m"}


@contextmanager
def sampled(probe: Callable[[], int], every: float = 0.1) -> Iterator[list[int]]:
    """Call ``probe`` every ``every`` s in a thread while the block runs; yields the samples."""
    samples: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            samples.append(probe())
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=10)


def rollout(cluster: Cluster, name: str) -> Any:
    """The leader's rollout record of ``name``."""
    return cluster.kv_json(f"operator/rollout/{name}")


def test_rolling_update_under_load_fails_no_request(cluster: Cluster, service_name: str) -> None:
    """hello:local -> hello:v2 under load: no failed request, all answers from v2, surge limit always held."""
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    lb = cluster.staging.addresses[2]
    with Load(lb, service_name) as load, sampled(lambda: len(cluster.containers(service_name))) as running:
        wait_until(lambda: len(load.outcomes) > 20, timeout=30, what="load to start")
        started = time.time()
        cluster.put(service_name, REPLICAS, image="hello:v2", update=UPDATE)
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "complete",
            timeout=120,
            what="the rollout to complete",
        )
        took = time.time() - started
        cluster.wait_converged(service_name, REPLICAS)
        done = time.time()
        wait_until(
            lambda: len(load.outcomes) > 0 and load.outcomes[-1].at > done + 2, timeout=30, what="load"
        )
    record = rollout(cluster, service_name)
    print(
        f"rollout: {took:.1f}s, {len(load.outcomes)} requests, {len(load.failures)} failed, "
        f"max running {max(running)} over {len(running)} samples"
    )
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"
    assert max(running) <= REPLICAS + SURGE, running
    assert min(running) >= REPLICAS, running
    assert len(running) > 20
    late = load.bodies_since(done)
    assert late and all(body.startswith("Hello World v2 from") for body in late), late
    assert (record["updated"], record["total"]) == (REPLICAS, REPLICAS)


def test_broken_update_rolls_back_without_losing_capacity(cluster: Cluster, service_name: str) -> None:
    """A new spec whose health check fails: past the deadline it rolls back; passing never below desired."""
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    good = {c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)}
    broken = {"http": "/missing", "interval": "1s", "timeout": "500ms"}
    update = {**UPDATE, "deadline": "15s"}
    with sampled(lambda: len(cluster.passing(service_name))) as passing:
        cluster.put(service_name, REPLICAS, health=broken, update=update)
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "rolling_back",
            timeout=60,
            what="the rollout to roll back",
        )
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "rolled_back",
            timeout=60,
            what="the rollback to finish",
        )
        cluster.wait_converged(service_name, REPLICAS)
    record = rollout(cluster, service_name)
    print(f"rollback: reason {record['reason']!r}, min passing {min(passing)} over {len(passing)} samples")
    assert min(passing) >= REPLICAS, passing
    assert {c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)} == good
    assert "not healthy within 15s" in record["reason"]
