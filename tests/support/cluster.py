"""Looking at a running staging environment the way a user would: KV, catalog, Docker, metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from docker import DockerClient

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.keys import Layout
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SERVICE, META_CLUSTER
from tests.support.bounds import CONVERGE_S, PROCESS_S, REACT_S
from tests.support.cli_runner import run_cli
from tests.support.metrics import Scrape, scrape
from tests.support.served import serves
from tests.support.staging import HOSTS, Environment, pid_alive, wait_until


def manifest_yaml(name: str, replicas: int, **fields: Any) -> str:
    """A manifest of the hello image; ``fields`` override or add top-level fields."""
    body: dict[str, Any] = {
        "name": name,
        "image": "hello:local",
        "replicas": replicas,
        "port": 5000,
        "health": {"http": "/health", "interval": "1s", "timeout": "500ms"},
        "drain": "500ms",
        "stop_grace": "2s",
    }
    body.update(fields)
    return yaml.safe_dump(body)


def operator(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The one CLI runner: `operator SUBCOMMAND --consul <host-1's Consul> ARGS...`, a process forked
    from one that has imported the CLI (`cli_runner`)."""
    command = [args[0], "--consul", cluster.staging.consul_addr(), *args[1:]]
    return run_cli(command, env={**os.environ, **cluster.staging.tls_env()}, stdin=stdin)


def metric_at(address: str, name: str, **labels: str) -> float:
    """One sample from the /metrics served at ``address`` (host:port) by any daemon (0 when absent)."""
    return scrape(address).value(name, **labels)


class ContainerList(Protocol):
    """``containers`` of a Docker client: what `Cluster` and the chaos checks list."""

    def list(
        self,
        *,
        all: bool = False,
        filters: dict[str, Any] | None = None,
        ignore_removed: bool = False,
        sparse: bool = False,
    ) -> list[Any]:
        """The containers ``filters`` selects (stopped ones too with ``all``; ``sparse``: the listing's
        fields only, no inspect of each)."""
        ...


class Engine(Protocol):
    """What `Cluster` and the chaos checks use of Docker: a ``docker.DockerClient`` (staging), or
    `nodes.Engines` (the node environment: every app host's engine as one)."""

    @property
    def containers(self) -> ContainerList:
        """The containers, to list."""
        ...


