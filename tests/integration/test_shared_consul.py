"""A second operator cluster on the test environment's Consul and Docker engine; what the daemons log.

The second cluster's agents carry the same host names as the test
environment's (host-1, host-2), so that only `--cluster` tells their
containers and registrations apart, and keep their KV under other prefixes
(`--services-prefix`, `--operator-prefix`). Each of its hosts has a Consul
client agent of its own, as a real host would; its load balancer serves on
the third address. Its daemons resync every 2 s, so that a quiet window sees
many passes of every loop.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.presence import agent_registrations, hosts_of
from consul_operator.core.keys import Layout
from consul_operator.core.model import LABEL_CLUSTER, META_CLUSTER
from tests.support.cluster import Cluster, operator
from tests.support.daemons import consul_client_argv, healthz, json_lines, log_size, operator_argv, started
from tests.support.places import PLACE
from tests.support.staging import Environment, Staging, wait_until

SECOND_ADDRS = PLACE.three(54)
SECOND_LAYOUT = Layout("b/services/", "b/operator/")
RESYNC = 2.0
# The events of actions (README, Metrics: one line per action, saying what and why).
CONTAINER_ACTIONS = frozenset(
    {"started", "draining", "stopped", "removing dead container", "registering", "deregistering"}
)
# Every daemon log line carries these (structlog's JSON renderer, logs.configure).
LOG_KEYS = frozenset({"event", "level", "timestamp", "daemon"})


def flags(second: Cluster) -> list[str]:
    """The flags that point a daemon or a command at the second cluster."""
    layout = second.layout
    return [
        *("--cluster", second.staging.name),
        *("--services-prefix", layout.services_prefix, "--operator-prefix", layout.operator_prefix),
    ]


def logs(env: Environment) -> dict[str, Path]:
    """The logs of an environment's operator daemons, by process name (as staging.sh names them)."""
    return {
        name: env.run_dir / "logs" / f"{name}.log" for name in ("agent-host-1", "agent-host-2", "lb-host-3")
    }


@pytest.fixture(scope="module", autouse=True)
def env_log_marks(cluster: Cluster) -> dict[str, int]:
    """Where the test environment's daemon logs ended when this module began (staging.sh appends to them)."""
    return {name: log_size(path) for name, path in logs(cluster.staging).items()}


@pytest.fixture(scope="module")
def second(cluster: Cluster, nginx_binary: str) -> Iterator[Cluster]:
    """The second cluster, up for this module: two Consul clients, two agents, a load balancer."""
    env = Staging(f"{cluster.staging.name}-b", SECOND_ADDRS)
    shutil.rmtree(env.run_dir, ignore_errors=True)  # a previous run's data and logs
    common = flags(Cluster(env, cluster.consul, cluster.docker, SECOND_LAYOUT))
    try:
        with contextlib.ExitStack() as stack:
            for address, host in zip(SECOND_ADDRS, ("host-1", "host-2"), strict=False):
                node = f"{env.name}-{host}"
                argv = consul_client_argv(
                    node, address, cluster.staging.addresses, env.run_dir / "consul" / host
                )
                stack.enter_context(started(argv, env.run_dir / "logs" / f"consul-{host}.log"))
            for address in SECOND_ADDRS[:2]:
                client = ConsulClient(f"{address}:8500")
                wait_until(client.leader, timeout=60, what=f"the Consul client on {address} to join")
            for address, host in zip(SECOND_ADDRS, ("host-1", "host-2"), strict=False):
                argv = operator_argv(
                    "agent",
                    *("--host", host, "--advertise", address, "--consul", f"{address}:8500"),
                    *("--label", f"zone=b{host[-1]}", "--metrics", f"{address}:9810"),
                    *("--resync", f"{RESYNC}s", *common),
                )
                stack.enter_context(started(argv, logs(env)[f"agent-{host}"]))
            lb = operator_argv(
                "lb",
                *("--consul", f"{SECOND_ADDRS[0]}:8500", "--listen", f"{SECOND_ADDRS[2]}:80"),
                *("--nginx-dir", str(env.run_dir / "nginx"), "--metrics", f"{SECOND_ADDRS[2]}:9810"),
                *("--resync", f"{RESYNC}s"),
                *common,
            )
            stack.enter_context(started(lb, logs(env)["lb-host-3"]))
            for address in SECOND_ADDRS:
                wait_until(
                    lambda: healthz(f"{address}:9810") == (200, "ok\n"),  # noqa: B023
                    timeout=60,
                    what=f"the daemon on {address} healthy",
                )
            client = ConsulClient(f"{SECOND_ADDRS[0]}:8500")
            # /healthz answers before an agent registers: wait until both are live hosts, or a
            # first manifest would be placed on the one host that is (both replicas on host-2).
            wait_until(
                lambda: (
                    [
                        live
                        for live, _ in hosts_of(agent_registrations(client, env.name, SECOND_LAYOUT)).values()
                    ]
                    == [True, True]
                ),
                timeout=60,
                what="both agents of the second cluster live",
            )
            yield Cluster(env, client, cluster.docker, SECOND_LAYOUT)
    finally:
        # Its daemons are stopped (SIGTERM: containers left running; the Consul
        # clients leave the cluster with their registrations): remove the rest.
        labelled = {"label": f"{LABEL_CLUSTER}={env.name}"}
        for container in cluster.docker.containers.list(all=True, filters=labelled):
            container.remove(force=True)
        cluster.consul.kv_delete("b/", recurse=True)  # both of SECOND_LAYOUT's prefixes


