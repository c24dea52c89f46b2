"""Spread comes back (issue #27), pure: the even target, the paced step, and the leader's pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.cli.main import agent_config, build_parser
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import (
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
from consul_operator.core.model import META_HOST, META_SPEC, HostInfo, ServiceInstance
from consul_operator.core.placement import Usage
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.spread import SpreadSettings, spread_target, step_toward
from consul_operator.core.status import ClusterSnapshot, HostRow, build_status, converged

NOW = 1000.0
WALL = 1.7e9
GRACE = 10.0
SETTLE = 30.0


def manifest(
    replicas: int = 2,
    *,
    surge: int = 1,
    unavailable: int = 0,
    hosts: tuple[str, ...] | None = None,
    labels: tuple[tuple[str, str], ...] = (),
    max_per_host: int | None = None,
    rebalance: bool = True,
    resources: Resources | None = None,
) -> Manifest:
    """``web`` with what spreading looks at."""
    return Manifest(
        name="web",
        image="hello:1",
        replicas=replicas,
        port=5000,
        placement=Placement(hosts=hosts, max_per_host=max_per_host, labels=labels, rebalance=rebalance),
        update=UpdatePolicy(max_surge=surge, max_unavailable=unavailable, min_healthy=2.0),
        resources=resources or Resources(),
    )


WEB = manifest()
SPEC = WEB.spec_hash()
V2 = dataclasses.replace(WEB, image="hello:2")
PROGRESSING = RolloutState.PROGRESSING

# --- the target: as even as the schedule would place it from scratch ----------------------


@dataclass(frozen=True)
class Target:
    """`spread_target` of ``web`` placed ``counts``."""

    m: Manifest
    counts: Mapping[str, int]
    want: Mapping[str, int]
    hosts: tuple[HostInfo, ...] = (HostInfo("h1"), HostInfo("h2"))
    receiving: frozenset[str] = frozenset({"h1", "h2", "h3"})
    cordoned: frozenset[str] = frozenset()
    load: Mapping[str, int] = field(default_factory=dict)


ZONE_A = (("zone", "a"),)
THREE = (HostInfo("h1"), HostInfo("h2"), HostInfo("h3"))
SMALL = Resources(memory=512 * 2**20, millicpus=1000)
TARGET_CASES = [
    pytest.param(Target(WEB, {"h1": 2}, {"h1": 1, "h2": 1}), id="returned-host-gets-one-back"),
    pytest.param(Target(WEB, {"h1": 1, "h2": 1}, {"h1": 1, "h2": 1}), id="even-moves-nothing"),
    pytest.param(Target(manifest(3), {"h1": 2, "h2": 1}, {"h1": 2, "h2": 1}), id="odd-count-is-even-enough"),
    pytest.param(Target(manifest(3), {"h1": 3}, {"h1": 2, "h2": 1}), id="three-on-two-hosts-two-and-one"),
    pytest.param(
        Target(manifest(4), {"h1": 4}, {"h1": 2, "h2": 1, "h3": 1}, THREE),
        id="four-on-three-hosts",
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 2}, receiving=frozenset({"h1"})), id="host-not-settled-receives-nothing"
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 2}, cordoned=frozenset({"h2"})), id="cordoned-host-receives-nothing"
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 2}, cordoned=frozenset({"h1"})), id="cordoned-host-keeps-what-it-runs"
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 2}, (HostInfo("h1"), HostInfo("h2", live=False, lost_since=NOW))),
        id="lost-host-receives-nothing",
    ),
    pytest.param(Target(manifest(hosts=("h1",)), {"h1": 2}, {"h1": 2}), id="pinned-by-placement-hosts"),
    pytest.param(
        Target(manifest(labels=ZONE_A), {"h1": 2}, {"h1": 2}, (HostInfo("h1", dict(ZONE_A)), HostInfo("h2"))),
        id="host-without-the-labels-receives-nothing",
    ),
    pytest.param(
        Target(manifest(max_per_host=1, replicas=3), {"h1": 1, "h2": 1}, {"h1": 1, "h2": 1}),
        id="max-per-host-respected",
    ),
    pytest.param(
        Target(
            manifest(resources=SMALL),
            {"h1": 2},
            {"h1": 2},
            (HostInfo("h1"), HostInfo("h2", capacity=Resources(256 * 2**20, 8000))),
        ),
        id="host-without-room-receives-nothing",
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 1, "h3": 1}, THREE, load={"h2": 5}),
        id="tie-goes-to-the-least-loaded-host",
    ),
    pytest.param(
        Target(WEB, {"h1": 2}, {"h1": 1, "h2": 1}, THREE),
        id="tie-of-load-goes-to-the-name-sorting-first",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", TARGET_CASES)
def test_spread_target(case: Target) -> None:
    """Replicas go from the fullest host to the emptiest eligible, settled one while that evens them out."""
    hosts = {h.name: h for h in case.hosts}
    got = spread_target(case.m, case.counts, hosts, case.receiving, case.cordoned, case.load, Usage())
    assert got == case.want


# --- the paced step: plan_drain, a giving host's surplus draining ----------------------------


@dataclass(frozen=True)
class Step:
    """`step_toward` ``target`` from ``placed``."""

    placed: Mapping[str, int]
    target: Mapping[str, int]
    running: Mapping[str, int]
    passing: Mapping[str, int]
    matured: Mapping[str, int]
    want: Mapping[str, int]
    replicas: int = 2
    policy: UpdatePolicy = field(default_factory=lambda: UpdatePolicy(min_healthy=2.0))


ONE_ONE = {"h1": 1, "h2": 1}
TWO_ONE = {"h1": 2, "h2": 1}
STEP_CASES = [
    pytest.param(
        Step({"h1": 2}, ONE_ONE, {"h1": 2}, {"h1": 2}, {"h1": 2}, TWO_ONE),
        id="first-step-places-the-replacement-and-keeps-the-replica",
    ),
    pytest.param(
        Step(TWO_ONE, ONE_ONE, TWO_ONE, TWO_ONE, {"h1": 2}, TWO_ONE),
        id="replacement-passing-not-matured-the-replica-stays",
    ),
    pytest.param(
        Step(TWO_ONE, ONE_ONE, TWO_ONE, {"h1": 2}, {"h1": 2}, TWO_ONE),
        id="replacement-not-passing-the-replica-stays",
    ),
    pytest.param(
        Step(TWO_ONE, ONE_ONE, TWO_ONE, TWO_ONE, TWO_ONE, ONE_ONE),
        id="replacement-matured-the-replica-goes",
    ),
    pytest.param(
        Step({"h1": 4}, {"h1": 2, "h2": 2}, {"h1": 4}, {"h1": 4}, {"h1": 4}, {"h1": 4, "h2": 1}, replicas=4),
        id="max-surge-1-moves-one-at-a-time",
    ),
    pytest.param(
        Step(
            {"h1": 4}, {"h1": 2, "h2": 2}, {"h1": 4}, {"h1": 4}, {"h1": 4}, {"h1": 4, "h2": 2},
            replicas=4, policy=UpdatePolicy(max_surge=2, min_healthy=2.0),
        ),
        id="max-surge-2-moves-two",
    ),
    pytest.param(
        Step(
            {"h1": 3, "h2": 1}, {"h1": 2, "h2": 2}, {"h1": 4, "h2": 1},
            {"h1": 3, "h2": 1}, {"h1": 3, "h2": 1}, {"h1": 3, "h2": 1}, replicas=4,
        ),
        id="a-replica-still-draining-holds-the-next-replacement",
    ),
    pytest.param(
        Step(
            {"h1": 2}, ONE_ONE, {"h1": 2}, {"h1": 2}, {"h1": 2}, TWO_ONE,
            policy=UpdatePolicy(max_unavailable=1, min_healthy=2.0),
        ),
        id="max-unavailable-is-not-used-the-replica-waits-for-its-replacement",
    ),
    pytest.param(
        Step(ONE_ONE, ONE_ONE, ONE_ONE, ONE_ONE, ONE_ONE, ONE_ONE), id="at-the-target-nothing-changes"
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", STEP_CASES)
def test_step_toward(case: Step) -> None:
    """A move is a drain of the giving host's surplus: the replacement first, the replica once it matured."""
    got = step_toward(
        case.replicas, case.policy, case.target, case.placed, case.running, case.passing, case.matured
    )
    assert got == case.want


