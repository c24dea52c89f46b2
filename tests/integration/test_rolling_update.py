"""Rolling updates on the real staging environment: paced by the leader, under load, with rollback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.bounds import LB_UPDATE_S, LOAD_S, ROLLOUT_S
from tests.support.cluster import Cluster, operator
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
    # Consul passing is not NGINX serving yet: the load starts once NGINX answers from both.
    wait_until(
        lambda: cluster.lb_serves(service_name, REPLICAS), timeout=LB_UPDATE_S, what="NGINX to serve both"
    )
    lb = cluster.staging.addresses[2]
    with Load(lb, service_name) as load, sampled(lambda: len(cluster.containers(service_name))) as running:
        wait_until(lambda: len(load.outcomes) > 20, timeout=LOAD_S, what="load to start")
        started = time.time()
        cluster.put(service_name, REPLICAS, image="hello:v2", update=UPDATE)
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "complete",
            timeout=ROLLOUT_S,
            what="the rollout to complete",
        )
        took = time.time() - started
        cluster.wait_converged(service_name, REPLICAS)
        done = time.time()
        wait_until(
            lambda: len(load.outcomes) > 0 and load.outcomes[-1].at > done + 2, timeout=LOAD_S, what="load"
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


# The deadline of an update that never passes: it rolls back once this has passed.
BROKEN_DEADLINE = 15.0
BROKEN: dict[str, dict[str, Any]] = {
    "failing-health-check": {"health": {"http": "/missing", "interval": "1s", "timeout": "500ms"}},
    "exits-at-once": {"command": ["false"]},
}


@pytest.mark.parametrize("breakage", list(BROKEN), ids=list(BROKEN))
def test_broken_update_rolls_back_without_losing_capacity(
    cluster: Cluster, service_name: str, breakage: str
) -> None:
    """A new spec that never passes: past the deadline it rolls back, and the good replicas run throughout.

    What the operator decides is which replicas run: the ones of the good spec are the same
    containers from before the change to after the rollback, and each sample found them all
    running. Consul's passing count is sampled too and printed: on a loaded machine a check
    may time out once, which is Consul's verdict, not a replica the operator took away.
    """
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    good = {c.id: c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)}
    update = {**UPDATE, "deadline": f"{BROKEN_DEADLINE:g}s"}

    def good_running() -> int:
        return len({c.id for c in cluster.containers(service_name)} & set(good))

    with (
        sampled(good_running) as running,
        sampled(lambda: len(cluster.passing(service_name))) as passing,
    ):
        cluster.put(service_name, REPLICAS, update=update, **BROKEN[breakage])
        # A new spec that never even ran leaves nothing to take back: the rollback may
        # go straight to rolled_back.
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") in ("rolling_back", "rolled_back"),
            timeout=BROKEN_DEADLINE + ROLLOUT_S,
            what="the rollout to roll back",
        )
        wait_until(
            lambda: (rollout(cluster, service_name) or {}).get("state") == "rolled_back",
            timeout=ROLLOUT_S,
            what="the rollback to finish",
        )
        cluster.wait_converged(service_name, REPLICAS)
    record = rollout(cluster, service_name)
    print(
        f"rollback: reason {record['reason']!r}, good replicas running min {min(running)}, "
        f"passing min {min(passing)} over {len(passing)} samples"
    )
    assert len(running) > 20 and min(running) == REPLICAS, running
    assert {c.id: c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)} == good
    assert len(cluster.passing(service_name)) == REPLICAS
    assert f"not healthy within {BROKEN_DEADLINE:g}s" in record["reason"]


def test_operator_rollback_returns_to_the_previous_spec(cluster: Cluster, service_name: str) -> None:
    """After a complete rollout to v2, `operator rollback` brings v1 back; status and wait say so."""
    fast = {**UPDATE, "min_healthy": "1s"}
    cluster.put(service_name, REPLICAS, update=fast)
    cluster.wait_converged(service_name, REPLICAS)
    v1 = {c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)}
    cluster.put(service_name, REPLICAS, image="hello:v2", update=fast)
    wait_until(
        lambda: (rollout(cluster, service_name) or {}).get("state") == "complete",
        timeout=ROLLOUT_S,
        what="v2",
    )
    done = operator(cluster, "rollback", service_name)
    assert done.returncode == 0, done.stderr
    assert f"{service_name}: rolling back to spec" in done.stdout, "it waits for the leader to take it up"
    again = operator(cluster, "rollback", service_name)
    assert again.returncode == 1, "a second rollback cannot be honoured"
    assert again.stderr.startswith(f"{service_name}: cannot roll back: already roll"), again.stderr
    wait_until(
        lambda: (rollout(cluster, service_name) or {}).get("state") == "rolled_back",
        timeout=ROLLOUT_S,
        what="the rollback",
    )
    cluster.wait_converged(service_name, REPLICAS)
    assert {c.labels["consul-operator.spec-hash"] for c in cluster.containers(service_name)} == v1
    status = operator(cluster, "status", service_name)
    assert "RolledBack: rollback requested" in status.stdout, status.stdout
    (service,) = json.loads(operator(cluster, "status", "--json", service_name).stdout)["services"]
    assert service["rollout"]["state"] == "rolled_back"
    assert service["rollout"]["to"] in v1
    waited = operator(cluster, "wait", service_name, "--timeout", "5s")
    assert waited.returncode == 1, "wait reports a rolled-back rollout as not done"
    assert operator(cluster, "rollback", "nosuchservice").returncode == 1
