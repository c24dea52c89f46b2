"""The host agent's executor and loop with stand-ins for Docker and Consul: back-off, fairness, clocks."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from consul_operator.adapters.consul_client import Indexed, KVEntry
from consul_operator.core.backoff import Backoff
from consul_operator.core.desired_state import Manifest, revision_json
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied, DockerError, DockerUnavailable
from consul_operator.core.host_pass import HostMemory, HostSettings, HostState, decide_host
from consul_operator.core.keys import Layout
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    DrainContainer,
    Now,
    Outcome,
    Register,
    Registration,
    StartContainer,
)
from consul_operator.core.records import LeaderRecord, PlacementRecord, frozen_map
from consul_operator.core.txn import CONSUL_MAX_VALUE_BYTES, Sent, Writes, pack_writes, send_groups
from consul_operator.core.work import WorkEntry, work_records
from consul_operator.daemons.executor import MAX_PARALLEL_ACTIONS, RESERVED_WORKERS, Executor
from consul_operator.daemons.host_agent import HostAgent
from consul_operator.daemons.loop import Trigger, run_loop
from tests.support.staging import wait_until

HOST = "host-1"
WEB = Manifest(name="web", image="hello:local", replicas=1, port=5000)


def running(cid: str, service: str = "web", spec: str = WEB.spec_hash()) -> ContainerInfo:
    """A running container of ``service`` that has run for an hour."""
    return ContainerInfo(
        cid, f"{service}-{cid}", service, spec, "running", host_port=30000, started_at=time.time() - 3600
    )


def registration(c: ContainerInfo) -> Registration:
    """The registration ``c`` should have."""
    return Registration(c.name, c.service, c.id, c.spec_hash, "127.0.0.1", c.host_port or 0, True)


@dataclass
class FakeDocker:
    """Our containers on one host, in memory; counts listings (`docker ps`) and refuses what it is told."""

    containers: list[ContainerInfo] = field(default_factory=list)
    refuse_remove: bool = False
    refuse_start: bool = False
    engine_away: bool = False  # every call fails as with the engine's socket gone
    stop_gate: threading.Event | None = None  # stop() blocks until set: a long stop grace
    publish: bool = False  # started containers publish a port (and so are registered)
    on_remove: Callable[[], None] = lambda: None  # runs as remove() is called
    host: str = HOST
    listings: int = 0
    removals: int = 0
    started: list[str] = field(default_factory=list)
    stopping: int = 0

    def list_containers(self, starting: object = ()) -> list[ContainerInfo]:
        self.listings += 1
        return list(self.containers)

    def remove(self, container_id: str) -> None:
        self.removals += 1
        self.on_remove()
        if self.refuse_remove:
            raise DockerError(f"Docker refused removing {container_id}: removal already in progress")

    def ensure_volumes(self, manifest: Manifest, slot: int | None) -> tuple[str, ...]:
        return ()

    def start(
        self,
        manifest: Manifest,
        *,
        name: str,
        slot: int | None = None,
        secrets: Mapping[str, bytes] | None = None,
    ) -> ContainerInfo:
        if self.engine_away:
            raise DockerUnavailable(f"Docker engine unreachable during creating {name}: connection refused")
        if self.refuse_start:
            raise DockerError(f"Docker refused creating {name}")
        self.started.append(manifest.name)
        port = 30000 + len(self.started) if self.publish else None
        return ContainerInfo(name, name, manifest.name, manifest.spec_hash(), "running", host_port=port)

    def stop(self, container_id: str, grace: float) -> None:
        self.stopping += 1
        if self.stop_gate is not None:
            self.stop_gate.wait(60)


@dataclass
class FakeCatalog:
    """Our registrations on the local Consul agent, in memory; refuses what it is told, like an ACL."""

    entries: list[Registration] = field(default_factory=list)
    refuse: bool = False
    registers: int = 0
    deregisters: int = 0
    probe_gate: threading.Event | None = None  # register_started() blocks until set: an app coming up
    registered_started: list[str] = field(default_factory=list)

    def registrations(self) -> list[Registration]:
        return list(self.entries)

    def register(self, container: ContainerInfo, manifest: Manifest) -> None:
        self.registers += 1
        if self.refuse:
            raise ConsulPermissionDenied("permission denied for registering: ACL not found")

    def register_started(self, container: ContainerInfo, manifest: Manifest, *, probe: bool = True) -> bool:
        if self.probe_gate is not None:
            self.probe_gate.wait(60)
        self.registered_started.append(container.name)
        return True

    def register_restored(
        self, container: ContainerInfo, manifest: Manifest, service_ids: Sequence[str]
    ) -> bool:
        self.registers += 1
        return not self.refuse

    def deregister(self, service_id: str) -> None:
        self.deregisters += 1
        if self.refuse:
            raise ConsulPermissionDenied("permission denied for deregistering: ACL not found")


@dataclass
class FakeConsul:
    """Consul KV in memory, with a manifest and this host's placement of it."""

    kv: dict[str, bytes] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    """Keys whose writes Consul refuses (an ACL on one key)."""
    sessions: dict[str, str] = field(default_factory=dict)
    """Keys held by a session (the leader lock): key -> session."""

    def kv_list(self, prefix: str, **_: object) -> Indexed[list[KVEntry]]:
        entries = [
            KVEntry(k, v, self._index(k, v), self.sessions.get(k))
            for k, v in sorted(self.kv.items())
            if k.startswith(prefix)
        ]
        return Indexed(1, entries)

    def kv_trees(self, prefixes: list[str], **_: object) -> dict[str, list[KVEntry]]:
        return {prefix: self.kv_list(prefix).value for prefix in prefixes}

    @staticmethod
    def _index(*parts: object) -> int:
        """A modify index that changes with the content (tests also write ``kv`` directly)."""
        return 1 + (hash(parts) & 0xFFFFFFF)

    def kv_keys(self, prefix: str, *, separator: str | None = None, **_: object) -> Indexed[list[str]]:
        items = tuple(sorted((k, v) for k, v in self.kv.items() if k.startswith(prefix)))
        keys = [k for k, _ in items]
        if separator is not None:
            # Consul's rule: each key up to and including the first separator after the prefix.
            keys = sorted({prefix + "".join(k[len(prefix) :].partition(separator)[:2]) for k in keys})
        return Indexed(self._index(prefix, items), keys)

    def kv_stale(self, known: Mapping[str, int], **_: object) -> set[str]:
        return {k for k, i in known.items() if k not in self.kv or self._index(k, self.kv[k]) != i}

    def kv_get_many(self, keys: list[str], **_: object) -> list[KVEntry]:
        return [KVEntry(k, self.kv[k], self._index(k, self.kv[k])) for k in keys if k in self.kv]

    def kv_get(self, key: str, **_: object) -> Indexed[KVEntry | None]:
        value = self.kv.get(key)
        return Indexed(1, None if value is None else KVEntry(key, value, 1, self.sessions.get(key)))

    def kv_put(self, key: str, value: bytes | str, **_: object) -> bool:
        self.kv[key] = value.encode() if isinstance(value, str) else value
        return True

    def kv_delete(self, key: str, **_: object) -> None:
        self.kv.pop(key, None)

    def kv_get_keys(self, keys: list[str], **_: object) -> dict[str, KVEntry]:
        return {key: KVEntry(key, self.kv[key], 1) for key in keys if key in self.kv}

    def kv_txn(self, writes: Mapping[str, bytes | None]) -> None:
        refused = sorted(self.refuse & set(writes))
        if refused:
            raise ConsulPermissionDenied(f"permission denied for {refused[0]}", status=403)
        for key, value in writes.items():
            if value is None:
                self.kv.pop(key, None)
            else:
                self.kv[key] = value

    def write_records(
        self, groups: Mapping[str, Writes], *, max_value: int | Callable[[str], int] = CONSUL_MAX_VALUE_BYTES
    ) -> Sent[ConsulError]:
        """As `ConsulClient.write_records`: the one packer, each transaction on its own."""

        def send(writes: Writes) -> ConsulError | None:
            try:
                self.kv_txn(writes)
            except ConsulError as exc:
                return exc
            return None

        too_large = ConsulError("too large", status=413)
        return send_groups(pack_writes(groups, max_value=max_value), send, too_large)