@pytest.fixture
def second_service(second: Cluster) -> Iterator[str]:
    """A fresh service name in the second cluster; its manifest is deleted and drained afterwards."""
    name = "b" + uuid.uuid4().hex[:8]
    yield name
    second.delete(name)
    wait_until(lambda: not second.containers(name, all_states=True), timeout=60, what=f"{name} removed")


def loops_passed_since(second: Cluster, since: float) -> bool:
    """Every loop of the second cluster (agents: host, schedule; the LB's) passed after ``since``."""
    runs = [(h, loop) for h in ("host-1", "host-2") for loop in ("host", "schedule")] + [("host-3", "lb")]
    return all(
        second.metric(h, "operator_last_successful_sync_timestamp_seconds", loop=loop) > since
        for h, loop in runs
    )


def actions(records: list[dict[str, Any]], service: str) -> dict[str, list[str]]:
    """The containers each container action named for ``service``, by event."""
    found: dict[str, list[str]] = {}
    for r in records:
        # A deregistration names the service id, which is the container's name.
        container = str(r.get("container") or r.get("service_id") or "")
        if r.get("event") in CONTAINER_ACTIONS and container.startswith(f"{service}-"):
            found.setdefault(str(r["event"]), []).append(container)
    return found


# --- prefixes, clusters and labels -------------------------------------------------------------


def test_prefixes_keep_two_layouts_apart(
    cluster: Cluster, second: Cluster, service_name: str, second_service: str
) -> None:
    """Daemons and CLI on other KV prefixes: each runs and writes under its own prefixes only."""
    cluster.put(service_name, 2)
    second.put(second_service, 2)
    cluster.wait_converged(service_name, 2)
    second.wait_converged(second_service, 2)

    assert not second.containers(service_name), "the default prefix's manifest is not the second cluster's"
    assert not cluster.containers(second_service)
    placement = second.kv_json(SECOND_LAYOUT.placement_key(second_service))
    assert placement["hosts"] == {"host-1": 1, "host-2": 1}
    assert second.kv_json(SECOND_LAYOUT.placement_key(service_name)) is None
    assert cluster.kv_json(f"operator/placement/{second_service}") is None
    assert cluster.kv_json(f"operator/status/{second_service}/host-1") is None
    # Written by the host pass after the start, which registers the replica itself: the catalog
    # may show it passing a moment before its status record says it runs.
    wait_until(
        lambda: (second.status(second_service, "host-1") or {}).get("running") == 1,
        timeout=30,
        what="host-1's status record under the second layout",
    )
    assert cluster.kv_json(f"operator/status/{second_service}/host-1") is None

    done = operator(second, "wait", second_service, "--timeout", "60s", *flags(second))
    assert done.returncode == 0, done.stderr
    result = operator(second, "status", "--json", *flags(second))
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert [(s["name"], s["state"], s["healthy"]) for s in doc["services"]] == [
        (second_service, "Converged", 2)
    ]
    assert doc["leader"]["host"] in ("host-1", "host-2")
    # The agents' --label flags: shown per host (placement selects hosts by name, not by label).
    assert {h["name"]: (h["live"], h["labels"]) for h in doc["hosts"]} == {
        "host-1": (True, {"zone": "b1"}),
        "host-2": (True, {"zone": "b2"}),
    }
    table = operator(second, "status", second_service, *flags(second))
    assert "host-1  live   zone=b1" in table.stdout, table.stdout

    default = operator(cluster, "status", second_service, "--cluster", cluster.staging.name)
    assert default.returncode == 1
    assert f"{second_service}: no such service" in default.stderr


