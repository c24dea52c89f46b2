"""Where the time of one convergence goes: a per-stage timeline, recorded without polling the engine.

The stages, each in seconds after the ``kv put`` (or, for the raw reference,
after the first ``docker run``):

    placement written -> first start -> last start -> last registration -> last passing -> served

Docker's event stream gives every ``start`` at the engine's own time; two
Consul blocking queries give the placement key and the service's instances
(registered, then passing) the moment they change. Only "served" is polled
(NGINX, every 10 ms, once everything passes). Polling ``docker ps`` instead,
as the first benchmark did, competes with the engine for the very CPU the
burst needs, and for our runs only, not for the raw reference.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import docker

from consul_operator.adapters.consul_client import ConsulClient

LABEL_SERVICE = "consul-operator.service"

STAGES = (
    "placement written",
    "first start",
    "last start",
    "last registration",
    "last passing",
    "served",
)


@dataclass
class Timeline:
    """Unix times of what happened to one service (or one batch of raw containers)."""

    began: float
    starts: dict[str, float] = field(default_factory=dict)  # container id -> engine's start time
    placement: float | None = None
    registered: dict[str, float] = field(default_factory=dict)  # service id -> first seen
    passing: dict[str, float] = field(default_factory=dict)  # service id -> first seen passing
    served: float | None = None

    def stages(self) -> dict[str, float]:
        """Seconds from the beginning to each stage reached."""
        at: dict[str, float | None] = {
            "placement written": self.placement,
            "first start": min(self.starts.values(), default=None),
            "last start": max(self.starts.values(), default=None),
            "last registration": max(self.registered.values(), default=None),
            "last passing": max(self.passing.values(), default=None),
            "served": self.served,
        }
        return {stage: t - self.began for stage, t in at.items() if t is not None}


@contextlib.contextmanager
def docker_starts(client: docker.DockerClient, label: str, into: dict[str, float]) -> Iterator[None]:
    """Record the engine's time of every ``start`` of a container with ``label`` while the block runs."""
    stream = client.events(decode=True, filters={"type": "container", "event": "start", "label": label})

    def read() -> None:
        with contextlib.suppress(Exception):  # the stream ends when closed below
            for event in stream:
                into[str(event["id"])] = int(event["timeNano"]) / 1e9

    reader = threading.Thread(target=read, name="bench-docker-events", daemon=True)
    reader.start()
    try:
        yield
    finally:
        stream.close()
        reader.join(timeout=10)


def _watch(read: Callable[[int], int], stop: threading.Event) -> threading.Thread:
    """Run ``read(index) -> index`` as a blocking-query loop until ``stop``."""

    def loop() -> None:
        index = 0
        while not stop.is_set():
            with contextlib.suppress(Exception):
                index = read(index)

    thread = threading.Thread(target=loop, name="bench-watch", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def consul_stages(consul: ConsulClient, placement_key: str, service: str, into: Timeline) -> Iterator[None]:
    """Record when the placement appears and when each instance registers and passes."""
    stop = threading.Event()

    def placement(index: int) -> int:
        got = consul.kv_get(placement_key, index=index, wait=1.0)
        if got.value is not None and into.placement is None:
            into.placement = time.time()
        return got.index

    def instances(index: int) -> int:
        got = consul.health_service(service, index=index, wait=1.0)
        now = time.time()
        for inst in got.value:
            into.registered.setdefault(inst.service_id, now)
            if inst.status == "passing":
                into.passing.setdefault(inst.service_id, now)
        return got.index

    threads = [_watch(placement, stop), _watch(instances, stop)]
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


def service_label(name: str) -> str:
    """The Docker label filter of one service's containers."""
    return f"{LABEL_SERVICE}={name}"
