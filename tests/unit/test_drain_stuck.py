"""A drain never stops a replica that has nowhere to go, unless forced: tables and a state machine."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, Placement, UpdatePolicy
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader
from consul_operator.core.maintenance import (
    DrainTimer,
    drain_remains,
    keep_stuck,
    only_stuck_left,
    plan_drain,
)
from consul_operator.core.model import META_HOST, META_SPEC, ServiceInstance
from consul_operator.core.records import HostRecord, PlacementRecord, StatusRecord, frozen_map
from consul_operator.core.status import ClusterSnapshot, HostRow, build_status, to_json

NOW = 1000.0
WALL = 1.7e9
SETTINGS = LeaderSettings("h2", Layout(), 10.0)
HOSTS = ("h1", "h2", "h3")


def web(
    replicas: int = 2, hosts: tuple[str, ...] | None = None, labels: tuple[tuple[str, str], ...] = ()
) -> Manifest:
    """``web`` as the drain looks at it: min_healthy 1 s, the default update limits."""
    return Manifest(
        name="web",
        image="hello:1",
        replicas=replicas,
        port=5000,
        placement=Placement(hosts=hosts, labels=labels),
        update=UpdatePolicy(min_healthy=1.0),
    )


def placed(m: Manifest, hosts: Mapping[str, int], unplaced: int = 0) -> PlacementRecord:
    return PlacementRecord("web", m.spec_hash(), frozen_map(hosts), unplaced=unplaced)


def drain(host: str = "h1", *, force: bool = False, deadline: float = 60.0) -> HostRecord:
    return HostRecord(host, draining=True, deadline=deadline, started=WALL, force=force)


def instances(m: Manifest, hosts: Mapping[str, int]) -> tuple[ServiceInstance, ...]:
    """One passing instance per replica placed (the agents ran them, Consul's checks pass)."""
    return tuple(
        ServiceInstance(
            h,
            "127.0.0.1",
            f"web-{h}-{i}",
            "web",
            "127.0.0.1",
            5000,
            {META_SPEC: m.spec_hash(), META_HOST: h},
            "passing",
        )
        for h, n in sorted(hosts.items())
        for i in range(n)
    )


def state(
    m: Manifest,
    hosts: Mapping[str, int],
    maintenance: Mapping[str, HostRecord],
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> ClusterState:
    """``web`` placed and running as ``hosts`` (every replica passing), on live h1-h3."""
    return ClusterState(
        manifests={"web": m},
        placements={"web": placed(m, hosts)},
        revisions=frozenset({("web", m.spec_hash())}),
        hosts={h: (True, dict((labels or {}).get(h, {}))) for h in HOSTS},
        statuses={
            "web": {
                h: StatusRecord("web", h, specs=frozen_map({m.spec_hash(): n}), running=n)
                for h, n in hosts.items()
            }
        },
        maintenance=maintenance,
        passing={"web": instances(m, hosts)},
    )


def matured(m: Manifest, hosts: Mapping[str, int]) -> LeaderMemory:
    """A leader that has seen every instance pass for long (min_healthy is over)."""
    return LeaderMemory(first_passing={"web": {i.service_id: NOW - 99 for i in instances(m, hosts)}})


# --- keep_stuck --------------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """The schedule's record, the previous one, the holding hosts -> the hosts and stuck after."""

    decided: Mapping[str, int]
    unplaced: int
    previous: Mapping[str, int] | None
    holding: frozenset[str]
    hosts: Mapping[str, int]
    stuck: Mapping[str, int]


KEEP_CASES = [
    pytest.param(Keep({}, 2, {"h1": 2}, frozenset({"h1"}), {"h1": 2}, {"h1": 2}), id="pinned-both-stay"),
    pytest.param(
        Keep({"h2": 1}, 1, {"h1": 2}, frozenset({"h1"}), {"h1": 1, "h2": 1}, {"h1": 1}),
        id="one-moves-one-has-nowhere-to-go",
    ),
    pytest.param(
        Keep({"h2": 2}, 0, {"h1": 2}, frozenset({"h1"}), {"h2": 2}, {}), id="all-placed-nothing-stuck"
    ),
    pytest.param(Keep({}, 2, {"h1": 2}, frozenset(), {}, {}), id="forced-past-deadline-drops-them"),
    pytest.param(Keep({}, 3, None, frozenset({"h1"}), {}, {}), id="new-service-has-nothing-to-keep"),
    pytest.param(
        Keep({}, 3, {"h1": 2, "h3": 2}, frozenset({"h1", "h3"}), {"h1": 2, "h3": 1}, {"h1": 2, "h3": 1}),
        id="two-draining-hosts-keep-only-what-is-unplaced",
    ),
]


@pytest.mark.parametrize("case", KEEP_CASES)
def test_keep_stuck(case: Keep) -> None:
    """Replicas the schedule cannot place stay on their holding draining host, as many as were there."""
    m = web()
    previous = None if case.previous is None else placed(m, case.previous)
    kept = keep_stuck(placed(m, case.decided, case.unplaced), previous, case.holding)
    assert (dict(kept.hosts), dict(kept.stuck)) == (dict(case.hosts), dict(case.stuck))
    assert kept.unplaced == case.unplaced, "they still have no eligible host: the service says why"


def test_drain_step_never_removes_the_stuck_floor() -> None:
    """`plan_drain` keeps a draining host's stuck count even when max_unavailable would let one go."""
    policy = UpdatePolicy(min_healthy=1.0, max_unavailable=1)
    step = plan_drain(2, policy, {"h1": 2}, {"h1": 2}, {"h1"}, {"h1": 2}, {"h1": 2}, {"h1": 2})
    assert step == {"h1": 2}
    step = plan_drain(2, policy, {"h1": 1, "h2": 1}, {"h1": 2}, {"h1"}, {"h1": 2}, {"h1": 2}, {"h1": 2})
    assert step["h1"] >= 1


# --- the leader's pass ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One leader pass over ``web`` on h1 (draining) with some rule that leaves it nowhere else."""

    m: Manifest
    hosts: Mapping[str, int]
    maintenance: Mapping[str, HostRecord]
    past_deadline: bool
    on_h1: int
    stuck: int
    labels: Mapping[str, Mapping[str, str]] | None = None


PINNED = web(2, hosts=("h1",))
LABELLED = web(2, labels=(("disk", "ssd"),))
EVERYWHERE = web(2)
LAST_OPEN = {"h1": drain(), "h2": HostRecord("h2"), "h3": HostRecord("h3")}
PASS_CASES = [
    pytest.param(Pass(PINNED, {"h1": 2}, {"h1": drain()}, False, 2, 2), id="pinned-within-deadline-stays"),
    pytest.param(Pass(PINNED, {"h1": 2}, {"h1": drain()}, True, 2, 2), id="pinned-past-deadline-stays"),
    pytest.param(
        Pass(PINNED, {"h1": 2}, {"h1": drain(force=True)}, True, 0, 0), id="pinned-forced-past-deadline-stops"
    ),
    pytest.param(
        Pass(PINNED, {"h1": 2}, {"h1": drain(force=True)}, False, 2, 2),
        id="pinned-forced-within-deadline-waits-for-it",
    ),
    pytest.param(
        Pass(LABELLED, {"h1": 2}, {"h1": drain()}, True, 2, 2, {"h1": {"disk": "ssd"}}),
        id="labels-only-h1-has-past-deadline-stays",
    ),
    pytest.param(Pass(EVERYWHERE, {"h1": 2}, LAST_OPEN, True, 2, 2), id="last-open-host-past-deadline-stays"),
    pytest.param(
        Pass(EVERYWHERE, {"h1": 2}, {**LAST_OPEN, "h1": drain(force=True)}, True, 0, 0),
        id="last-open-host-forced-stops",
    ),
    pytest.param(
        Pass(EVERYWHERE, {"h1": 2}, {"h1": drain()}, True, 0, 0), id="somewhere-to-go-past-deadline-moves"
    ),
]


@pytest.mark.parametrize("case", PASS_CASES)
def test_drain_pass_keeps_what_has_nowhere_to_go(case: Pass) -> None:
    """`decide_leader` keeps replicas that no other host takes on the draining host unless forced past
    the deadline, and names them stuck; what can move moves."""
    memory = matured(case.m, case.hosts)
    if case.past_deadline:
        memory = dataclasses.replace(memory, drain_timers={"h1": DrainTimer(WALL, 60.0, NOW - 61)})
    plan = decide_leader(
        state(case.m, case.hosts, case.maintenance, case.labels), memory, Now(NOW, WALL), SETTINGS
    )
    record = plan.placements["web"]
    assert (record.hosts.get("h1", 0), record.stuck.get("h1", 0)) == (case.on_h1, case.stuck)
    if case.stuck:
        assert plan.draining == (), "only stuck replicas left: nothing moves, no polling"


def test_status_and_wait_name_what_is_stuck() -> None:
    """`operator status` shows the stuck replicas (service errors, the drain's ``stuck``); `wait --drained`
    sees that only stuck replicas are left and names them with the reason."""
    m = PINNED
    plan = decide_leader(
        state(m, {"h1": 2}, {"h1": drain()}), matured(m, {"h1": 2}), Now(NOW, WALL), SETTINGS
    )
    placements = {"web": plan.placements["web"]}
    statuses = {"web": {"h1": StatusRecord("web", "h1", running=2, specs=frozen_map({m.spec_hash(): 2}))}}
    passing = {"web": {"h1": 2}}
    assert only_stuck_left("h1", placements, statuses, passing)
    [line] = drain_remains("h1", placements, statuses, passing)
    assert "2 stuck, nowhere else to go" in line and "h1: draining" in line
    snapshot = ClusterSnapshot(
        WALL,
        "h2",
        WALL,
        tuple(HostRow(h, True, {}) for h in HOSTS),
        {"web": m},
        placements,
        statuses,
        passing,
        maintenance={"h1": drain()},
    )
    view = build_status(snapshot)
    assert any("h1: 2 stuck on this draining host" in e for e in view.services[0].errors)
    rows = to_json(view)["hosts"]
    assert isinstance(rows, list)
    [h1] = [row for row in rows if row["name"] == "h1"]
    assert h1["drain"]["stuck"] == 2


def test_only_stuck_left_is_false_while_something_still_moves() -> None:
    """A replica that can still move (placed beyond the stuck count) keeps `wait --drained` waiting."""
    m = web(3, hosts=("h1", "h2"))
    record = dataclasses.replace(placed(m, {"h1": 2, "h2": 1}, unplaced=1), stuck=frozen_map({"h1": 1}))
    assert not only_stuck_left("h1", {"web": record}, {}, {})
    assert not only_stuck_left("h1", {}, {}, {}), "nothing there at all: drained, not stuck"


def test_host_record_keeps_force() -> None:
    """``operator drain --force`` is recorded in the host record and read back."""
    record = drain(force=True)
    assert HostRecord.from_json(record.to_json(), host="h1") == record
    assert not HostRecord.from_json(drain().to_json(), host="h1").force


def test_placement_record_keeps_stuck() -> None:
    """The placement's ``stuck`` round-trips, and is absent from the form of records without it."""
    record = dataclasses.replace(placed(PINNED, {"h1": 2}, unplaced=2), stuck=frozen_map({"h1": 2}))
    assert PlacementRecord.from_json(record.to_json()) == record
    assert b"stuck" not in placed(PINNED, {"h1": 2}).to_json()


# --- the drain state machine ----------------------------------------------------------------


class DrainMachine(RuleBasedStateMachine):
    """Cordon, drain (forced or not), deadlines passing, replicas moving, uncordon: a leader pass after
    each step. Without force no replica with no eligible host is ever stopped; with force, past the
    deadline, the drain completes."""

    def __init__(self) -> None:
        super().__init__()
        self.mono = NOW
        self.m = web()
        self.placement: Mapping[str, int] = {}
        self.running: Mapping[str, int] = {}
        self.maintenance: dict[str, HostRecord] = {}
        self.memory = LeaderMemory()

    @initialize(
        replicas=st.integers(1, 3), pinned=st.sampled_from([None, ("h1",), ("h1", "h2"), ("h2", "h3")])
    )
    def start(self, replicas: int, pinned: tuple[str, ...] | None) -> None:
        self.m = web(replicas, hosts=pinned)
        self._pass()
        self.move()

    def _state(self) -> ClusterState:
        base = state(self.m, self.running, self.maintenance)
        return dataclasses.replace(
            base, placements={"web": placed(self.m, self.placement)} if self.placement else {}
        )

    def _eligible_open(self) -> set[str]:
        allowed = set(self.m.placement.hosts or HOSTS)
        return allowed - set(self.maintenance)

    def _pass(self) -> None:
        before = dict(self.placement)
        drains = {h for h, r in self.maintenance.items() if r.draining}
        forced_now = {
            h
            for h in drains
            if self.maintenance[h].force
            and (timer := self.memory.drain_timers.get(h)) is not None
            and self.mono >= timer.since + (self.maintenance[h].deadline or 0)
        }
        nowhere = not self._eligible_open()
        plan = decide_leader(self._state(), self.memory, Now(self.mono, WALL), SETTINGS)
        record = plan.placements["web"]
        for host in drains - forced_now:
            if nowhere:
                assert record.hosts.get(host, 0) >= before.get(host, 0), (
                    f"{host}: a replica with no eligible host was stopped without force",
                    before,
                    dict(record.hosts),
                )
        self.placement = dict(record.hosts)
        self.memory = plan.memory

    @rule(host=st.sampled_from(HOSTS))
    def cordon(self, host: str) -> None:
        self.maintenance.setdefault(host, HostRecord(host))
        self._pass()

    @rule(host=st.sampled_from(HOSTS), force=st.booleans())
    def drain(self, host: str, force: bool) -> None:
        self.maintenance[host] = drain(host, force=force)
        self._pass()

    @rule(host=st.sampled_from(HOSTS))
    def uncordon(self, host: str) -> None:
        self.maintenance.pop(host, None)
        self._pass()

    @rule()
    def deadline_passes(self) -> None:
        self.mono += 61.0
        self._pass()

    @rule()
    def move(self) -> None:
        """The agents run what is placed; it passes, and passes for min_healthy."""
        self.running = dict(self.placement)
        self.mono += 0.1
        self._pass()
        self.mono += 2.0
        self._pass()

    @precondition(lambda self: any(r.draining and r.force for r in self.maintenance.values()))
    @rule()
    def forced_drain_completes(self) -> None:
        """Past the deadline, and after the replicas settle, a forced drain leaves nothing on its host."""
        self.mono += 61.0
        for _ in range(6):
            self._pass()
            self.move()
        for host, record in self.maintenance.items():
            if record.draining and record.force:
                assert self.placement.get(host, 0) == 0, (host, self.placement)

    @invariant()
    def never_more_than_surge(self) -> None:
        assert sum(self.placement.values()) <= self.m.replicas + self.m.update.max_surge


TestDrainMachineProperty = DrainMachine.TestCase
TestDrainMachineProperty.settings = (
    settings(  # each step is a leader pass or more: keep it within a few seconds
        max_examples=max(10, settings().max_examples // 4), stateful_step_count=15
    )
)
