"""The leader's whole pass as one pure decision: `decide_leader` over a `ClusterState`, table-driven."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import (
    GI,
    Manifest,
    ManifestError,
    Placement,
    Resources,
    UpdatePolicy,
    parse_manifest,
)
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import (
    ROLLOUT_POLL,
    LeaderMemory,
    LeaderPlan,
    LeaderSettings,
    Now,
    decide_leader,
    paced_services,
)
from consul_operator.core.model import META_HOST, META_SPEC, ServiceInstance
from consul_operator.core.records import (
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)

LAYOUT = Layout()
NOW = 1000.0  # the leader's monotonic clock
WALL = 1.7e9  # its wall clock: stamps only
GRACE = 10.0
SETTINGS = LeaderSettings("h1", LAYOUT, GRACE)

V1 = Manifest(
    name="web", image="hello:1", replicas=2, port=5000, update=UpdatePolicy(min_healthy=2.0, deadline=60.0)
)
V2 = dataclasses.replace(V1, image="hello:2")
OLD, NEW = V1.spec_hash(), V2.spec_hash()
NO_ROLLBACK = dataclasses.replace(V2, update=dataclasses.replace(V2.update, auto_rollback=False))


def invalid() -> ManifestError:
    """The error of a manifest with a negative replica count."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest("name: web\nimage: hello:1\nreplicas: -1\n", key_name="web")
    return caught.value


def placed(hosts: Mapping[str, int], spec: str = OLD) -> PlacementRecord:
    """``web`` placed with one spec."""
    return PlacementRecord("web", spec, frozen_map(hosts))


def mixed(specs: Mapping[str, Mapping[str, int]], spec: str = NEW) -> PlacementRecord:
    """``web`` placed per spec, as during a rollout."""
    return PlacementRecord(
        "web",
        spec,
        frozen_map({h: sum(c.values()) for h, c in specs.items()}),
        specs={h: frozen_map(c) for h, c in specs.items()},
    )


def rolling(state: RolloutState = RolloutState.PROGRESSING, elapsed: float = 10.0) -> RolloutRecord:
    """A rollout of ``web`` from OLD to NEW, ``elapsed`` seconds in ``state``."""
    return RolloutRecord("web", OLD, NEW, state, WALL - elapsed, total=2, elapsed=elapsed)


def instance(sid: str, spec: str, host: str = "h1") -> ServiceInstance:
    """A passing instance of ``web`` registered with spec ``spec``."""
    return ServiceInstance(
        host, "127.0.0.1", sid, "web", "127.0.0.1", 5000, {META_SPEC: spec, META_HOST: host}, "passing"
    )


@dataclass(frozen=True)
class Case:
    """One leader pass: what it reads and remembers, and what it must decide about ``web``."""

    manifest: Manifest | ManifestError | None
    placement: PlacementRecord | None = None
    rollout: RolloutRecord | None = None
    revisions: frozenset[str] = frozenset()  # specs of web kept in operator/revisions/
    rollback_requested: bool = False
    live: Mapping[str, bool] = field(default_factory=lambda: {"h1": True, "h2": True})
    running: Mapping[str, Mapping[str, int]] | None = None  # agents' status: host -> spec -> n
    failing: frozenset[str] = frozenset()  # hosts whose agent's status record reports an error
    passing: tuple[ServiceInstance, ...] = ()
    memory: LeaderMemory = field(default_factory=LeaderMemory)
    # What the pass must decide (None: not checked).
    hosts: Mapping[str, int] | None = None  # web's replicas per host
    specs: Mapping[str, Mapping[str, int]] | None = None  # web's replicas per host per spec
    state: RolloutState | None = None  # web's rollout state after the pass ("" for none)
    written: frozenset[str] = frozenset()  # kinds of key set: placement, rollout, revisions/<spec>
    deleted: frozenset[str] = frozenset()  # kinds of key deleted: ... rollback, status/<host>
    wake_in: float | None = None  # seconds until the requested wake-up


