"""The host's executor: carries a host plan's actions out on a bounded set of workers, fairly per service.

It decides nothing: it runs what the pass hands it (`submit`), says what is
in flight (`snapshot`), and reports how each action ended as data, an
`Outcome` that the next pass reads (`take_outcomes`) and folds into its
memory (`host_pass.decide_host`): the back-offs live there, not here, and no
back-off is shared between threads. It records the events of what it did
(``Started``, ``StartFailed``, ``Registered``, ``Drained``, ``Stopped``) as it
does it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.actuators.docker import container_name
from consul_operator.adapters.interfaces import Catalog, Containers
from consul_operator.adapters.timers import Timers
from consul_operator.core import events
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import ConsulError, DockerUnavailable, ImagePullFailed, OperatorError
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    DrainContainer,
    InFlight,
    Outcome,
    Register,
    RemoveDead,
    StartContainer,
    action_key,
    action_service,
)
from consul_operator.core.records import frozen_map
from consul_operator.daemons.registrar import Registrar

log = structlog.get_logger()

MAX_PARALLEL_ACTIONS = 8
"""Worker threads shared by every action of this host."""
MAX_PER_SERVICE = 4
"""Workers one service is always entitled to; beyond that it may only use workers above the reserve."""
RESERVED_WORKERS = 2
"""Workers a service past its share leaves free, so that another service's action starts at once."""


@dataclass(slots=True)
class _Job:
    """One unit of work for a worker: what it is for, and what it keeps busy until it ends."""

    kind: str
    service: str
    work: Callable[[], _Later | None]
    name: str = ""  # a container being started
    cid: str = ""  # a container being drained or removed
    sid: str = ""  # a registration being changed
    key: str | None = None  # the action's back-off key (`action_key`)
    spec: str = ""  # a start's spec hash
    image: str = ""  # a start's image

    @property
    def label(self) -> str:
        """What the job works on, for logs."""
        return self.name or self.cid[:12] or self.sid


_Later = tuple[float, _Job]
"""The rest of an action, to queue at a monotonic time (a drain's stop, after the drain)."""


