"""One host's plan: which containers to start, drain, remove, and which registrations to fix."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import pytest

from consul_operator.core.backoff import Backoff
from consul_operator.core.desired_state import DEFAULT_DRAIN, DEFAULT_STOP_GRACE, Manifest
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    DrainContainer,
    HostActions,
    InFlight,
    Register,
    Registration,
    RemoveDead,
    ServiceDesire,
    ServiceReport,
    StartContainer,
    extra_port_id,
)
from consul_operator.core.reconcile import plan_host
from consul_operator.core.records import frozen_map

NOW = 1_700_000_000.0

WEB = Manifest(name="web", image="hello:1", replicas=2, port=5000, drain=3.0, stop_grace=7.0)
WEB_V2 = Manifest(name="web", image="hello:2", replicas=2, port=5000)
WORKER = Manifest(name="worker", image="worker:1", replicas=1)  # no port: never registered
OLD = WEB.spec_hash()
NEW = WEB_V2.spec_hash()


def want(
    manifest: Manifest | None, count: int, service: str = "web", error: str | None = None
) -> dict[str, ServiceDesire]:
    """Desires of one service, as plan_host takes them."""
    return {service: ServiceDesire(service, manifest, count, error)}


def ctr(
    cid: str,
    *,
    service: str = "web",
    spec: str = OLD,
    state: str = "running",
    age: float = 100.0,
    ran: float | None = None,
    exit_code: int | None = None,
    error: str = "",
    port: int | None = 32000,
    oom: bool = False,
) -> ContainerInfo:
    """A container named '<service>-<cid>', started ``age`` seconds before NOW.

    ``ran`` (for dead containers) is how long it ran before it finished.
    """
    started = None if state == "created" else NOW - age
    finished = None if ran is None or started is None else started + ran
    return ContainerInfo(
        id=cid,
        name=f"{service}-{cid}",
        service=service,
        spec_hash=spec,
        state=state,
        host_port=port,
        created_at=NOW - age - 1,
        started_at=started,
        finished_at=finished,
        exit_code=exit_code,
        error=error,
        oom_killed=oom,
    )


def reg(
    c: ContainerInfo, *, healthy: bool = True, port: int | None = None, restored: bool = False
) -> Registration:
    """The registration ``c`` should have (or one with another port; ``restored``: by a restarted Consul)."""
    return Registration(
        service_id=c.name,
        service=c.service,
        container_id=c.id,
        spec_hash=c.spec_hash,
        address="127.0.0.11",
        port=port if port is not None else (c.host_port or 0),
        healthy=healthy,
        restored=restored,
    )


def orphan(service_id: str, service: str = "web") -> Registration:
    """A registration whose container does not exist."""
    return Registration(service_id, service, "gone-id", OLD, "127.0.0.11", 31000, True)


NOTHING_IN_FLIGHT = InFlight()


def plan(
    desires: Mapping[str, ServiceDesire],
    containers: Sequence[ContainerInfo] = (),
    registrations: Sequence[Registration] = (),
    inflight: InFlight = NOTHING_IN_FLIGHT,
    backoffs: Mapping[str, Backoff] | None = None,
    now: float = NOW,
    mono: float = NOW,
) -> HostActions:
    return plan_host(desires, containers, registrations, inflight, backoffs or {}, now, mono=mono)


def summary(action: Action) -> tuple[object, ...]:
    """A short, readable form of an action for decision tables."""
    match action:
        case StartContainer(manifest=m):
            return ("start", m.spec_hash())
        case DrainContainer(container=c, reason=reason):
            return ("drain", c.id, reason)
        case RemoveDead(container=c, crashed=crashed, reason=reason):
            return ("remove", c.id, crashed, reason)
        case Register(container=c, restored=True, restored_ids=ids):
            return ("register again passing", c.id, *ids)
        case Register(container=c):
            return ("register", c.id)
        case Deregister(service_id=sid, reason=reason):
            return ("deregister", sid, reason)
    raise AssertionError(action)


def summaries(result: HostActions) -> list[tuple[object, ...]]:
    return [summary(a) for a in result.actions]


C1, C2, C3 = ctr("c1", age=300), ctr("c2", age=200), ctr("c3", age=100)


@pytest.mark.parametrize(
    ("desires", "containers", "registrations", "expected"),
    [
        pytest.param(
            want(WEB, 2), [], [], [("start", OLD), ("start", OLD)],
            id="empty-host-starts-all",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2], [reg(C1), reg(C2)], [],
            id="converged-does-nothing",
        ),
        pytest.param(
            want(WEB, 3), [C1], [reg(C1)], [("start", OLD), ("start", OLD)],
            id="scale-up-starts-missing",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2, C3], [reg(C1), reg(C2, healthy=False), reg(C3)],
            [("drain", "c2", "scale down")],
            id="scale-down-drains-unhealthy-first",
        ),
        pytest.param(
            want(WEB, 1), [C2, C3, C1], [reg(C1), reg(C2), reg(C3)],
            [("drain", "c3", "scale down"), ("drain", "c2", "scale down")],
            id="scale-down-drains-youngest-next",
        ),
        pytest.param(
            want(WEB, 0), [C1, C2], [reg(C1), reg(C2)],
            [("drain", "c2", "scale down"), ("drain", "c1", "scale down")],
            id="scale-to-zero-drains-all",
        ),
        pytest.param(
            want(WEB, 2), [C1, ctr("d1", state="exited", ran=3600, exit_code=0)], [reg(C1)],
            [("remove", "d1", False, "exited with code 0 after 3600.0s"), ("start", OLD)],
            id="long-run-exit-is-no-crash",
        ),
        pytest.param(
            want(WEB, 1),
            [C1, ctr("d1", state="dead", ran=20, exit_code=137, error="OOMKilled")], [reg(C1)],
            [("remove", "d1", False, "exited with code 137 after 20.0s: OOMKilled")],
            id="dead-with-docker-error",
        ),
        pytest.param(
            want(WEB, 2), [C1, ctr("d1", state="exited", ran=2, exit_code=137)], [reg(C1)],
            [("remove", "d1", False, "exited with code 137 after 2.0s"), ("start", OLD)],
            id="young-docker-kill-is-no-crash",
        ),
        pytest.param(
            want(WEB, 2), [C1, ctr("d1", state="exited", ran=2, exit_code=137, oom=True)], [reg(C1)],
            [("remove", "d1", True, "exited with code 137 after 2.0s")],
            id="young-oom-kill-is-a-crash",
        ),
        pytest.param(
            want(WEB, 1), [C1], [reg(C1, port=31999)], [("register", "c1")],
            id="wrong-port-re-registers",
        ),
        pytest.param(
            want(WEB, 1), [C1], [orphan("web-c1")], [("register", "c1")],
            id="other-container-id-re-registers",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2], [reg(C1)], [("register", "c2")],
            id="missing-registration-registers",
        ),
        pytest.param(
            want(WEB, 1), [ctr("c1", port=None)], [], [],
            id="no-host-port-not-registered",
        ),
        pytest.param(
            want(WORKER, 1, "worker"), [ctr("w1", service="worker", spec=WORKER.spec_hash())],
            [], [],
            id="service-without-port-not-registered",
        ),
        pytest.param(
            want(WEB, 1), [C1], [reg(C1), orphan("web-zz")],
            [("deregister", "web-zz", "container gone")],
            id="orphan-registration-deregistered",
        ),
        pytest.param(
            want(WEB, 1), [ctr("c1", port=None)], [reg(ctr("c1"))],
            [("deregister", "web-c1", "container publishes no port")],
            id="unregistrable-container-deregistered",
        ),
        pytest.param(
            want(WEB, 1), [C1], [reg(C1), orphan("api-x", service="api")],
            [("deregister", "api-x", "service deleted")],
            id="registration-of-deleted-service-deregistered",
        ),
        pytest.param(
            want(WEB, 1), [C1, C2], [reg(C1), reg(C2)], [("drain", "c2", "scale down")],
            id="drained-container-keeps-registration-for-the-drain",
        ),
    ],
)  # fmt: skip
def test_valid_service(
    desires: dict[str, ServiceDesire],
    containers: list[ContainerInfo],
    registrations: list[Registration],
    expected: list[tuple[object, ...]],
) -> None:
    """A service with a valid manifest is driven to its desired count and registrations."""
    assert summaries(plan(desires, containers, registrations)) == expected


def test_drain_uses_manifest_timings() -> None:
    """Draining waits the manifest's drain time and stops with its grace."""
    (action,) = plan(want(WEB, 0), [C1], [reg(C1)]).actions
    assert action == DrainContainer(C1, drain=3.0, stop_grace=7.0, reason="scale down")


