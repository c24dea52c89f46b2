"""Spread comes back (issue #27) on the real staging environment, each under load through NGINX:
a host that returns (its agent restarted, or uncordoned after a drain) gets its replicas back once it
has settled, paced, with no failed request; a pinned service and ``rebalance: false`` stay put."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from consul_operator.adapters.snapshot import read_snapshot
from consul_operator.core.model import LABEL_HOST
from consul_operator.core.status import build_status
from tests.integration.test_events import wait_event
from tests.integration.test_rolling_update import sampled
from tests.support.bounds import CONVERGE_S, LOST_HOST_S, PROCESS_S, REACT_S
from tests.support.cluster import Cluster, operator
from tests.support.load import Load
from tests.support.staging import Staging, wait_until

REPLICAS = 2
UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "2s"}
SETTLE = 5.0
"""The agents' --rebalance-settle in this module (the default 30 s would add 25 s to each test)."""
# A returning host settled -> its replicas back, one per host, the marker gone: the settling
# time, a replacement's start and min_healthy (2 s), the old replica's drain (0.5 s) and stop.
SPREAD_S = SETTLE + 3 * CONVERGE_S
PLACEMENT = "operator/placement/{}"
EVERY_HOST = {"host-1": 1, "host-2": 1}


def restart_agents(cluster: Cluster, env: Staging) -> None:
    """Stop both agents (SIGTERM: their containers stay) and start them with ``env``'s flags."""
    for host in ("host-1", "host-2"):
        cluster.kill(f"agent-{host}", signal.SIGTERM)
    env.run("up")


@pytest.fixture(scope="module")
def settling(staging: Staging, cluster: Cluster) -> Iterator[Staging]:
    """Both agents with ``--rebalance-settle 5s`` for this module; the session's flags again after it."""
    agent_args = f"{dict(staging.extra_env).get('AGENT_ARGS', '')} --rebalance-settle {SETTLE:g}s".strip()
    fast = dataclasses.replace(staging, extra_env=(*staging.extra_env, ("AGENT_ARGS", agent_args)))
    restart_agents(cluster, fast)
    yield fast
    restart_agents(cluster, staging)


@pytest.fixture
def host_2(cluster: Cluster, settling: Staging) -> Iterator[str]:
    """host-2, live and uncordoned again after the test whatever happened (the other tests place there)."""
    yield "host-2"
    settling.run("up")
    done = operator(cluster, "uncordon", "host-2")
    assert done.returncode == 0, done.stderr


def placement(cluster: Cluster, service: str) -> dict[str, Any]:
    """The leader's placement record of ``service``."""
    record = cluster.kv_json(PLACEMENT.format(service))
    assert isinstance(record, dict)
    return record


def spread_back(cluster: Cluster, service: str, since: float) -> float:
    """Wait until ``service`` is back one per host, converged, its marker gone; returns when the
    leader first placed a replica on host-2 (checked against the settling time)."""
    moved: list[float] = []

    def on_host_2() -> bool:
        if placement(cluster, service)["hosts"].get("host-2"):
            moved.append(time.time())
        return bool(moved)

    wait_until(on_host_2, timeout=SPREAD_S, what=f"{service}: a replica on host-2 again", interval=0.05)
    wait_until(
        lambda: (
            cluster.per_host(service) == EVERY_HOST
            and cluster.converged(service, REPLICAS)
            and "rebalancing" not in placement(cluster, service)
        ),
        timeout=SPREAD_S,
        what=f"{service} one per host again",
    )
    return moved[0] - since


def state_of(cluster: Cluster, service: str) -> str:
    """The service's state in `operator status --json`."""
    shown = operator(cluster, "status", "--json", service)
    assert shown.returncode in (0, 1), shown.stderr
    return str(json.loads(shown.stdout)["services"][0]["state"])