class Executor:
    """Runs plan actions on a bounded set of workers, fairly per service, and remembers what is in flight.

    ``lock`` is held by the reconcile pass while it lists containers, takes
    the in-flight snapshot and the outcomes, and by the executor whenever an
    action finishes, so that every replica is counted exactly once (either as
    listed, or as a pending start) and every outcome is read by the pass that
    no longer sees its action in flight.

    Fairness: actions queue per service and are dispatched round-robin over
    the services on ``MAX_PARALLEL_ACTIONS`` workers. A service may hold
    ``MAX_PER_SERVICE`` of them, and more only while ``RESERVED_WORKERS``
    stay free: a burst of one service still runs wide, yet an action of
    another service never waits behind it. A drain's wait holds no worker:
    the deregistration is one job, the stop and removal another, queued by a
    timer when the drain time is over.

    Outcomes carry times on ``mono`` (``time.monotonic``), on which the pass
    sets the back-offs.
    """

    def __init__(
        self,
        docker: Containers,
        catalog: Catalog,
        *,
        on_done: Callable[[], None],
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.docker = docker
        self.catalog = catalog
        self.on_done = on_done
        self.mono = mono
        self.lock = threading.Lock()
        self._pool = ThreadPoolExecutor(MAX_PARALLEL_ACTIONS, thread_name_prefix="action")
        self._registrar = Registrar()  # a thread per registration: a hanging check delays no other
        self._timers = Timers("executor-timers", clock=mono)
        self._starting: dict[str, str] = {}  # container name -> service
        self._starting_spec: dict[str, str] = {}  # container name -> "service/spec"
        self._busy: set[str] = set()  # container ids being drained or removed
        self._busy_registrations: set[str] = set()
        self._outcomes: list[Outcome] = []  # finished since the last `take_outcomes`
        self._queues: dict[str, deque[_Job]] = {}  # per service, waiting for a worker
        self._turns: deque[str] = deque()  # services with queued jobs, round-robin
        self._active: Counter[str] = Counter()  # jobs on workers, per service
        self._closed = False

    def snapshot(self) -> InFlight:
        """What is in flight (under ``lock``); containers being started are `starting_names`."""
        pending: dict[str, int] = {}
        for service in self._starting.values():
            pending[service] = pending.get(service, 0) + 1
        by_spec: dict[str, int] = {}
        for key in self._starting_spec.values():
            by_spec[key] = by_spec.get(key, 0) + 1
        return InFlight(
            busy_containers=frozenset(self._busy),
            pending_starts=frozen_map(pending),
            pending_spec_starts=frozen_map(by_spec),
            busy_registrations=frozenset(self._busy_registrations | set(self._starting)),
        )

    def starting_names(self) -> frozenset[str]:
        """Names of the containers being started now (under ``lock``)."""
        return frozenset(self._starting)

    def take_outcomes(self) -> tuple[Outcome, ...]:
        """How the actions finished since the last call ended, oldest first (under ``lock``)."""
        taken, self._outcomes = tuple(self._outcomes), []
        return taken

    def submit(self, action: Action) -> None:
        """Queue ``action``, marking what it touches as busy at once."""
        key = action_key(action)
        service = action_service(action)
        with self.lock:
            match action:
                case StartContainer(manifest=m, slot=slot):
                    name = container_name(m.name, self.docker.host)
                    spec = m.spec_hash()
                    self._starting[name] = m.name
                    self._starting_spec[name] = f"{m.name}/{spec}"
                    job = _Job(
                        "start",
                        service,
                        partial(self._start, m, name, slot),
                        name=name,
                        spec=spec,
                        image=m.image,
                    )
                case DrainContainer(container=c):
                    self._busy.add(c.id)
                    job = _Job("drain", service, lambda: self._drain(action), cid=c.id, key=key)
                case RemoveDead(container=c):
                    self._busy.add(c.id)
                    job = _Job("remove_dead", service, lambda: self._remove_dead(action), cid=c.id, key=key)
                case Register(container=c, manifest=m, restored=True, restored_ids=ids):
                    self._busy_registrations.add(c.name)
                    job = _Job(
                        "register", service, partial(self._register_restored, c, m, ids), sid=c.name, key=key
                    )
                case Register(container=c, manifest=m):
                    self._busy_registrations.add(c.name)
                    job = _Job("register", service, lambda: self._register(c, m), sid=c.name, key=key)
                case Deregister(service_id=sid):
                    self._busy_registrations.add(sid)
                    job = _Job("deregister", service, lambda: self.catalog.deregister(sid), sid=sid, key=key)
            self._enqueue(job)

    def shutdown(self, *, wait: bool = True) -> None:
        """Start no new actions; drains waiting for their time are dropped (the containers keep running)."""
        with self.lock:
            self._closed = True
            self._queues.clear()
            self._turns.clear()
        self._timers.close()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._registrar.shutdown()

    # --- dispatch (under ``lock``) ------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        if self._closed:
            return
        queue = self._queues.setdefault(job.service, deque())
        if not queue:
            self._turns.append(job.service)
        queue.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers: services in turn, none beyond its share."""
        while sum(self._active.values()) < MAX_PARALLEL_ACTIONS:
            job = self._next_job()
            if job is None:
                return
            self._active[job.service] += 1
            self._pool.submit(self._run, job)

    def _next_job(self) -> _Job | None:
        free = MAX_PARALLEL_ACTIONS - sum(self._active.values())
        for _ in range(len(self._turns)):
            service = self._turns.popleft()
            queue = self._queues[service]
            if self._active[service] >= MAX_PER_SERVICE and free <= RESERVED_WORKERS:
                self._turns.append(service)
                continue
            job = queue.popleft()
            if queue:
                self._turns.append(service)
            else:
                del self._queues[service]
            return job
        return None

    # --- the actions ------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        error = ""
        away = pull_failed = False
        later: _Later | None = None
        try:
            later = job.work()
        except OperatorError as exc:
            error, away = str(exc), isinstance(exc, DockerUnavailable)
            pull_failed = isinstance(exc, ImagePullFailed)
            log.warning("action failed", action=job.kind, container=job.label, error=error)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("action crashed", action=job.kind, container=job.label)
        if later is None:
            metrics.container_actions.labels(job.kind, "error" if error else "ok").inc()
        with self.lock:
            self._active[job.service] -= 1
            if later is None:
                self._finish(job, error, away, pull_failed)
            else:
                at, follow_up = later
                # The container stays busy; the rest of the action queues when the time comes.
                self._timers.call_at(at, lambda: self._enqueue_now(follow_up))
            self._dispatch()
        if later is None:
            self.on_done()

    def _enqueue_now(self, job: _Job) -> None:
        with self.lock:
            self._enqueue(job)

    def _finish(self, job: _Job, error: str, away: bool, pull_failed: bool = False) -> None:
        """The action is over (under ``lock``): release what it kept busy, report its outcome."""
        self._starting.pop(job.name, None)
        self._starting_spec.pop(job.name, None)
        self._busy.discard(job.cid)
        if job.sid:  # a start's registration, if any, is released by `_register_started`
            self._busy_registrations.discard(job.sid)
        outcome = Outcome(
            job.kind, job.service, job.key, error, self.mono(), job.spec, away, job.image, pull_failed
        )
        self._outcomes.append(outcome)

    def _start(self, manifest: Manifest, name: str, slot: int | None = None) -> None:
        try:
            for volume in self.docker.ensure_volumes(manifest, slot):
                # A first start here, or a replica moved from a lost or drained host: its data stays there.
                why = f"created fresh volume {volume} for slot {slot} on {self.docker.host}: no earlier data"
                event_log.record(manifest.name, events.VOLUME_CREATED, why)
            info = self.docker.start(manifest, name=name, slot=slot)
        except DockerUnavailable:
            raise  # the engine is away, not the service failing: no StartFailed either
        except OperatorError as exc:
            event_log.record(manifest.name, events.START_FAILED, f"container {name} not started: {exc}")
            raise
        event_log.record(manifest.name, events.STARTED, f"started container {info.name} (missing replica)")
        log.info(
            "started",
            service=manifest.name,
            container=info.name,
            port=info.host_port,
            reason="missing replica",
        )
        # A container that already exited publishes no port: the next pass removes it.
        if manifest.port and info.host_port is not None:
            # Registered off the worker: the check's first run waits for the
            # application, and the next start must not wait for it.
            with self.lock:
                self._busy_registrations.add(info.name)
            self._registrar.submit(lambda probe: self._register_started(info, manifest, probe))

    def _register_started(self, info: ContainerInfo, manifest: Manifest, probe: bool = True) -> None:
        """Register a replica just started, passing at once if its own check passes (`probe`; without
        ``probe``, at once, critical: too many registrations wait already)."""
        try:
            passed = self.catalog.register_started(info, manifest, probe=probe)
        except ConsulError as exc:
            # The container runs; the next pass registers it.
            log.warning("registration failed", container=info.name, error=str(exc))
        except Exception:
            log.exception("registration crashed", container=info.name)
        else:
            how = "passing its health check" if passed else "its health check not passing yet"
            where = f" at port {info.host_port}" if info.host_port else ""
            event_log.record(
                info.service, events.REGISTERED, f"registered {info.name}{where} in Consul, {how}"
            )
        finally:
            with self.lock:
                self._busy_registrations.discard(info.name)
            self.on_done()

    def _register(self, container: ContainerInfo, manifest: Manifest) -> None:
        self.catalog.register(container, manifest)
        where = f" at port {container.host_port}" if container.host_port else ""
        event_log.record(
            container.service, events.REGISTERED, f"registered {container.name}{where} in Consul"
        )

    def _register_restored(
        self, container: ContainerInfo, manifest: Manifest, service_ids: tuple[str, ...]
    ) -> None:
        """Its checks (its own, its extra ports') restored critical by a restarted Consul: registered
        again, passing, each that passes here.

        A probe that fails is the action's failure: it backs off (`action_key`),
        and Consul's own first run decides meanwhile.
        """
        if not self.catalog.register_restored(container, manifest, service_ids):
            raise OperatorError(
                f"{container.name}: a check of {', '.join(service_ids)} does not pass when run here yet"
            )
        log.info("registered again, passing", service=container.service, container=container.name)
        event_log.record(
            container.service,
            events.REGISTERED,
            f"registered {container.name} again in Consul, passing its health check "
            "(its Consul agent restarted and restored the check critical)",
        )

    def _drain(self, action: DrainContainer) -> _Later:
        """Deregister now; stop and remove once the drain time is over, on a worker again."""
        c = action.container
        # Deregister first: if Consul refuses, nothing is stopped (the next pass retries).
        self.catalog.deregister(c.name)
        log.info("draining", service=c.service, container=c.name, reason=action.reason, drain=action.drain)
        why = f"deregistered {c.name}, stopping it in {action.drain:g}s: {action.reason}"
        event_log.record(c.service, events.DRAINED, why)
        stop = _Job("drain", c.service, lambda: self._stop(action), cid=c.id, key=action_key(action))
        return self.mono() + action.drain, stop

    def _stop(self, action: DrainContainer) -> None:
        c = action.container
        self.docker.stop(c.id, action.stop_grace)
        self.docker.remove(c.id)
        log.info("stopped", service=c.service, container=c.name, reason=action.reason)
        event_log.record(c.service, events.STOPPED, f"stopped and removed {c.name}: {action.reason}")

    def _remove_dead(self, action: RemoveDead) -> None:
        """Deregister (a failure is only logged) and remove; the plan counted the crash, if any, already."""
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