# --- the leader's pass ------------------------------------------------------------------------

LAYOUT = Layout()


def settings(enabled: bool = True) -> LeaderSettings:
    return LeaderSettings("h1", LAYOUT, GRACE, SpreadSettings(enabled=enabled, settle=SETTLE))


def instance(sid: str, host: str, status: str = "passing") -> ServiceInstance:
    return ServiceInstance(
        host, "127.0.0.1", sid, "web", "127.0.0.1", 5000, {META_SPEC: SPEC, META_HOST: host}, status
    )


def cluster(
    placed: Mapping[str, int],
    *,
    m: Manifest = WEB,
    running: Mapping[str, int] | None = None,
    passing: Mapping[str, int] | None = None,
    rebalancing: str = "",
    maintenance: Mapping[str, HostRecord] | None = None,
    rollout: RolloutRecord | None = None,
    live: tuple[str, ...] = ("h1", "h2"),
) -> ClusterState:
    """``web`` placed as ``placed``, running and passing so unless told, on live h1 and h2."""
    running = placed if running is None else running
    passing = placed if passing is None else passing
    instances = tuple(instance(f"{h}-{i}", h) for h, n in sorted(passing.items()) for i in range(n))
    return ClusterState(
        manifests={"web": m},
        placements={"web": PlacementRecord("web", SPEC, frozen_map(placed), rebalancing=rebalancing)},
        rollouts={} if rollout is None else {"web": rollout},
        revisions=frozenset({("web", SPEC)}),
        hosts={"h1": ("h1" in live, {}), "h2": ("h2" in live, {})},
        statuses={
            "web": {
                h: StatusRecord("web", h, specs=frozen_map({SPEC: n}), running=n) for h, n in running.items()
            }
        },
        maintenance=maintenance or {},
        passing={"web": instances},
        passing_counts={"web": sum(passing.values())},
    )


