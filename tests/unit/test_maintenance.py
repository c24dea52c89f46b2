"""Cordon and drain, pure: the schedule's cordon filter, the drain step, its deadline, the leader's pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, Placement, UpdatePolicy
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import (
    ROLLOUT_POLL,
    LeaderMemory,
    LeaderSettings,
    Now,
    decide_leader,
    paced_services,
)
from consul_operator.core.maintenance import DrainTimer, drain_remains, plan_drain, time_drains
from consul_operator.core.model import META_HOST, META_SPEC, HostInfo, ServiceInstance
from consul_operator.core.placement import schedule
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.status import (
    JSON_FIELDS,
    ClusterSnapshot,
    HostRow,
    StatusView,
    build_status,
    render_table,
    to_json,
)

NOW = 1000.0  # the leader's monotonic clock
WALL = 1.7e9
GRACE = 10.0

# --- the schedule's cordon filter ---------------------------------------------------------


def manifest(replicas: int = 2, max_per_host: int | None = None, name: str = "web") -> Manifest:
    """A manifest with what scheduling and draining look at."""
    return Manifest(
        name=name,
        image="hello:1",
        replicas=replicas,
        port=5000,
        placement=Placement(max_per_host=max_per_host),
        update=UpdatePolicy(min_healthy=2.0),
    )


WEB = manifest()
SPEC = WEB.spec_hash()
H1, H2, H3 = HostInfo("h1"), HostInfo("h2"), HostInfo("h3")


def record(hosts: Mapping[str, int], m: Manifest = WEB) -> PlacementRecord:
    return PlacementRecord(m.name, m.spec_hash(), frozen_map(hosts))


@dataclass(frozen=True)
class Cordon:
    """One schedule of ``web`` with some hosts cordoned or draining."""

    m: Manifest
    hosts: tuple[HostInfo, ...]
    before: Mapping[str, int] | None
    cordoned: frozenset[str]
    after: Mapping[str, int]
    unplaced: int = 0
    draining: frozenset[str] = frozenset()


CORDON_CASES = [
    pytest.param(
        Cordon(WEB, (H1, H2, H3), None, frozenset({"h1"}), {"h2": 1, "h3": 1}),
        id="first-placement-skips-the-cordoned-host",
    ),
    pytest.param(
        Cordon(WEB, (H1, H2), {"h1": 1, "h2": 1}, frozenset({"h1"}), {"h1": 1, "h2": 1}),
        id="cordoned-host-keeps-what-runs-there",
    ),
    pytest.param(
        Cordon(manifest(4), (H1, H2), {"h1": 1, "h2": 1}, frozenset({"h1"}), {"h1": 1, "h2": 3}),
        id="scale-up-goes-around-the-cordoned-host",
    ),
    pytest.param(
        Cordon(manifest(1), (H1, H2), {"h1": 1, "h2": 1}, frozenset({"h1"}), {"h2": 1}),
        id="scale-down-takes-from-the-cordoned-host-first",
    ),
    pytest.param(
        Cordon(manifest(2), (H1, H2), {"h1": 1, "h2": 1}, frozenset(), {"h1": 1, "h2": 1}),
        id="uncordoned-host-is-a-candidate-again-nothing-moves",
    ),
    pytest.param(
        Cordon(manifest(3), (H1, H2), {"h2": 2}, frozenset(), {"h1": 1, "h2": 2}),
        id="uncordoned-host-takes-new-replicas",
    ),
    pytest.param(
        Cordon(WEB, (H1, H2), None, frozenset({"h1", "h2"}), {}, unplaced=2),
        id="every-host-cordoned-leaves-new-replicas-unplaced",
    ),
    pytest.param(
        Cordon(
            WEB, (H1, H2, H3), {"h1": 1, "h2": 1}, frozenset({"h1"}), {"h2": 1, "h3": 1}, 0, frozenset({"h1"})
        ),
        id="draining-host-keeps-none-its-replica-is-placed-elsewhere",
    ),
    pytest.param(
        Cordon(
            manifest(2, max_per_host=1),
            (H1, H2),
            {"h1": 1, "h2": 1},
            frozenset({"h1"}),
            {"h2": 1},
            1,
            frozenset({"h1"}),
        ),
        id="draining-host-without-room-elsewhere-leaves-its-replica-unplaced",
    ),
]


@pytest.mark.parametrize("case", CORDON_CASES)
def test_schedule_with_cordoned_hosts(case: Cordon) -> None:
    """A cordoned host gets no new replicas and keeps its own; a draining one keeps none."""
    current = {} if case.before is None else {"web": record(case.before, case.m)}
    decided = schedule(
        {"web": case.m}, list(case.hosts), current, NOW, GRACE, cordoned=case.cordoned, draining=case.draining
    )["web"]
    assert (dict(decided.hosts), decided.unplaced) == (case.after, case.unplaced)


def test_unplaced_reason_names_hosts_in_maintenance() -> None:
    """An Unplaceable service's reason says which hosts are cordoned or draining, not only that none fit."""
    decided = schedule(
        {"web": WEB}, [H1, H2], {}, NOW, GRACE, cordoned=frozenset({"h1", "h2"}), draining=frozenset({"h2"})
    )["web"]
    assert decided.unplaced == 2
    assert "h1: cordoned" in decided.reason and "h2: draining" in decided.reason


