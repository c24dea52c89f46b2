"""The host reconcile loop: this host's placements + its containers -> a plan -> actions.

Every pass re-reads everything (manifests, placements, registrations, the
containers with our labels), computes the pure `plan_host`, hands the actions
to the `Executor` and writes this host's status when it changed. A pass that
cannot read Consul raises before it decides anything, so a Consul outage never
starts or stops a container.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from consul_operator import metrics
from consul_operator.actuators.catalog import CatalogActuator
from consul_operator.actuators.docker import DockerActuator, container_name
from consul_operator.consul_client import ConsulClient
from consul_operator.desired_state import Manifest
from consul_operator.errors import ConsulError, OperatorError
from consul_operator.keys import Layout
from consul_operator.kv_state import read_manifests, read_placements, read_revision
from consul_operator.loop import PassResult
from consul_operator.model import (
    Action,
    Backoff,
    ContainerInfo,
    Deregister,
    DrainContainer,
    InFlight,
    PlacementRecord,
    Register,
    RemoveDead,
    ServiceDesire,
    ServiceReport,
    StartContainer,
    frozen_map,
)
from consul_operator.ownership import STATUS_INSTANCES
from consul_operator.reconcile import (
    backoff_after_crash,
    backoff_after_failure,
    backoff_after_success,
    ends_streak,
    plan_host,
)

log = structlog.get_logger()

MAX_PARALLEL_ACTIONS = 8


class Executor:
    """Runs plan actions in a bounded thread pool and remembers what is in flight.

    ``lock`` is held by the reconcile pass while it lists containers and takes
    the in-flight snapshot, and by the executor whenever an action finishes, so
    that every replica is counted exactly once: either as listed, or as a
    pending start.
    """

    def __init__(
        self,
        docker: DockerActuator,
        catalog: CatalogActuator,
        *,
        on_done: Callable[[], None],
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.docker = docker
        self.catalog = catalog
        self.on_done = on_done
        self.stop = stop
        self.clock = clock
        self.lock = threading.Lock()
        self._pool = ThreadPoolExecutor(MAX_PARALLEL_ACTIONS, thread_name_prefix="action")
        self._starting: dict[str, str] = {}  # container name -> service
        self._starting_spec: dict[str, str] = {}  # container name -> "service/spec"
        self._busy: set[str] = set()  # container ids being drained or removed
        self._busy_registrations: set[str] = set()
        self.backoffs: dict[str, Backoff] = {}
        # Counts finished actions, so that a pass can tell whether its container
        # listing still matches what is in flight.
        self.generation = 0

    def snapshot(self, containers: list[ContainerInfo]) -> InFlight:
        """What is in flight, relative to a container listing taken under ``lock``."""
        pending: dict[str, int] = {}
        for service in self._starting.values():
            pending[service] = pending.get(service, 0) + 1
        by_spec: dict[str, int] = {}
        for key in self._starting_spec.values():
            by_spec[key] = by_spec.get(key, 0) + 1
        starting_ids = {c.id for c in containers if c.name in self._starting}
        return InFlight(
            busy_containers=frozenset(self._busy | starting_ids),
            pending_starts=frozen_map(pending),
            pending_spec_starts=frozen_map(by_spec),
            busy_registrations=frozenset(self._busy_registrations | set(self._starting)),
        )

    def submit(self, action: Action) -> None:
        """Start ``action`` in the background, marking what it touches as busy."""
        with self.lock:
            match action:
                case StartContainer(manifest=m):
                    name = container_name(m.name, self.docker.host)
                    self._starting[name] = m.name
                    self._starting_spec[name] = f"{m.name}/{m.spec_hash()}"
                    self._pool.submit(self._run, "start", lambda: self._start(m, name), name=name)
                case DrainContainer(container=c):
                    self._busy.add(c.id)
                    self._pool.submit(self._run, "drain", lambda: self._drain(action), cid=c.id)
                case RemoveDead(container=c):
                    self._busy.add(c.id)
                    self._pool.submit(self._run, "remove_dead", lambda: self._remove_dead(action), cid=c.id)
                case Register(container=c, manifest=m):
                    log.info("registering", service=c.service, container=c.name, reason="missing or outdated")
                    self._busy_registrations.add(c.name)
                    self._pool.submit(self._run, "register", lambda: self.catalog.register(c, m), sid=c.name)
                case Deregister(service_id=sid, reason=why):
                    log.info("deregistering", service_id=sid, reason=why)
                    self._busy_registrations.add(sid)
                    self._pool.submit(self._run, "deregister", lambda: self.catalog.deregister(sid), sid=sid)

    def shutdown(self, *, wait: bool = True) -> None:
        """Start no new actions; with ``wait``, let running ones finish (a drain ends early on ``stop``)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # --- the actions ------------------------------------------------------------------

    def _run(
        self, kind: str, work: Callable[[], None], *, name: str = "", cid: str = "", sid: str = ""
    ) -> None:
        try:
            work()
        except OperatorError as exc:
            metrics.container_actions.labels(kind, "error").inc()
            log.warning("action failed", action=kind, container=name or cid[:12] or sid, error=str(exc))
        except Exception:
            metrics.container_actions.labels(kind, "error").inc()
            log.exception("action crashed", action=kind, container=name or cid[:12] or sid)
        else:
            metrics.container_actions.labels(kind, "ok").inc()
        finally:
            with self.lock:
                self.generation += 1
                self._starting.pop(name, None)
                self._starting_spec.pop(name, None)
                self._busy.discard(cid)
                self._busy_registrations.discard(sid or name)
            self.on_done()

    def _start(self, manifest: Manifest, name: str) -> None:
        try:
            info = self.docker.start(manifest, name=name)
        except OperatorError as exc:
            self._fail(manifest.name, f"start failed: {exc}", manifest.spec_hash())
            raise
        log.info(
            "started",
            service=manifest.name,
            container=info.name,
            port=info.host_port,
            reason="missing replica",
        )
        # A container that already exited publishes no port: the next pass removes it.
        if manifest.port and info.host_port is not None:
            try:
                self.catalog.register(info, manifest)
            except ConsulError as exc:
                # The container runs; the next pass registers it.
                log.warning("registration failed", container=info.name, error=str(exc))

    def _drain(self, action: DrainContainer) -> None:
        c = action.container
        # Deregister first: if Consul refuses, nothing is stopped (the next pass retries).
        self.catalog.deregister(c.name)
        log.info("draining", service=c.service, container=c.name, reason=action.reason, drain=action.drain)
        self.stop.wait(action.drain)
        self.docker.stop(c.id, action.stop_grace)
        self.docker.remove(c.id)
        log.info("stopped", service=c.service, container=c.name, reason=action.reason)

    def _remove_dead(self, action: RemoveDead) -> None:
        c = action.container
        log.info(
            "removing dead container",
            service=c.service,
            container=c.name,
            reason=action.reason,
            crashed=action.crashed,
        )
        try:
            self.catalog.deregister(c.name)
        except ConsulError as exc:
            log.warning("deregistration failed", container=c.name, error=str(exc))
        self.docker.remove(c.id)
        if action.crashed:
            # Counted only once the container is gone: a removal that fails is
            # planned again, and must not count the same crash twice.
            with self.lock:
                previous = self.backoffs.get(c.service, Backoff())
                self.backoffs[c.service] = backoff_after_crash(previous, self.clock(), action)

    def _fail(self, service: str, error: str, spec_hash: str) -> None:
        with self.lock:
            previous = self.backoffs.get(service, Backoff())
            self.backoffs[service] = backoff_after_failure(previous, self.clock(), error, spec_hash)


