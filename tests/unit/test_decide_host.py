"""One host's whole pass as one pure decision: `decide_host` over a `HostState`, table-driven."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.core import events
from consul_operator.core.backoff import Backoff
from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.host_pass import (
    Gauges,
    HostMemory,
    HostPlan,
    HostSettings,
    HostState,
    after_writes,
    decide_host,
    status_services,
)
from consul_operator.core.model import (
    Action,
    ContainerInfo,
    Deregister,
    DrainContainer,
    InFlight,
    Now,
    Outcome,
    Register,
    Registration,
    RemoveDead,
    StartContainer,
)
from consul_operator.core.records import PlacementRecord, StatusRecord, frozen_map

HOST = "h1"
SETTINGS = HostSettings(HOST, node="node-1")
MONO = 1000.0  # the agent's monotonic clock
WALL = 1.7e9  # its wall clock: Docker's times and stamps
NOW = Now(MONO, WALL)

WEB = Manifest(name="web", image="hello:1", replicas=2, port=5000)
SPEC = WEB.spec_hash()


def invalid() -> ManifestError:
    """The error of a manifest with a negative replica count."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest("name: web\nimage: hello:1\nreplicas: -1\n", key_name="web")
    return caught.value


def running(cid: str, age: float = 3600.0) -> ContainerInfo:
    """A running replica of ``web`` on this host, started ``age`` seconds ago."""
    return ContainerInfo(cid, f"web-{cid}", "web", SPEC, "running", host_port=30000, started_at=WALL - age)


def crashed(cid: str) -> ContainerInfo:
    """A replica of ``web`` that exited with code 1 after 0.3 s."""
    return ContainerInfo(
        cid, f"web-{cid}", "web", SPEC, "exited", started_at=WALL - 5, finished_at=WALL - 4.7, exit_code=1
    )


def registered(c: ContainerInfo) -> Registration:
    """The passing registration ``c`` should have."""
    return Registration(c.name, c.service, c.id, c.spec_hash, "127.0.0.1", c.host_port or 0, True)


def record(running_: int = 1, desired: int = 1, error: str = "") -> StatusRecord:
    """This host's status record of ``web`` with ``running_`` registered replicas c1, c2, ..."""
    state = state_of(Case(containers=tuple(running(f"c{i + 1}") for i in range(running_)), placed=desired))
    plan = decide_host(state, HostMemory(), NOW, SETTINGS)
    written = plan.status_writes["web"]
    assert written is not None
    return dataclasses.replace(
        StatusRecord.from_json(written.to_json(), service="web", host=HOST), error=error
    )


C1 = running("c1")
X1 = crashed("x1")
ORPHAN = Registration("web-zz", "web", "gone", SPEC, "127.0.0.1", 31000, True)
FAILED = Backoff(failures=3, retry_at=MONO + 4, last_error="crash-looping: x", spec_hash=SPEC)


@dataclass(frozen=True)
class Case:
    """One host pass: what it reads and remembers, and what it must decide about ``web``."""

    manifest: Manifest | ManifestError | None = WEB
    placed: int | None = None  # web's replicas placed on this host (None: not placed yet)
    containers: tuple[ContainerInfo, ...] = ()
    registrations: tuple[Registration, ...] | None = None  # None: one passing per running container
    outcomes: tuple[Outcome, ...] = ()
    statuses: Mapping[str, StatusRecord] = field(default_factory=dict)
    memory: HostMemory = field(default_factory=HostMemory)
    # What the pass must decide.
    actions: tuple[tuple[str, str], ...] = ()  # (kind, what) of each action, in order
    writes: Mapping[str, str | None] = field(default_factory=dict)  # service -> error written, None: deleted
    events: tuple[str, ...] = ()  # reasons recorded
    logs: tuple[str, ...] = ()  # messages logged
    failures: int = 0  # web's failures in a row after the pass
    held: tuple[str, ...] = ()  # action keys in back-off after the pass
    wake_in: float | None = None


def state_of(case: Case) -> HostState:
    """The host a `Case` describes."""
    manifests = {} if case.manifest is None else {"web": case.manifest}
    placements = {}
    if case.placed is not None:
        placements["web"] = PlacementRecord("web", SPEC, frozen_map({HOST: case.placed}))
    registrations = case.registrations
    if registrations is None:
        registrations = tuple(registered(c) for c in case.containers if c.running)
    return HostState(
        manifests,
        placements,
        {},
        case.containers,
        registrations,
        InFlight(),
        case.outcomes,
        case.statuses,
    )


def summary(action: Action) -> tuple[str, str]:
    """A short, readable form of an action."""
    match action:
        case StartContainer(manifest=m):
            return ("start", m.name)
        case DrainContainer(container=c) | RemoveDead(container=c) | Register(container=c):
            return (type(action).__name__, c.id)
        case Deregister(service_id=sid):
            return ("Deregister", sid)
    raise AssertionError(action)


def decide(case: Case) -> HostPlan:
    """`decide_host` over ``case``."""
    return decide_host(state_of(case), case.memory, NOW, SETTINGS)


