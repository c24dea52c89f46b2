"""Each agent removes its own volumes of deleted services when asked (`core.volumes`).

One thread per agent: a blocking query on ``operator/volume-removals/`` says when a request
comes; while a requested service still has containers here (draining), it looks again every
`RECHECK` seconds. It reads manifests' keys only, never their values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from consul_operator.adapters import event_log
from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.adapters.consul_client import ConsulClient, KVEntry
from consul_operator.core import events
from consul_operator.core.backoff import retry_delay
from consul_operator.core.errors import OperatorError
from consul_operator.core.keys import Layout
from consul_operator.core.volumes import RemovalRequest, volumes_to_remove

log = structlog.get_logger()

RECHECK = 2.0
"""Seconds between looks while a requested service's containers are still here."""
IDLE_WAIT = 300.0
"""The blocking query's wait when nothing is pending."""


def run_volume_janitor(
    consul: ConsulClient,
    layout: Layout,
    docker: DockerActuator,
    stop: threading.Event,
    clock: Callable[[], float] = time.time,
) -> None:
    """Until ``stop``: remove this host's volumes that a current removal request names."""
    index, failures, waiting = 0, 0, False
    while not stop.is_set():
        try:
            listed = consul.kv_list(
                layout.volume_removals_prefix, index=index, wait=RECHECK if waiting else IDLE_WAIT
            )
            index = listed.index
            waiting = _pass(consul, layout, docker, listed.value, clock())
            failures = 0
        except OperatorError as exc:
            failures += 1
            log.warning("volume removal pass failed", error=str(exc))
            stop.wait(retry_delay(failures))
        except Exception:
            failures += 1
            log.exception("volume removal pass crashed")
            stop.wait(retry_delay(failures))


def _pass(
    consul: ConsulClient, layout: Layout, docker: DockerActuator, entries: Sequence[KVEntry], now: float
) -> bool:
    """One look; whether a requested service still has containers here."""
    requests: dict[str, RemovalRequest] = {}
    for entry in entries:
        name = layout.record_of(layout.volume_removals_prefix, entry.key)
        request = RemovalRequest.from_json(entry.value or b"")
        if name is not None and request is not None:
            requests[name] = request
    if not requests:
        return False
    volumes = docker.our_volumes()
    wanted = [s for s in volumes if s in requests]
    if not wanted:
        return False
    manifests = {s for s in wanted if consul.kv_get(layout.service_key(s)).value is not None}
    containers = {c.service for c in docker.list_containers()}
    cleanup = volumes_to_remove(requests, manifests, containers, volumes, now)
    for service, name in cleanup.remove:
        docker.remove_volume(name)
        log.info("volume removed", service=service, volume=name)
        event_log.record(service, events.VOLUME_REMOVED, f"removed volume {name} (operator delete --volumes)")
    return cleanup.waiting
