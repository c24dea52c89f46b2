"""A SIMULATED container engine for the scale bench (`bench.scale`): containers that exist only in memory.

This is a simulation. It is never used by the operator, nor by any test of
the real loop (tests/integration and tests/chaos run real Docker). It lets
`bench.scale` run 100 real ``operator agent`` processes, with their real
watches, leader election, placement, status reports and Consul traffic, on a
2-core machine that could not run 10,000 real containers: only the engine
behind `DockerActuator`'s interface is replaced.

A simulated container starts after ``start_latency`` seconds (0 by default:
the bench measures the control plane, not Docker), runs until it is stopped
and publishes no port, so the bench's manifests have no ``port`` and no
replica is registered in Consul: "no check at all" in the issue's terms.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Mapping

from consul_operator.adapters.actuators.docker import DockerActuator, container_name
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import DockerError
from consul_operator.core.model import ContainerInfo


class SimulatedDockerActuator(DockerActuator):
    """`DockerActuator`'s interface over an in-memory table of containers (a simulation)."""

    def __init__(self, *, cluster: str, host: str, advertise: str, start_latency: float = 0.0) -> None:
        # No Docker client: nothing here talks to an engine. `client` stays unset on purpose,
        # so that any code path that would reach the real engine fails loudly.
        self.cluster = cluster
        self.host = host
        self.advertise = advertise
        self.start_latency = start_latency
        self._containers: dict[str, ContainerInfo] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def list_containers(self, starting: Collection[str] = ()) -> list[ContainerInfo]:
        """Every simulated container of this host (none needs an inspect: ``starting`` changes nothing)."""
        with self._lock:
            return list(self._containers.values())

    def ensure_volumes(self, manifest: Manifest, slot: int | None) -> tuple[str, ...]:
        """No volumes in the simulation."""
        return ()

    def our_volumes(self) -> dict[str, list[str]]:
        """No volumes in the simulation (the volume janitor finds none)."""
        return {}

    def remove_volume(self, name: str) -> None:
        """No volumes in the simulation."""

    def sweep_files(self) -> None:
        """No secrets' files in the simulation (`run_agent` sweeps them at start-up)."""

    def start(
        self,
        manifest: Manifest,
        *,
        name: str | None = None,
        slot: int | None = None,
        secrets: Mapping[str, bytes] | None = None,
    ) -> ContainerInfo:
        """A running container after ``start_latency`` seconds."""
        if self.start_latency:
            time.sleep(self.start_latency)
        name = name or container_name(manifest.name, self.host)
        now = time.time()
        info = ContainerInfo(
            id=f"sim{next(self._ids):061x}",
            name=name,
            service=manifest.name,
            spec_hash=manifest.spec_hash(),
            state="running",
            created_at=now,
            started_at=now,
        )
        with self._lock:
            self._containers[info.id] = info
        return info

    def stop(self, container_id: str, grace: float) -> None:
        """The container exits at once (code 0)."""
        with self._lock:
            info = self._containers.get(container_id)
            if info is None:
                raise DockerError(f"not found during stopping {container_id[:12]}: no such container")
            self._containers[container_id] = ContainerInfo(
                id=info.id,
                name=info.name,
                service=info.service,
                spec_hash=info.spec_hash,
                state="exited",
                created_at=info.created_at,
                started_at=info.started_at,
                finished_at=time.time(),
                exit_code=0,
            )

    def remove(self, container_id: str) -> None:
        """Forget the container (gone already is fine, as with Docker)."""
        with self._lock:
            self._containers.pop(container_id, None)

    def watch_events(self, on_event: Callable[[], None], stop: threading.Event) -> None:
        """No container dies on its own here: one wake-up at the start, then none until ``stop``."""
        on_event()
        stop.wait()