def memory(open_for: float = SETTLE, **first: float) -> LeaderMemory:
    """A leader that has seen h1 and h2 open for ``open_for`` s, and every instance passing for 9 s."""
    ages = {f"{h}-{i}": NOW - 9 for h in ("h1", "h2") for i in range(4)}
    ages.update(first)
    return LeaderMemory(
        open_since={"h1": NOW - 600, "h2": NOW - open_for}, first_passing={"web": ages}, observed=True
    )


def decide(state: ClusterState, mem: LeaderMemory | None = None, on: bool = True) -> LeaderPlan:
    return decide_leader(state, memory() if mem is None else mem, Now(NOW, WALL), settings(on))


def test_a_settled_host_gets_a_replacement_and_the_service_shows_rebalancing() -> None:
    """h2 back and settled: one replacement placed there, h1 keeps both; Rebalanced, marker, poll."""
    plan = decide(cluster({"h1": 2}))
    record = plan.placements["web"]
    assert dict(record.hosts) == {"h1": 2, "h2": 1}
    assert record.rebalancing == "spreading h1=2, h2=0 to h1=1, h2=1"
    assert [(m.source, m.target) for m in plan.rebalanced] == [("h1", "h2")]
    assert plan.rebalanced[0].message == "1 replica moving h1 -> h2: spreading h1=2, h2=0 to h1=1, h2=1"
    assert [e.message for e in plan.events] == ["rebalancing"]
    assert plan.wake_at == NOW + ROLLOUT_POLL
    assert LAYOUT.placement_key("web") in plan.writes