# --- the drain step -----------------------------------------------------------------------


SURGE_0 = UpdatePolicy(max_surge=0, max_unavailable=1)
SURGE_1 = UpdatePolicy(max_surge=1, max_unavailable=0)


@dataclass(frozen=True)
class Step:
    """One `plan_drain` step of ``web`` off h1: what is placed, runs, passes and has matured, per host."""

    placed: Mapping[str, int]
    target: Mapping[str, int]
    after: Mapping[str, int]
    passing: Mapping[str, int] = field(default_factory=dict)
    matured: Mapping[str, int] = field(default_factory=dict)
    running: Mapping[str, int] | None = None  # None: as placed
    replicas: int = 2
    policy: UpdatePolicy = SURGE_1


SURGE_2 = UpdatePolicy(max_surge=2, max_unavailable=0)
ALL = {"h1": 1, "h2": 1}

DRAIN_CASES = [
    pytest.param(
        Step({"h1": 1, "h2": 1}, {"h2": 2}, {"h1": 1, "h2": 2}, passing=ALL, matured=ALL),
        id="first-step-places-a-replacement-and-keeps-the-old-replica",
    ),
    pytest.param(
        Step(
            {"h1": 1, "h2": 2},
            {"h2": 2},
            {"h2": 2},
            passing={"h1": 1, "h2": 2},
            matured={"h1": 1, "h2": 2},
        ),
        id="old-replica-goes-once-its-replacement-passed-min-healthy",
    ),
    pytest.param(
        Step(
            {"h1": 1, "h2": 2},
            {"h2": 2},
            {"h1": 1, "h2": 2},
            passing={"h1": 1, "h2": 2},
            matured={"h1": 1, "h2": 1},
        ),
        id="replacement-passing-but-not-matured-holds-the-old-replica",
    ),
    pytest.param(
        Step({"h1": 1, "h2": 2}, {"h2": 2}, {"h1": 1, "h2": 2}, passing={"h1": 1, "h2": 1}, matured=ALL),
        id="replacement-that-never-passes-holds-the-drain",
    ),
    pytest.param(
        Step({"h1": 1, "h2": 1}, {"h2": 2}, {"h2": 2}, passing={"h2": 1}, matured={"h2": 1}),
        id="failing-replica-on-the-draining-host-goes-at-once",
    ),
    pytest.param(
        Step({"h1": 2}, {"h2": 2}, {"h1": 2, "h2": 1}, passing={"h1": 2}, matured={"h1": 2}),
        id="both-on-the-draining-host-one-replacement-at-a-time",
    ),
    pytest.param(
        Step(
            {"h1": 1, "h2": 1},
            {"h2": 2},
            {"h1": 1, "h2": 1},
            passing={"h1": 1, "h2": 1},
            matured={"h1": 1, "h2": 1},
            running={"h1": 2, "h2": 1},
        ),
        id="surge-limit-a-draining-container-still-counts",
    ),
    pytest.param(
        Step({"h1": 1, "h2": 1}, {"h2": 2}, {"h2": 1}, passing=ALL, matured=ALL, policy=SURGE_0),
        id="no-surge-max-unavailable-1-the-old-replica-goes-first",
    ),
    pytest.param(
        Step(
            {"h2": 1},
            {"h2": 2},
            {"h2": 1},
            passing={"h2": 1},
            matured={"h2": 1},
            running={"h1": 1, "h2": 1},
            policy=SURGE_0,
        ),
        id="no-surge-the-replacement-waits-until-the-old-container-is-gone",
    ),
    pytest.param(
        Step(
            {"h1": 2, "h2": 1},
            {"h2": 1, "h3": 2},
            {"h1": 2, "h2": 1, "h3": 2},
            passing={"h1": 2, "h2": 1},
            matured={"h1": 2, "h2": 1},
            replicas=3,
            policy=SURGE_2,
        ),
        id="surge-2-places-two-replacements-at-once",
    ),
    pytest.param(
        Step({"h1": 1, "h2": 1}, {"h2": 1}, {"h1": 1, "h2": 1}, passing=ALL, matured=ALL),
        id="no-room-elsewhere-the-old-replica-stays-until-the-deadline",
    ),
    pytest.param(
        Step({"h2": 2}, {"h2": 2}, {"h2": 2}, passing={"h2": 2}, matured={"h2": 2}),
        id="nothing-on-the-draining-host-the-step-is-the-schedule",
    ),
]