@pytest.mark.parametrize(
    ("dead", "crashed", "reason"),
    [
        pytest.param(
            ctr("d1", state="exited", ran=0.3, exit_code=1), True,
            "exited with code 1 after 0.3s", id="quick-exit-is-crash",
        ),
        pytest.param(
            ctr("d1", state="exited", ran=9.99, exit_code=0), True,
            "exited with code 0 after 9.9s", id="just-under-min-run-is-crash",
        ),
        pytest.param(
            ctr("d1", state="created", error="port is already allocated"), True,
            "never started: port is already allocated", id="never-started-is-crash",
        ),
    ],
)  # fmt: skip
def test_crash_is_removed_and_holds_the_restart(dead: ContainerInfo, crashed: bool, reason: str) -> None:
    """A crashed container is removed as a crash; its replacement waits for the back-off."""
    result = plan(want(WEB, 2), [C1, dead], [reg(C1)])
    assert summaries(result) == [("remove", "d1", crashed, reason)]
    assert result.wake_at == NOW + 1.0
    assert result.reports[0].error == f"crash-looping: {reason}; next try in 1s"


def test_crash_within_backoff_starts_nothing_and_sets_wake_at() -> None:
    """While a service is in back-off nothing starts, and the plan says when to look again."""
    backoff = Backoff(failures=4, retry_at=NOW + 8, last_error="crash-looping: exited with code 1 after 0.1s")
    young = ctr("c1", age=5)  # a replica that has run MIN_RUN_SECONDS would end the streak
    result = plan(want(WEB, 2), [young], [reg(young)], backoffs={"web": backoff})
    assert result.actions == ()
    assert result.wake_at == NOW + 8
    assert result.reports == (
        ServiceReport(
            "web", desired=2, running=1, healthy=1, spec_hash=OLD,
            error="crash-looping: exited with code 1 after 0.1s; next try in 8s",
        ),
    )  # fmt: skip


