"""The host agent's actions on the real engine: fair workers, bounded pulls, refused deregistrations."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest

from consul_operator.adapters.actuators.catalog import CatalogActuator
from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.adapters.actuators.probe import MAX_BUDGET
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import ImagePullFailed
from consul_operator.core.host_pass import HostMemory, HostSettings, HostState, decide_host
from consul_operator.core.keys import Layout
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SERVICE, Now, Outcome, StartContainer
from consul_operator.daemons.executor import MAX_PARALLEL_ACTIONS, Executor
from tests.support.bounds import CONVERGE_BURST_S, CONVERGE_S, REACT_S, REMOVAL_S, REPLACEMENT_S
from tests.support.cluster import Cluster
from tests.support.daemons import consul_client_argv, healthz, json_lines, operator_argv, started
from tests.support.hanging import hanging_server
from tests.support.places import PLACE
from tests.support.staging import Staging, wait_until


@pytest.fixture
def own_cluster_label() -> str:
    """A cluster label no agent manages: containers of this test only."""
    return f"actions-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def created(docker_engine: docker.DockerClient) -> Iterator[list[Any]]:
    """Containers a test creates; removed by id afterwards."""
    containers: list[Any] = []
    yield containers
    for container in containers:
        container.remove(force=True)


def test_event_burst_starts_no_threads(
    docker_engine: docker.DockerClient, own_cluster_label: str, created: list[Any]
) -> None:
    """Ten containers dying at once: every event wakes the loop, and no thread is started per event."""
    actuator = DockerActuator(docker_engine, cluster=own_cluster_label, host="host-x", advertise="127.0.0.1")
    calls: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=actuator.watch_events, args=(lambda: calls.append(time.monotonic()), stop), daemon=True
    )
    peak = threading.active_count()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, threading.active_count())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    baseline = threading.active_count()
    labels = {LABEL_CLUSTER: own_cluster_label, LABEL_HOST: "host-x", LABEL_SERVICE: "burst"}
    watcher.start()
    try:
        wait_until(lambda: calls, timeout=REACT_S, what="the event stream to connect")
        for _ in range(10):
            created.append(docker_engine.containers.run("hello:local", ["false"], labels=labels, detach=True))
        # Each die wakes the loop and is looked at again up to 1 s later.
        exited = {"label": f"{LABEL_CLUSTER}={own_cluster_label}", "status": "exited"}
        wait_until(
            lambda: (
                len(docker_engine.containers.list(all=True, filters=exited)) == 10
                and len(calls) >= 11
                and time.monotonic() - calls[-1] >= 1.5
            ),
            timeout=CONVERGE_S,
            what="every event and its re-looks",
        )
    finally:
        stop.set()
        # One more event lets the watcher, blocked reading the stream, see the stop.
        created.append(docker_engine.containers.run("hello:local", ["false"], labels=labels, detach=True))
        watcher.join(timeout=30)
        sampler.join(timeout=5)
    # The watcher and its one timer thread; Timer threads per event would add 3 per container.
    assert peak <= baseline + 2, f"{peak - baseline} threads beside the sampler for a burst of 10 events"


PULL_TIMEOUT = 2.0  # seconds: the start's image pull gives up after this


@pytest.fixture
def hanging_registry() -> Iterator[str]:
    """A registry on 127.0.0.1 that accepts connections and never answers: a pull that hangs."""
    with hanging_server("hanging-registry") as server:
        yield server.address


def test_slow_pull_fails_the_start_in_time_and_backs_off(
    docker_engine: docker.DockerClient, own_cluster_label: str, hanging_registry: str
) -> None:
    """A pull from a registry that never answers fails the start in its time bound; its image backs off."""
    actuator = DockerActuator(
        docker_engine,
        cluster=own_cluster_label,
        host="host-x",
        advertise="127.0.0.1",
        pull_timeout=PULL_TIMEOUT,
    )
    # Never called: the start fails before anything is registered.
    catalog = CatalogActuator(
        ConsulClient("127.0.0.1:9"), cluster=own_cluster_label, host="host-x", advertise="127.0.0.1"
    )
    manifest = Manifest(name="slowpull", image=f"{hanging_registry}/slow/image:v1", replicas=1)
    started = time.monotonic()
    with pytest.raises(ImagePullFailed, match="took longer than 2s"):
        actuator.start(manifest)
    assert time.monotonic() - started < 2.0 + 10, "the pull timeout was not kept"

    executor = Executor(actuator, catalog, on_done=lambda: None)
    outcomes: list[Outcome] = []

    def ended() -> bool:
        with executor.lock:
            outcomes.extend(executor.take_outcomes())
        return bool(outcomes)

    try:
        executor.submit(StartContainer(manifest))
        wait_until(ended, timeout=PULL_TIMEOUT + REACT_S, what="the failed start's outcome")
    finally:
        executor.shutdown(wait=False)
    # The next pass reads the outcome and backs the image off (ImagePullBackOff), not the service.
    state = HostState({"slowpull": manifest}, {}, {}, outcomes=tuple(outcomes))
    now = Now(time.monotonic(), time.time())
    memory = decide_host(state, HostMemory(), now, HostSettings("host-x")).memory
    backoff = memory.pull_backoffs[manifest.image]
    assert backoff.failures == 1 and f"took longer than {PULL_TIMEOUT:g}s" in backoff.last_error
    assert "(timeout)" in backoff.last_error and memory.backoffs == {}
    assert (
        docker_engine.containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={own_cluster_label}"})
        == []
    )


DRAIN = 30.0  # seconds: far longer than a replacement takes (bounds: REPLACEMENT_S)


def test_long_drain_does_not_delay_another_services_replacement(cluster: Cluster, service_name: str) -> None:
    """A service draining more replicas than workers leaves room to replace another's killed replica."""
    other = "t" + uuid.uuid4().hex[:8]
    host_1 = {"hosts": ["host-1"]}
    try:
        many = 2 * MAX_PARALLEL_ACTIONS
        cluster.put(service_name, many, placement=host_1, drain=f"{DRAIN:g}s")
        cluster.put(other, 1, placement=host_1)
        cluster.wait_converged(service_name, many, timeout=CONVERGE_BURST_S)
        cluster.wait_converged(other, 1)
        victim = cluster.containers(other)[0]

        cluster.put(service_name, 0, placement=host_1, drain=f"{DRAIN:g}s")
        wait_until(
            lambda: len(cluster.registrations(service_name)) < many,
            timeout=REACT_S,
            what="the drains to begin",
        )
        scaled_down = time.monotonic()
        victim.kill()
        wait_until(
            lambda: (
                cluster.converged(other, 1) and victim.name not in {c.name for c in cluster.containers(other)}
            ),
            timeout=REPLACEMENT_S,
            what="the killed replica replaced",
        )
        replaced_after = time.monotonic() - scaled_down
        assert replaced_after < DRAIN / 2, f"replaced after {replaced_after:.1f}s: it waited for the drains"
        assert len(cluster.containers(service_name)) == many, "the drains ended early"
    finally:
        cluster.delete(other)
        cluster.delete(service_name)
        wait_until(
            lambda: not cluster.containers(other, all_states=True), timeout=REMOVAL_S, what=f"{other} removed"
        )
        wait_until(
            lambda: not cluster.containers(service_name, all_states=True),
            timeout=DRAIN + REMOVAL_S,
            what=f"{service_name}'s drains to end",
        )