@pytest.mark.parametrize("case", DRAIN_CASES)
def test_drain_step(case: Step) -> None:
    """Replacements come first, within the surge; a replica on the draining host goes once they matured."""
    running = dict(case.placed) if case.running is None else dict(case.running)
    after = plan_drain(
        case.replicas, case.policy, case.target, case.placed, {"h1"}, running, case.passing, case.matured
    )
    assert after == case.after


def test_a_drain_pass_by_pass_keeps_two_passing_and_three_at_most() -> None:
    """plan_drain driven pass by pass against simulated agents empties h1, never below 2 passing or above 3.

    Agents start what is placed (passing and matured by the next pass) and drain what is removed:
    deregistered at once, the container running one pass longer.
    """
    placed = {"h1": 2}
    up: dict[str, int] = {"h1": 2}  # registered and passing
    leaving: dict[str, int] = {}  # deregistered, still running
    for _ in range(10):
        running = {h: up.get(h, 0) + leaving.get(h, 0) for h in set(up) | set(leaving)}
        assert sum(up.values()) >= 2
        after = plan_drain(2, UpdatePolicy(), {"h2": 2}, placed, {"h1"}, running, up, up)
        occupancy = sum(max(after.get(h, 0), running.get(h, 0)) for h in set(after) | set(running))
        assert occupancy <= 3, (after, running)
        leaving = {h: up[h] - after.get(h, 0) for h in up if up[h] > after.get(h, 0)}
        up = dict(after)
        placed = after
        if placed == {"h2": 2} and not leaving:
            break
    assert placed == {"h2": 2}


# --- the deadline -------------------------------------------------------------------------


def draining(deadline: float | None = 60.0, started: float = WALL) -> HostRecord:
    return HostRecord("h1", draining=True, deadline=deadline, started=started)


@dataclass(frozen=True)
class Timing:
    """`time_drains` of h1's record at NOW, with the timer an earlier pass left."""

    record: HostRecord
    timer: DrainTimer | None
    paced: bool
    forced: bool
    newly_forced: bool = False
    wake_in: float | None = None