LEADER_SESSION = "s1"
"""The session holding the leader lock in `placed`'s KV (the one its work keys are written under)."""


def placed(manifest: Manifest, count: int) -> FakeConsul:
    """KV as a leader leaves it for ``manifest`` with ``count`` replicas placed on this host: the
    manifest, its placement and revision, the leader lock and this host's work key under its session."""
    layout = Layout()
    text = f"name: {manifest.name}\nimage: {manifest.image}\nreplicas: {count}\nport: {manifest.port}\n"
    spec = manifest.spec_hash()
    record = PlacementRecord(manifest.name, spec, frozen_map({HOST: count}))
    work = {manifest.name: WorkEntry(spec, count)} if count else {}
    return FakeConsul(
        {
            layout.service_key(manifest.name): text.encode(),
            layout.placement_prefix + manifest.name: record.to_json(),
            layout.revision_key(manifest.name, spec): revision_json(manifest),
            layout.leader_key: LeaderRecord("host-0", 0.0).to_json(),
            **work_records(layout, HOST, work, LEADER_SESSION),
        },
        sessions={layout.leader_key: LEADER_SESSION},
    )


@dataclass
class Running:
    """A host agent's loop running in a thread on the fakes."""

    docker: FakeDocker
    catalog: FakeCatalog
    executor: Executor
    agent: HostAgent
    started: float


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Stops whatever a test started."""
    event = threading.Event()
    yield event
    event.set()


def run_agent(docker: FakeDocker, catalog: FakeCatalog, consul: FakeConsul, stop: threading.Event) -> Running:
    """The real executor, host agent and loop runner on the fakes, in a daemon thread."""
    trigger = Trigger()
    executor = Executor(docker, catalog, on_done=trigger.fire)
    agent = HostAgent(consul, Layout(), HOST, docker, catalog, executor)
    thread = threading.Thread(
        target=run_loop, args=("host", agent.reconcile, trigger, stop), kwargs={"resync": 60.0}, daemon=True
    )
    thread.start()
    return Running(docker, catalog, executor, agent, time.monotonic())


C1 = running("c1")
DEAD = ContainerInfo(
    "d1", "web-d1", "web", WEB.spec_hash(), "dead", started_at=time.time() - 7200,
    finished_at=time.time() - 3600, exit_code=0,
)  # fmt: skip
ORPHAN = Registration("web-zz", "web", "gone", WEB.spec_hash(), "127.0.0.1", 31000, True)


@pytest.mark.parametrize(
    ("containers", "registrations", "refuse_remove", "refuse_catalog", "attempts"),
    [
        pytest.param([C1, DEAD], [registration(C1)], True, False, "removals", id="dead-not-removable"),
        pytest.param([C1], [], False, True, "registers", id="registration-refused-by-acl"),
        pytest.param([C1], [registration(C1), ORPHAN], False, True, "deregisters", id="deregister-refused"),
    ],
)  # fmt: skip
def test_failing_action_backs_off_instead_of_a_hot_loop(
    stop: threading.Event,
    containers: list[ContainerInfo],
    registrations: list[Registration],
    refuse_remove: bool,
    refuse_catalog: bool,
    attempts: str,
) -> None:
    """An action that keeps failing is retried after 1 s, then 2 s: a few passes, not a `docker ps` loop."""
    docker = FakeDocker(containers, refuse_remove=refuse_remove)
    catalog = FakeCatalog(registrations, refuse=refuse_catalog)
    agent = run_agent(docker, catalog, placed(WEB, 1), stop)
    source = docker if attempts == "removals" else catalog
    wait_until(lambda: getattr(source, attempts) >= 3, timeout=30, what=f"three {attempts}")
    elapsed = time.monotonic() - agent.started
    assert elapsed >= 1 + 2, f"three tries in {elapsed:.2f}s: the back-off (1 s, 2 s) was not kept"
    # A pass for the first look and one per try and per wake-up: a handful, not thousands.
    assert docker.listings <= 12, f"{docker.listings} container listings in {elapsed:.1f}s"
    backoffs = agent.agent.memory.action_backoffs
    assert max(b.failures for b in backoffs.values()) >= 2


@dataclass
class BrokenDocker(FakeDocker):
    """An engine whose client raises an unexpected error on every start (no `DockerError`)."""

    def start(
        self,
        manifest: Manifest,
        *,
        name: str,
        slot: int | None = None,
        secrets: Mapping[str, bytes] | None = None,
    ) -> ContainerInfo:
        self.started.append(manifest.name)
        raise RuntimeError("could not parse the engine's answer")


def test_a_start_that_crashes_backs_off_like_a_refused_one(stop: threading.Event) -> None:
    """A start failing with an unexpected error backs its service off (1 s, 2 s), not a hot loop of starts."""
    docker = BrokenDocker()
    agent = run_agent(docker, FakeCatalog(), placed(WEB, 1), stop)
    wait_until(lambda: len(docker.started) >= 3, timeout=30, what="three tries")
    elapsed = time.monotonic() - agent.started
    assert elapsed >= 1 + 2, f"three starts in {elapsed:.2f}s: the back-off (1 s, 2 s) was not kept"


def test_success_clears_an_action_backoff(stop: threading.Event) -> None:
    """Once a refused registration goes through, its back-off is forgotten."""
    catalog = FakeCatalog([], refuse=True)
    agent = run_agent(FakeDocker([C1]), catalog, placed(WEB, 1), stop)
    wait_until(lambda: catalog.registers >= 1, timeout=30, what="the first try")
    wait_until(lambda: agent.agent.memory.action_backoffs, timeout=30, what="the back-off")
    catalog.refuse = False
    wait_until(lambda: catalog.registers >= 2, timeout=30, what="the retry")
    wait_until(lambda: not agent.agent.memory.action_backoffs, timeout=30, what="the back-off forgotten")


def test_backoffs_are_on_the_monotonic_clock(stop: threading.Event) -> None:
    """Failed starts and actions end at the executor's monotonic time; the next pass backs off from it."""
    docker, catalog = FakeDocker(refuse_start=True), FakeCatalog(refuse=True)
    done = threading.Event()
    executor = Executor(docker, catalog, on_done=done.set, mono=lambda: 500.0)
    try:
        for action in (StartContainer(WEB), Register(C1, WEB)):
            done.clear()
            executor.submit(action)
            wait_until(done.is_set, timeout=10, what=f"{type(action).__name__} to finish")
    finally:
        executor.shutdown()
    with executor.lock:
        outcomes = executor.take_outcomes()
    denied = "permission denied for registering: ACL not found"
    start, register = outcomes
    assert (start.kind, start.key, start.at, start.spec_hash) == ("start", None, 500.0, WEB.spec_hash())
    assert start.error.startswith("Docker refused creating web-")
    assert register == Outcome("register", "web", "register:web-c1", denied, 500.0)
    young = dataclasses.replace(C1, started_at=time.time())  # a long run would end the streak
    state = HostState({}, {}, {}, (young,), (), outcomes=outcomes)
    memory = decide_host(state, HostMemory(), Now(mono=500.5, wall=time.time()), HostSettings(HOST)).memory
    assert memory.backoffs["web"].retry_at == 501.0
    assert memory.action_backoffs["register:web-c1"] == Backoff(failures=1, retry_at=501.0, last_error=denied)