def test_backoff_over_starts_all_missing() -> None:
    """Once the back-off has run out, every missing replica is started again."""
    backoff = Backoff(failures=4, retry_at=NOW, last_error="crash-looping: x")
    result = plan(want(WEB, 3), [C1], [reg(C1)], backoffs={"web": backoff})
    assert summaries(result) == [("start", OLD), ("start", OLD)]
    assert result.wake_at is None
    assert result.reports[0].error == ""


def test_earliest_backoff_wins() -> None:
    """With several services in back-off the plan wakes for the earliest."""
    desires = {**want(WEB, 1), **want(WORKER, 1, "worker")}
    backoffs = {"web": Backoff(1, NOW + 30, "a"), "worker": Backoff(1, NOW + 5, "b")}
    assert plan(desires, backoffs=backoffs).wake_at == NOW + 5


def n1(age: float = 5) -> ContainerInfo:
    return ctr("n1", spec=NEW, age=age)


def n2(age: float = 4) -> ContainerInfo:
    return ctr("n2", spec=NEW, age=age)


@pytest.mark.parametrize(
    ("containers", "pending", "expected"),
    [
        pytest.param(
            [C1, C2], 0, [("start", NEW), ("start", NEW)],
            id="1-start-new-keep-old",
        ),
        pytest.param([C1, C2], 2, [], id="2-wait-for-pending-starts"),
        pytest.param(
            [C1, C2, n1()], 1, [("drain", "c2", "spec changed"), ("register", "n1")],
            id="3-one-new-runs-one-old-drained",
        ),
        pytest.param(
            [C1, n1(), n2()], 0, [("drain", "c1", "spec changed"), ("register", "n1"),
                                  ("register", "n2")],
            id="4-all-new-run-last-old-drained",
        ),
        pytest.param([n1(), n2()], 0, [("register", "n1"), ("register", "n2")], id="5-done"),
    ],
)  # fmt: skip
def test_spec_change_keeps_capacity(
    containers: list[ContainerInfo], pending: int, expected: list[tuple[object, ...]]
) -> None:
    """A changed spec starts new containers first and drains old ones only as they are replaced."""
    inflight = InFlight(pending_starts=frozen_map({"web": pending}))
    registrations = [reg(c) for c in containers if c.spec_hash == OLD]
    result = plan(want(WEB_V2, 2), containers, registrations, inflight)
    assert summaries(result) == expected
    assert result.reports[0].running == len(containers)