TIMING_CASES = [
    pytest.param(Timing(draining(), None, True, False, wake_in=60.0), id="first-seen-is-timed-from-now"),
    pytest.param(
        Timing(draining(), DrainTimer(WALL, 60.0, NOW - 50), True, False, wake_in=10.0),
        id="within-the-deadline-paced-wakes-at-the-deadline",
    ),
    pytest.param(
        Timing(draining(), DrainTimer(WALL, 60.0, NOW - 60), False, True, newly_forced=True),
        id="deadline-reached-forced-and-logged-once",
    ),
    pytest.param(
        Timing(draining(), DrainTimer(WALL, 60.0, NOW - 90, forced=True), False, True),
        id="already-forced-not-logged-again",
    ),
    pytest.param(
        Timing(
            draining(started=WALL + 5),
            DrainTimer(WALL, 60.0, NOW - 90, forced=True),
            True,
            False,
            wake_in=60.0,
        ),
        id="drain-run-again-restarts-the-deadline",
    ),
    pytest.param(
        Timing(draining(deadline=None), DrainTimer(WALL, None, NOW - 1e6), True, False),
        id="no-deadline-never-forced",
    ),
    pytest.param(Timing(HostRecord("h1"), None, False, False), id="cordoned-only-is-no-drain"),
]


@pytest.mark.parametrize("case", TIMING_CASES)
def test_drain_deadline(case: Timing) -> None:
    """A drain's deadline runs on the leader's monotonic clock from when it first saw the drain."""
    drains = time_drains({"h1": case.record}, {} if case.timer is None else {"h1": case.timer}, NOW)
    assert drains.cordoned == {"h1"}
    assert ("h1" in drains.paced, "h1" in drains.forced) == (case.paced, case.forced)
    assert (drains.newly_forced == ("h1",)) == case.newly_forced
    assert (None if drains.wake_at is None else drains.wake_at - NOW) == case.wake_in


# --- the leader's pass ----------------------------------------------------------------------

LAYOUT = Layout()
SETTINGS = LeaderSettings("h2", LAYOUT, GRACE)


def instance(sid: str, host: str, status: str = "passing") -> ServiceInstance:
    return ServiceInstance(
        host, "127.0.0.1", sid, "web", "127.0.0.1", 5000, {META_SPEC: SPEC, META_HOST: host}, status
    )


def cluster(
    placed: Mapping[str, int],
    maintenance: Mapping[str, HostRecord],
    passing: tuple[ServiceInstance, ...] = (),
    rollout: RolloutRecord | None = None,
) -> ClusterState:
    """``web`` placed as ``placed`` and running so, on live h1 and h2."""
    return ClusterState(
        manifests={"web": WEB},
        placements={"web": record(placed)},
        rollouts={} if rollout is None else {"web": rollout},
        revisions=frozenset({("web", SPEC)}),
        hosts={"h1": (True, {}), "h2": (True, {})},
        statuses={
            "web": {
                h: StatusRecord("web", h, specs=frozen_map({SPEC: n}), running=n) for h, n in placed.items()
            }
        },
        maintenance=maintenance,
        passing={"web": passing},
    )


BOTH = (instance("a", "h1"), instance("b", "h2"))
MATURE = LeaderMemory(first_passing={"web": {"a": NOW - 9, "b": NOW - 9, "c": NOW - 9}})