@pytest.mark.parametrize(
    ("docker", "backed_off"),
    [
        pytest.param(FakeDocker(refuse_start=True), True, id="engine-refuses-the-start"),
        pytest.param(FakeDocker(engine_away=True), False, id="engine-away"),
    ],
)
def test_only_a_start_the_engine_refuses_backs_the_service_off(docker: FakeDocker, backed_off: bool) -> None:
    """A start refused by Docker backs its service off; one that finds the engine away does not
    (the pass retries on the loop's back-off), so an engine restart leaves no minute-long hold."""
    done = threading.Event()
    executor = Executor(docker, FakeCatalog(), on_done=done.set)
    try:
        for _ in range(3):
            done.clear()
            executor.submit(StartContainer(WEB))
            wait_until(done.is_set, timeout=10, what="the start to finish")
    finally:
        executor.shutdown()
    with executor.lock:
        outcomes = executor.take_outcomes()
    state = HostState({}, {}, {}, outcomes=outcomes)
    memory = decide_host(state, HostMemory(), Now(time.monotonic(), time.time()), HostSettings(HOST)).memory
    assert ("web" in memory.backoffs) is backed_off
    if backed_off:
        assert memory.backoffs["web"].failures == 3


def test_slow_service_cannot_hold_every_worker(stop: threading.Event) -> None:
    """Slow stops of one service use all workers but a reserve, which another service's start gets."""
    gate = threading.Event()
    docker = FakeDocker(stop_gate=gate)
    executor = Executor(docker, FakeCatalog(), on_done=lambda: None)
    try:
        drains: list[Action] = [
            DrainContainer(running(f"s{i}", service="slow"), drain=0.0, stop_grace=600.0, reason="scale down")
            for i in range(2 * MAX_PARALLEL_ACTIONS)
        ]
        for action in drains:
            executor.submit(action)
        wide = MAX_PARALLEL_ACTIONS - RESERVED_WORKERS
        wait_until(lambda: docker.stopping == wide, timeout=10, what="the slow stops to run wide")
        executor.submit(StartContainer(WEB))
        wait_until(lambda: "web" in docker.started, timeout=10, what="web's start while slow stops")
        assert docker.stopping == wide, "one service took the reserved workers"
    finally:
        gate.set()
        executor.shutdown()