@pytest.mark.parametrize(
    ("registration", "inflight", "expected"),
    [
        pytest.param(
            reg(C1, healthy=False, restored=True),
            NOTHING_IN_FLIGHT,
            [("register again passing", "c1", "web-c1")],
            id="restored-critical-registered-again",
        ),
        pytest.param(reg(C1, healthy=False), NOTHING_IN_FLIGHT, [], id="critical-after-a-run-left-to-consul"),
        pytest.param(reg(C1, restored=True), NOTHING_IN_FLIGHT, [], id="passing-left-alone"),
        pytest.param(
            reg(C1, healthy=False, restored=True),
            InFlight(busy_registrations=frozenset({C1.name})),
            [],
            id="registration-in-flight",
        ),
        pytest.param(
            reg(C1, healthy=False, restored=True),
            InFlight(held_until=MappingProxyType({f"register:{C1.name}": NOW + 5})),
            [],
            id="backing-off-after-a-failed-probe",
        ),
        pytest.param(
            reg(C1, healthy=False, restored=True, port=1),
            NOTHING_IN_FLIGHT,
            [("register", "c1")],
            id="wrong-registration-registered-as-usual",
        ),
    ],
)
def test_a_check_restored_critical_by_a_consul_restart_is_registered_again(
    registration: Registration, inflight: InFlight, expected: list[tuple[object, ...]]
) -> None:
    """A right registration Consul restored critical (its agent restarted) is registered again, passing;
    nothing else is, and not while in flight or backing off."""
    result = plan(want(WEB, 1), [C1], [registration], inflight=inflight)
    assert summaries(result) == expected


TWO_PORTS = Manifest("web", "hello:1", 2, port=5000, ports=(("http", 5000), ("metrics", 9100)))
C_TWO = dataclasses.replace(
    ctr("c1", spec=TWO_PORTS.spec_hash()), host_port=32000, host_ports=((5000, 32000), (9100, 32001))
)


def two_port_regs(*, own: str = "passing", metrics: str = "passing") -> list[Registration]:
    """C_TWO's registration and its metrics port's: each passing, critical after a run, or restored."""
    own_reg = reg(C_TWO, healthy=own == "passing", restored=own == "restored")
    extra = dataclasses.replace(
        own_reg,
        service_id=extra_port_id(C_TWO.name, "metrics"),
        port=32001,
        extra_port="metrics",
        healthy=metrics == "passing",
        restored=metrics == "restored",
    )
    return [own_reg, extra]


@pytest.mark.parametrize(
    ("registrations", "expected"),
    [
        pytest.param(two_port_regs(), [], id="both-passing"),
        pytest.param(
            two_port_regs(metrics="restored"),
            [("register again passing", "c1", "web-c1-metrics")],
            id="only-the-extra-port-restored",
        ),
        pytest.param(
            two_port_regs(own="restored", metrics="restored"),
            [("register again passing", "c1", "web-c1", "web-c1-metrics")],
            id="both-restored",
        ),
        pytest.param(
            two_port_regs(own="restored"),
            [("register again passing", "c1", "web-c1")],
            id="only-its-own-restored",
        ),
        pytest.param(
            two_port_regs(metrics="critical"), [], id="extra-port-critical-after-a-run-left-to-consul"
        ),
    ],
)
def test_an_extra_port_restored_critical_by_a_consul_restart_is_registered_again(
    registrations: list[Registration], expected: list[tuple[object, ...]]
) -> None:
    """Each of a replica's registrations (its own, its extra ports') restored critical is registered again."""
    result = plan(want(TWO_PORTS, 1), [C_TWO], registrations)
    assert summaries(result) == expected


def test_outdated_container_keeps_its_registration() -> None:
    """An outdated container still serving is not re-registered nor deregistered."""
    result = plan(want(WEB_V2, 2), [C1, C2], [reg(C1), reg(C2)])
    assert [s for s in summaries(result) if s[0] != "start"] == []