def test_clusters_sharing_consul_and_engine_touch_only_their_own(
    cluster: Cluster, second: Cluster, service_name: str
) -> None:
    """Same service and host names in two clusters: each scales, removes and serves only its own replicas."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    ours = {c.id for c in cluster.containers(service_name)}
    ours_registered = {i.service_id for i in cluster.passing(service_name)}
    assert ours_registered == {c.name for c in cluster.containers(service_name)}
    rejected = cluster.metric("host-3", "operator_lb_rejected_total", reason="foreign_cluster")
    try:
        second.put(service_name, 3)
        second.wait_converged(service_name, 3)
        assert {c.id for c in cluster.containers(service_name)} == ours
        wait_until(
            lambda: cluster.lb_serves(service_name, 2) and second.lb_serves(service_name, 3),
            timeout=60,
            what="each load balancer serving exactly its own cluster's replicas",
        )
        assert cluster.metric("host-3", "operator_lb_rejected_total", reason="foreign_cluster") > rejected

        second.put(service_name, 1)
        second.wait_converged(service_name, 1)
        second.delete(service_name)
        wait_until(
            lambda: (
                not second.containers(service_name, all_states=True)
                and not [
                    i
                    for i in second.registrations(service_name)
                    if i.meta[META_CLUSTER] == second.staging.name
                ]
            ),
            timeout=60,
            what="the second cluster's replicas gone",
        )
        assert {c.id for c in cluster.containers(service_name)} == ours
        assert {i.service_id for i in cluster.passing(service_name)} == ours_registered
        assert cluster.converged(service_name, 2)
    finally:
        second.delete(service_name)
        wait_until(lambda: not second.containers(service_name, all_states=True), timeout=60, what="cleanup")


# --- logs -------------------------------------------------------------------------------------


def test_a_scale_up_of_n_writes_n_action_lines(second: Cluster, second_service: str) -> None:
    """Scaling 0 -> 3 logs exactly 3 `started` lines (one per container, with why) and no other action."""
    paths = logs(second.staging)
    marks = {name: log_size(path) for name, path in paths.items()}
    second.put(second_service, 3)
    second.wait_converged(second_service, 3)
    wait_until(lambda: second.lb_serves(second_service, 3), timeout=60, what="the LB serving 3")
    # Lines written by the passes that converged it are in: every loop passed once more.
    after = time.time()
    wait_until(lambda: loops_passed_since(second, after), timeout=30, what="a pass of every loop")

    agents = [r for name in ("agent-host-1", "agent-host-2") for r in json_lines(paths[name], marks[name])]
    found = actions(agents, second_service)
    assert sorted(found) == ["started"], found
    assert sorted(found["started"]) == sorted(c.name for c in second.containers(second_service))
    started_lines = [r for r in agents if r["event"] == "started" and r.get("service") == second_service]
    assert all(r["reason"] == "missing replica" for r in started_lines)
    placed = [r for r in agents if r["event"] == "placements written" and second_service in r["changed"]]
    assert len(placed) == 1, placed
    reloads = [
        r for r in json_lines(paths["lb-host-3"], marks["lb-host-3"]) if r["event"] == "nginx reloaded"
    ]
    assert reloads and reloads[-1]["servers"][second_service] == 3

    marks = {name: log_size(path) for name, path in paths.items()}
    keep = {c.name for c in second.containers(second_service)}
    second.put(second_service, 1)
    second.wait_converged(second_service, 1)
    gone = sorted(keep - {c.name for c in second.containers(second_service)})
    after = time.time()
    wait_until(lambda: loops_passed_since(second, after), timeout=30, what="a pass of every loop")
    agents = [r for name in ("agent-host-1", "agent-host-2") for r in json_lines(paths[name], marks[name])]
    found = actions(agents, second_service)
    assert {event: sorted(names) for event, names in found.items()} == {"draining": gone, "stopped": gone}


def test_idle_daemons_log_nothing(second: Cluster, second_service: str) -> None:
    """Once converged, the daemons write no line over three resync passes of every loop."""
    second.put(second_service, 2)
    second.wait_converged(second_service, 2)
    wait_until(lambda: second.lb_serves(second_service, 2), timeout=60, what="the LB serving 2")
    done = operator(second, "wait", second_service, "--timeout", "60s", *flags(second))
    assert done.returncode == 0, done.stderr
    # A service an earlier test deleted takes its event records with it about 10 s later (the
    # leader's clean-up, logged): the cluster is idle only once that is done too.
    events = second.layout.events_prefix
    wait_until(
        lambda: set(second.consul.kv_keys(events, separator="/").value) <= {f"{events}{second_service}/"},
        timeout=60,
        what="deleted services' event records removed",
    )
    after = time.time()
    wait_until(lambda: loops_passed_since(second, after), timeout=30, what="a pass of every loop")

    paths = logs(second.staging)
    marks = {name: log_size(path) for name, path in paths.items()}
    start = time.time()
    # The window: until every loop has passed after three resync periods (3 passes or more each).
    wait_until(
        lambda: loops_passed_since(second, start + 3 * RESYNC),
        timeout=60,
        what="three resync passes of every loop",
    )
    written = {name: json_lines(path, marks[name]) for name, path in paths.items()}
    assert written == {name: [] for name in paths}


def test_every_daemon_log_line_is_json_naming_daemon_and_level(
    cluster: Cluster, second: Cluster, env_log_marks: dict[str, int]
) -> None:
    """Every line the agents and load balancers of both clusters wrote is JSON with the documented keys."""
    written = {
        (cluster.staging.name, name): json_lines(path, env_log_marks[name])
        for name, path in logs(cluster.staging).items()
    }
    written |= {(second.staging.name, name): json_lines(path) for name, path in logs(second.staging).items()}
    for (env, name), records in written.items():
        for record in records:
            assert record.keys() >= LOG_KEYS, (env, name, record)
            if name.startswith("agent-"):
                assert (record["daemon"], record["host"]) == ("agent", name.removeprefix("agent-")), record
            else:
                assert record["daemon"] == "lb", record
            assert record["level"] in ("debug", "info", "warning", "error", "critical"), record
    assert all(written[(second.staging.name, name)] for name in logs(second.staging)), "every daemon wrote"
