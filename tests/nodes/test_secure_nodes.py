"""provision.sh's secure defaults on the node environment: real systemd, real service users.

A node environment of its own (NODES_SECURE=1: TLS, gossip encryption, ACLs,
the defaults of provision.sh and `vagrant up`), apart from the plain one that
the partition and chaos tests drive. NODES_SECURE_TEST_NAME and
NODES_SECURE_TEST_SUBNET move it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from consul_operator.adapters.consul_client import ConsulClient, ConsulTLS
from consul_operator.core.errors import ConsulTLSError, ConsulUnavailable
from tests.support.cluster import Cluster
from tests.support.nodes import LB_HOSTS, Nodes

NAME = os.environ.get("NODES_SECURE_TEST_NAME", "nodes-test-secure")
SUBNET = os.environ.get("NODES_SECURE_TEST_SUBNET", "198.18.2.0/24")

# (host, path, mode, owner): every private key, the gossip key and the settings files holding a token.
PRIVATE_FILES = [
    pytest.param(host, path, owner, id=f"{host}:{path}")
    for host, path, owner in (
        ("host-1", "/etc/consul.d/tls/server-key.pem", "consul"),
        ("host-1", "/etc/consul.d/encrypt.hcl", "consul"),
        ("host-1", "/etc/consul-operator/client-key.pem", "consul-operator"),
        ("host-1", "/etc/default/operator-agent", "consul-operator"),
        ("host-3", "/etc/consul.d/tls/server-key.pem", "consul"),
        ("host-3", "/etc/consul.d/encrypt.hcl", "consul"),
        ("host-3", "/etc/consul-operator/client-key.pem", "root"),
        ("host-3", "/etc/default/operator-lb", "root"),
    )
]


@pytest.fixture(scope="module")
def secure_nodes() -> Iterator[Nodes]:
    """The secured node environment, up for this module and torn down after it."""
    nodes = Nodes(NAME, SUBNET, secure=True)
    nodes.run("down")
    nodes.run("up")
    yield nodes
    nodes.run("down")


@pytest.fixture(scope="module")
def secure_cluster(secure_nodes: Nodes) -> Cluster:
    """The secured nodes, read over HTTPS with the management token and a client certificate."""
    token = (secure_nodes.run_dir / "acl" / "management.token").read_text().strip()
    client = ConsulClient(
        secure_nodes.consul_addr("host-3"), token, tls=ConsulTLS.from_env(secure_nodes.tls_env())
    )
    return Cluster(secure_nodes, client, secure_nodes.engines())


@pytest.mark.parametrize(("host", "path", "owner"), PRIVATE_FILES)
def test_key_and_token_files_are_0600_and_their_services(
    secure_nodes: Nodes, host: str, path: str, owner: str
) -> None:
    """A file provision.sh installed holding a secret: mode 0600, owned by the user of its service."""
    assert secure_nodes.exec(host, "stat", "-c", "%a %U", path).split() == ["600", owner]


def test_daemons_run_as_their_users_with_tls(secure_nodes: Nodes) -> None:
    """consul as consul, the agent as consul-operator, each daemon with the CA and its client certificate."""
    assert secure_nodes.exec("host-1", "ps", "-o", "user=", "-C", "consul").split() == ["consul"]
    agent = secure_nodes.exec(
        "host-1", "systemctl", "show", "-p", "MainPID", "--value", "operator-agent"
    ).strip()
    assert secure_nodes.exec("host-1", "ps", "-o", "user=", "-p", agent).strip() == "consul-operator"
    environ = secure_nodes.exec("host-1", "cat", f"/proc/{agent}/environ").split("\0")
    assert "CONSUL_HTTP_ADDR=https://127.0.0.1:8501" in environ
    assert "CONSUL_CLIENT_KEY=/etc/consul-operator/client-key.pem" in environ


def test_plain_http_and_a_client_without_certificate_are_refused(secure_nodes: Nodes) -> None:
    """The node's Consul has no plain HTTP port, and refuses an HTTPS client without a certificate."""
    with pytest.raises(ConsulUnavailable, match="Connection refused"):
        ConsulClient(f"{secure_nodes.address('host-1')}:8500", tls=ConsulTLS()).leader()
    ca_only = ConsulTLS(ca_file=secure_nodes.tls_env()["CONSUL_CACERT"])
    with pytest.raises(ConsulTLSError, match="refused our client certificate"):
        ConsulClient(secure_nodes.consul_addr("host-1"), tls=ca_only).leader()


def test_the_loop_runs_secured(secure_cluster: Cluster) -> None:
    """A manifest put over HTTPS lands one replica per app host, each passing, through ACLs and mutual TLS."""
    name = "s" + uuid.uuid4().hex[:8]
    secure_cluster.put(name, 2, placement={"max_per_host": 1})
    secure_cluster.wait_converged(name, 2)


def test_no_secret_in_a_command_line_or_the_journal(secure_nodes: Nodes, secure_cluster: Cluster) -> None:
    """No token or gossip key in any process's command line or any journal line of any node."""
    acl = secure_nodes.run_dir / "acl"
    secrets = {f.name: f.read_text().strip() for f in acl.glob("*.token")}
    secrets["gossip.key"] = (secure_nodes.run_dir / "secrets" / "gossip.key").read_text().strip()
    assert {"management.token", "operator-agent.token", "operator-lb.token"} <= set(secrets)
    for host in ("host-1", "host-2", "host-3"):
        commands = secure_nodes.exec(host, "ps", "-eo", "args")
        journal = secure_nodes.exec(host, "journalctl", "-o", "cat", "--no-pager", timeout=120)
        assert "operator" in commands and journal.strip()
        for name, secret in secrets.items():
            assert secret not in commands, f"{name} in a command line on {host}"
            assert secret not in journal, f"{name} in the journal of {host}"


@pytest.mark.parametrize(
    ("host", "role", "unit"), [("host-1", "app", "operator-agent"), ("host-3", "lb", "operator-lb")]
)
def test_provisioning_with_the_defaults_again_changes_nothing(
    secure_nodes: Nodes, host: str, role: str, unit: str
) -> None:
    """provision.sh without a flag is the secured install: run again on a secured host, it changes nothing."""
    pid = secure_nodes.exec(host, "systemctl", "show", "-p", "MainPID", "--value", unit).strip()
    # The LB pair's settings as nodes.sh gave them: without them provision.sh keeps the pair's
    # keepalived.conf and says so ("keeping"), which this test takes for a setting it implied.
    pair = (
        [
            f"LB_FLOATING_ADDRESS={secure_nodes.floating}/24",
            f"LB_PEERS={' '.join(secure_nodes.address(h) for h in LB_HOSTS)}",
        ]
        if role == "lb"
        else []
    )
    out = secure_nodes.exec(
        host,
        "env",
        f"NODE_NAME={host}",
        f"NODE_ADDR={secure_nodes.address(host)}",
        "CONSUL_HOST_CONFIG=/srv/node/host.hcl",
        *pair,
        "bash",
        "/vagrant/scripts/provision.sh",
        role,
        timeout=300,
    )
    assert "installed /" not in out and "restarted" not in out and "created" not in out, out
    assert "keeping" not in out, out
    assert secure_nodes.exec(host, "systemctl", "show", "-p", "MainPID", "--value", unit).strip() == pid