def test_deleted_service_is_drained() -> None:
    """Containers of a deleted service are drained with the defaults, dead ones removed."""
    running, dead = ctr("c1", service="api"), ctr("d1", service="api", state="exited", ran=1)
    result = plan({}, [running, dead], [reg(running), reg(dead), orphan("api-zz", "api")])
    assert result.actions == (
        RemoveDead(dead, crashed=False, reason="service deleted"),
        DrainContainer(running, DEFAULT_DRAIN, DEFAULT_STOP_GRACE, reason="service deleted"),
        Deregister("api-zz", reason="service deleted", service="api"),
    )
    assert (DEFAULT_DRAIN, DEFAULT_STOP_GRACE) == (2.0, 10.0)
    assert result.reports == (ServiceReport("api", 0, running=1, healthy=1, spec_hash=""),)


def test_deleted_service_drains_with_what_its_replica_was_started_with() -> None:
    """A replica labelled with its manifest's drain and stop grace drains and stops with them once the
    manifest is deleted (no manifest says them any more), as a pod keeps its own grace period."""
    running = dataclasses.replace(ctr("c1", service="api"), drain=30.0, stop_grace=0.5)
    result = plan({}, [running], [reg(running)])
    assert result.actions == (DrainContainer(running, 30.0, 0.5, reason="service deleted"),)


def test_invalid_service_is_left_alone() -> None:
    """An invalid manifest means hands off: no action on its containers or registrations."""
    containers = [C1, C2, C3, ctr("d1", state="exited", ran=0.1, exit_code=1)]
    registrations = [reg(C1, port=1), orphan("web-zz")]  # both would be fixed if valid
    desires = want(None, 1, error="Invalid: replicas: must be an integer, got string 'x'")
    result = plan(desires, containers, registrations)
    assert result.actions == ()
    assert result.wake_at is None
    assert result.reports == (
        ServiceReport(
            "web", desired=1, running=3, healthy=1, spec_hash="",
            error="Invalid: replicas: must be an integer, got string 'x'",
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("desires", "containers", "registrations", "inflight", "expected"),
    [
        pytest.param(
            want(WEB, 2), [C1, C2], [reg(C1), reg(C2)],
            InFlight(busy_containers=frozenset({"c1"}), pending_starts=frozen_map({"web": 1})),
            [],
            id="busy-not-counted-pending-counted",
        ),
        pytest.param(
            want(WEB, 1), [C1, C2, C3], [reg(C1), reg(C2), reg(C3)],
            InFlight(busy_containers=frozenset({"c3"})),
            [("drain", "c2", "scale down")],
            id="busy-never-drained",
        ),
        pytest.param(
            want(WEB, 1), [ctr("d1", state="exited", ran=0.1)], [],
            InFlight(busy_containers=frozenset({"d1"}), pending_starts=frozen_map({"web": 1})),
            [],
            id="busy-dead-not-removed",
        ),
        pytest.param(
            {}, [C1], [reg(C1)], InFlight(busy_containers=frozenset({"c1"})), [],
            id="busy-container-of-deleted-service-untouched",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2], [reg(C1)],
            InFlight(busy_registrations=frozenset({"web-c2"})), [],
            id="busy-registration-not-registered-twice",
        ),
        pytest.param(
            want(WEB, 1), [C1], [reg(C1), orphan("web-zz")],
            InFlight(busy_registrations=frozenset({"web-zz"})), [],
            id="busy-registration-not-deregistered",
        ),
    ],
)  # fmt: skip
def test_in_flight_work_is_not_repeated(
    desires: dict[str, ServiceDesire],
    containers: list[ContainerInfo],
    registrations: list[Registration],
    inflight: InFlight,
    expected: list[tuple[object, ...]],
) -> None:
    """Busy containers and registrations are left alone; pending starts count as replicas."""
    assert summaries(plan(desires, containers, registrations, inflight)) == expected


