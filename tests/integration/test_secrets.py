"""Secrets against real Docker and Consul: values in KV under secrets/<service>/<name>, delivered as
read-only files on a tmpfs (or env when asked), a changed value rolls the service, a missing one holds
that service only, and a planted value shows up nowhere else."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from typing import Any

from consul_operator.core.model import LABEL_SPEC
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster, operator
from tests.support.execs import output_of
from tests.support.staging import wait_until


def _only(cluster: Cluster, service: str) -> Any:
    (container,) = cluster.containers(service)
    return container


def _sh(container: Any, script: str) -> str:
    return output_of(container, "sh", "-c", script)


def _put_secret(cluster: Cluster, service: str, name: str, value: str) -> None:
    assert cluster.consul.kv_put(cluster.layout.secret_key(service, name), value.encode())


def _everything_but_the_secret(cluster: Cluster, service: str) -> dict[str, str]:
    """What a user or an onlooker can see of the cluster, by where: every place the value must not be."""
    seen: dict[str, str] = {}
    for entry in cluster.consul.kv_list("operator/").value:  # status records, events, revisions, ...
        seen[f"kv {entry.key}"] = entry.value.decode("utf-8", "replace")
    for command in (
        ("status", "--json"),
        ("status",),
        ("describe", service, "--json"),
        ("describe", service),
    ):
        done = operator(cluster, *command)
        seen[" ".join(command)] = done.stdout + done.stderr
    with urllib.request.urlopen(f"http://{cluster.staging.addresses[0]}:9810/", timeout=30) as page:
        seen["status page"] = page.read().decode()
    for log in (cluster.staging.run_dir / "logs").glob("*.log"):
        seen[f"log {log.name}"] = log.read_text(errors="replace")
    seen["ps"] = subprocess.run(
        ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
    ).stdout
    for address in cluster.staging.addresses[:2]:
        for path in ("/v1/agent/services", f"/v1/health/service/{service}", f"/v1/catalog/service/{service}"):
            with urllib.request.urlopen(f"http://{address}:8500{path}", timeout=30) as answer:
                seen[f"consul {address}{path}"] = answer.read().decode()
    for container in cluster.containers(service):
        seen[f"docker inspect {container.name}"] = json.dumps(container.attrs)
    return seen


def test_a_secret_is_a_read_only_file_on_a_tmpfs_and_shown_nowhere_else(
    cluster: Cluster, service_name: str
) -> None:
    """``secrets: [{name: redis_password}, {name: api_key, env: API_KEY}]``: the replica reads
    /run/secrets/redis_password (mode 0400, a read-only tmpfs mount) and API_KEY; the file's planted
    value is in no status record, event, describe, status page, log, command line, Consul
    registration or ``docker inspect``."""
    planted, key = f"planted-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    _put_secret(cluster, service_name, "redis_password", planted)
    _put_secret(cluster, service_name, "api_key", key)
    cluster.put(service_name, 1, secrets=[{"name": "redis_password"}, {"name": "api_key", "env": "API_KEY"}])
    cluster.wait_converged(service_name, 1)
    replica = _only(cluster, service_name)

    assert _sh(replica, "cat /run/secrets/redis_password") == planted
    assert _sh(replica, "stat -c %a /run/secrets/redis_password").strip() == "400"
    (mount,) = [line for line in _sh(replica, "cat /proc/mounts").splitlines() if " /run/secrets " in line]
    assert mount.split()[2] == "tmpfs" and "ro" in mount.split()[3].split(","), mount
    assert _sh(replica, 'printf %s "$API_KEY"') == key
    writable = replica.exec_run(["sh", "-c", "echo x > /run/secrets/redis_password"])
    assert writable.exit_code != 0, "the secrets' mount is read-only"

    seen = _everything_but_the_secret(cluster, service_name)
    leaks = {where for where, text in seen.items() if planted in text}
    assert leaks == set(), f"the planted value is shown in {sorted(leaks)}"
    # The control: the env secret, which the manifest asked for as env, is where Docker shows env.
    assert {where for where, text in seen.items() if key in text} == {f"docker inspect {replica.name}"}


def test_a_changed_secret_rolls_the_service_to_the_new_value(cluster: Cluster, service_name: str) -> None:
    """Writing a new value to secrets/<service>/<name> gives the service a new spec: its replica is
    replaced by one that reads the new value."""
    _put_secret(cluster, service_name, "token", "first-value")
    cluster.put(service_name, 1, secrets=[{"name": "token"}])
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    assert _sh(first, "cat /run/secrets/token") == "first-value"

    _put_secret(cluster, service_name, "token", "second-value")
    wait_until(
        lambda: [c.id for c in cluster.containers(service_name)] not in ([], [first.id]),
        timeout=CONVERGE_S,
        what="the replica replaced",
    )
    cluster.wait_converged(service_name, 1)
    second = _only(cluster, service_name)
    assert second.labels[LABEL_SPEC] != first.labels[LABEL_SPEC]
    assert _sh(second, "cat /run/secrets/token") == "second-value"


def test_a_missing_secret_holds_its_service_only_and_keeps_what_runs(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """A manifest naming a secret not in KV is held with "secret ... missing" in status and an event,
    while another service converges; deleting a running service's secret keeps its replica running
    (the same container) until the secret is back."""
    cluster.put(service_name, 1, secrets=[{"name": "db_password"}])
    cluster.put(other_service, 1)
    cluster.wait_converged(other_service, 1)

    def says_missing() -> bool:
        done = operator(cluster, "describe", service_name)
        return "secret db_password missing" in done.stdout

    wait_until(says_missing, timeout=REACT_S + CONVERGE_S, what="describe to name the missing secret")
    assert cluster.containers(service_name) == []

    # `describe` resolves the manifest itself, so it names the missing secret at once; the event
    # is the leader's, recorded after its next pass and flushed from the event buffer later.
    def has_event() -> bool:
        described = json.loads(operator(cluster, "describe", service_name, "--json").stdout)
        return any(
            e["reason"] == "InvalidManifest" and "secret db_password missing" in e["message"]
            for e in described["events"]
        )

    wait_until(has_event, timeout=REACT_S + CONVERGE_S, what="an InvalidManifest event naming the secret")
    assert cluster.containers(service_name) == []
    status = operator(cluster, "status")
    assert "secret db_password missing" in status.stdout, status.stdout

    _put_secret(cluster, service_name, "db_password", "now-here")
    cluster.wait_converged(service_name, 1)
    running = _only(cluster, service_name)

    cluster.consul.kv_delete(cluster.layout.secret_key(service_name, "db_password"))
    wait_until(says_missing, timeout=REACT_S + CONVERGE_S, what="describe to name the deleted secret")
    assert [c.id for c in cluster.containers(service_name)] == [running.id]
    assert cluster.converged(service_name, 1)
