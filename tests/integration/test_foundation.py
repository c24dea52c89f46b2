"""The foundation on real services: the Consul cluster, our Consul wrapper, Docker, make up/down."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

import docker
import pytest

from consul_operator.adapters.consul_client import BlockingQuery, ConsulClient
from consul_operator.core.errors import ConsulUnavailable
from tests.support.bounds import CONVERGE_S
from tests.support.places import PLACE
from tests.support.staging import HOSTS, PROCESSES, Staging, pid_alive, wait_until


def test_cluster_has_three_servers_and_one_leader(staging: Staging) -> None:
    """`up` returns with three Consul servers that agree on one Raft leader."""
    leaders = {ConsulClient(staging.consul_addr(h)).leader() for h in HOSTS}
    assert len(leaders) == 1
    (leader,) = leaders
    assert leader.rsplit(":", 1)[0] in staging.addresses


def test_kv_put_and_get_through_wrapper(consul: ConsulClient, staging: Staging) -> None:
    """A value written on host-1's agent is read back, byte for byte, on host-3's."""
    key = f"test/kv/{uuid.uuid4().hex}"
    assert consul.kv_put(key, b"hello \xf0\x9f\x91\x8b")
    entry = ConsulClient(staging.consul_addr("host-3")).kv_get(key, consistent=True).value
    assert entry is not None
    assert entry.value == "hello 👋".encode()
    consul.kv_delete(key)
    assert consul.kv_get(key).value is None


def test_blocking_query_wakes_on_change(consul: ConsulClient) -> None:
    """A blocking query returns soon after the key changes, long before its wait runs out."""
    key = f"test/block/{uuid.uuid4().hex}"
    consul.kv_put(key, b"one")
    query = BlockingQuery(lambda index, wait: consul.kv_get(key, index=index, wait=wait), wait=30)
    changed, first = query.next()
    assert changed and first is not None and first.value == b"one"

    threading.Timer(0.5, lambda: consul.kv_put(key, b"two")).start()
    started = time.monotonic()
    changed, second = query.next()
    elapsed = time.monotonic() - started
    assert changed and second is not None and second.value == b"two"
    assert elapsed < 15, f"blocking query took {elapsed:.1f}s to see a change"
    consul.kv_delete(key)


def test_blocking_query_times_out_cleanly(consul: ConsulClient) -> None:
    """With nothing changing, a blocking query returns after its wait with changed=False."""
    key = f"test/idle/{uuid.uuid4().hex}"
    consul.kv_put(key, b"still")
    query = BlockingQuery(lambda index, wait: consul.kv_get(key, index=index, wait=wait), wait=1)
    query.next()
    started = time.monotonic()
    changed, value = query.next()
    elapsed = time.monotonic() - started
    assert not changed
    assert value is not None and value.value == b"still"
    assert 0.5 < elapsed < 10
    consul.kv_delete(key)


def test_unreachable_consul_raises_our_error_fast() -> None:
    """A Consul address where nothing listens gives ConsulUnavailable, not a hang."""
    client = ConsulClient(f"{PLACE.at(29)}:8500", timeout=2)
    started = time.monotonic()
    with pytest.raises(ConsulUnavailable):
        client.kv_get("anything")
    assert time.monotonic() - started < 10


def test_hello_image_answers_with_its_hostname(docker_engine: docker.DockerClient, staging: Staging) -> None:
    """hello:local answers 'Hello World from <hostname>' on a port published on host-1's address."""
    address = staging.addresses[0]
    container = docker_engine.containers.run("hello:local", detach=True, ports={"5000/tcp": (address, None)})
    try:
        container.reload()
        binding = container.ports["5000/tcp"][0]
        assert binding["HostIp"] == address
        url = f"http://{address}:{binding['HostPort']}"

        def answer() -> str:
            with urllib.request.urlopen(f"{url}/", timeout=2) as response:
                return str(response.read().decode())

        body = wait_until(answer, timeout=CONVERGE_S, what="hello:local to answer")
        assert body == f"Hello World from {container.id[:12]}\n"
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            assert response.status == 200
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("round_", [1, 2], ids=["first-round", "second-round"])
def test_up_down_leaves_no_process_and_no_labelled_container(
    docker_engine: docker.DockerClient, round_: int
) -> None:
    """`up` twice is harmless; `down` stops its processes and removes only its labelled containers."""
    env = Staging(f"{PLACE.name}-updown", PLACE.three(31))
    env.run("down")
    env.run("up")
    first_pids = env.pids()
    env.run("up")
    assert env.pids() == first_pids, "a second `up` must not start anything"
    assert set(first_pids) == PROCESSES
    assert all(pid_alive(p) for p in first_pids.values())

    ours = docker_engine.containers.run(
        "hello:local", detach=True, labels={"consul-operator.cluster": env.name}
    )
    foreign = docker_engine.containers.run("hello:local", detach=True)
    other_env = docker_engine.containers.run(
        "hello:local", detach=True, labels={"consul-operator.cluster": "someone-else"}
    )
    try:
        env.run("down")
        assert not any(pid_alive(p) for p in first_pids.values())
        assert env.pids() == {}
        # ignore_removed: other environments' containers (other workers', other checkouts') come
        # and go between docker-py's listing and its inspect of each.
        ids = {c.id for c in docker_engine.containers.list(all=True, ignore_removed=True)}
        assert ours.id not in ids
        assert foreign.id in ids and other_env.id in ids
    finally:
        for container in (foreign, other_env):
            container.remove(force=True)