def test_pass_starts_a_drain_with_one_replacement_and_polls() -> None:
    """The first pass of a drain places one replacement elsewhere and keeps the old replica; it polls."""
    plan = decide_leader(cluster(ALL, {"h1": draining()}, BOTH), MATURE, Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == {"h1": 1, "h2": 2}
    assert plan.draining == ("web",)
    assert plan.wake_at == NOW + ROLLOUT_POLL
    assert plan.memory.drain_timers["h1"].since == NOW


def test_pass_moves_the_old_replica_once_the_replacement_matured() -> None:
    """With the replacement passing for min_healthy, the replica on the draining host goes."""
    state = cluster({"h1": 1, "h2": 2}, {"h1": draining()}, (*BOTH, instance("c", "h2")))
    plan = decide_leader(state, MATURE, Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == {"h2": 2}
    assert plan.draining == ("web",), "its container on h1 still drains: the leader keeps looking"
    gone = dataclasses.replace(cluster({"h2": 2}, {"h1": draining()}), passing=state.passing)
    assert decide_leader(gone, plan.memory, Now(NOW + 1, WALL), SETTINGS).draining == ()


def test_a_new_leader_continues_the_drain_and_times_its_deadline_afresh() -> None:
    """Fail-over mid-drain: an empty memory continues from KV (no step repeated), the deadline restarts."""
    state = cluster({"h1": 1, "h2": 2}, {"h1": draining()}, (*BOTH, instance("c", "h2")))
    plan = decide_leader(state, LeaderMemory(), Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == {"h1": 1, "h2": 2}, "nothing new, nothing dropped"
    assert plan.memory.drain_timers["h1"].since == NOW


def test_past_the_deadline_the_rest_moves_at_once() -> None:
    """A replacement that never passes: past the deadline the old replica goes anyway, logged once."""
    memory = dataclasses.replace(MATURE, drain_timers={"h1": DrainTimer(WALL, 60.0, NOW - 61)})
    state = cluster({"h1": 1, "h2": 2}, {"h1": draining()}, (*BOTH, instance("c", "h2", "critical")))
    plan = decide_leader(state, memory, Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == {"h2": 2}
    assert [e.message for e in plan.events] == ["drain deadline passed: moving the rest at once"]
    again = decide_leader(state, plan.memory, Now(NOW + 1, WALL), SETTINGS)
    assert again.events == ()


def test_cordon_moves_nothing_and_asks_for_no_health() -> None:
    """A cordoned host keeps its replicas: no write, no polling, no passing instances read."""
    state = cluster(ALL, {"h1": HostRecord("h1")}, BOTH)
    plan = decide_leader(state, MATURE, Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == ALL
    assert plan.writes == {} and plan.wake_at is None
    assert paced_services(state) == []


def test_reader_is_asked_for_the_health_of_a_draining_service() -> None:
    """The leader needs the passing instances of a service with replicas on a draining host."""
    assert paced_services(cluster(ALL, {"h1": draining()})) == ["web"]
    assert paced_services(cluster({"h2": 2}, {"h1": draining()})) == []


def test_an_active_rollout_paces_the_move_itself() -> None:
    """During a rollout the draining host's target is 0: the rollout moves its old replicas, not the drain."""
    v2 = dataclasses.replace(WEB, image="hello:2")
    rollout = RolloutRecord("web", SPEC, v2.spec_hash(), RolloutState.PROGRESSING, WALL, total=2)
    state = dataclasses.replace(cluster(ALL, {"h1": draining()}, BOTH, rollout), manifests={"web": v2})
    plan = decide_leader(state, MATURE, Now(NOW, WALL), SETTINGS)
    record = plan.placements["web"]
    assert record.spec_counts("h2") == {SPEC: 1, v2.spec_hash(): 1}, "the surge replica goes to h2"
    assert record.spec_counts("h1") == {SPEC: 1}
    assert plan.draining == ()


# --- what is left on a host ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("placed", "status", "passing", "left"),
    [
        pytest.param({"h1": 1}, None, {}, ["web: 1 placed, 0 running, 0 passing"], id="placed-there"),
        pytest.param(
            {}, StatusRecord("web", "h1", running=0, specs=frozen_map({SPEC: 1})), {},
            ["web: 0 placed, 1 running, 0 passing"], id="draining-container-still-there",
        ),
        pytest.param({}, None, {"h1": 1}, ["web: 0 placed, 0 running, 1 passing"], id="still-passing-there"),
        pytest.param({"h2": 2}, StatusRecord("web", "h1"), {"h2": 2}, [], id="drained"),
    ],
)  # fmt: skip
def test_drain_remains(
    placed: Mapping[str, int], status: StatusRecord | None, passing: Mapping[str, int], left: list[str]
) -> None:
    """A host is drained once nothing is placed, running (draining included) or passing there."""
    statuses = {} if status is None else {"web": {"h1": status}}
    assert drain_remains("h1", {"web": record(placed)}, statuses, {"web": passing}) == left


# --- the record and what `operator status` shows --------------------------------------------


@pytest.mark.parametrize(
    ("text", "read"),
    [
        pytest.param(
            b'{"host":"h1","cordoned":true,"draining":true,"deadline":300,"started":1.7e9}',
            HostRecord("h1", draining=True, deadline=300.0, started=1.7e9),
            id="drain",
        ),
        pytest.param(b'{"host":"h1","cordoned":true}', HostRecord("h1"), id="cordon"),
        pytest.param(
            b'{"draining":"yes","deadline":-5,"started":"x"}',
            HostRecord("h1"),
            id="wrong-types-read-as-empty",
        ),
    ],
)
def test_host_record_is_read(text: bytes, read: HostRecord) -> None:
    """A host record reads back what was written; fields of the wrong type read as empty."""
    assert HostRecord.from_json(text, host="h1") == read
    assert HostRecord.from_json(read.to_json(), host="h1") == read


def test_host_record_that_is_no_object_is_refused() -> None:
    """A value that is not a JSON object is no host record (the reader skips it and logs)."""
    with pytest.raises(ValueError, match="not a host record"):
        HostRecord.from_json(b"[1]", host="h1")


def maintenance_view(maintenance: Mapping[str, HostRecord], placed: Mapping[str, int]) -> StatusView:
    rows = (HostRow("h1", True, {}), HostRow("h2", True, {}))
    statuses = {
        "web": {h: StatusRecord("web", h, running=n, specs=frozen_map({SPEC: n})) for h, n in placed.items()}
    }
    return build_status(
        ClusterSnapshot(
            now=WALL + 75,
            leader="h2",
            leader_since=None,
            hosts=rows,
            manifests={"web": WEB},
            placements={"web": record(placed)},
            statuses=statuses,
            passing={"web": dict(placed)},
            maintenance=maintenance,
        )
    )


@pytest.mark.parametrize(
    ("maintenance", "placed", "shown", "json_host"),
    [
        pytest.param({}, ALL, "-", {"cordoned": False, "drain": None}, id="in-service"),
        pytest.param(
            {"h1": HostRecord("h1")}, ALL, "cordoned", {"cordoned": True, "drain": None}, id="cordoned"
        ),
        pytest.param(
            {"h1": draining(300.0)}, ALL, "draining: 1 service left (deadline 5m, for 1m)",
            {"cordoned": True,
             "drain": {"started": WALL, "deadline": 300.0, "remaining": 1, "done": False, "stuck": 0}},
            id="draining",
        ),
        pytest.param(
            {"h1": draining(300.0)}, {"h2": 2}, "drained",
            {"cordoned": True,
             "drain": {"started": WALL, "deadline": 300.0, "remaining": 0, "done": True, "stuck": 0}},
            id="drained-stays-cordoned",
        ),
    ],
)  # fmt: skip
def test_status_shows_cordoned_and_draining_hosts(
    maintenance: Mapping[str, HostRecord], placed: Mapping[str, int], shown: str, json_host: dict[str, object]
) -> None:
    """`operator status` shows h1 cordoned, draining with what is left, or drained; in the table and JSON."""
    view = maintenance_view(maintenance, placed)
    line = next(line for line in render_table(view, color=False).splitlines() if line.startswith("h1 "))
    assert line.split(None, 3)[3] == shown
    hosts = to_json(view)["hosts"]
    assert isinstance(hosts, list)
    assert {k: hosts[0][k] for k in ("cordoned", "drain")} == json_host
    assert tuple(hosts[0]) == JSON_FIELDS["host"]
    if json_host["drain"] is not None:
        assert tuple(hosts[0]["drain"]) == JSON_FIELDS["drain"]


def test_a_host_in_maintenance_without_an_agent_shows_as_lost() -> None:
    """A record of a host no agent registered (gone for good, or a typo) is shown, as lost."""
    view = maintenance_view({"h9": HostRecord("h9")}, ALL)
    assert [(h.name, h.live, h.cordoned) for h in view.hosts][-1] == ("h9", False, True)
