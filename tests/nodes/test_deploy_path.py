"""The deploy path on hosts that are hosts: provision.sh, the shipped units, an engine per app host."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster
from tests.support.nodes import APP_HOSTS, LB_HOSTS, NODE_HOSTS, Nodes
from tests.support.staging import ROOT, wait_until

UNITS = {
    "host-1": "operator-agent",
    "host-2": "operator-agent",
    "host-3": "operator-lb",
    "host-4": "operator-lb",
}


@pytest.fixture
def service(node_cluster: Cluster) -> Iterator[str]:
    """A fresh service name; deleted and drained afterwards."""
    name = "n" + uuid.uuid4().hex[:8]
    yield name
    node_cluster.delete(name)
    wait_until(lambda: not node_cluster.containers(name, all_states=True), timeout=60, what=f"{name} removed")


@pytest.mark.parametrize("host", NODE_HOSTS)
def test_each_node_boots_systemd_with_no_failed_unit(nodes: Nodes, host: str) -> None:
    """systemd is PID 1 of every node and says `running`: no unit failed, the shipped ones included."""
    assert nodes.exec(host, "cat", "/proc/1/comm").strip() == "systemd"
    state = nodes.exec(host, "systemctl", "is-system-running", check=False).strip()
    assert state == "running", nodes.exec(host, "systemctl", "--failed", "--no-legend", check=False)


@pytest.mark.parametrize(
    ("host", "units"),
    [
        ("host-1", ("consul", "operator-agent", "docker")),
        ("host-2", ("consul", "operator-agent", "docker")),
        ("host-3", ("consul", "operator-lb", "nginx", "keepalived")),
        ("host-4", ("consul", "operator-lb", "nginx", "keepalived")),
    ],
    ids=["host-1-app", "host-2-app", "host-3-lb", "host-4-lb"],
)
def test_the_shipped_units_run_as_installed_by_provision(
    nodes: Nodes, host: str, units: tuple[str, ...]
) -> None:
    """Each role's units are active and enabled, and the installed unit files are deploy/systemd's."""
    for unit in units:
        assert nodes.exec(host, "systemctl", "is-active", unit, check=False).strip() == "active", unit
        assert nodes.exec(host, "systemctl", "is-enabled", unit, check=False).strip() == "enabled", unit
    for unit in ("consul", UNITS[host]):
        installed = nodes.exec(host, "cat", f"/etc/systemd/system/{unit}.service")
        assert installed == (ROOT / "deploy" / "systemd" / f"{unit}.service").read_text(), unit


def test_each_app_host_has_its_own_engine_and_address(nodes: Nodes) -> None:
    """host-1 and host-2 run separate Docker engines; the LB hosts run none."""
    engines = nodes.engines().clients
    ids = {host: client.info()["ID"] for host, client in engines.items()}
    assert len(set(ids.values())) == len(APP_HOSTS), ids
    for host in LB_HOSTS:
        assert nodes.exec(host, "systemctl", "is-active", "docker", check=False).strip() != "active"
    for host in NODE_HOSTS:
        assert nodes.address(host) in nodes.exec(host, "ip", "-4", "-o", "addr", "show")


def test_a_service_is_placed_on_both_engines_and_served_through_the_lb_node(
    node_cluster: Cluster, service: str
) -> None:
    """Two replicas land one per app host's engine, registered at its address; NGINX on host-3 serves both."""
    node_cluster.put(service, 2, placement={"max_per_host": 1})
    node_cluster.wait_converged(service, 2, timeout=90)
    assert node_cluster.per_host(service) == {"host-1": 1, "host-2": 1}
    nodes = node_cluster.staging
    assert isinstance(nodes, Nodes)
    addresses = {i.address for i in node_cluster.passing(service)}
    assert addresses == {nodes.address(h) for h in APP_HOSTS}
    wait_until(lambda: node_cluster.lb_serves(service, 2), timeout=60, what="NGINX serving both replicas")


@pytest.mark.parametrize("host", NODE_HOSTS)
def test_provisioning_again_changes_nothing(nodes: Nodes, host: str) -> None:
    """A second `provision.sh ROLE` on a running host (`vagrant provision`) installs and restarts nothing."""
    unit = UNITS[host]
    pid = nodes.exec(host, "systemctl", "show", "-p", "MainPID", "--value", unit).strip()
    role = "lb" if host in LB_HOSTS else "app"
    secured = "1" if nodes.secure else "0"  # as nodes.sh provisioned it (provision.sh's default: 1)
    out = nodes.exec(
        host,
        "env",
        f"NODE_NAME={host}",
        f"NODE_ADDR={nodes.address(host)}",
        "CONSUL_HOST_CONFIG=/srv/node/host.hcl",
        f"CONSUL_TLS={secured}",
        f"CONSUL_GOSSIP={secured}",
        f"CONSUL_ACL={secured}",
        "bash",
        "/vagrant/scripts/provision.sh",
        role,
        timeout=300,
    )
    assert "installed /" not in out and "restarted" not in out, out
    assert nodes.exec(host, "systemctl", "show", "-p", "MainPID", "--value", unit).strip() == pid