CASES = [
    pytest.param(Case(), id="not-placed-nothing-here-writes-nothing"),
    pytest.param(
        Case(placed=2, actions=(("start", "web"), ("start", "web")), writes={"web": ""}),
        id="placed-here-starts-and-reports",
    ),
    pytest.param(
        Case(placed=1, containers=(C1,), statuses={"web": record()}),
        id="converged-record-in-kv-writes-nothing",
    ),
    pytest.param(
        Case(placed=1, containers=(C1,), memory=HostMemory(written={"web": record()}), writes={"web": ""}),
        id="record-deleted-from-kv-is-written-again",
    ),
    pytest.param(
        Case(placed=0, statuses={"web": record()}, writes={"web": None}),
        id="nothing-here-any-more-deletes-the-record",
    ),
    pytest.param(
        Case(manifest=invalid(), writes={"web": "Invalid: replicas: must be an integer >= 0, got -1"}),
        id="invalid-manifest-hold-reported-hands-off",
    ),
    pytest.param(
        Case(
            placed=1,
            containers=(X1,),
            actions=(("RemoveDead", "x1"),),
            writes={"web": "crash-looping: exited with code 1 after 0.3s; next try in 1s"},
            events=(events.CRASHED,),
            failures=1,
            wake_in=1.0,
        ),
        id="crash-counted-when-planned-with-its-event",
    ),
    pytest.param(
        Case(
            placed=1,
            containers=(X1,),
            outcomes=(Outcome("remove_dead", "web", "remove:x1", "removal refused", MONO - 0.5),),
            memory=HostMemory(
                backoffs={"web": Backoff(1, MONO + 0.5, "crash-looping: x", SPEC)}, ended=frozenset({"x1"})
            ),
            writes={"web": "crash-looping: x; next try in 1s"},
            failures=1,
            held=("remove:x1",),
            wake_in=0.5,
        ),
        id="refused-removal-counts-the-crash-once-and-is-held",
    ),
    pytest.param(
        Case(
            placed=1,
            outcomes=(Outcome("start", "web", None, "no such image", MONO - 0.5, SPEC),),
            writes={"web": "start failed: no such image; next try in 1s"},
            failures=1,
            wake_in=0.5,
        ),
        id="failed-start-backs-the-service-off",
    ),
    pytest.param(
        Case(
            placed=1,
            outcomes=(Outcome("start", "web", None, "engine unreachable", MONO, SPEC, engine_away=True),),
            actions=(("start", "web"),),
            writes={"web": ""},
        ),
        id="a-start-that-found-the-engine-away-backs-nothing-off",
    ),
    pytest.param(
        Case(
            placed=1,
            containers=(C1,),
            registrations=(),
            outcomes=(Outcome("register", "web", "register:web-c1", "ACL not found", MONO),),
            writes={"web": ""},
            held=("register:web-c1",),
            wake_in=1.0,
        ),
        id="failed-registration-is-held-by-its-own-backoff",
    ),
    pytest.param(
        Case(
            placed=1,
            containers=(C1,),
            outcomes=(Outcome("register", "web", "register:web-c1", "", MONO),),
            statuses={"web": record()},
            memory=HostMemory(action_backoffs={"register:web-c1": Backoff(2, MONO + 2, "ACL not found")}),
        ),
        id="success-clears-the-action-backoff",
    ),
    pytest.param(
        Case(
            placed=1,
            statuses={"web": record(running_=0)},
            memory=HostMemory(action_backoffs={"remove:zz": Backoff(2, MONO + 2, "refused")}),
            actions=(("start", "web"),),
        ),
        id="action-backoff-of-a-gone-container-is-forgotten",
    ),
    pytest.param(
        Case(
            placed=2,
            containers=(C1,),
            memory=HostMemory(backoffs={"web": FAILED}),
            actions=(("start", "web"),),
            writes={"web": ""},
        ),
        id="a-long-run-ends-the-streak",
    ),
    pytest.param(
        Case(
            placed=2,
            containers=(running("c1", age=1.0),),
            memory=HostMemory(backoffs={"web": FAILED}),
            writes={"web": "crash-looping: x; next try in 4s"},
            failures=3,
            wake_in=4.0,
        ),
        id="a-young-run-keeps-the-streak",
    ),
    pytest.param(
        Case(
            placed=1,
            containers=(C1,),
            registrations=(ORPHAN,),
            actions=(("Register", "c1"), ("Deregister", "web-zz")),
            writes={"web": ""},
            logs=("registering", "deregistering"),
        ),
        id="registrations-made-and-dropped-are-logged",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_decide_host(case: Case) -> None:
    """The pass decides ``web``'s actions, status writes, events, back-offs and wake-up as the table says."""
    plan = decide(case)
    assert tuple(summary(a) for a in plan.actions) == case.actions
    writes = {s: None if r is None else r.error for s, r in plan.status_writes.items()}
    assert writes == case.writes
    assert tuple(e.reason for e in plan.events) == case.events
    assert tuple(line.message for line in plan.logs) == case.logs
    assert plan.memory.backoffs.get("web", Backoff()).failures == case.failures
    assert tuple(sorted(plan.memory.action_backoffs)) == case.held
    assert (None if plan.wake_at is None else round(plan.wake_at - MONO, 3)) == case.wake_in


@pytest.mark.parametrize("case", CASES)
def test_decision_is_pure(case: Case) -> None:
    """The same state and memory give the same plan; the memory passed in is left as it was."""
    before = repr(case.memory)
    assert decide(case) == decide(case)
    assert repr(case.memory) == before


def test_crash_event_says_the_backoff() -> None:
    """A crash's event names the container, its exit and the wait before the next start."""
    (event,) = decide(Case(placed=1, containers=(X1,))).events
    assert event.message == "container web-x1 exited with code 1; back-off 1s before the next start"


def test_a_crash_is_counted_once_over_passes() -> None:
    """A crash counts once: the pass planning its removal counts it, a pass seeing it again does not."""
    first = decide(Case(placed=1, containers=(X1,)))
    again = decide(Case(placed=1, containers=(X1,), memory=first.memory))
    gone = decide(Case(placed=1, memory=again.memory))
    assert [p.memory.backoffs["web"].failures for p in (first, again, gone)] == [1, 1, 1]
    assert again.events == () and "x1" not in gone.memory.ended


def test_gauges_of_each_reported_service_and_of_services_gone() -> None:
    """Each reported service gets its figures; one reported by the last pass and not now loses them."""
    plan = decide(Case(placed=1, containers=(C1,), memory=HostMemory(gauged=frozenset({"old", "web"}))))
    assert dict(plan.gauges) == {"web": Gauges(running=1, healthy=1, failures=0)}
    assert plan.dropped_gauges == ("old",)


def test_status_record_names_the_node_and_the_replicas() -> None:
    """A status record vouches for its running containers, on the agent's node, stamped with wall time."""
    written = decide(Case(placed=1, containers=(C1,))).status_writes["web"]
    assert written is not None
    assert (written.node, written.instances, written.since) == ("node-1", ("web-c1",), WALL)
    assert dict(written.specs) == {SPEC: 1}


@pytest.mark.parametrize(
    ("refused", "written", "passes", "wake_in"),
    [
        pytest.param(set(), {"web": "new"}, 0, None, id="all-written"),
        pytest.param({"web"}, {"web": "old"}, 2, 2.0, id="refused-keeps-the-old-and-backs-off"),
    ],
)
def test_after_writes(refused: set[str], written: dict[str, str], passes: int, wake_in: float | None) -> None:
    """What went through is remembered as written; a refusal keeps the old and wakes soon, backing off."""
    old = record(error="old")
    memory = HostMemory(written={"web": old}, refused_passes=1)
    plan = decide(Case(placed=1, containers=(C1,), statuses={"web": old}, memory=memory))
    plan = HostPlan(
        plan.actions,
        {"web": StatusRecord("web", HOST, desired=1, error="new")},
        plan.gauges,
        plan.dropped_gauges,
        plan.events,
        plan.logs,
        None,
        plan.memory,
    )
    after, wake = after_writes(plan, refused, MONO)
    assert {s: r.error for s, r in after.written.items()} == written
    assert after.refused_passes == passes
    assert (None if wake is None else wake - MONO) == wake_in


@pytest.mark.parametrize(
    ("manifest", "placement", "containers", "memory", "expected"),
    [
        pytest.param(WEB, None, (), HostMemory(), set(), id="not-placed-not-read"),
        pytest.param(WEB, {"h2": 1}, (), HostMemory(), set(), id="placed-elsewhere-not-read"),
        pytest.param(WEB, {HOST: 1}, (), HostMemory(), {"web"}, id="placed-here"),
        pytest.param(invalid(), None, (), HostMemory(), {"web"}, id="invalid-every-host-says-why"),
        pytest.param(WEB, None, (C1,), HostMemory(), {"web"}, id="runs-here"),
        pytest.param(WEB, None, (), HostMemory(backoffs={"web": FAILED}), {"web"}, id="failing-here"),
        pytest.param(
            WEB,
            None,
            (),
            HostMemory(written={"web": StatusRecord("web", HOST)}),
            {"web"},
            id="written-before",
        ),
    ],
)
def test_status_services(
    manifest: Manifest | ManifestError,
    placement: dict[str, int] | None,
    containers: tuple[ContainerInfo, ...],
    memory: HostMemory,
    expected: set[str],
) -> None:
    """The reader fetches the status records of exactly the services a pass may write or delete."""
    placements = {} if placement is None else {"web": PlacementRecord("web", SPEC, frozen_map(placement))}
    got = status_services(SETTINGS, {"web": manifest}, placements, containers, memory)
    assert got == expected


def test_every_record_a_pass_writes_was_read() -> None:
    """Whatever the pass writes or deletes is among the services the reader fetched (a superset)."""
    for case in (c.values[0] for c in CASES):
        assert isinstance(case, Case)
        state = state_of(case)
        wanted = status_services(SETTINGS, state.manifests, state.placements, state.containers, case.memory)
        assert set(decide(case).status_writes) <= wanted | set(case.statuses)