def test_the_replica_goes_once_its_replacement_matured_then_the_marker_goes() -> None:
    """Mid-move: the replica on h1 goes only once h2's passed min_healthy; the marker ends with the drain."""
    why = "spreading h1=2, h2=0 to h1=1, h2=1"
    young = cluster({"h1": 2, "h2": 1}, rebalancing=why)
    plan = decide(young, memory(**{"h2-0": NOW - 1}))
    assert dict(plan.placements["web"].hosts) == {"h1": 2, "h2": 1}, "not matured yet"
    assert plan.placements["web"].rebalancing == why and plan.rebalanced == ()
    plan = decide(young)
    assert dict(plan.placements["web"].hosts) == ONE_ONE
    assert plan.placements["web"].rebalancing == why, "h1's container still drains"
    draining = cluster(ONE_ONE, running={"h1": 2, "h2": 1}, rebalancing=why)
    assert decide(draining).placements["web"].rebalancing == why
    done = decide(cluster(ONE_ONE, rebalancing=why))
    assert dict(done.placements["web"].hosts) == ONE_ONE and done.placements["web"].rebalancing == ""
    assert done.wake_at is None and LAYOUT.placement_key("web") in done.writes


@pytest.mark.parametrize(
    ("state", "mem", "on"),
    [
        pytest.param(cluster({"h1": 2}), memory(open_for=5.0), True, id="host-not-settled-yet"),
        pytest.param(cluster({"h1": 2}), LeaderMemory(), True, id="a-new-leader-times-the-settling-afresh"),
        pytest.param(cluster({"h1": 2}), None, False, id="off-cluster-wide"),
        pytest.param(cluster({"h1": 2}, m=manifest(rebalance=False)), None, True, id="rebalance-false"),
        pytest.param(cluster({"h1": 2}, m=manifest(hosts=("h1",))), None, True, id="pinned-by-hosts"),
        pytest.param(cluster({"h1": 2}, m=manifest(surge=0, unavailable=1)), None, True, id="max-surge-0"),
        pytest.param(cluster({"h1": 2}, passing={"h1": 1}), None, True, id="a-replica-not-passing"),
        pytest.param(cluster({"h1": 2}, running={"h1": 3}), None, True, id="a-container-still-draining"),
        pytest.param(cluster({"h1": 2}, m=manifest(3)), None, True, id="a-replica-unplaced-scale-up-first"),
        pytest.param(
            cluster({"h1": 2}, maintenance={"h2": HostRecord("h2")}), None, True, id="returned-host-cordoned"
        ),
        pytest.param(
            cluster({"h1": 2}, maintenance={"h1": HostRecord("h1", draining=True, deadline=60.0)}),
            None, True, id="drain-under-way",
        ),
        pytest.param(
            dataclasses.replace(
                cluster({"h1": 2}, rollout=RolloutRecord("web", SPEC, V2.spec_hash(), PROGRESSING, WALL)),
                manifests={"web": V2},
            ),
            None, True, id="rollout-under-way",
        ),
    ],
)  # fmt: skip
def test_nothing_is_spread(state: ClusterState, mem: LeaderMemory | None, on: bool) -> None:
    """Spreading starts only for a converged service, settled host, switched on, with a surge to move with."""
    plan = decide(state, mem, on)
    assert not plan.placements["web"].rebalancing
    assert plan.rebalanced == ()
    assert plan.placements == decide(state, mem, on=False).placements, "what the leader does without it"


def test_an_unsettled_host_wakes_the_leader_when_it_settles() -> None:
    """h2 open for 5 s: nothing moves, and the leader wakes when h2 has been open for the settling time."""
    plan = decide(cluster({"h1": 2}), memory(open_for=5.0))
    assert plan.wake_at == NOW - 5.0 + SETTLE
    assert plan.memory.open_since["h2"] == NOW - 5.0


