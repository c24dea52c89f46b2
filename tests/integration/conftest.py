"""Fixtures of the integration tests: real Consul, real Docker, real NGINX.

A missing program or engine fails the run; nothing here ever skips.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.docker_client import connect, ping
from tests.support.bounds import PROCESS_S, REMOVAL_S
from tests.support.cluster import Cluster
from tests.support.places import PLACE
from tests.support.staging import (
    HOSTS_APART,
    SLOW_RESYNC,
    Staging,
    pid_alive,
    tool,
    wait_until,
    write_registry_auth,
)

# The tests' own environment, apart from the developer's `make up` on 127.0.0.11-13:
# OPERATOR_TEST_ADDRS and OPERATOR_TEST_NAME move it (two checkouts running their tests
# at once), and each pytest-xdist worker has a block and a name of its own
# (tests/support/places.py), so that the session fixtures below are per worker.
TEST_ADDRESSES = PLACE.addresses
# Also its containers' cluster label: two environments on one Docker engine need different
# names, or each one's agents would take the other's containers for their own.
TEST_NAME = PLACE.name


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    """A Docker engine that answers, with the test image built."""
    client = connect()
    ping(client)  # raises DockerUnavailable: a failure, never a skip
    client.images.get("hello:local")
    return client


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """NGINX is installed (the load balancer's tests need it)."""
    path = tool("nginx")
    subprocess.run([path, "-v"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def staging(docker_engine: docker.DockerClient, nginx_binary: str) -> Iterator[Staging]:
    """The tests' staging environment, up for the whole session."""
    tool("consul")
    env = Staging(TEST_NAME, TEST_ADDRESSES, extra_env=SLOW_RESYNC + HOSTS_APART)
    write_registry_auth()  # host-2's --registry-auth (tests/integration/test_registry.py)
    env.run("down")  # a previous run that crashed may have left it behind
    env.run("up")
    yield env
    env.run("down")


@pytest.fixture
def consul(staging: Staging) -> ConsulClient:
    """A client of host-1's Consul agent."""
    return ConsulClient(staging.consul_addr("host-1"))


@pytest.fixture(scope="session")
def cluster(staging: Staging, docker_engine: docker.DockerClient) -> Cluster:
    """The tests' staging environment with its clients."""
    return Cluster(staging, ConsulClient(staging.consul_addr("host-1")), docker_engine)


@pytest.fixture
def service_name(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    """A fresh service name for one test; its manifest is deleted and drained afterwards."""
    name = "t" + uuid.uuid4().hex[:8]
    yield name
    cluster.delete(name)
    wait_until(
        lambda: not cluster.containers(name, all_states=True), timeout=REMOVAL_S, what=f"{name} removed"
    )


@pytest.fixture
def other_service(cluster: Cluster) -> Iterator[str]:
    """A second fresh service name for one test; deleted and drained afterwards like `service_name`."""
    name = "u" + uuid.uuid4().hex[:8]
    yield name
    cluster.delete(name)
    wait_until(
        lambda: not cluster.containers(name, all_states=True), timeout=REMOVAL_S, what=f"{name} removed"
    )


@pytest.fixture
def system_nginx(tmp_path: Path, nginx_binary: str) -> Iterator[tuple[Path, list[str]]]:
    """An NGINX "of the system": a main config including conf.d/*.conf; (prefix, its command line)."""
    prefix = tmp_path / "sys"
    for sub in ("conf.d", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True)
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/tmp/cb; proxy_temp_path {prefix}/tmp/p;\n"
        f"fastcgi_temp_path {prefix}/tmp/f; uwsgi_temp_path {prefix}/tmp/u; scgi_temp_path {prefix}/tmp/s;\n"
        f"include {prefix}/conf.d/*.conf; }}\n"
    )
    command = [
        nginx_binary,
        "-p",
        str(prefix),
        "-e",
        str(prefix / "logs" / "error.log"),
        "-c",
        str(prefix / "nginx.conf"),
    ]
    subprocess.run(command, check=True, timeout=30)  # daemonises; writes nginx.pid
    pid_file = prefix / "nginx.pid"
    wait_until(pid_file.exists, timeout=PROCESS_S, what="the system NGINX to start")
    pid = int(pid_file.read_text())
    try:
        yield prefix, command
    finally:
        # By its pid: `nginx -s quit` reads the config first, and gives up if a test left it broken.
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: not pid_alive(pid), timeout=PROCESS_S, what="the system NGINX to stop")
