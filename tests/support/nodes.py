"""Drive scripts/nodes.sh from tests: three systemd node containers, and partitions between them.

`Nodes` has the interface of `Staging` that `Cluster` and the chaos harness
use (name, addresses, run, consul_addr, nginx_conf, consul_alive), so the same
checks run on either environment. What only nodes have: a Docker engine per
app host (`engines`, one client per node's socket), commands inside a node
(`exec`), and network partitions made with iptables inside the nodes.

A partition is a set of one-way cuts. A cut "from A to B" drops, in B's raw
table (before connection tracking and the engine's port forwarding), every
packet B receives from A's address: TCP in both directions breaks, UDP gossip
from A is lost. `heal` removes every cut. The machine itself (the network's
gateway) always reaches every node, so a test keeps seeing all sides.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from consul_operator.adapters.docker_client import connect
from tests.support.staging import HOSTS, ROOT, wait_until

NODES = ROOT / "scripts" / "nodes.sh"
APP_HOSTS = ("host-1", "host-2")
# The second LB host (scripts/nodes.sh): a Consul client, `operator lb` and keepalived like host-3.
LB_HOSTS = ("host-3", "host-4")
NODE_HOSTS = (*HOSTS, "host-4")
CHAIN = "CHAOS"
# Consul's server RPC, LAN and WAN gossip: what a control-plane-only cut drops.
CONSUL_PORTS = "8300:8302"


def node_addresses(subnet: str) -> tuple[str, str, str]:
    """host-1..3 of a /24: .11, .12, .13 (as scripts/nodes.sh gives them)."""
    prefix = subnet.removesuffix(".0/24")
    return (f"{prefix}.11", f"{prefix}.12", f"{prefix}.13")


def floating_address(subnet: str) -> str:
    """The address keepalived moves between host-3 and host-4: .100 of the /24 (scripts/nodes.sh)."""
    return f"{subnet.removesuffix('.0/24')}.100"


class Engines:
    """The app hosts' Docker engines as one: `containers.list` over all of them (a `cluster.Engine`)."""

    def __init__(self, clients: dict[str, docker.DockerClient]) -> None:
        self.clients = clients
        self.containers = self

    def list(self, **kwargs: Any) -> list[Any]:
        found: list[Any] = []
        for client in self.clients.values():
            found += client.containers.list(**kwargs)
        return found