# An address of the run's block of its own: its Consul client and agent live only during the test.
REFUSING_ADDR = PLACE.at(26)
# A real Consul that refuses deregistrations (403), and only those: its HTTP API's own blocklist.
BLOCK_DEREGISTER = 'http_config { block_endpoints = ["/v1/agent/service/deregister"] }'


def test_a_refused_deregistration_stops_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Consul refuses a drain's deregistration: the container runs on, registered, until Consul accepts it."""
    env = Staging(f"{cluster.staging.name}-d", (REFUSING_ADDR,) * 3)
    host = Cluster(
        env, ConsulClient(f"{REFUSING_ADDR}:8500"), cluster.docker, Layout("d/services/", "d/operator/")
    )
    service = "d" + uuid.uuid4().hex[:8]
    consul_argv = partial(
        consul_client_argv,
        f"{env.name}-host-1",
        REFUSING_ADDR,
        cluster.staging.addresses,
        tmp_path / "consul",
    )
    agent_log = tmp_path / "agent.log"
    agent_argv = operator_argv(
        "agent",
        *("--host", "host-1", "--advertise", REFUSING_ADDR, "--consul", f"{REFUSING_ADDR}:8500"),
        *("--cluster", env.name, "--metrics", f"{REFUSING_ADDR}:9810"),
        *("--services-prefix", host.layout.services_prefix, "--operator-prefix", host.layout.operator_prefix),
    )
    refused = partial(
        host.metric, "host-1", "operator_container_actions_total", action="drain", result="error"
    )
    try:
        with started(consul_argv(BLOCK_DEREGISTER), tmp_path / "consul.log") as refusing:
            wait_until(host.consul.leader, timeout=60, what="the Consul client to join")
            with started(agent_argv, agent_log) as agent:
                wait_until(lambda: healthz(f"{REFUSING_ADDR}:9810")[0] == 200, timeout=60, what="the agent")
                host.put(service, 2)
                host.wait_converged(service, 2)
                both = {c.id for c in host.containers(service)}

                host.put(service, 1)
                running: list[int] = []  # containers seen at each look while Consul refuses

                def refused_twice() -> bool:
                    running.append(len(host.containers(service)))
                    return refused() >= 2

                wait_until(refused_twice, timeout=60, what="two refused deregistrations")
                assert set(running) == {2}, running
                assert {c.id for c in host.containers(service)} == both
                assert len(host.passing(service)) == 2, "still registered and passing"
                failed = [r for r in json_lines(agent_log) if r["event"] == "action failed"]
                assert failed and all(r["action"] == "drain" for r in failed), failed
                assert "permission denied" in failed[0]["error"], failed[0]

                # The same Consul without the block: the next try deregisters, then stops.
                refusing.send_signal(signal.SIGTERM)
                refusing.wait(timeout=30)
                with started(consul_argv(), tmp_path / "consul.log"):
                    host.wait_converged(service, 1, timeout=120)
                    assert {c.id for c in host.containers(service)} < both
                    agent.send_signal(signal.SIGTERM)
                    agent.wait(timeout=30)
    finally:
        for container in host.containers(service, all_states=True):
            container.remove(force=True)
        cluster.consul.kv_delete("d/", recurse=True)


