"""Capacity holds through spec changes (issue 26): a rollout's new replicas, surge included, go
through the capacity filter; a spec that fits nowhere holds the rollout with the old replicas
running; a host is charged what is placed or runs there, per spec, not a spec that did not start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import GI, MI, Manifest, Resources, UpdatePolicy
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader
from consul_operator.core.model import META_HOST, META_SPEC, HostInfo, ServiceInstance
from consul_operator.core.placement import Usage, schedule
from consul_operator.core.records import (
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.rollout import plan_rollout, spec_charge

NOW = 1000.0
WALL = 1.7e9
OLD, NEW = "old", "new"
SMALL, BIG = Resources(1 * GI, 250), Resources(4 * GI, 250)
SIZES = {OLD: SMALL, NEW: BIG}
POLICY = UpdatePolicy(deadline=60.0)


def rollout(
    state: RolloutState = RolloutState.PROGRESSING, elapsed: float = 10.0, reason: str = ""
) -> RolloutRecord:
    """A rollout of ``web`` from OLD (1Gi) to NEW (4Gi)."""
    return RolloutRecord("web", OLD, NEW, state, WALL - elapsed, reason, elapsed=elapsed)


@dataclass(frozen=True)
class Row:
    """One pacing step under capacity: what the other services leave free per host, and the outcome."""

    free: Mapping[str, Resources | None]
    placed: Mapping[str, Mapping[str, int]]
    expect: Mapping[str, Mapping[str, int]]
    state: RolloutState
    running: Mapping[str, Mapping[str, int]] | None = None  # None: as placed
    passing: Mapping[str, int] = field(default_factory=lambda: {OLD: 2})
    matured: Mapping[str, int] = field(default_factory=dict)
    policy: UpdatePolicy = POLICY
    record: RolloutRecord = field(default_factory=rollout)
    reason: str | None = None  # None: not checked


TWO_OLD = {"h1": {OLD: 1}, "h2": {OLD: 1}}
ROOMY = Resources(16 * GI, 8000)
R4 = Resources(4 * GI, 8000)
TIGHT = {"h1": R4, "h2": R4}
H2_OLD = {"h2": {OLD: 1}}
UNAVAILABLE = UpdatePolicy(max_surge=0, max_unavailable=1, deadline=60.0)
PROGRESSING, HELD = RolloutState.PROGRESSING, RolloutState.HELD

ROWS = [
    pytest.param(
        Row({"h1": ROOMY, "h2": ROOMY}, TWO_OLD, {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}, PROGRESSING),
        id="surge-fits-and-is-placed",
    ),
    pytest.param(
        Row({"h1": R4, "h2": ROOMY}, TWO_OLD, {"h1": {OLD: 1}, "h2": {OLD: 1, NEW: 1}},
            PROGRESSING),
        id="surge-goes-to-the-host-where-it-fits",
    ),
    pytest.param(
        Row(TIGHT, TWO_OLD, TWO_OLD, RolloutState.HELD,
            reason="2 new replicas fit on no host (each needs memory=4Gi cpus=0.25): "
            "h1: memory 3Gi free; h2: memory 3Gi free"),
        id="fits-nowhere-holds-with-the-old-replicas-and-each-hosts-free-memory",
    ),
    pytest.param(
        Row({"h1": Resources(8 * GI, 200), "h2": Resources(8 * GI, 200)}, TWO_OLD, TWO_OLD, RolloutState.HELD,
            reason="2 new replicas fit on no host (each needs memory=4Gi cpus=0.25): "
            "h1: cpus 0 free; h2: cpus 0 free"),
        id="cpus-count-too",
    ),
    pytest.param(
        Row(TIGHT, H2_OLD, H2_OLD,
            RolloutState.PROGRESSING, running=TWO_OLD, passing={OLD: 1},
            policy=UNAVAILABLE),
        id="a-draining-old-replica-still-takes-its-room-progressing-not-held",
    ),
    pytest.param(
        Row(TIGHT, H2_OLD,
            {"h1": {NEW: 1}, "h2": {OLD: 1}}, RolloutState.PROGRESSING, running=H2_OLD, passing={OLD: 1},
            policy=UNAVAILABLE, record=rollout(HELD)),
        id="room-freed-by-a-stopped-replica-takes-a-held-rollout-on",
    ),
    pytest.param(
        Row(TIGHT, TWO_OLD, TWO_OLD,
            RolloutState.ROLLING_BACK, record=rollout(RolloutState.HELD, elapsed=61.0, reason="fits nowhere"),
            reason="held past the deadline (60s): fits nowhere"),
        id="held-past-its-deadline-rolls-back-saying-why",
    ),
    pytest.param(
        Row({"h1": None, "h2": None}, TWO_OLD, {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}, PROGRESSING),
        id="hosts-without-capacity-are-unlimited",
    ),
]  # fmt: skip


CLOSED_ROWS = [
    pytest.param(
        {"h1": "cordoned"}, None, {"h1": {OLD: 1}, "h2": {OLD: 1, NEW: 1}}, PROGRESSING, "",
        id="a-cordoned-hosts-replacement-goes-to-an-open-host",
    ),
    pytest.param(
        {"h1": "not live"}, None, {"h1": {OLD: 1}, "h2": {OLD: 1, NEW: 1}}, PROGRESSING, "",
        id="a-lost-hosts-replacement-goes-to-a-live-host",
    ),
    pytest.param(
        {"h1": "cordoned", "h2": "cordoned"}, None, TWO_OLD, HELD,
        "2 new replicas fit on no host (each needs memory=4Gi cpus=0.25): h1: cordoned; h2: cordoned",
        id="no-open-host-holds",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("closed", "cap", "expect", "state", "reason"), CLOSED_ROWS)
def test_new_replicas_go_only_to_open_hosts(
    closed: dict[str, str],
    cap: int | None,
    expect: dict[str, dict[str, int]],
    state: RolloutState,
    reason: str,
) -> None:
    """A rollout places no new replica on a cordoned or lost host: it replaces it on an open one."""
    step = plan_rollout(
        rollout(), 2, POLICY, {"h1": 1, "h2": 1}, TWO_OLD, TWO_OLD, {OLD: 2}, {}, WALL,
        free={"h1": ROOMY, "h2": ROOMY}, need=SIZES, closed=closed, max_per_host=cap,
    )  # fmt: skip
    assert (step.specs, step.rollout.state, step.rollout.reason) == (expect, state, reason)


def test_a_cordoned_hosts_replicas_move_over_a_whole_rollout() -> None:
    """Simulated to the end (agents follow at once, replicas mature at once): h1 is cordoned, every
    new replica runs on h2, the rollout completes and the old one on h1 is gone."""
    record, placed = rollout(), {h: dict(c) for h, c in TWO_OLD.items()}
    for _ in range(10):
        new = sum(c.get(NEW, 0) for c in placed.values())
        old = sum(c.get(OLD, 0) for c in placed.values())
        step = plan_rollout(
            record, 2, POLICY, {"h1": 1, "h2": 1}, placed, placed, {OLD: old, NEW: new}, {NEW: new}, WALL,
            closed={"h1": "cordoned"},
        )  # fmt: skip
        record, placed = step.rollout, step.specs
        assert placed.get("h1", {}).get(NEW, 0) == 0
        if record.state == RolloutState.COMPLETE:
            break
    assert (record.state, placed) == (RolloutState.COMPLETE, {"h2": {NEW: 2}})


@pytest.mark.parametrize("row", ROWS)
def test_plan_rollout_under_capacity(row: Row) -> None:
    """New replicas go only where they fit (the old replicas' and draining ones' room counted)."""
    running = row.placed if row.running is None else row.running
    step = plan_rollout(
        row.record,
        2,
        row.policy,
        {"h1": 1, "h2": 1},
        row.placed,
        running,
        row.passing,
        row.matured,
        WALL,
        free=row.free,
        need=SIZES,
    )
    assert step.specs == row.expect
    assert step.rollout.state == row.state
    if row.reason is not None:
        assert step.rollout.reason == row.reason


def test_spec_charge_is_per_spec_the_larger_of_placed_and_running() -> None:
    """One old replica running while a new one is placed: the host is charged both, each at its size."""
    assert spec_charge({NEW: 1}, {OLD: 1}, SIZES, BIG) == Resources(5 * GI, 500)
    assert spec_charge({OLD: 2}, {OLD: 1}, SIZES, BIG) == Resources(2 * GI, 500)
    assert spec_charge({"unknown": 1}, {}, SIZES, BIG) == BIG


# --- the leader's whole pass: the issue's scenario -------------------------------------------

LAYOUT = Layout()
SETTINGS = LeaderSettings("h1", LAYOUT, 10.0)
V1 = Manifest(name="web", image="hello:1", replicas=8, port=5000, resources=Resources(256 * MI, 250))
V2 = dataclasses.replace(V1, resources=Resources(8 * GI, 250))
TINY = Manifest(name="tiny", image="hello:1", replicas=1, port=5000, resources=Resources(256 * MI, 250))
HOST = Resources(8 * GI, 8000)


def passing(host: str, n: int) -> ServiceInstance:
    """The ``n``-th replica of web's old spec on ``host``, passing."""
    meta = {META_SPEC: V1.spec_hash(), META_HOST: host}
    return ServiceInstance(host, "127.0.0.1", f"web-{host}-{n}", "web", "127.0.0.1", 5000, meta, "passing")


