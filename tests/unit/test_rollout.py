"""The leader's rollout pacing (`plan_rollout`) as a decision table, and the spec-aware host plan."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from consul_operator.core.desired_state import Manifest, UpdatePolicy
from consul_operator.core.model import ContainerInfo, DrainContainer, InFlight, ServiceDesire, StartContainer
from consul_operator.core.reconcile import plan_host, plan_rollout
from consul_operator.core.records import PlacementRecord, RolloutRecord, RolloutState

NOW = 1000.0
OLD, NEW = "old", "new"
TARGET = {"h1": 1, "h2": 1}


def rollout(state: str = "progressing", started: float = NOW - 10) -> RolloutRecord:
    """A rollout of ``NEW`` from ``OLD`` (reversed while rolling back), in its state since ``started``."""
    if state == "rolling_back":
        return RolloutRecord("web", NEW, OLD, RolloutState(state), started, elapsed=NOW - started)
    return RolloutRecord("web", OLD, NEW, RolloutState(state), started, elapsed=NOW - started)


@dataclass(frozen=True)
class Row:
    """One row of the table: the inputs that vary and the expected placement and state."""

    placed: dict[str, dict[str, int]]
    expect: dict[str, dict[str, int]]
    state: str = "progressing"
    running: dict[str, dict[str, int]] | None = None  # None: as placed
    passing: dict[str, int] = field(default_factory=dict)
    matured: dict[str, int] = field(default_factory=dict)
    policy: UpdatePolicy = field(default_factory=lambda: UpdatePolicy(deadline=60.0))
    record: RolloutRecord = field(default_factory=rollout)
    replicas: int = 2
    target: dict[str, int] = field(default_factory=lambda: dict(TARGET))
    failing: frozenset[str] = frozenset()  # hosts whose agent reports the service failing


ROWS = [
    pytest.param(
        Row({"h1": {OLD: 1}, "h2": {OLD: 1}}, {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}, passing={OLD: 2}),
        id="start-adds-one-new-replica-within-the-surge",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 2, NEW: 1},
        ),
        id="new-replica-passing-but-not-for-min-healthy-removes-nothing",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 1},
        ),
        id="an-old-replica-failing-its-check-stays-while-the-new-one-is-unproven",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 1, NEW: 1},
            matured={NEW: 1},
        ),
        id="with-an-old-replica-failing-one-old-goes-once-a-new-one-matured",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {NEW: 1}, "h2": {OLD: 1}},
            running={"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 1},
            failing=frozenset({"h1"}),
        ),
        id="an-old-replica-that-does-not-run-where-its-agent-reports-failure-goes-at-once",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            running={"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 1},
        ),
        id="an-old-replica-not-running-where-its-agent-reports-no-failure-may-be-starting-and-stays",
    ),
    pytest.param(
        Row({"h1": {OLD: 1}, "h2": {OLD: 1}}, {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}, running={}),
        id="a-new-spec-before-the-agents-reported-their-first-replicas-replaces-none-at-once",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 2, NEW: 1},
            matured={NEW: 1},
        ),
        id="matured-new-replica-lets-one-old-go-and-the-draining-one-blocks-the-next-start",
    ),
    pytest.param(
        Row(
            {"h1": {NEW: 1}, "h2": {OLD: 1}},
            {"h1": {NEW: 1}, "h2": {OLD: 1, NEW: 1}},
            running={"h1": {NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 1, NEW: 1},
            matured={NEW: 1},
        ),
        id="drained-old-replica-frees-the-surge-for-the-next-host",
    ),
    pytest.param(
        Row(
            {"h1": {NEW: 1}, "h2": {OLD: 1, NEW: 1}},
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            running={"h1": {NEW: 1}, "h2": {OLD: 1, NEW: 1}},
            passing={OLD: 1, NEW: 2},
            matured={NEW: 2},
        ),
        id="last-old-replica-goes-once-every-new-one-matured",
    ),
    pytest.param(
        Row(
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            state="complete",
            passing={NEW: 2},
            matured={NEW: 2},
        ),
        id="all-new-and-matured-and-nothing-old-running-completes",
    ),
    pytest.param(
        Row(
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            running={"h1": {NEW: 1}, "h2": {OLD: 1, NEW: 1}},
            passing={NEW: 2},
            matured={NEW: 2},
        ),
        id="old-replica-still-draining-keeps-it-progressing",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1}, "h2": {OLD: 1, NEW: 1}},
            running={"h1": {OLD: 1}, "h2": {OLD: 1}},
            passing={OLD: 2},
            target={"h1": 0, "h2": 2},
        ),
        id="new-replicas-go-where-the-schedule-wants-them",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1}, "h2": {OLD: 1}},
            {"h2": {OLD: 1}},
            passing={OLD: 2},
            policy=UpdatePolicy(max_surge=0, max_unavailable=1, deadline=60.0),
        ),
        id="max-unavailable-removes-an-old-replica-first-and-waits-for-its-drain",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 2}, "h2": {OLD: 2}, "h3": {OLD: 2}},
            {"h1": {OLD: 2, NEW: 1}, "h2": {OLD: 2, NEW: 1}, "h3": {OLD: 2}},
            passing={OLD: 6},
            policy=UpdatePolicy(max_surge=6, deadline=60.0),
            replicas=6,
            target={"h1": 2, "h2": 2, "h3": 2},
        ),
        id="a-large-surge-never-touches-every-host-at-once",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            state="failed",
            running={"h1": {OLD: 1}, "h2": {OLD: 1}},
            passing={OLD: 2},
            policy=UpdatePolicy(deadline=5.0, auto_rollback=False),
        ),
        id="past-the-deadline-without-auto-rollback-fails-and-changes-nothing",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1}, "h2": {OLD: 1}},
            state="rolling_back",
            running={"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            passing={OLD: 2},
            matured={OLD: 2},
            policy=UpdatePolicy(deadline=5.0),
        ),
        id="past-the-deadline-with-auto-rollback-removes-the-failing-new-replica",
    ),
    pytest.param(
        Row(
            {"h1": {OLD: 1}, "h2": {OLD: 1}},
            {"h1": {OLD: 1}, "h2": {OLD: 1}},
            state="rolled_back",
            passing={OLD: 2},
            matured={OLD: 2},
            record=rollout("rolling_back"),
        ),
        id="rolling-back-ends-rolled-back-once-the-old-spec-runs-alone",
    ),
    pytest.param(
        Row(
            {"h1": {NEW: 1}, "h2": {NEW: 1}},
            {"h1": {NEW: 1, OLD: 1}, "h2": {NEW: 1}},
            state="rolling_back",
            passing={NEW: 2},
            record=rollout("rolling_back"),
        ),
        id="rolling-back-paces-like-a-rollout",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_plan_rollout(row: Row) -> None:
    """The placement and state that one pacing step gives."""
    running = row.placed if row.running is None else row.running
    step = plan_rollout(
        row.record, row.replicas, row.policy, row.target, row.placed, running, row.passing, row.matured, NOW,
        failing=row.failing,
    )  # fmt: skip
    assert step.specs == row.expect
    assert step.rollout.state == row.state


def test_surge_limit_holds_over_a_whole_rollout() -> None:
    """Simulated to the end (agents follow at once, replicas mature at once): never above R + surge."""
    record, placed, running = rollout(), {"h1": {OLD: 2}, "h2": {OLD: 1}}, {"h1": {OLD: 2}, "h2": {OLD: 1}}
    target, policy = {"h1": 2, "h2": 1}, UpdatePolicy(deadline=60.0)
    for _ in range(20):
        new = sum(c.get(NEW, 0) for c in running.values())
        old = sum(c.get(OLD, 0) for c in running.values())
        step = plan_rollout(record, 3, policy, target, placed, running, {OLD: old, NEW: new}, {NEW: new}, NOW)
        record, placed = step.rollout, step.specs
        # the agents start before the next look, and drain after it
        running = {
            h: {s: max(n, running.get(h, {}).get(s, 0)) for s, n in c.items()} for h, c in placed.items()
        }
        assert sum(n for c in running.values() for n in c.values()) <= 3 + 1
        running = {h: dict(c) for h, c in placed.items()}
        if record.state == "complete":
            break
    assert record.state == "complete"
    assert placed == {"h1": {NEW: 2}, "h2": {NEW: 1}}
    assert (record.updated, record.total) == (3, 3)


def test_rollout_record_round_trips() -> None:
    """The KV form of a rollout parses back to an equal record."""
    record = RolloutRecord("web", OLD, NEW, RolloutState.ROLLING_BACK, 12.5, "too slow", 1, 2)
    assert RolloutRecord.from_json(record.to_json()) == record


def test_placement_without_specs_keeps_its_old_form() -> None:
    """A record outside a rollout serialises exactly as before; specs change the decision."""
    plain = PlacementRecord("web", NEW, {"h1": 2})
    assert b"specs" not in plain.to_json()
    paced = PlacementRecord("web", NEW, {"h1": 2}, specs={"h1": {NEW: 1, OLD: 1}})
    assert not paced.same_decision(plain)
    assert PlacementRecord.from_json(paced.to_json()).spec_counts("h1") == {NEW: 1, OLD: 1}
    assert plain.spec_counts("h1") == {NEW: 2}


def _container(cid: str, spec: str) -> ContainerInfo:
    return ContainerInfo(cid, f"web-{cid}", "web", spec, "running", 5000, 1.0, 1.0)


def test_agent_follows_per_spec_counts() -> None:
    """A spec with count 0 is drained, a missing one started from its own manifest."""
    current = Manifest("web", "hello:v2", 1, port=5000)
    previous = Manifest("web", "hello:local", 1, port=5000)
    desire = ServiceDesire(
        "web",
        current,
        1,
        specs={previous.spec_hash(): 1},
        revisions={previous.spec_hash(): previous, current.spec_hash(): current},
    )
    containers = [_container("a", current.spec_hash())]
    plan = plan_host({"web": desire}, containers, [], InFlight(), {}, NOW, mono=NOW)
    kinds = [(type(a).__name__, getattr(a, "manifest", None)) for a in plan.actions]
    assert ("StartContainer", previous) in kinds
    assert any(isinstance(a, DrainContainer) and a.container.id == "a" for a in plan.actions)
    assert not any(isinstance(a, StartContainer) and a.manifest == current for a in plan.actions)