def check_of(cluster: Cluster, service: str) -> list[tuple[str, str]]:
    """(status, output) of every health check of ``service``'s instances, as Consul holds them."""
    _, checks = cluster.consul._client.health.checks(service)
    return [(str(c["Status"]), str(c.get("Output") or "")) for c in checks]


def test_a_started_replica_passes_before_consuls_first_run_of_its_check(
    cluster: Cluster, service_name: str
) -> None:
    """A replica whose check the agent ran and saw pass is registered passing, before Consul ever ran it."""
    # An hour's interval: Consul runs the check first at a random point within it,
    # so a passing check without output can only be the agent's initial status.
    cluster.put(service_name, 1, health={"http": "/health", "interval": "1h", "timeout": "5s"})
    wait_until(lambda: check_of(cluster, service_name), timeout=CONVERGE_S, what="the registration")
    assert check_of(cluster, service_name) == [("passing", "")]
    cluster.wait_converged(service_name, 1)


def test_a_replica_whose_check_fails_is_registered_critical(cluster: Cluster, service_name: str) -> None:
    """The agent claims nothing it has not seen: a check that does not pass starts critical."""
    cluster.put(service_name, 1, health={"http": "/no-such-page", "interval": "1h", "timeout": "5s"})
    # The agent tries its check for at most MAX_BUDGET before registering.
    wait_until(
        lambda: check_of(cluster, service_name), timeout=CONVERGE_S + MAX_BUDGET, what="the registration"
    )
    assert [status for status, _ in check_of(cluster, service_name)] == ["critical"]
    assert len(cluster.containers(service_name)) == 1