def test_drain_time_holds_no_worker(stop: threading.Event) -> None:
    """Containers waiting out a long drain hold no worker: every start of another service runs at once."""
    docker = FakeDocker()
    executor = Executor(docker, FakeCatalog(), on_done=lambda: None)
    try:
        for i in range(2 * MAX_PARALLEL_ACTIONS):
            c = running(f"s{i}", service="slow")
            executor.submit(DrainContainer(c, drain=600.0, stop_grace=1.0, reason="scale down"))
        for _ in range(MAX_PARALLEL_ACTIONS):
            executor.submit(StartContainer(WEB))
        wait_until(
            lambda: docker.started.count("web") == MAX_PARALLEL_ACTIONS, timeout=10, what="every start"
        )
        assert docker.stopping == 0
        with executor.lock:
            assert len(executor.snapshot().busy_containers) == 2 * MAX_PARALLEL_ACTIONS
    finally:
        executor.shutdown()


def test_registration_waits_for_its_check_off_the_workers() -> None:
    """A started replica's registration, waiting for its app, holds no worker and is never planned twice."""
    gate = threading.Event()
    docker = FakeDocker(publish=True)
    catalog = FakeCatalog(probe_gate=gate)
    done = threading.Event()
    executor = Executor(docker, catalog, on_done=done.set)
    web = Manifest(name="web", image="hello:local", replicas=1, port=5000)
    try:
        for _ in range(MAX_PARALLEL_ACTIONS + 1):
            executor.submit(StartContainer(web))
        wait_until(lambda: len(docker.started) == MAX_PARALLEL_ACTIONS + 1, timeout=10, what="every start")
        # Every start is over (its worker free), every registration still waits for its check.
        wait_until(
            lambda: len(executor.snapshot().busy_registrations) == MAX_PARALLEL_ACTIONS + 1,
            timeout=10,
            what="the registrations to be in flight, the starts over",
        )
        with executor.lock:
            waiting = executor.snapshot().busy_registrations
        assert catalog.registered_started == []
        gate.set()
        wait_until(
            lambda: not executor.snapshot().busy_registrations,
            timeout=10,
            what="every registration done and released",
        )
        assert sorted(catalog.registered_started) == sorted(waiting)
        assert done.is_set()
    finally:
        gate.set()
        executor.shutdown()
