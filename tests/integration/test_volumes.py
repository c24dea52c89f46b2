"""Volumes against real Docker and Consul: a named volume per replica slot, labelled, that stays with
its replica through a ``docker kill`` and a rollout; host paths only under ``--allow-host-path``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from consul_operator.adapters.event_log import read_events
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SERVICE, LABEL_SLOT, LABEL_VOLUME
from tests.support.bounds import CONVERGE_S
from tests.support.cluster import Cluster, operator
from tests.support.execs import output_of
from tests.support.staging import HOST_1_ALLOWED_HOST_PATH, wait_until

DATA = {"name": "data", "path": "/data"}


def _read(container: Any, path: str) -> str:
    """``cat path`` in the replica."""
    return output_of(container, "cat", path)


def _only(cluster: Cluster, service: str) -> Any:
    (container,) = cluster.containers(service)
    return container


def _volumes(cluster: Cluster, service: str) -> list[Any]:
    labels = [f"{LABEL_CLUSTER}={cluster.staging.name}", f"{LABEL_SERVICE}={service}"]
    return list(cluster.engine.volumes.list(filters={"label": labels}))


def _events(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    described = operator(cluster, "describe", service, "--json")
    assert described.returncode == 0, described.stderr
    return list(json.loads(described.stdout)["events"])


def test_a_named_volume_keeps_its_data_through_docker_kill_and_a_rollout(
    cluster: Cluster, service_name: str
) -> None:
    """A replica with ``volumes: [{name: data, path: /data}]`` gets one Docker volume labelled with
    the cluster, host, service, slot and volume. Data written there is read by the replacement after
    a ``docker kill``, and by the new replica of a rollout (which replaces it in place, on the same
    host); describe's events say once that the volume was created fresh."""
    cluster.put(service_name, 1, volumes=[DATA])
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    host = first.labels[LABEL_HOST]
    assert first.labels[LABEL_SLOT] == "0"
    (volume,) = _volumes(cluster, service_name)
    assert {k: volume.attrs["Labels"][k] for k in (LABEL_HOST, LABEL_SLOT, LABEL_VOLUME)} == {
        LABEL_HOST: host,
        LABEL_SLOT: "0",
        LABEL_VOLUME: "data",
    }
    planted = uuid.uuid4().hex
    code, output = first.exec_run(["sh", "-c", f"echo {planted} > /data/planted"])
    assert code == 0, output

    first.kill()
    wait_until(
        lambda: [c.id for c in cluster.containers(service_name)] not in ([], [first.id]),
        timeout=CONVERGE_S,
        what="a replacement",
    )
    cluster.wait_converged(service_name, 1)
    second = _only(cluster, service_name)
    assert second.labels[LABEL_HOST] == host
    assert _read(second, "/data/planted").strip() == planted

    cluster.put(service_name, 1, volumes=[DATA], env={"GREETING": "rolled"})
    wait_until(
        lambda: [c.id for c in cluster.containers(service_name)] not in ([], [second.id]),
        timeout=CONVERGE_S,
        what="the rollout's new replica",
    )
    cluster.wait_converged(service_name, 1)
    third = _only(cluster, service_name)
    assert third.labels[LABEL_HOST] == host
    assert _read(third, "/data/planted").strip() == planted
    assert [v.name for v in _volumes(cluster, service_name)] == [volume.name]
    created = [e for e in _events(cluster, service_name) if e["reason"] == "VolumeCreated"]
    assert len(created) == 1 and f"for slot 0 on {host}" in created[0]["message"], created