@dataclass
class Nodes:
    """One node environment of scripts/nodes.sh: its name, subnet and the cuts in place."""

    name: str
    subnet: str
    addresses: tuple[str, str, str] = field(init=False)
    run_dir: Path = field(init=False)
    cuts: set[tuple[str, str, bool]] = field(default_factory=set)  # (from, to, consul ports only)
    secure: bool = False  # provision.sh's secure defaults: TLS, gossip encryption, ACLs (NODES_SECURE=1)

    def __post_init__(self) -> None:
        self.addresses = node_addresses(self.subnet)
        self.run_dir = ROOT / ".run" / self.name

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NODES_NAME": self.name,
            "NODES_SUBNET": self.subnet,
            "RUN_DIR": str(self.run_dir),
            "NODES_SECURE": "1" if self.secure else "0",
        }

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``nodes.sh COMMAND``; a failure fails the test with the script's output."""
        result = subprocess.run(
            ["bash", str(NODES), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"nodes.sh {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def container(self, host: str) -> str:
        """The node container of ``host``."""
        return f"{self.name}-{host}"

    def address(self, host: str) -> str:
        if host == "host-4":
            return f"{self.subnet.removesuffix('.0/24')}.14"
        return self.addresses[HOSTS.index(host)]

    @property
    def floating(self) -> str:
        """The floating address of the LB pair."""
        return floating_address(self.subnet)

    def holders(self) -> list[str]:
        """The LB hosts whose interfaces carry the floating address now (one, but for a split)."""
        return [
            host
            for host in LB_HOSTS
            if self.running(host)
            and f" {self.floating}/" in self.exec(host, "ip", "-o", "-4", "addr", "show", check=False)
        ]

    def consul_addr(self, host: str = "host-1") -> str:
        """HTTP(S) address of the Consul agent of ``host`` (its client_addr includes the node's address)."""
        return f"https://{self.address(host)}:8501" if self.secure else f"{self.address(host)}:8500"

    def tls_env(self) -> dict[str, str]:
        """Secured: the CA and host-1's client certificate of nodes.sh's secrets; else none."""
        if not self.secure:
            return {}
        secrets = self.run_dir / "secrets"
        return {
            "CONSUL_CACERT": str(secrets / "consul-agent-ca.pem"),
            "CONSUL_CLIENT_CERT": str(secrets / "host-1-client.pem"),
            "CONSUL_CLIENT_KEY": str(secrets / "host-1-client-key.pem"),
        }

    def exec(self, host: str, *command: str, check: bool = True, timeout: float = 120) -> str:
        """Run ``command`` inside the node of ``host``; its stdout."""
        result = subprocess.run(
            ["docker", "exec", self.container(host), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{host}: {' '.join(command)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def running(self, host: str) -> bool:
        """Whether the node container of ``host`` runs."""
        result = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.container(host)],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() == "true"

    def power_on(
        self, host: str, timeout: float = 120, after_start: Callable[[], None] | None = None
    ) -> None:
        """After a reboot: once the node stopped, start it (power on); wait for systemd and the daemon."""
        wait_until(lambda: not self.running(host), timeout=timeout, what=f"{host} to go down")
        subprocess.run(["docker", "start", self.container(host)], check=True, capture_output=True, timeout=60)
        if after_start is not None:
            after_start()
        wait_until(
            lambda: self.exec(host, "systemctl", "is-system-running", check=False).strip() == "running",
            timeout=timeout,
            what=f"{host}'s systemd to boot",
        )
        wait_until(
            lambda: (
                urllib.request.urlopen(f"http://{self.address(host)}:9810/healthz", timeout=2).status == 200
            ),
            timeout=timeout,
            what=f"{host}'s daemon to be healthy",
        )

    def set_agent_args(self, args: str) -> None:
        """Each app host's ``OPERATOR_AGENT_ARGS`` set to ``args``, its agent restarted, one at a time.

        As an operator would (deploy/env/operator-agent: edit, then `systemctl
        restart operator-agent`): the restart returns once /healthz answers.
        """
        for host in APP_HOSTS:
            self.exec(
                host,
                "sed",
                "-i",
                f"s|^OPERATOR_AGENT_ARGS=.*|OPERATOR_AGENT_ARGS={args}|",
                "/etc/default/operator-agent",
            )
            self.exec(host, "systemctl", "restart", "operator-agent")

    def journal(self, host: str, since: float = 0.0) -> str:
        """What ``host``'s Consul and operator daemons logged since Unix time ``since`` (microseconds)."""
        return self.exec(
            host,
            "journalctl",
            "--no-pager",
            f"--since=@{since:.0f}",
            "-o",
            "short-iso-precise",
            "-u",
            "consul",
            "-u",
            "operator-agent",
            "-u",
            "operator-lb",
            check=False,
        )

    def engines(self) -> Engines:
        """Clients of the app hosts' engines, through the sockets nodes.sh gives the machine."""
        return Engines({h: connect(f"unix://{self.run_dir / h / 'docker.sock'}") for h in APP_HOSTS})

    def pids(self) -> dict[str, int]:
        """None: every daemon runs inside a node, under its systemd (see `exec`)."""
        return {}

    def nginx_conf(self) -> str:
        """The configuration the load balancer installed in the LB node's system NGINX."""
        return self.exec("host-3", "cat", "/etc/nginx/conf.d/consul-operator.conf")

    def consul_alive(self, host: str) -> bool:
        """Whether ``host``'s Consul runs (whether it is in the majority depends on the cuts)."""
        return self.exec(host, "systemctl", "is-active", "consul", check=False).strip() == "active"

    # --- partitions --------------------------------------------------------------------------

    def _rules(self, source: str, consul_only: bool) -> list[list[str]]:
        address = self.address(source)
        if not consul_only:
            return [["-s", address, "-j", "DROP"]]
        return [
            ["-s", address, "-p", proto, f"--{side}", CONSUL_PORTS, "-j", "DROP"]
            for proto in ("tcp", "udp")
            for side in ("dport", "sport")
        ]

    def _chain(self, host: str) -> None:
        """The CHAOS chain in ``host``'s raw table, jumped to first from PREROUTING (idempotent)."""
        self.exec(
            host,
            "sh",
            "-c",
            f"iptables -t raw -N {CHAIN} 2>/dev/null; iptables -t raw -C PREROUTING -j {CHAIN} 2>/dev/null"
            f" || iptables -t raw -I PREROUTING 1 -j {CHAIN}",
        )

    def cut(self, source: str, target: str, *, consul_only: bool = False) -> None:
        """Drop what ``target`` receives from ``source`` (only Consul's ports with ``consul_only``)."""
        self._chain(target)
        for rule in self._rules(source, consul_only):
            self.exec(target, "iptables", "-t", "raw", "-A", CHAIN, *rule)
        self.cuts.add((source, target, consul_only))

    def cut_link(self, a: str, b: str, *, consul_only: bool = False) -> None:
        """Both directions between ``a`` and ``b``."""
        self.cut(a, b, consul_only=consul_only)
        self.cut(b, a, consul_only=consul_only)

    def isolate(self, host: str, *, consul_only: bool = False) -> None:
        """``host`` cut off from every other node, both ways (the machine still reaches it).

        At once: one command per node, all nodes in parallel (a cut made link by link
        took 4-6 s on a loaded machine, and a half-made cut is another fault).
        """
        self._cut_off(host, consul_only=consul_only, both_ways=True)

    def cut_off(self, host: str) -> None:
        """What ``host`` sends to every other node dropped, what they send to it delivered: a one-way cut.

        Every other node, host-4 included: a node left out still hears ``host`` and
        relays its gossip (memberlist's indirect probes and its refutations of the
        suspicion), so the majority never declares it failed and its session, with
        the leader lock, lives on (CI, one_way: no leader in the majority for 60 s).
        """
        self._cut_off(host, consul_only=False, both_ways=False)

    def _cut_off(self, host: str, *, consul_only: bool, both_ways: bool) -> None:
        others = [other for other in NODE_HOSTS if other != host]
        sources: dict[str, list[str]] = {other: [host] for other in others}
        if both_ways:
            sources[host] = others

        def cut_all(target: str) -> None:
            rules = [rule for source in sources[target] for rule in self._rules(source, consul_only)]
            chain = (
                f"iptables -t raw -N {CHAIN} 2>/dev/null; "
                f"iptables -t raw -C PREROUTING -j {CHAIN} 2>/dev/null"
                f" || iptables -t raw -I PREROUTING 1 -j {CHAIN}"
            )
            appends = " && ".join(shlex.join(["iptables", "-t", "raw", "-A", CHAIN, *rule]) for rule in rules)
            self.exec(target, "sh", "-c", f"{chain}; {appends}")

        with ThreadPoolExecutor(len(sources)) as pool:
            list(pool.map(cut_all, sources))
        for other in others:
            self.cuts.add((host, other, consul_only))
            if both_ways:
                self.cuts.add((other, host, consul_only))

    def heal(self) -> None:
        """Every cut gone, at once (one command per node, in parallel, as a cut is made: one node
        after the other took 1-2 s on a loaded machine, a heal in stages the figures counted)."""

        def flush(host: str) -> None:
            self.exec(host, "sh", "-c", f"iptables -t raw -F {CHAIN} 2>/dev/null || true")

        with ThreadPoolExecutor(len(NODE_HOSTS)) as pool:
            list(pool.map(flush, NODE_HOSTS))
        self.cuts.clear()
