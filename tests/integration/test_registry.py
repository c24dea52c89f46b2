"""Private registries against a real one: Debian's docker-registry with htpasswd auth and TLS (a
self-signed certificate the engine trusts through certs.d), started by the test. Credentials come
from a manifest's image_pull_secret (KV ``secrets/<service>/<name>``) or host-2's ``--registry-auth``
file; a wrong password is an ``ImagePullBackOff`` with the registry's reason, backed off per image,
while the host goes on, and the password shows nowhere."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from consul_operator.core.model import LABEL_HOST
from consul_operator.core.registry import PULL_BACKOFF
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster, operator
from tests.support.registry import Registry, forget, private_registry, push
from tests.support.staging import wait_until, write_registry_auth

SECRET = "regcred"
REPOSITORY = "team/hello"


@pytest.fixture(scope="module")
def registry(cluster: Cluster) -> Iterator[Registry]:
    """A private registry for this module; the images the agents pulled from it are untagged afterwards."""
    with private_registry() as running:
        yield running
        tags = [
            t for image in cluster.engine.images.list() for t in image.tags if t.startswith(running.address)
        ]
        forget(cluster.engine, *tags)


@pytest.fixture
def pushed(cluster: Cluster, registry: Registry) -> str:
    """hello:local pushed to the registry under a tag of its own (not on the engine: a start must pull it)."""
    return push(cluster.engine, registry, "hello:local", REPOSITORY, uuid.uuid4().hex[:12])


def put_secret(cluster: Cluster, service: str, username: str, password: str) -> str:
    """Write the pull secret of ``service``; its key."""
    key = cluster.layout.secret_key(service, SECRET)
    cluster.consul.kv_put(key, json.dumps({"username": username, "password": password}))
    return key


def test_the_right_credentials_from_a_pull_secret_pull_and_run_the_image(
    cluster: Cluster, service_name: str, registry: Registry, pushed: str
) -> None:
    """A manifest with image_pull_secret: the agent reads the secret from KV, pulls the image over TLS
    with it, and the replica runs and passes."""
    key = put_secret(cluster, service_name, registry.username, registry.password)
    try:
        cluster.put(service_name, 1, image=pushed, image_pull_secret=SECRET, placement={"hosts": ["host-1"]})
        cluster.wait_converged(service_name, 1, timeout=CONVERGE_S + REACT_S)
        (container,) = cluster.containers(service_name)
        assert pushed in container.image.tags and container.labels[LABEL_HOST] == "host-1"
    finally:
        cluster.consul.kv_delete(key)


def test_the_agents_registry_auth_file_pulls_the_image(
    cluster: Cluster, service_name: str, registry: Registry, pushed: str
) -> None:
    """host-2's --registry-auth file, rewritten while the agent runs, pulls an image of that registry
    for a manifest that names no secret."""
    pair = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    write_registry_auth({"auths": {f"https://{registry.address}": {"auth": pair}}})
    try:
        cluster.put(service_name, 1, image=pushed, placement={"hosts": ["host-2"]})
        cluster.wait_converged(service_name, 1, timeout=CONVERGE_S + REACT_S)
        (container,) = cluster.containers(service_name)
        assert pushed in container.image.tags and container.labels[LABEL_HOST] == "host-2"
    finally:
        write_registry_auth()


def _page(cluster: Cluster, host: str) -> str:
    """The status page of ``host``'s daemon."""
    address = cluster.staging.addresses[("host-1", "host-2", "host-3").index(host)]
    with urllib.request.urlopen(f"http://{address}:9810/", timeout=10) as answer:
        return str(answer.read().decode())


def test_a_wrong_password_backs_the_image_off_with_the_reason_and_the_host_goes_on(
    cluster: Cluster, service_name: str, other_service: str, registry: Registry, pushed: str
) -> None:
    """A pull secret with a wrong (planted) password: the service's status on host-1 says
    ImagePullBackOff with the registry's reason (unauthorized), its pulls back off (failures in a row
    grow, pulls stay as few as the back-off allows), another service on host-1 starts meanwhile, and
    the password is in no log, event, status record, describe, status page, KV record or process."""
    planted = "Planted-" + secrets.token_hex(10)
    key = put_secret(cluster, service_name, registry.username, planted)
    before = cluster.metric("host-1", "operator_image_pulls_total", result="unauthorized")
    try:
        cluster.put(service_name, 1, image=pushed, image_pull_secret=SECRET, placement={"hosts": ["host-1"]})
        wait_until(
            lambda: PULL_BACKOFF in cluster.status_error(service_name, "host-1"),
            timeout=CONVERGE_S,
            what="ImagePullBackOff in host-1's status",
        )
        error = cluster.status_error(service_name, "host-1")
        assert "(unauthorized)" in error and pushed in error and "next try in" in error, error

        cluster.put(other_service, 1, placement={"hosts": ["host-1"]})
        cluster.wait_converged(other_service, 1)

        # Failures in a row grow as the back-off allows (1 + 2 s between the first three pulls).
        wait_until(
            lambda: (
                cluster.metric("host-1", "operator_consecutive_failures", service=service_name, host="host-1")
                >= 3
            ),
            timeout=CONVERGE_S,
            what="three failed pulls in a row",
        )
        failures = cluster.metric(
            "host-1", "operator_consecutive_failures", service=service_name, host="host-1"
        )
        pulls = cluster.metric("host-1", "operator_image_pulls_total", result="unauthorized") - before
        assert failures <= pulls <= failures + 1, f"{pulls} pulls for {failures} failures: not backed off"
        assert cluster.containers(service_name, all_states=True) == []

        status = operator(cluster, "status", "--json")
        described = operator(cluster, "describe", service_name)
        events = operator(cluster, "events", service_name, "--json")
        (shown,) = [s for s in json.loads(status.stdout)["services"] if s["name"] == service_name]
        assert shown["state"] == "Degraded", shown
        assert any(
            e.startswith(f"host-1: {PULL_BACKOFF}: ") and "(unauthorized)" in e for e in shown["errors"]
        ), shown
        assert PULL_BACKOFF in described.stdout and "unauthorized" in described.stdout, described.stdout
        assert "unauthorized" in events.stdout, events.stdout
        logs = "".join(
            p.read_text(errors="replace") for p in (cluster.staging.run_dir / "logs").glob("*.log")
        )
        operator_kv = [
            e.value.decode(errors="replace")
            for e in cluster.consul.kv_list(cluster.layout.operator_prefix).value
        ]
        processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        seen = {
            "status": status.stdout + status.stderr,
            "describe": described.stdout + described.stderr,
            "events": events.stdout + events.stderr,
            "logs": logs,
            "status page": _page(cluster, "host-1") + _page(cluster, "host-2"),
            "operator/ in KV": "\n".join(operator_kv),
            "processes": processes,
            "catalog": repr(cluster.registrations(service_name)),
        }
        assert "unauthorized" in seen["operator/ in KV"]  # the reason is there...
        leaked = [where for where, text in seen.items() if planted in text]
        assert leaked == [], f"the planted password shows in {leaked}"  # ...the password is not
    finally:
        cluster.consul.kv_delete(key)