def test_host_paths_only_under_the_agents_allowed_directory(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """A host path under host-1's ``--allow-host-path`` is mounted (read-only here) and its file read
    in the replica; host-2 allows none, so there nothing starts and its status names the field.
    The Docker socket is refused by validation before any agent sees it."""
    shared = Path(HOST_1_ALLOWED_HOST_PATH) / service_name
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "greeting").write_text("from the host\n")
    mount = {"host_path": str(shared), "path": "/shared", "read_only": True}
    cluster.put(service_name, 1, volumes=[mount], placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    replica = _only(cluster, service_name)
    assert _read(replica, "/shared/greeting") == "from the host\n"
    assert replica.exec_run(["sh", "-c", "echo x > /shared/x"])[0] != 0  # read-only

    cluster.put(other_service, 1, volumes=[mount], placement={"hosts": ["host-2"]})
    wait_until(
        lambda: "--allow-host-path" in cluster.status_error(other_service, "host-2"),
        timeout=CONVERGE_S,
        what="host-2 refuses the host path",
    )
    assert cluster.containers(other_service, all_states=True) == []
    assert str(shared) in cluster.status_error(other_service, "host-2")

    sock = {"host_path": "/var/run/docker.sock", "path": "/var/run/docker.sock"}
    manifest = {"name": service_name, "image": "hello:local", "replicas": 1, "volumes": [sock]}
    refused = subprocess.run(
        [sys.executable, "-m", "consul_operator", "validate", "-"],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "volumes[0].host_path" in refused.stdout + refused.stderr, refused


def test_delete_keeps_volumes_and_delete_volumes_removes_them(cluster: Cluster, service_name: str) -> None:
    """``operator delete NAME`` drains the replicas and keeps their volumes (with the data: a manifest
    put back finds it); ``operator delete NAME --volumes`` also removes them on every host once the
    replicas are gone, with a VolumeRemoved event."""
    cluster.put(service_name, 2, volumes=[DATA])
    cluster.wait_converged(service_name, 2)
    planted = uuid.uuid4().hex
    for container in cluster.containers(service_name):
        assert container.exec_run(["sh", "-c", f"echo {planted} > /data/planted"])[0] == 0
    names = sorted(v.name for v in _volumes(cluster, service_name))
    assert len(names) == 2

    deleted = operator(cluster, "delete", service_name)
    assert deleted.returncode == 0, deleted.stderr
    wait_until(
        lambda: not cluster.containers(service_name, all_states=True),
        timeout=CONVERGE_S,
        what="replicas removed",
    )
    assert sorted(v.name for v in _volumes(cluster, service_name)) == names

    cluster.put(service_name, 2, volumes=[DATA])
    cluster.wait_converged(service_name, 2)
    assert {_read(c, "/data/planted").strip() for c in cluster.containers(service_name)} == {planted}

    removed = operator(cluster, "delete", service_name, "--volumes")
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: not _volumes(cluster, service_name), timeout=CONVERGE_S, what="volumes removed")
    assert not cluster.containers(service_name, all_states=True)
    wait_until(
        lambda: [e["reason"] for e in read_events_json(cluster, service_name)].count("VolumeRemoved") == 2,
        timeout=CONVERGE_S,
        what="a VolumeRemoved event per volume",
    )


def read_events_json(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    """The service's events as JSON (the service is deleted: describe has nothing to show)."""
    return [e.to_dict() for e in read_events(cluster.consul, cluster.layout, service)]


def test_a_drained_host_moves_the_replica_to_a_fresh_volume(cluster: Cluster, service_name: str) -> None:
    """Draining its host moves a replica with a named volume: it starts on the other host with a
    fresh, empty volume, a VolumeCreated event names that host, and the old volume (with the data)
    stays on the drained host."""
    cluster.put(service_name, 1, volumes=[DATA])
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    source = first.labels[LABEL_HOST]
    target = "host-2" if source == "host-1" else "host-1"
    assert first.exec_run(["sh", "-c", "echo old > /data/planted"])[0] == 0
    try:
        drained = operator(cluster, "drain", source, "--deadline", "2m")
        assert drained.returncode == 0, drained.stderr
        wait_until(
            lambda: [c.labels[LABEL_HOST] for c in cluster.containers(service_name)] == [target],
            timeout=CONVERGE_S * 2,
            what=f"the replica moved to {target}",
        )
        cluster.wait_converged(service_name, 1)
        moved = _only(cluster, service_name)
        assert moved.exec_run(["cat", "/data/planted"])[0] != 0  # a fresh volume: no file
        hosts = sorted(v.attrs["Labels"][LABEL_HOST] for v in _volumes(cluster, service_name))
        assert hosts == sorted([source, target])
        wait_until(
            lambda: any(
                e["reason"] == "VolumeCreated" and f"on {target}" in e["message"]
                for e in _events(cluster, service_name)
            ),
            timeout=CONVERGE_S,
            what="a VolumeCreated event on the new host",
        )
    finally:
        undone = operator(cluster, "uncordon", source)
        assert undone.returncode == 0, undone.stderr


CLUSTER_LOST_GRACE = 10.0  # the agents' --lost-grace default, which staging keeps


def test_a_volume_replica_waits_for_its_lost_host_past_the_leaders_grace(
    cluster: Cluster, service_name: str
) -> None:
    """With ``placement.lost_grace: 2m``, the agent of the replica's host killed for twice the
    leader's own grace: the replica stays placed there (nothing starts elsewhere), and once the
    agent is back the same container runs on with its data."""
    cluster.put(service_name, 1, volumes=[DATA], placement={"lost_grace": "2m"})
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    host = first.labels[LABEL_HOST]
    assert first.exec_run(["sh", "-c", "echo kept > /data/planted"])[0] == 0
    cluster.kill(f"agent-{host}", signal.SIGKILL)
    try:
        lost = time.monotonic()
        while time.monotonic() - lost < 2 * CLUSTER_LOST_GRACE:
            placement = cluster.kv_json(cluster.layout.placement_key(service_name))
            assert placement["hosts"] == {host: 1}, placement
            assert [c.id for c in cluster.containers(service_name, all_states=True)] == [first.id]
            time.sleep(0.5)  # sampling what must not change while the host is lost
    finally:
        cluster.staging.run("up")  # starts exactly the killed agent again
    cluster.wait_converged(service_name, 1)
    assert [c.id for c in cluster.containers(service_name)] == [first.id]
    assert _read(first, "/data/planted").strip() == "kept"