def test_reports_count_running_and_healthy() -> None:
    """Reports count running (current and outdated) and healthy containers per service."""
    old, new = ctr("c1"), ctr("n1", spec=NEW)
    dead = ctr("d1", state="exited", ran=100, exit_code=0)
    desires = {**want(WEB_V2, 3), **want(WORKER, 0, "worker")}
    result = plan(desires, [new, old, dead], [reg(old), reg(new, healthy=False)])
    assert result.reports == (
        ServiceReport("web", desired=3, running=2, healthy=1, spec_hash=NEW),
        ServiceReport("worker", desired=0, running=0, healthy=0, spec_hash=WORKER.spec_hash()),
    )


def test_actions_are_grouped_by_service_in_order() -> None:
    """Actions come per service in name order; deregistrations last."""
    desires = {**want(WEB, 1), **want(WORKER, 2, "worker")}
    containers = [ctr("w1", service="worker", spec=WORKER.spec_hash()), C1, C2]
    result = plan(desires, containers, [reg(C1), reg(C2), orphan("web-zz")])
    assert summaries(result) == [
        ("drain", "c2", "scale down"),
        ("start", WORKER.spec_hash()),
        ("deregister", "web-zz", "container gone"),
    ]


def test_determinism() -> None:
    """The same state in any order gives the same plan."""
    desires = {**want(WEB_V2, 2), **want(WORKER, 1, "worker"), **want(None, 1, "bad")}
    containers = [
        C1, C2, C3, n1(), ctr("d1", state="exited", ran=0.2, exit_code=2),
        ctr("x1", service="gone"), ctr("b1", service="bad", spec="zzz"),
    ]  # fmt: skip
    registrations = [reg(C1), reg(C3, healthy=False), orphan("web-zz"), orphan("old-1", "old")]
    expected = plan(desires, containers, registrations)
    shuffler = random.Random(7)
    for _ in range(20):
        shuffled_c, shuffled_r = containers[:], registrations[:]
        shuffler.shuffle(shuffled_c)
        shuffler.shuffle(shuffled_r)
        reversed_desires = dict(reversed(desires.items()))
        assert plan(reversed_desires, shuffled_c, shuffled_r) == expected


DEAD = ctr("d1", state="dead", ran=3600, exit_code=0)


@pytest.mark.parametrize(
    ("desires", "containers", "registrations", "held", "expected", "wake_at"),
    [
        pytest.param(
            want(WEB, 1), [C1, DEAD], [reg(C1)], {"remove:d1": NOW + 4}, [], NOW + 4,
            id="stuck-removal-waits-and-wakes-at-its-end",
        ),
        pytest.param(
            want(WEB, 1), [C1, DEAD], [reg(C1)], {"remove:d1": NOW},
            [("remove", "d1", False, "exited with code 0 after 3600.0s")], None,
            id="removal-retried-once-its-hold-is-over",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2], [reg(C1)], {"register:web-c2": NOW + 2}, [], NOW + 2,
            id="refused-registration-waits",
        ),
        pytest.param(
            want(WEB, 1), [C1], [reg(C1), orphan("web-zz")], {"deregister:web-zz": NOW + 8}, [], NOW + 8,
            id="refused-deregistration-waits",
        ),
        pytest.param(
            want(WEB, 0), [C1], [reg(C1)], {"drain:c1": NOW + 1}, [], NOW + 1,
            id="failed-drain-waits",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2, DEAD], [reg(C1)], {"register:web-c2": NOW + 30, "remove:d1": NOW + 3},
            [], NOW + 3,
            id="earliest-hold-wakes",
        ),
        pytest.param(
            want(WEB, 2), [C1, C2], [], {"register:web-c2": NOW + 5}, [("register", "c1")], NOW + 5,
            id="only-the-failing-one-is-held",
        ),
        pytest.param(
            want(WEB, 2), [C1, DEAD], [reg(C1)], {"remove:d1": NOW + 5},
            [("start", OLD)], NOW + 5,
            id="replacement-starts-while-removal-is-held",
        ),
    ],
)  # fmt: skip
def test_failed_actions_are_held_by_their_backoff(
    desires: dict[str, ServiceDesire],
    containers: list[ContainerInfo],
    registrations: list[Registration],
    held: dict[str, float],
    expected: list[tuple[object, ...]],
    wake_at: float | None,
) -> None:
    """An action in its back-off is left out and the plan wakes when the hold ends; others go on."""
    inflight = InFlight(held_until=held)
    result = plan(desires, containers, registrations, inflight)
    assert summaries(result) == expected
    assert result.wake_at == wake_at