def state_of(case: Case) -> ClusterState:
    """The cluster a `Case` describes."""
    running = case.running
    if running is None and case.placement is not None:
        running = {h: case.placement.spec_counts(h) for h in case.placement.hosts}
    statuses = {
        "web": {
            h: StatusRecord(
                "web",
                h,
                specs=frozen_map(c),
                running=sum(c.values()),
                error="crash-looping" if h in case.failing else "",
            )
            for h, c in (running or {}).items()
        }
    }
    return ClusterState(
        manifests={} if case.manifest is None else {"web": case.manifest},
        placements={} if case.placement is None else {"web": case.placement},
        rollouts={} if case.rollout is None else {"web": case.rollout},
        revisions=frozenset(("web", s) for s in case.revisions),
        rollback_requests=frozenset({"web"}) if case.rollback_requested else frozenset(),
        hosts={h: (live, {}) for h, live in case.live.items()},
        statuses=statuses if running else {},
        passing={"web": case.passing},
    )


def kind(key: str) -> str:
    """``operator/placement/web`` -> ``placement``; revisions and statuses keep their last segment."""
    rest = key.removeprefix(LAYOUT.operator_prefix)
    top, _, tail = rest.partition("/")
    _, _, last = tail.partition("/")
    return f"{top}/{last}" if last else top


OLD_PASSING = (instance("web-h1-a", OLD), instance("web-h2-a", OLD, "h2"))
MATURE_NEW = LeaderMemory(first_passing={"web": {"web-h1-n": NOW - 5}})
MATURE_OLD = LeaderMemory(first_passing={"web": {"web-h1-a": NOW - 60, "web-h2-a": NOW - 60}})