def test_a_flapping_host_starts_its_settling_time_again() -> None:
    """A host lost again is forgotten; back again, it settles from then."""
    lost = decide(cluster({"h1": 2}, live=("h1",)), memory(open_for=20.0))
    assert "h2" not in lost.memory.open_since
    back = decide_leader(cluster({"h1": 2}), lost.memory, Now(NOW + 1, WALL), settings())
    assert back.memory.open_since["h2"] == NOW + 1 and back.rebalanced == ()


def test_an_uncordoned_host_settles_from_its_uncordon() -> None:
    """A cordoned host is not open: uncordoned, it settles from the first pass that sees it open."""
    cordoned = decide(cluster({"h1": 2}, maintenance={"h2": HostRecord("h2")}))
    assert "h2" not in cordoned.memory.open_since
    after = decide_leader(cluster({"h1": 2}), cordoned.memory, Now(NOW + 2, WALL), settings())
    assert after.memory.open_since["h2"] == NOW + 2 and after.wake_at == NOW + 2 + SETTLE


def test_switched_off_mid_move_the_move_winds_down_paced() -> None:
    """Off during a move: no new replacement; a passing one stays and the surplus still goes only once it
    matured; one that does not pass goes at once (the move undone)."""
    why = "spreading h1=2, h2=0 to h1=1, h2=1"
    state = cluster({"h1": 2, "h2": 1}, rebalancing=why)
    young = decide(state, memory(**{"h2-0": NOW - 1}), on=False)
    assert dict(young.placements["web"].hosts) == {"h1": 2, "h2": 1}
    assert dict(decide(state, on=False).placements["web"].hosts) == ONE_ONE
    failing = cluster({"h1": 2, "h2": 1}, passing={"h1": 2}, rebalancing=why)
    for off in (
        decide(failing, on=False),
        decide(dataclasses.replace(failing, manifests={"web": manifest(rebalance=False)})),
    ):
        assert dict(off.placements["web"].hosts) == {"h1": 2}


def test_a_rollout_takes_a_service_over_mid_move() -> None:
    """A rollout that starts during a move paces the service; the marker goes."""
    v2 = dataclasses.replace(WEB, image="hello:2")
    state = dataclasses.replace(cluster({"h1": 2, "h2": 1}, rebalancing="spreading"), manifests={"web": v2})
    plan = decide(state)
    assert plan.rollouts["web"].state == RolloutState.PROGRESSING
    assert plan.placements["web"].rebalancing == ""


def test_the_reader_is_asked_for_the_health_of_services_spreading_may_move() -> None:
    """Uneven services and those being spread need their passing instances; even ones do not."""
    assert paced_services(cluster({"h1": 2})) == ["web"]
    assert paced_services(cluster({"h1": 2}), rebalance=False) == []
    assert paced_services(cluster({"h1": 2, "h2": 1}, rebalancing="x"), rebalance=False) == ["web"]
    assert paced_services(cluster(ONE_ONE)) == []
    assert paced_services(cluster({"h1": 2}, m=manifest(rebalance=False))) == []