def test_replicas_move_back_to_a_returning_host_without_a_failed_request(
    cluster: Cluster, settling: Staging, service_name: str, host_2: str
) -> None:
    """host-2's agent and replicas killed: they move to host-1; its agent back, they spread again
    (Rebalancing, a Rebalanced event, the metric) once it has settled, and no request fails.

    But for a request in flight on host-2's replica at the very moment it is SIGKILLed: its
    response already begun, no load balancer can finish it (CI's run 38 met one, 1 of 919,
    "IncompleteRead(0 bytes read, 30 more expected)" 5 ms into the kill). Those are counted
    and printed, not failed: they are the fault's, not the operator's.
    """
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    assert cluster.per_host(service_name) == EVERY_HOST
    wait_until(lambda: cluster.lb_serves(service_name, REPLICAS), timeout=30, what="NGINX to serve both")
    with Load(cluster.lb_address, service_name, limit=400) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=30, what="load to start")
        killing = time.time()
        cluster.kill("agent-host-2", signal.SIGKILL)
        for container in cluster.containers(service_name):
            if container.labels[LABEL_HOST] == host_2:
                container.kill()
        killed = time.time()
        wait_until(
            lambda: (
                cluster.per_host(service_name) == {"host-1": 2} and len(cluster.passing(service_name)) == 2
            ),
            timeout=LOST_HOST_S,
            what="host-2's replica to move to host-1",
        )
        wait_until(lambda: cluster.leader() == "host-1", timeout=PROCESS_S, what="host-1 to lead")
        rebalanced = cluster.metric("host-1", "operator_rebalanced_replicas_total")
        with (
            sampled(lambda: len(cluster.containers(service_name))) as running,
            sampled(lambda: len(cluster.passing(service_name))) as passing,
        ):
            started = time.time()
            # host-2's agent again; `up` returns once its /healthz answers, which may be after the move.
            upping = threading.Thread(target=settling.run, args=("up",), daemon=True)
            upping.start()
            wait_until(
                lambda: placement(cluster, service_name)["hosts"].get("host-2"),
                timeout=SPREAD_S,
                what="a replacement on host-2",
                interval=0.05,
            )
            # What `operator status` shows, read in-process: the CLI's start-up can outlast the move.
            snapshot = read_snapshot(cluster.consul, cluster.layout, cluster.staging.name, time.time())
            shown = next(s for s in build_status(snapshot).services if s.name == service_name).state
            assert shown.startswith("Rebalancing: spreading host-1=2, host-2=0 to host-1=1, host-2=1"), shown
            upping.join(timeout=180)
            took = spread_back(cluster, service_name, started)
            done = time.time()
            wait_until(lambda: load.outcomes[-1].at > done + 2, timeout=30, what="load after the move")
    # In flight while the replica was killed: started before the kill ended, ended after it began.
    cut = [f for f in load.failures if f.at - f.took <= killed and f.at >= killing]
    failed = [f for f in load.failures if f not in cut]
    print(
        f"spread back: first move {took:.1f}s after host-2's agent was started (settle {SETTLE:g}s), "
        f"{len(load.outcomes)} requests, {len(failed)} failed, {len(cut)} cut by the kill, "
        f"running {min(running)}..{max(running)}, passing >= {min(passing)} over {len(running)} samples"
    )
    assert failed == [], f"{len(failed)} of {len(load.outcomes)} failed: {failed[:3]}"
    assert took >= SETTLE, "host-2 drew nothing before it had settled"
    assert min(passing) >= REPLICAS and max(running) <= REPLICAS + 1, (passing, running)
    assert state_of(cluster, service_name) == "Converged"
    event = wait_event(cluster, service_name, "Rebalanced", r"1 replica moving host-1 -> host-2: spreading")
    assert "host-1=1, host-2=1" in event["message"]
    wait_until(
        lambda: cluster.metric("host-1", "operator_rebalanced_replicas_total") == rebalanced + 1,
        timeout=REACT_S,
        what="the leader to count the move",
    )