def issue_state(*manifests: Manifest) -> ClusterState:
    """8 replicas of web at 256Mi on two hosts of 8Gi, running and passing; ``manifests`` in KV."""
    old = V1.spec_hash()
    four = frozen_map({old: 4})
    return ClusterState(
        passing={"web": tuple(passing(h, n) for h in ("h1", "h2") for n in range(4))},
        manifests={m.name: m for m in manifests},
        placements={"web": PlacementRecord("web", old, frozen_map({"h1": 4, "h2": 4}))},
        revisions=frozenset({("web", old)}),
        hosts={"h1": (True, {}), "h2": (True, {})},
        capacities={"h1": HOST, "h2": HOST},
        statuses={"web": {h: StatusRecord("web", h, old, 4, 4, 4, specs=four) for h in ("h1", "h2")}},
        spec_sizes={("web", old): V1.resources},
    )


def test_a_spec_that_fits_nowhere_holds_and_other_services_are_still_placed() -> None:
    """Issue 26: web's 256Mi -> 8Gi fits on no host: its old replicas stay placed, the rollout is
    held naming each host's free memory, and a new 256Mi service is placed."""
    plan = decide_leader(issue_state(V2, TINY), LeaderMemory(), Now(NOW, WALL), SETTINGS)
    web = plan.placements["web"]
    assert {h: web.spec_counts(h) for h in web.hosts} == {
        "h1": {V1.spec_hash(): 4},
        "h2": {V1.spec_hash(): 4},
    }
    held = plan.rollouts["web"]
    assert held.state == RolloutState.HELD
    free = "h1: memory 6912Mi free; h2: memory 7Gi free"  # tiny went to h1
    assert held.reason == f"8 new replicas fit on no host (each needs memory=8Gi cpus=0.25): {free}"
    assert any(e.message == "rollout" and e.fields["state"] == RolloutState.HELD for e in plan.events)
    tiny = plan.placements["tiny"]
    assert (tiny.total, tiny.unplaced) == (1, 0)