def test_moves_until_spread_never_run_short_and_end_two_per_host() -> None:
    """Four replicas on h1, h2 back: pass after pass (a new replica passes at once, a removed one
    drains for one pass), never fewer than 4 passing, never more than 5 containers, one move at a
    time, and it ends 2 + 2 with no marker."""
    m = manifest(4)
    placed, running, passing, why = {"h1": 4}, {"h1": 4}, {"h1": 4}, ""
    ages = {f"h1-{i}": NOW - 9 for i in range(4)}
    mem = LeaderMemory(
        open_since={"h1": NOW - 600, "h2": NOW - 600}, first_passing={"web": ages}, observed=True
    )
    moves = 0
    for second in range(40):
        state = cluster(placed, m=m, running=running, passing=passing, rebalancing=why)
        plan = decide_leader(state, mem, Now(NOW + second, WALL), settings())
        after = dict(plan.placements["web"].hosts)
        assert sum(min(passing.get(h, 0), n) for h, n in after.items()) >= 4, "never below replicas passing"
        assert sum(max(after.get(h, 0), running.get(h, 0)) for h in after | running) <= 5, "max_surge 1"
        moves += len(plan.rebalanced)
        mem, why = plan.memory, plan.placements["web"].rebalancing
        running = {h: max(after.get(h, 0), placed.get(h, 0)) for h in after | placed}
        passing, placed = after, after
        if not why and placed == {"h1": 2, "h2": 2} and running == placed:
            break
    assert (placed, why, moves) == ({"h1": 2, "h2": 2}, "", 2)


def test_status_shows_a_service_being_spread_as_rebalancing() -> None:
    """A placement record with the marker: Rebalancing with why, not Converged."""
    record = PlacementRecord(
        "web", SPEC, frozen_map(ONE_ONE), rebalancing="spreading h1=2, h2=0 to h1=1, h2=1"
    )
    snapshot = ClusterSnapshot(
        now=WALL,
        leader="h1",
        leader_since=WALL,
        hosts=(HostRow("h1", True, {}), HostRow("h2", True, {})),
        manifests={"web": WEB},
        placements={"web": record},
        statuses={"web": {h: StatusRecord("web", h, SPEC, running=1) for h in ("h1", "h2")}},
        passing={"web": {"h1": 1, "h2": 1}},
    )
    view = build_status(snapshot)
    assert view.services[0].state == "Rebalancing: spreading h1=2, h2=0 to h1=1, h2=1"
    assert not converged(view)
    calm = dataclasses.replace(snapshot, placements={"web": dataclasses.replace(record, rebalancing="")})
    assert converged(build_status(calm))


def test_the_marker_survives_the_kv_form() -> None:
    """The record's rebalancing text is written and read back; absent when empty (older records)."""
    record = PlacementRecord("web", SPEC, frozen_map(ONE_ONE), rebalancing="why")
    assert PlacementRecord.from_json(record.to_json()) == record
    assert b"rebalancing" not in dataclasses.replace(record, rebalancing="").to_json()


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        pytest.param([], SpreadSettings(enabled=True, settle=30.0), id="default-on-settling-30s"),
        pytest.param(["--rebalance-settle", "5s"], SpreadSettings(settle=5.0), id="settle-flag"),
        pytest.param(["--no-rebalance"], SpreadSettings(enabled=False, settle=30.0), id="off-cluster-wide"),
    ],
)
def test_agent_flags_set_the_leaders_spread_settings(flags: list[str], want: SpreadSettings) -> None:
    """`operator agent --rebalance-settle` and `--no-rebalance` reach the agent's configuration."""
    args = build_parser().parse_args(["agent", "--host", "host-1", *flags])
    assert agent_config(args).spread == want


@pytest.mark.parametrize(
    ("line", "want"),
    [
        pytest.param("", True, id="default-true"),
        pytest.param("  rebalance: false\n", False, id="false-turns-it-off"),
        pytest.param("  rebalance: true\n", True, id="true"),
        pytest.param('  rebalance: "no"\n', "placement.rebalance: must be true or false, got", id="a-string"),
    ],
)
def test_placement_rebalance_in_a_manifest(line: str, want: bool | str) -> None:
    """`placement.rebalance` is a boolean, true unless set; anything else is refused, naming the field."""
    text = f"name: web\nimage: hello:1\nreplicas: 2\nport: 5000\nplacement:\n  max_per_host: 2\n{line}"
    if isinstance(want, bool):
        assert parse_manifest(text).placement.rebalance is want
    else:
        with pytest.raises(ManifestError) as refused:
            parse_manifest(text)
        assert want in str(refused.value)