def _running_specs(containers: list[ContainerInfo]) -> dict[str, dict[str, int]]:
    """Running containers per service per spec hash (busy ones too)."""
    counts: dict[str, dict[str, int]] = {}
    for c in containers:
        if c.running:
            per = counts.setdefault(c.service, {})
            per[c.spec_hash] = per.get(c.spec_hash, 0) + 1
    return counts


def _instance_ids(containers: list[ContainerInfo]) -> dict[str, list[str]]:
    """Per service, the sorted names (= Consul service ids) of its running containers."""
    ids: dict[str, list[str]] = {}
    for c in sorted(containers, key=lambda c: c.name):
        if c.running:
            ids.setdefault(c.service, []).append(c.name)
    return ids


@dataclass
class HostAgent:
    """One host's reconcile pass."""

    consul: ConsulClient
    layout: Layout
    host: str
    docker: DockerActuator
    catalog: CatalogActuator
    executor: Executor
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._written: dict[str, dict[str, object]] | None = None

    def reconcile(self) -> PassResult:
        """One pass: read, plan, act, report."""
        now = self.clock()
        manifests = read_manifests(self.consul, self.layout)
        placements = read_placements(self.consul, self.layout)
        registrations = self.catalog.registrations()
        containers, inflight = self._observe()
        with self.executor.lock:
            self._reset_backoffs(containers, now)
            backoffs = dict(self.executor.backoffs)

        desires: dict[str, ServiceDesire] = {}
        for name, manifest in manifests.items():
            if not isinstance(manifest, Manifest):
                desires[name] = ServiceDesire(name, None, 0, error=f"Invalid: {manifest.problems[0]}")
            elif name not in placements:
                # No decision yet: keep whatever runs rather than guess a count.
                desires[name] = ServiceDesire(name, None, 0, error="Pending: not placed yet")
            elif placements[name].specs:
                desires[name] = self._paced_desire(manifest, placements[name].spec_counts(self.host))
            elif (paced := self._placed_spec_desire(manifest, placements[name])) is not None:
                desires[name] = paced
            else:
                desires[name] = ServiceDesire(name, manifest, placements[name].hosts.get(self.host, 0))

        plan = plan_host(self.host, desires, containers, registrations, inflight, backoffs, now)
        for action in plan.actions:
            self.executor.submit(action)
        self._report(plan.reports, _running_specs(containers), now, _instance_ids(containers))
        if plan.wake_at is None:
            return PassResult()
        return PassResult(requeue_after=max(0.0, plan.wake_at - now))

    def _observe(self) -> tuple[list[ContainerInfo], InFlight]:
        """List our containers and what is in flight, consistently with each other.

        Optimistic: list without holding the executor's lock (a listing takes
        tens of milliseconds, and every finishing action needs the lock), then
        accept it only if no action finished meanwhile; after a few tries, list
        under the lock.
        """
        for _ in range(3):
            generation = self.executor.generation
            containers = self.docker.list_containers()
            with self.executor.lock:
                if self.executor.generation == generation:
                    return containers, self.executor.snapshot(containers)
        with self.executor.lock:
            containers = self.docker.list_containers()
            return containers, self.executor.snapshot(containers)

    def _placed_spec_desire(self, manifest: Manifest, record: PlacementRecord) -> ServiceDesire | None:
        """The manifest changed but the leader's placement still names the spec in use: keep to it.

        The leader paces the change; until it does, this host runs the placed
        spec (from its revision). Without a revision (state from before
        rollouts) the change is left to the host plan, as before.
        """
        if record.spec_hash == manifest.spec_hash():
            return None
        desire = self._paced_desire(manifest, record.spec_counts(self.host))
        return desire if record.spec_hash in desire.revisions else None

    def _paced_desire(self, manifest: Manifest, counts: dict[str, int]) -> ServiceDesire:
        """A service in a rollout: the leader's count per spec, each spec's manifest from its revision."""
        revisions = {manifest.spec_hash(): manifest}
        for spec in counts:
            if spec not in revisions:
                kept = read_revision(self.consul, self.layout, manifest.name, spec)
                if kept is not None:
                    revisions[spec] = kept
        return ServiceDesire(
            manifest.name,
            manifest,
            sum(counts.values()),
            specs=frozen_map(counts),
            revisions=revisions,
        )

    def _reset_backoffs(self, containers: list[ContainerInfo], now: float) -> None:
        for service, backoff in list(self.executor.backoffs.items()):
            if any(c.service == service and ends_streak(backoff, c, now) for c in containers):
                self.executor.backoffs[service] = backoff_after_success(backoff)

    def _report(
        self,
        reports: tuple[ServiceReport, ...],
        specs: dict[str, dict[str, int]],
        now: float,
        instances: dict[str, list[str]],
    ) -> None:
        """Write ``operator/status/<service>/<host>`` for each service whose status changed."""
        if self._written is None:
            self._written = self._read_written()
        for report in reports:
            body: dict[str, object] = {
                "host": self.host,
                "service": report.service,
                "spec_hash": report.spec_hash,
                "desired": report.desired,
                "running": report.running,
                "healthy": report.healthy,
                "error": report.error,
                # Running containers per spec, draining ones included: the leader's surge limit.
                "specs": specs.get(report.service, {}),
                # Our instance ids (container names): what counts as ours (ownership.py).
                STATUS_INSTANCES: instances.get(report.service, []),
            }
            metrics.running_replicas.labels(report.service, self.host).set(report.running)
            metrics.host_healthy_replicas.labels(report.service, self.host).set(report.healthy)
            backoff = self.executor.backoffs.get(report.service, Backoff())
            metrics.consecutive_failures.labels(report.service, self.host).set(backoff.failures)
            previous = self._written.get(report.service)
            if previous is not None and {k: previous.get(k) for k in body} == body:
                continue
            self.consul.kv_put(
                self.layout.status_key(report.service, self.host),
                json.dumps({**body, "since": now}, sort_keys=True),
            )
            self._written[report.service] = {**body, "since": now}
        reported = {r.service for r in reports}
        for service in list(self._written):
            if service not in reported:
                # Deleted and nothing of it left here: its status goes too.
                self.consul.kv_delete(self.layout.status_key(service, self.host))
                del self._written[service]
                metrics.running_replicas.remove(service, self.host)
                metrics.host_healthy_replicas.remove(service, self.host)
                metrics.consecutive_failures.remove(service, self.host)

    def _read_written(self) -> dict[str, dict[str, object]]:
        """Our status keys as a previous run of this agent left them, so a restart rewrites nothing."""
        written: dict[str, dict[str, object]] = {}
        for entry in self.consul.kv_list(self.layout.status_prefix).value:
            service, _, host = entry.key[len(self.layout.status_prefix) :].partition("/")
            if host != self.host:
                continue
            try:
                written[service] = dict(json.loads(entry.value))
            except ValueError:
                continue
        return written
