"""The host reconcile loop: this host's placements + its containers -> a plan -> actions.

Every pass re-reads everything (manifests, placements, registrations, the
containers with our labels), computes the pure `plan_host`, hands the actions
to the `Executor` and writes this host's status when it changed. A pass that
cannot read Consul raises before it decides anything, so a Consul outage never
starts or stops a container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.actuators.catalog import CatalogActuator
from consul_operator.adapters.actuators.docker import DockerActuator, container_name
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.kv_state import (
    ManifestResult,
    TreeMirror,
    manifests_of,
    placements_of,
    read_revision,
    read_statuses,
)
from consul_operator.adapters.timers import Timers
from consul_operator.core import events
from consul_operator.core.backoff import Backoff, backoff_after_failure, backoff_delay
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import ConsulError, DockerUnavailable, OperatorError, refusal_reason
from consul_operator.core.host_plan import (
    backoff_after_crash,
    ends_streak,
    host_desires,
    plan_host,
    revisions_wanted,
)
from consul_operator.core.keys import Layout
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    DrainContainer,
    InFlight,
    Register,
    RemoveDead,
    ServiceReport,
    StartContainer,
    action_key,
    action_service,
)
from consul_operator.core.records import (
    CONTAINER_ID_CHARS,
    PlacementRecord,
    ReplicaMark,
    StatusRecord,
    frozen_map,
    record_bound,
)
from consul_operator.daemons.loop import PassResult
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

    @property
    def label(self) -> str:
        """What the job works on, for logs."""
        return self.name or self.cid[:12] or self.sid


_Later = tuple[float, _Job]
"""The rest of an action, to queue at a monotonic time (a drain's stop, after the drain)."""


class Executor:
    """Runs plan actions on a bounded set of workers, fairly per service, and remembers what is in flight.

    ``lock`` is held by the reconcile pass while it lists containers and takes
    the in-flight snapshot, and by the executor whenever an action finishes, so
    that every replica is counted exactly once: either as listed, or as a
    pending start.

    Fairness: actions queue per service and are dispatched round-robin over
    the services on ``MAX_PARALLEL_ACTIONS`` workers. A service may hold
    ``MAX_PER_SERVICE`` of them, and more only while ``RESERVED_WORKERS``
    stay free: a burst of one service still runs wide, yet an action of
    another service never waits behind it. A drain's wait holds no worker:
    the deregistration is one job, the stop and removal another, queued by a
    timer when the drain time is over.

    Failures: an action that fails is held by its own back-off
    (`action_key`: kind and container or registration), reported to the plan
    in ``InFlight.held_until``; a failed start backs its whole service off.
    Deadlines are on ``mono`` (``time.monotonic``).
    """

    def __init__(
        self,
        docker: DockerActuator,
        catalog: CatalogActuator,
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
        self.backoffs: dict[str, Backoff] = {}  # per service: failed starts and crashes
        self.action_backoffs: dict[str, Backoff] = {}  # per action key: failed actions
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
            held_until=MappingProxyType({k: b.retry_at for k, b in self.action_backoffs.items()}),
        )

    def starting_names(self) -> frozenset[str]:
        """Names of the containers being started now (under ``lock``)."""
        return frozenset(self._starting)

    def forget_actions(self, present: set[str]) -> None:
        """Forget the back-off of actions on things no longer ``present`` (ids, names; under ``lock``)."""
        for key in list(self.action_backoffs):
            if key.partition(":")[2] not in present:
                del self.action_backoffs[key]

    def submit(self, action: Action) -> None:
        """Queue ``action``, marking what it touches as busy at once."""
        key = action_key(action)
        service = action_service(action)
        with self.lock:
            match action:
                case StartContainer(manifest=m, slot=slot):
                    name = container_name(m.name, self.docker.host)
                    self._starting[name] = m.name
                    self._starting_spec[name] = f"{m.name}/{m.spec_hash()}"
                    job = _Job("start", service, lambda: self._start(m, name, slot), name=name)
                case DrainContainer(container=c):
                    self._busy.add(c.id)
                    job = _Job("drain", service, lambda: self._drain(action), cid=c.id, key=key)
                case RemoveDead(container=c):
                    self._busy.add(c.id)
                    job = _Job("remove_dead", service, lambda: self._remove_dead(action), cid=c.id, key=key)
                case Register(container=c, manifest=m):
                    log.info("registering", service=c.service, container=c.name, reason="missing or outdated")
                    self._busy_registrations.add(c.name)
                    job = _Job("register", service, lambda: self._register(c, m), sid=c.name, key=key)
                case Deregister(service_id=sid, reason=why):
                    log.info("deregistering", service_id=sid, reason=why)
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
        later: _Later | None = None
        try:
            later = job.work()
        except OperatorError as exc:
            error = str(exc)
            log.warning("action failed", action=job.kind, container=job.label, error=error)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("action crashed", action=job.kind, container=job.label)
        if later is None:
            metrics.container_actions.labels(job.kind, "error" if error else "ok").inc()
        with self.lock:
            self._active[job.service] -= 1
            if later is None:
                self._finish(job, error)
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

    def _finish(self, job: _Job, error: str) -> None:
        """The action is over (under ``lock``): release what it kept busy, count its outcome."""
        self._starting.pop(job.name, None)
        self._starting_spec.pop(job.name, None)
        self._busy.discard(job.cid)
        if job.sid:  # a start's registration, if any, is released by `_register_started`
            self._busy_registrations.discard(job.sid)
        if job.key is None:
            return
        if error:
            previous = self.action_backoffs.get(job.key, Backoff())
            self.action_backoffs[job.key] = backoff_after_failure(previous, self.mono(), error)
        else:
            self.action_backoffs.pop(job.key, None)

    def _start(self, manifest: Manifest, name: str, slot: int | None = None) -> None:
        try:
            for volume in self.docker.ensure_volumes(manifest, slot):
                # A first start here, or a replica moved from a lost or drained host: its data stays there.
                why = f"created fresh volume {volume} for slot {slot} on {self.docker.host}: no earlier data"
                event_log.record(manifest.name, events.VOLUME_CREATED, why)
            info = self.docker.start(manifest, name=name, slot=slot)
        except DockerUnavailable:
            # The engine is away, not the service failing: no service back-off. The
            # pass retries on the loop's own back-off (its listing fails too); a
            # streak grown during a 10 s engine restart held every start for a
            # minute after the engine was back (chaos seed 42: docker_restart, then
            # kill_many converged after 31-63 s).
            raise
        except OperatorError as exc:
            self._fail(manifest.name, f"start failed: {exc}", manifest.spec_hash())
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
        if not action.crashed:
            if c.state in ("exited", "dead"):  # it died after a good run: no back-off, still worth saying
                message = events.crash_message(c.name, c.exit_code, c.oom_killed, c.error, 0.0)
                event_log.record(c.service, events.CRASHED, message)
            self.docker.remove(c.id)
            return
        # Counted before the container goes: Docker reports the removal (an event
        # that wakes a pass) before our call returns, and a pass that saw the
        # container gone without this crash counted started a replacement at once
        # (seen by the crash-loop test). A removal that fails is planned again,
        # so its count is taken back: the same crash must not count twice.
        with self.lock:
            previous = self.backoffs.get(c.service, Backoff())
            counted = backoff_after_crash(previous, self.mono(), action)
            self.backoffs[c.service] = counted
            retry_in = counted.retry_at - self.mono()
        event_log.record(
            c.service,
            events.CRASHED,
            events.crash_message(c.name, c.exit_code, c.oom_killed, c.error, retry_in),
        )
        try:
            self.docker.remove(c.id)
        except Exception:
            with self.lock:
                if self.backoffs.get(c.service) == counted:
                    self.backoffs[c.service] = previous
            raise

    def _fail(self, service: str, error: str, spec_hash: str) -> None:
        with self.lock:
            previous = self.backoffs.get(service, Backoff())
            self.backoffs[service] = backoff_after_failure(previous, self.mono(), error, spec_hash)


def _running_specs(containers: list[ContainerInfo]) -> dict[str, dict[str, int]]:
    """Running containers per service per spec hash (busy ones too)."""
    counts: dict[str, dict[str, int]] = {}
    for c in containers:
        if c.running:
            per = counts.setdefault(c.service, {})
            per[c.spec_hash] = per.get(c.spec_hash, 0) + 1
    return counts


def _instance_marks(containers: list[ContainerInfo]) -> dict[str, dict[str, ReplicaMark]]:
    """Per service, its running containers by name (= Consul service id): port, short id and spec."""
    marks: dict[str, dict[str, ReplicaMark]] = {}
    for c in sorted(containers, key=lambda c: c.name):
        if c.running:
            mark = ReplicaMark(c.host_port or 0, c.id[:CONTAINER_ID_CHARS], c.spec_hash)
            marks.setdefault(c.service, {})[c.name] = mark
    return marks


class KVChanged:
    """Whether what a host pass reads from KV may have changed: fired by the watches on it, taken by the pass.

    Starts fired. A pass woken only by its own actions or Docker reuses its
    last read of manifests, placements and revisions instead of reading the
    whole prefixes again (at 1,000 services, 100 agents doing so on every
    finished start kept three Consul servers saturated: docs/benchmarks.md, *Scale*).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._event.set()

    def fire(self) -> None:
        """A watch saw a change: the next pass reads KV again."""
        self._event.set()

    def take(self) -> bool:
        """Whether a change was seen since the last `take`; clears it."""
        fired = self._event.is_set()
        self._event.clear()
        return fired


STATUS_CHECK_EVERY = 2.0
"""Seconds between two looks at this host's status records in KV (`HostAgent.status_drifted`)."""

KV_MAX_AGE = 60.0
"""Seconds a pass may reuse its last read of KV at most, whatever the watches say: a safety net."""


def check_status(agent: HostAgent, wake: Callable[[], None], stop: threading.Event) -> None:
    """Every `STATUS_CHECK_EVERY` seconds until ``stop``: wake a host pass when KV lost or changed
    this host's status records (`HostAgent.status_drifted`); a failed look is logged and retried."""
    failing = False
    while not stop.wait(STATUS_CHECK_EVERY):
        try:
            drifted = agent.status_drifted()
        except ConsulError as exc:
            if not failing:
                log.warning("cannot look at this host's status records", error=str(exc))
            failing = True
            continue
        except Exception:
            log.exception("looking at this host's status records crashed")
            continue
        failing = False
        if drifted:
            log.info("status records differ from what this host wrote; writing them again")
            wake()


_KVRead = tuple[dict[str, ManifestResult], dict[str, PlacementRecord], dict[tuple[str, str], Manifest]]


@dataclass
class HostAgent:
    """One host's reconcile pass.

    ``kv_changed``: when given, KV is read again only after it fired (or
    `KV_MAX_AGE`); None reads it on every pass.
    """

    consul: ConsulClient
    layout: Layout
    host: str
    docker: DockerActuator
    catalog: CatalogActuator
    executor: Executor
    # Two clocks: ``wall`` (Unix seconds) only to compare with Docker's times and
    # to stamp status records; ``mono`` for every deadline this process sets.
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    kv_changed: KVChanged | None = None
    allowed_caps: frozenset[str] = frozenset()  # --allow-cap: what a manifest's cap_add may name here
    allowed_host_paths: tuple[str, ...] = ()  # --allow-host-path: what a manifest's volumes may mount here
    # The Consul node our replicas are registered on (the local agent's), named
    # in every status record so that a registration elsewhere is not ours (ownership.py).
    node: str = ""

    def __post_init__(self) -> None:
        self._written: dict[str, StatusRecord] | None = None
        self._kv: _KVRead | None = None
        self._kv_read_at = 0.0
        self._refused_passes = 0  # passes in a row in which Consul refused a status record
        self._services = TreeMirror(self.layout.services_prefix)  # only changed manifests are read

    def _read_kv(self) -> _KVRead:
        """Manifests, placements and the revisions wanted here: read again, or the last read if unchanged."""
        changed = self.kv_changed is None or self.kv_changed.take()
        started = self.mono()
        if not changed and self._kv is not None and started - self._kv_read_at < KV_MAX_AGE:
            return self._kv
        try:
            layout = self.layout
            trees = self.consul.kv_trees([layout.placement_prefix], consistent=True)
            manifests = manifests_of(self._services.read(self.consul), layout, by_index=True)
            placements = placements_of(trees[layout.placement_prefix], layout)
            revisions = {
                (name, spec): kept
                for name, spec in revisions_wanted(self.host, manifests, placements)
                if (kept := read_revision(self.consul, self.layout, name, spec)) is not None
            }
        except BaseException:
            if self.kv_changed is not None:
                self.kv_changed.fire()  # not read: the next pass must try again
            raise
        self._kv, self._kv_read_at = (manifests, placements, revisions), started
        return self._kv

    def reconcile(self) -> PassResult:
        """One pass: read, plan, act, report."""
        now = self.wall()
        manifests, placements, revisions = self._read_kv()
        containers, inflight = self._observe()
        registrations = self.catalog.registrations()  # after the snapshot, as `_observe` says
        with self.executor.lock:
            self._reset_backoffs(containers, now)
            backoffs = dict(self.executor.backoffs)
            present = {c.id for c in containers} | {c.name for c in containers}
            self.executor.forget_actions(present | {r.service_id for r in registrations})

        desires = host_desires(
            self.host, manifests, placements, revisions, self.allowed_caps, self.allowed_host_paths
        )
        mono = self.mono()
        plan = plan_host(desires, containers, registrations, inflight, backoffs, now, mono=mono)
        for action in plan.actions:
            self.executor.submit(action)
        refused = self._report(plan.reports, _running_specs(containers), now, _instance_marks(containers))
        # A refused status record is tried again soon, backing off while Consul keeps refusing it.
        self._refused_passes = self._refused_passes + 1 if refused else 0
        wake_at = plan.wake_at
        if refused:
            retry = mono + backoff_delay(self._refused_passes)
            wake_at = retry if wake_at is None else min(wake_at, retry)
        if wake_at is None:
            return PassResult()
        return PassResult(requeue_after=max(0.0, wake_at - mono))

    def _observe(self) -> tuple[list[ContainerInfo], InFlight]:
        """What is in flight, then our containers: each replica counted exactly once.

        The snapshot comes first, under the executor's lock, and everything
        else is read after it, without the lock (a listing takes tens of
        milliseconds, and longer while the engine is busy with a burst; every
        finishing action needs the lock). An action in flight at the snapshot
        stays busy for this pass even if it finished since: a start's
        container, if already listed, is counted as the pending start it was
        (matched by its name, chosen before the start); a drained, removed or
        registered thing is left alone, as it was being handled. Only the
        pass itself submits actions, so nothing new starts meanwhile. The one
        miss, a start that failed since, is made up by the pass its end wakes.
        """
        with self.executor.lock:
            inflight = self.executor.snapshot()
            starting = self.executor.starting_names()
        containers = self.docker.list_containers(starting)
        started = frozenset(c.id for c in containers if c.name in starting)
        return containers, dataclasses.replace(inflight, busy_containers=inflight.busy_containers | started)

    def _reset_backoffs(self, containers: list[ContainerInfo], now: float) -> None:
        for service, backoff in list(self.executor.backoffs.items()):
            if any(c.service == service and ends_streak(backoff, c, now) for c in containers):
                self.executor.backoffs[service] = Backoff()  # a long enough run: the streak is over

    def _report(
        self,
        reports: tuple[ServiceReport, ...],
        specs: dict[str, dict[str, int]],
        now: float,
        instances: dict[str, dict[str, ReplicaMark]],
    ) -> bool:
        """Write ``operator/status/<service>/<host>`` for each service whose record differs from KV's;
        whether Consul refused any.

        Every change of a pass goes in as few transactions as fit Consul's
        limits (`txn.pack_writes`), not one write each: an agent starting its
        share of 1,000 services had written a hundred keys one by one, a Raft
        commit each (docs/benchmarks.md, *Scale*). Each transaction goes on its
        own (`ConsulClient.write_records`): a record Consul refuses (413, an
        ACL) is logged, counted in ``operator_kv_write_failures_total`` and
        tried again next pass, and every other is written.
        """
        if self._written is None:
            self._written = self._read_written()
        wanted: dict[str, StatusRecord] = {}
        for report in reports:
            marks = instances.get(report.service, {})
            record = StatusRecord(
                service=report.service,
                host=self.host,
                spec_hash=report.spec_hash,
                desired=report.desired,
                running=report.running,
                healthy=report.healthy,
                error=report.error,
                hold=report.hold,
                # Running containers per spec, draining ones included: the leader's surge limit.
                specs=frozen_map(specs.get(report.service, {})),
                # Our instance ids (container names), our node, each one's port, container
                # and spec: what counts as ours (ownership.py).
                instances=tuple(marks),
                since=now,
                node=self.node,
                replicas=MappingProxyType(marks),
            )
            if record.says_nothing:
                continue  # no record (its old one goes below), no gauges
            wanted[report.service] = record
            metrics.running_replicas.labels(report.service, self.host).set(report.running)
            metrics.host_healthy_replicas.labels(report.service, self.host).set(report.healthy)
            backoff = self.executor.backoffs.get(report.service, Backoff())
            metrics.consecutive_failures.labels(report.service, self.host).set(backoff.failures)
        # Compared with what KV holds, not with what this agent remembers writing:
        # a record deleted (an admin, a snapshot restore, the leader's clean-up of a
        # host it took for lost) or changed by anyone is written again.
        held = self._read_own(set(wanted) | set(self._written))
        changed: dict[str, StatusRecord | None] = {}
        for service, record in wanted.items():
            current = held.get(service)
            if record.same_report(current):
                assert current is not None
                self._written[service] = current
            else:
                changed[service] = record
        for service in set(held) - set(wanted):
            changed[service] = None  # deleted, or nothing of it here any more: its status goes too
        for service in set(self._written) - set(wanted) - set(held):
            self._forget_status(service)  # gone from KV already
        groups = {
            service: {
                self.layout.status_key(service, self.host): None if record is None else record.to_json()
            }
            for service, record in changed.items()
        }
        sent = self.consul.write_records(groups, max_value=lambda key: record_bound(self.layout, key))
        for service in sent.groups:
            written = changed[service]
            if written is not None:
                self._written[service] = written
            else:
                self._forget_status(service)
        for service, exc in sorted(sent.refused.items()):
            reason = refusal_reason(exc)
            metrics.kv_write_failures.labels("status", reason).inc()
            log.warning(
                "status record not written; the others were",
                service=service,
                reason=reason,
                status=exc.status,
                error=str(exc)[:300],
            )
        return bool(sent.refused)

    def _forget_status(self, service: str) -> None:
        """No record of ``service`` here any more: forget it, and its gauges."""
        assert self._written is not None
        self._written.pop(service, None)
        for gauge in (metrics.running_replicas, metrics.host_healthy_replicas, metrics.consecutive_failures):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(service, self.host)

    def _read_own(self, services: set[str]) -> dict[str, StatusRecord]:
        """This host's status records of ``services`` as KV holds them now (unreadable: absent)."""
        keys = {self.layout.status_key(service, self.host): service for service in services}
        held: dict[str, StatusRecord] = {}
        for key, entry in self.consul.kv_get_keys(list(keys)).items():
            try:
                held[keys[key]] = StatusRecord.from_json(entry.value, service=keys[key], host=self.host)
            except ValueError:
                held[keys[key]] = StatusRecord(keys[key], self.host, error="unreadable")
        return held

    def status_drifted(self) -> bool:
        """Whether KV holds other status records of this host than the last pass left there.

        Read by a background check (`STATUS_CHECK_EVERY`), which wakes a pass when
        it is so: a deletion of ``operator/status/`` changes no container, and no
        other watch of an agent would see it.
        """
        remembered = dict(self._written or {})
        if not remembered:
            return False
        held = self._read_own(set(remembered))
        return any(not record.same_report(held.get(s)) for s, record in remembered.items())

    def _read_written(self) -> dict[str, StatusRecord]:
        """Our status keys as a previous run of this agent left them, so a restart rewrites nothing."""
        return {
            service: per_host[self.host]
            for service, per_host in read_statuses(self.consul, self.layout).items()
            if self.host in per_host
        }