def test_uncordon_after_a_drain_spreads_the_replicas_back(
    cluster: Cluster, settling: Staging, service_name: str, host_2: str
) -> None:
    """`drain host-2` moves both replicas to host-1; `uncordon host-2`: one moves back once host-2 has
    settled, paced, and no request fails."""
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    wait_until(lambda: cluster.lb_serves(service_name, REPLICAS), timeout=30, what="NGINX to serve both")
    with (
        Load(cluster.lb_address, service_name, limit=400) as load,
        sampled(lambda: len(cluster.containers(service_name))) as running,
        sampled(lambda: len(cluster.passing(service_name))) as passing,
    ):
        wait_until(lambda: len(load.outcomes) > 20, timeout=30, what="load to start")
        drained = operator(cluster, "drain", host_2, "--deadline", "2m")
        assert drained.returncode == 0, drained.stderr
        waited = operator(cluster, "wait", "--drained", host_2, "--timeout", "120s")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        cluster.wait_converged(service_name, REPLICAS)
        assert cluster.per_host(service_name) == {"host-1": 2}
        started = time.time()
        uncordoned = operator(cluster, "uncordon", host_2)
        assert uncordoned.returncode == 0, uncordoned.stderr
        took = spread_back(cluster, service_name, started)
        done = time.time()
        wait_until(lambda: load.outcomes[-1].at > done + 2, timeout=30, what="load after the move")
    print(
        f"uncordon: first move {took:.1f}s after (settle {SETTLE:g}s), {len(load.outcomes)} requests, "
        f"{len(load.failures)} failed, running {min(running)}..{max(running)}, passing >= {min(passing)}"
    )
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"
    assert took >= SETTLE, "host-2 drew nothing before it had settled"
    assert min(passing) >= REPLICAS and max(running) <= REPLICAS + 1, (passing, running)


@pytest.mark.parametrize(
    "kept",
    [
        pytest.param({"placement": {"hosts": ["host-1"]}}, id="pinned-by-placement-hosts"),
        pytest.param({"placement": {"rebalance": False}}, id="rebalance-false"),
    ],
)
def test_a_service_that_must_stay_is_not_moved(
    cluster: Cluster,
    settling: Staging,
    service_name: str,
    other_service: str,
    host_2: str,
    kept: dict[str, Any],
) -> None:
    """After `drain` and `uncordon` of host-2 the other service spreads back, this one keeps its two
    containers on host-1 (pinned, or ``rebalance: false``), and none of its requests fails."""
    cluster.put(service_name, REPLICAS, update=UPDATE, **kept)
    cluster.put(other_service, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    cluster.wait_converged(other_service, REPLICAS)
    drained = operator(cluster, "drain", host_2, "--deadline", "2m")
    assert drained.returncode == 0, drained.stderr
    waited = operator(cluster, "wait", "--drained", host_2, "--timeout", "120s")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    for name in (service_name, other_service):
        cluster.wait_converged(name, REPLICAS)
        assert cluster.per_host(name) == {"host-1": 2}
    wait_until(lambda: cluster.lb_serves(service_name, REPLICAS), timeout=30, what="NGINX to serve both")
    before = {c.id for c in cluster.containers(service_name)}
    with Load(cluster.lb_address, service_name, limit=400) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=30, what="load to start")
        started = time.time()
        uncordoned = operator(cluster, "uncordon", host_2)
        assert uncordoned.returncode == 0, uncordoned.stderr
        spread_back(cluster, other_service, started)  # the spread ran
        done = time.time()
        wait_until(lambda: load.outcomes[-1].at > done + 2, timeout=30, what="load after the spread")
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"
    assert {c.id for c in cluster.containers(service_name)} == before
    record = placement(cluster, service_name)
    assert record["hosts"] == {"host-1": 2} and "rebalancing" not in record
    assert state_of(cluster, service_name) == "Converged"