CASES = [
    pytest.param(
        Case(V1, hosts={"h1": 1, "h2": 1}, written=frozenset({"placement", "revisions/" + OLD})),
        id="first-deploy-spreads-and-keeps-its-revision-no-rollout",
    ),
    pytest.param(
        Case(
            dataclasses.replace(V1, replicas=3),
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            hosts={"h1": 2, "h2": 1},
            written=frozenset({"placement"}),
        ),
        id="scale-up-adds-to-the-emptiest-host-no-rollout",
    ),
    pytest.param(
        Case(
            dataclasses.replace(V1, replicas=1),
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            hosts={"h1": 1},
            written=frozenset({"placement"}),
        ),
        id="scale-down-takes-from-the-host-sorting-last",
    ),
    pytest.param(
        Case(
            V1,
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            live={"h1": True, "h2": False},
            memory=LeaderMemory(lost_since={"h2": NOW - 4}),
            hosts={"h1": 1, "h2": 1},
            wake_in=6.0,
        ),
        id="host-lost-in-grace-keeps-its-replicas-and-wakes-at-the-end-of-the-grace",
    ),
    pytest.param(
        Case(
            V1,
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            live={"h1": True, "h2": False},
            memory=LeaderMemory(lost_since={"h2": NOW - GRACE - 1}),
            hosts={"h1": 2},
            written=frozenset({"placement"}),
            deleted=frozenset({"status/h2", "reports"}),  # its record, and its report (operator/reports/h2)
        ),
        id="host-lost-past-grace-its-replicas-move-and-its-status-goes",
    ),
    pytest.param(
        Case(
            V2,
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            passing=OLD_PASSING,
            specs={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"placement", "rollout", "revisions/" + NEW}),
            wake_in=ROLLOUT_POLL,
        ),
        id="new-spec-starts-a-rollout-with-one-surge-replica",
    ),
    pytest.param(
        Case(
            V2,
            placed({"h1": 1, "h2": 1}),
            revisions=frozenset({OLD}),
            running={},
            passing=OLD_PASSING,
            specs={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"placement", "rollout", "revisions/" + NEW}),
            wake_in=ROLLOUT_POLL,
        ),
        id="new-spec-read-before-the-agents-reported-their-replicas-still-replaces-none-at-once",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            running={"h1": {NEW: 1}, "h2": {OLD: 1}},
            failing=frozenset({"h1"}),
            passing=(instance("web-h2-a", OLD, "h2"),),
            specs={"h1": {NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"placement"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="rollout-step-an-old-replica-its-agent-reports-crashed-goes-at-once",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            running={"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing=(instance("web-h2-a", OLD, "h2"),),
            specs={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset(),
            wake_in=ROLLOUT_POLL,
        ),
        id="rollout-step-an-old-replica-not-reported-running-and-no-failure-reported-may-be-starting",
    ),
    pytest.param(
        Case(
            V2,
            placed({"h1": 1, "h2": 1}),
            passing=OLD_PASSING,
            hosts={"h1": 1, "h2": 1},
            written=frozenset({"placement", "revisions/" + NEW}),
        ),
        id="new-spec-without-a-kept-revision-replaces-unpaced",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            passing=(*OLD_PASSING, instance("web-h1-n", NEW)),
            memory=MATURE_NEW,
            specs={"h1": {NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"placement", "rollout"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="rollout-step-an-old-replica-goes-once-a-new-one-passed-min-healthy",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            running={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            passing=(instance("web-h2-a", OLD, "h2"), instance("web-h1-n", NEW)),
            memory=MATURE_NEW,
            specs={"h1": {NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"rollout"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="surge-limit-a-draining-old-container-still-counts",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            passing=(instance("web-h2-a", OLD, "h2"), instance("web-h1-n", NEW)),
            memory=MATURE_NEW,
            specs={"h1": {NEW: 1}, "h2": {OLD: 1, NEW: 1}},
            state=RolloutState.PROGRESSING,
            written=frozenset({"placement", "rollout"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="drained-old-container-frees-the-surge-for-the-next-new-one",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(),
            frozenset({OLD, NEW}),
            passing=OLD_PASSING,
            specs={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.PROGRESSING,
            wake_in=ROLLOUT_POLL,
        ),
        id="failed-health-new-replica-never-passes-nothing-old-goes",
    ),
    pytest.param(
        Case(
            NO_ROLLBACK,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(elapsed=61.0),
            frozenset({OLD, NEW}),
            passing=OLD_PASSING,
            specs={"h1": {OLD: 1}, "h2": {OLD: 1}},
            state=RolloutState.FAILED,
            written=frozenset({"placement", "rollout"}),
        ),
        id="deadline-without-auto-rollback-fails-and-freezes-the-old-spec",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(elapsed=61.0),
            frozenset({OLD, NEW}),
            passing=OLD_PASSING,
            memory=MATURE_OLD,
            specs={"h1": {OLD: 1}, "h2": {OLD: 1}},
            state=RolloutState.ROLLING_BACK,
            written=frozenset({"placement", "rollout"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="auto-rollback-past-the-deadline-turns-back-to-the-old-spec",
    ),
    pytest.param(
        Case(
            V2,
            mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            rolling(elapsed=61.0),
            frozenset({OLD, NEW}),
            passing=OLD_PASSING,
            specs={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state=RolloutState.ROLLING_BACK,
            written=frozenset({"placement", "rollout"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="a-new-leader-takes-the-new-replica-back-once-the-old-ones-proved-themselves-to-it",
    ),
    pytest.param(
        Case(
            V2,
            placed({"h1": 1, "h2": 1}, NEW),
            rolling(RolloutState.COMPLETE),
            frozenset({OLD, NEW}),
            rollback_requested=True,
            passing=(instance("web-h1-n", NEW), instance("web-h2-n", NEW, "h2")),
            specs={"h1": {NEW: 1, OLD: 1}, "h2": {NEW: 1}},
            state=RolloutState.ROLLING_BACK,
            written=frozenset({"placement", "rollout"}),
            deleted=frozenset({"rollback"}),
            wake_in=ROLLOUT_POLL,
        ),
        id="rollback-request-turns-a-complete-rollout-around",
    ),
    pytest.param(
        Case(
            invalid(),
            placed({"h1": 1, "h2": 1}),
            rolling(),
            frozenset({OLD, NEW}),
            rollback_requested=True,
            hosts={"h1": 1, "h2": 1},
            deleted=frozenset({"rollback"}),
        ),
        id="invalid-manifest-keeps-its-placement-and-drops-its-rollback-request",
    ),
    pytest.param(
        Case(
            None,
            placed({"h1": 1, "h2": 1}),
            rolling(RolloutState.COMPLETE),
            frozenset({OLD, NEW}),
            deleted=frozenset({"placement", "rollout", "revisions/" + OLD, "revisions/" + NEW}),
        ),
        id="deleted-manifest-its-placement-rollout-and-revisions-go",
    ),
]


def decide(case: Case) -> LeaderPlan:
    return decide_leader(state_of(case), case.memory, Now(NOW, WALL), SETTINGS)


@pytest.mark.parametrize("case", CASES)
def test_decide_leader(case: Case) -> None:
    """Each pass decides web's placement, rollout state, KV writes and wake-up from the state alone."""
    plan = decide(case)
    record = plan.placements.get("web")
    if case.hosts is not None:
        assert record is not None and dict(record.hosts) == case.hosts
    if case.specs is not None:
        assert record is not None
        assert {h: record.spec_counts(h) for h in record.hosts} == case.specs
    rollout = plan.rollouts.get("web")
    assert (rollout.state if rollout else None) == case.state
    assert {kind(k) for k, v in plan.writes.items() if v is not None} == case.written
    assert {kind(k) for k, v in plan.writes.items() if v is None} == case.deleted
    assert (None if plan.wake_at is None else round(plan.wake_at - NOW, 6)) == case.wake_in


@pytest.mark.parametrize("case", CASES)
def test_reader_is_asked_for_exactly_the_paced_services(case: Case) -> None:
    """`paced_services` names web exactly when the pass paces its rollout (and so needs its health).

    In the table, web has a rollout state after the pass exactly when the pass paced it.
    """
    assert ("web" in paced_services(state_of(case))) == (case.state is not None)


@pytest.mark.parametrize("case", CASES)
def test_decision_is_pure(case: Case) -> None:
    """The same state and memory give the same plan; the memory passed in is left as it was."""
    before = copy.deepcopy(case.memory)
    assert decide(case) == decide(case)
    assert case.memory == before


def test_written_placement_names_the_leader() -> None:
    """A placement written by this pass carries the leader's host (the chaos run's fencing check)."""
    plan = decide(Case(V1))
    key = LAYOUT.placement_key("web")
    assert PlacementRecord.from_json(plan.writes[key] or b"").written_by == "h1"


def test_lost_host_time_is_remembered_and_forgotten() -> None:
    """A host seen lost for the first time is timed from now; once live again it is forgotten."""
    lost = decide(Case(V1, placed({"h1": 1, "h2": 1}), live={"h1": True, "h2": False}))
    assert dict(lost.memory.lost_since) == {"h2": NOW}
    back = decide(Case(V1, placed({"h1": 1, "h2": 1}), memory=lost.memory))
    assert dict(back.memory.lost_since) == {}


def test_first_passing_times_carry_over_and_new_instances_are_timed_from_now() -> None:
    """min_healthy counts from the first pass that saw an instance passing; gone instances are forgotten."""
    case = Case(
        V2,
        mixed({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
        rolling(),
        frozenset({OLD, NEW}),
        passing=(*OLD_PASSING, instance("web-h1-n", NEW)),
        memory=LeaderMemory(first_passing={"web": {"web-h1-n": NOW - 1, "gone": NOW - 9}}),
    )
    memory = decide(case).memory
    assert memory.first_passing == {"web": {"web-h1-n": NOW - 1, "web-h1-a": NOW, "web-h2-a": NOW}}


def test_convergence_is_timed_from_the_change_the_leader_saw() -> None:
    """A manifest change starts the timer; the pass where every replica passes reports the seconds."""
    placement = placed({"h1": 1, "h2": 1})
    changed = decide(
        Case(dataclasses.replace(V1, port=6000), placement, memory=LeaderMemory(seen={"web": V1}))
    )
    assert dict(changed.memory.changed_at) == {"web": NOW}
    moved = dataclasses.replace(V1, port=6000)
    old_state = dataclasses.replace(state_of(Case(moved, placement)), passing_counts={"web": 2})
    still_old = decide_leader(old_state, changed.memory, Now(NOW + 3, WALL), SETTINGS)
    assert still_old.converged == ()  # the old spec's replicas passing is no convergence
    state = dataclasses.replace(
        state_of(Case(moved, placed({"h1": 1, "h2": 1}, moved.spec_hash()))), passing_counts={"web": 2}
    )
    later = decide_leader(state, still_old.memory, Now(NOW + 7, WALL), SETTINGS)
    assert [(c.service, c.seconds) for c in later.converged] == [("web", 7.0)]
    assert dict(later.memory.changed_at) == {}


@pytest.mark.parametrize(
    "memory",
    [
        pytest.param(
            LeaderMemory(seen={"web": V1}, changed_at={"web": NOW - 1}, exported=frozenset({"web"})),
            id="valid-before",
        ),
        pytest.param(LeaderMemory(exported=frozenset({"web"}), observed=True), id="never-valid"),
    ],
)
def test_a_deleted_service_is_forgotten(memory: LeaderMemory) -> None:
    """A service whose manifest, valid or not, is gone leaves the memory; its figures go with it."""
    plan = decide(Case(None, memory=memory))
    assert plan.forgotten == ("web",)
    assert not plan.memory.seen and not plan.memory.changed_at and not plan.memory.exported


def test_a_new_service_is_timed_but_not_on_the_leaders_first_pass() -> None:
    """A service put while this leader leads converges in measured time; one it found at start does not."""
    first = decide(Case(V1))
    assert not first.memory.changed_at and first.memory.observed
    assert dict(decide(Case(V1, memory=LeaderMemory(observed=True))).memory.changed_at) == {"web": NOW}


def test_the_leader_places_by_the_capacities_and_labels_the_agents_advertise() -> None:
    """Capacities and labels read from the agents reach the scheduler: web fits only on h2, zone a."""
    big = dataclasses.replace(V1, resources=Resources(3 * GI, 500))
    state = ClusterState(
        manifests={"web": big},
        hosts={"h1": (True, {"zone": "a"}), "h2": (True, {"zone": "a"}), "h3": (True, {})},
        capacities={"h1": Resources(2 * GI, 4000), "h2": Resources(8 * GI, 4000)},
    )
    labelled = dataclasses.replace(big, placement=Placement(labels=(("zone", "a"),)))
    plan = decide_leader(state, LeaderMemory(), Now(NOW, WALL), SETTINGS)
    assert dict(plan.placements["web"].hosts) == {"h2": 1, "h3": 1}  # h3 advertises none: unlimited
    plan = decide_leader(
        dataclasses.replace(state, manifests={"web": labelled}), LeaderMemory(), Now(NOW, WALL), SETTINGS
    )
    assert dict(plan.placements["web"].hosts) == {"h2": 2}


def test_a_count_change_read_by_the_pass_that_completes_a_rollout_is_placed_by_the_next_one() -> None:
    """The pass that finds every replica on the new spec completes the rollout with the counts it
    paced; a replica count changed meanwhile (4 -> 2 here) is placed by the next pass, which the
    completing pass asks for: nothing else may come to wake the leader (CI's lease test waited 30 s
    for its scale-down once a watch no longer fired on every status record)."""
    two = dataclasses.replace(V2, replicas=2)
    on_new = mixed({"h1": {NEW: 2}, "h2": {NEW: 2}})
    passing = tuple(instance(f"web-{h}-{i}", NEW, h) for h in ("h1", "h2") for i in range(2))
    memory = LeaderMemory(first_passing={"web": {i.service_id: NOW - 60 for i in passing}})
    state = state_of(Case(two, on_new, rolling(), frozenset({OLD, NEW}), passing=passing, memory=memory))
    first = decide_leader(state, memory, Now(NOW, WALL), SETTINGS)
    assert first.rollouts["web"].state == RolloutState.COMPLETE
    assert first.wake_at is not None and first.wake_at - NOW <= ROLLOUT_POLL
    after = dataclasses.replace(state, placements=first.placements, rollouts=first.rollouts)
    second = decide_leader(after, first.memory, Now(first.wake_at, WALL + 1), SETTINGS)
    assert sum(second.placements["web"].hosts.values()) == 2