@dataclass
class Cluster:
    """A staging environment with its clients; ``layout``: the KV prefixes its daemons were given."""

    staging: Environment
    consul: ConsulClient
    docker: Engine
    layout: Layout = field(default_factory=Layout)

    @property
    def engine(self) -> DockerClient:
        """The one Docker engine of a staging environment, for its events and volumes (the node
        environment's engines list containers only)."""
        assert isinstance(self.docker, DockerClient), f"not one Docker engine: {self.docker!r}"
        return self.docker

    def put(self, name: str, replicas: int, **fields: Any) -> None:
        """`consul kv put services/<name>` of a hello manifest."""
        self.consul.kv_put(self.layout.service_key(name), manifest_yaml(name, replicas, **fields))

    def put_raw(self, name: str, text: str) -> None:
        """Write any text as the manifest of ``name``."""
        self.consul.kv_put(self.layout.service_key(name), text)

    def delete(self, name: str) -> None:
        """`consul kv delete services/<name>`."""
        self.consul.kv_delete(self.layout.service_key(name))

    def containers(self, service: str, *, all_states: bool = False) -> list[Any]:
        """Our containers of ``service`` in this environment."""
        labels = [f"{LABEL_CLUSTER}={self.staging.name}", f"{LABEL_SERVICE}={service}"]
        listed = self.docker.containers.list(all=all_states, filters={"label": labels}, ignore_removed=True)
        return list(listed)

    def per_host(self, service: str) -> dict[str, int]:
        """Running containers of ``service`` per host label."""
        counts: dict[str, int] = {}
        for c in self.containers(service):
            host = c.labels[LABEL_HOST]
            counts[host] = counts.get(host, 0) + 1
        return counts

    def passing(self, service: str) -> list[Any]:
        """Instances of ``service`` whose every check passes."""
        return [i for i in self.consul.health_service(service).value if i.status == "passing"]

    def registrations(self, service: str) -> list[Any]:
        """Every instance of ``service`` in the catalog, passing or not."""
        return list(self.consul.health_service(service).value)

    def converged(self, service: str, replicas: int) -> bool:
        """Exactly ``replicas`` containers run, and exactly those are registered and passing.

        Registrations of another cluster (the same service name on a shared Consul) are not ours.
        """
        mine = self.staging.name
        # A sparse listing: the names are all this needs, and a full one inspects each container
        # as well, several Docker requests every poll of every waiting test.
        labels = [f"{LABEL_CLUSTER}={mine}", f"{LABEL_SERVICE}={service}"]
        listed = self.docker.containers.list(filters={"label": labels}, sparse=True)
        running = {str(c.attrs["Names"][0]).lstrip("/") for c in listed}
        # One read of the catalog for both sets: every waiting test polls this several times a second.
        instances = [i for i in self.registrations(service) if i.meta.get(META_CLUSTER) == mine]
        registered = {i.service_id for i in instances}
        passing = {i.service_id for i in instances if i.status == "passing"}
        return len(running) == replicas and running == registered == passing

    def wait_converged(self, service: str, replicas: int, timeout: float = CONVERGE_S) -> None:
        """Wait until `converged`, failing with what is there after ``timeout``."""
        try:
            wait_until(
                lambda: self.converged(service, replicas), timeout=timeout, what=f"{service} x{replicas}"
            )
        except AssertionError as exc:
            state = {
                "containers": sorted(c.name for c in self.containers(service, all_states=True)),
                "catalog": sorted((i.service_id, i.status) for i in self.registrations(service)),
                "placement": self.kv_json(self.layout.placement_key(service)),
            }
            raise AssertionError(f"{exc}; state: {state}; {self.log_tail(service)}") from None

    def log_tail(self, service: str, lines: int = 20) -> str:
        """The agents' last log lines about ``service`` or above info, for a failure's message
        (a CI run keeps no logs): the leader's decisions and what refused them."""
        picked: list[tuple[str, str]] = []
        for log in sorted((self.staging.run_dir / "logs").glob("agent-*.log")):
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines()[-2000:]:
                    with contextlib.suppress(ValueError, AttributeError):
                        entry = json.loads(line)
                        if entry.get("service") == service or entry.get("level") not in ("info", "debug"):
                            picked.append((str(entry.get("timestamp", "")), line[:400]))
        picked.sort()
        return "agents' log:\n" + "\n".join(line for _, line in picked[-lines:])

    def kv_json(self, key: str) -> Any:
        """A JSON value from KV, or None."""
        entry = self.consul.kv_get(key).value
        return json.loads(entry.value) if entry else None

    def status(self, service: str, host: str) -> Any:
        """The agent's status record of ``service`` on ``host``."""
        return self.kv_json(f"{self.layout.status_prefix}{service}/{host}")

    def status_error(self, service: str, host: str) -> str:
        """The error in the agent's status record ("" when none or no record)."""
        return str((self.status(service, host) or {}).get("error", ""))

    def wait_passes(self, after: float, hosts: tuple[str, ...] = ("host-1", "host-2")) -> None:
        """Wait until each agent finished a host pass that started after ``after``."""
        for host in hosts:
            wait_until(
                lambda: self.last_host_pass(host) > after,  # noqa: B023
                timeout=REACT_S,
                what=f"{host} agent passes",
            )

    def container_events(self, service: str, since: float, actions: tuple[str, ...]) -> list[str]:
        """Docker's events of ``service``'s containers from ``since`` until now, by action name."""
        events = self.engine.events(
            since=f"{since:.9f}",
            until=f"{time.time() + 0.5:.9f}",
            decode=True,
            filters={"type": "container", "label": f"{LABEL_SERVICE}={service}"},
        )
        return [str(e["Action"]) for e in events if e["Action"] in actions]

    @contextlib.contextmanager
    def recording_events(self, service: str) -> Iterator[list[tuple[float, str]]]:
        """Docker's events of ``service``'s containers while the block runs, as (Unix time, action).

        Read live from the stream: the engine's history of past events is bounded,
        and a busy shared engine may have dropped them by the time a test asks.
        """
        stream = self.engine.events(
            decode=True, filters={"type": "container", "label": f"{LABEL_SERVICE}={service}"}
        )
        seen: list[tuple[float, str]] = []

        def read() -> None:
            with contextlib.suppress(Exception):  # the stream ends when closed below
                for event in stream:
                    seen.append((int(event["timeNano"]) / 1e9, str(event["Action"])))

        reader = threading.Thread(target=read, name=f"events-{service}", daemon=True)
        reader.start()
        try:
            yield seen
        finally:
            stream.close()
            reader.join(timeout=10)

    def lb_serves(self, service: str, n: int) -> bool:
        """NGINX answers for ``service`` from exactly its ``n`` running containers (`served.serves`)."""
        ids = {c.id[:12] for c in self.containers(service)}
        return len(ids) == n and serves(self.lb_address, service, ids)

    @property
    def lb_address(self) -> str:
        """Where the environment's NGINX listens (host-3's address, port 80)."""
        return self.staging.addresses[2]

    def leader(self) -> str | None:
        """The host holding the leader lock, per its value."""
        entry = self.consul.kv_get(self.layout.leader_key, consistent=True).value
        if entry is None or not entry.session:
            return None
        return str(json.loads(entry.value)["host"])

    def agent_pid(self, host: str) -> int:
        """Pid of the operator agent of ``host``."""
        return self.staging.pids()[f"agent-{host}"]

    def scrape(self, daemon: str, /) -> Scrape:
        """The /metrics of host ``daemon``'s daemon: host-1's and host-2's agents, host-3's load balancer."""
        return scrape(f"{self.staging.addresses[HOSTS.index(daemon)]}:9810")

    def metric(self, daemon: str, name: str, /, **labels: str) -> float:
        """One sample from the /metrics of the daemon of host ``daemon`` (0 when absent)."""
        return self.scrape(daemon).value(name, **labels)

    def last_host_pass(self, host: str) -> float:
        """Unix time of the agent's last successful host reconcile pass."""
        return self.metric(host, "operator_last_successful_sync_timestamp_seconds", loop="host")

    def kill(self, name: str, sig: signal.Signals) -> int:
        """Send ``sig`` to the staging process ``name`` (by its recorded pid); returns the pid."""
        pid = self.staging.pids()[name]
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            wait_until(lambda: not pid_alive(pid), timeout=PROCESS_S, what=f"{name} to exit")
        return pid