def test_the_host_is_charged_the_old_spec_that_runs_not_the_new_one() -> None:
    """The schedule's charge of a held rollout's hosts is the old replicas' 4 x 256Mi each."""
    state = issue_state(V2)
    hosts = [HostInfo("h1", capacity=HOST), HostInfo("h2", capacity=HOST)]
    running = {"web": {h: dict(r.specs) for h, r in state.statuses["web"].items()}}
    used = Usage.of({"web": V2}, state.placements, running, state.spec_sizes)
    assert used.on("h1") == used.on("h2") == Resources(1 * GI, 1000)
    # Without the old spec's size it is charged at the manifest's: conservative, never less.
    assert Usage.of({"web": V2}, state.placements, running).on("h1") == Resources(32 * GI, 1000)
    many = dataclasses.replace(TINY, replicas=14)
    result = schedule({"web": V2, "tiny": many}, hosts, state.placements, NOW, 10.0, running=running,
                      sizes=state.spec_sizes)  # fmt: skip
    assert dict(result["tiny"].hosts) == {"h1": 7, "h2": 7}  # 7 x 256Mi fill what the old replicas leave


def test_a_rollout_record_of_another_spec_goes_when_the_spec_is_replaced_without_pacing() -> None:
    """No revision of the running spec: no paced rollout, and the old record (of another spec) is
    deleted, so that it cannot keep the service from Converged."""
    old = V1.spec_hash()
    state = dataclasses.replace(
        issue_state(dataclasses.replace(V1, image="hello:2")),
        revisions=frozenset(),
        rollouts={"web": RolloutRecord("web", "older", old, RolloutState.COMPLETE, WALL - 60)},
    )
    plan = decide_leader(state, LeaderMemory(), Now(NOW, WALL), SETTINGS)
    assert plan.writes[LAYOUT.rollout_key("web")] is None
    assert "web" not in plan.rollouts
