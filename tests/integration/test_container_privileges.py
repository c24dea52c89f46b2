"""What a replica may do, seen from inside the real container: its capabilities, its user, its root
file system. Docker's defaults (NET_RAW and ten more, the image's user, a writable root) are not."""

from __future__ import annotations

from typing import Any

from consul_operator.core.desired_state import DEFAULT_CAPABILITIES
from tests.support.bounds import CONVERGE_S
from tests.support.cluster import Cluster, operator
from tests.support.execs import exec_in
from tests.support.staging import HOST_1_ALLOWED_CAPS, wait_until

# capabilities(7) numbers of the capabilities these tests look at.
CAP_BITS = {"CHOWN": 0, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13}
DEFAULT_MASK = sum(1 << CAP_BITS[name] for name in DEFAULT_CAPABILITIES)


def _caps(container: Any) -> dict[str, int]:
    """CapEff, CapPrm and CapBnd of a process in the replica, from /proc/self/status."""
    code, status = exec_in(container, "cat", "/proc/self/status")
    assert code == 0, status
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
    return {name: int(value, 16) for name, value in fields.items()}


def _only_replica(cluster: Cluster, service: str) -> Any:
    (container,) = cluster.containers(service)
    return container


def test_replicas_keep_only_the_default_capabilities(cluster: Cluster, service_name: str) -> None:
    """By default a replica's root has CHOWN, SETGID and SETUID only: no NET_RAW, DAC_OVERRIDE ...;
    it runs as the image's user (root here) on a writable root file system."""
    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1)
    replica = _only_replica(cluster, service_name)
    caps = _caps(replica)
    assert caps["CapEff"] == caps["CapBnd"] == DEFAULT_MASK == 0xC1, caps
    assert not caps["CapBnd"] & (1 << CAP_BITS["NET_RAW"])
    assert exec_in(replica, "busybox", "id", "-u") == (0, "0\n")
    assert exec_in(replica, "sh", "-c", "echo x > /probe")[0] == 0  # a writable root, unless asked


def test_user_read_only_root_and_tmpfs_from_the_manifest(cluster: Cluster, service_name: str) -> None:
    """``user`` runs the replica as that uid (no effective capability), ``read_only`` refuses a write
    to /, and each ``tmpfs`` path is a writable tmpfs of 64Mi; the replica still serves and passes."""
    serve = "mkdir -p /scratch/www && echo ok > /scratch/www/health && exec httpd -f -p 5000 -h /scratch/www"
    cluster.put(
        service_name,
        1,
        command=["sh", "-c", serve],
        user="1000:1000",
        read_only=True,
        tmpfs=["/scratch", "/tmp"],
    )
    cluster.wait_converged(service_name, 1)
    replica = _only_replica(cluster, service_name)
    assert exec_in(replica, "busybox", "id", "-u") == (0, "1000\n")
    caps = _caps(replica)
    assert caps["CapEff"] == caps["CapPrm"] == 0 and caps["CapBnd"] == DEFAULT_MASK, caps
    code, output = exec_in(replica, "sh", "-c", "echo x > /probe")
    assert code != 0 and "Read-only file system" in output, output
    assert exec_in(replica, "sh", "-c", "echo x > /scratch/probe")[0] == 0
    _, mounts = exec_in(replica, "cat", "/proc/mounts")
    for path in ("/scratch", "/tmp"):  # /tmp is the image's: Docker keeps its owner and mode (root, 755)
        mount = [line for line in mounts.splitlines() if line.split()[1] == path]
        assert mount and mount[0].startswith("tmpfs ") and "size=65536k" in mount[0], mounts


def test_cap_add_only_where_the_agent_allows_it(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """NET_ADMIN in ``cap_add`` runs on host-1 (``--allow-cap NET_ADMIN``); host-2 allows nothing, so
    there it starts nothing and its status names the field, the capability and the flag."""
    assert HOST_1_ALLOWED_CAPS == "NET_ADMIN"
    cluster.put(service_name, 1, cap_add=["NET_ADMIN"], placement={"hosts": ["host-1"]})
    cluster.put(other_service, 1, cap_add=["NET_ADMIN"], placement={"hosts": ["host-2"]})
    cluster.wait_converged(service_name, 1)
    caps = _caps(_only_replica(cluster, service_name))
    assert caps["CapEff"] == DEFAULT_MASK | (1 << CAP_BITS["NET_ADMIN"]), caps
    wait_until(
        lambda: "cap_add: NET_ADMIN not allowed on host-2" in cluster.status_error(other_service, "host-2"),
        timeout=CONVERGE_S,
        what="host-2 refusing cap_add",
    )
    assert cluster.containers(other_service, all_states=True) == []
    shown = operator(cluster, "status", other_service)
    assert "host-2: cap_add: NET_ADMIN not allowed on host-2 (its agent's --allow-cap)" in shown.stdout
