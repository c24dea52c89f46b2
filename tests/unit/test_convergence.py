"""`Converged` is exact (issue 26): `convergence.unconverged` as a decision table, and the status
view, `operator wait`'s judgement and the leader's convergence time that follow it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from consul_operator.core.convergence import unconverged
from consul_operator.core.desired_state import parse_manifest
from consul_operator.core.records import (
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)
from consul_operator.core.status import ClusterSnapshot, HostRow, build_status, converged, shortfalls

NOW = 1_700_000_000.0
V1 = parse_manifest("name: web\nimage: hello:local\nreplicas: 2\nport: 5000\n")
V2 = parse_manifest("name: web\nimage: hello:v2\nreplicas: 2\nport: 5000\n")
OLD, NEW = V1.spec_hash(), V2.spec_hash()
ONE_EACH = {"h1": 1, "h2": 1}


def placed(hosts: Mapping[str, int] = ONE_EACH, spec: str = NEW, unplaced: int = 0) -> PlacementRecord:
    """``web`` placed with one spec."""
    return PlacementRecord("web", spec, frozen_map(hosts), unplaced=unplaced)


def mixed(specs: Mapping[str, Mapping[str, int]]) -> PlacementRecord:
    """``web`` placed per spec, as the leader writes it during a rollout to NEW."""
    return PlacementRecord(
        "web",
        NEW,
        frozen_map({h: sum(c.values()) for h, c in specs.items()}),
        specs={h: frozen_map(c) for h, c in specs.items()},
    )


def runs(host: str, specs: Mapping[str, int], reported: str = NEW) -> StatusRecord:
    """``host``'s status record: running containers per spec; ``reported`` the spec it works towards."""
    count = sum(specs.values())
    return StatusRecord("web", host, reported, 1, count, count, specs=frozen_map(specs))


def rollout(state: RolloutState = RolloutState.COMPLETE, to: str = NEW) -> RolloutRecord:
    """A rollout of ``web`` towards ``to``."""
    return RolloutRecord("web", OLD if to == NEW else NEW, to, state, NOW - 30, updated=1, total=2)


ALL_NEW = (runs("h1", {NEW: 1}), runs("h2", {NEW: 1}))


@dataclass(frozen=True)
class Row:
    """One service's records, and why it is not converged ("" when it is)."""

    placement: PlacementRecord | None
    records: tuple[StatusRecord, ...]
    healthy: int
    rollout: RolloutRecord | None
    why: str


ROWS = [
    pytest.param(Row(placed(), ALL_NEW, 2, None, ""), id="all-new-passing-no-rollout-converged"),
    pytest.param(Row(placed(), ALL_NEW, 2, rollout(), ""), id="all-new-rollout-complete-converged"),
    pytest.param(
        Row(
            mixed({"h1": {NEW: 1}, "h2": {NEW: 1}}),
            (runs("h1", {NEW: 1}), runs("h2", {OLD: 1})),
            2,
            rollout(RolloutState.PROGRESSING),
            "rollout progressing (1/2 updated)",
        ),
        id="issue-26-counts-match-mid-rollout-not-converged",
    ),
    pytest.param(
        Row(
            placed(),
            (runs("h1", {NEW: 1}), runs("h2", {OLD: 1})),
            2,
            rollout(),
            "1 running replica of another spec",
        ),
        id="old-replica-running-though-every-host-reports-the-new-spec",
    ),
    pytest.param(
        Row(
            placed(),
            (runs("h1", {NEW: 1}), runs("h2", {NEW: 1, OLD: 1})),
            2,
            rollout(),
            "1 running replica of another spec",
        ),
        id="old-replica-still-draining-not-converged",
    ),
    pytest.param(
        Row(
            placed(spec=OLD),
            (runs("h1", {OLD: 1}), runs("h2", {OLD: 1})),
            2,
            rollout(to=OLD),
            "the placement is not of the current spec yet",
        ),
        id="right-after-kv-put-the-previous-spec-converged-is-not-converged",
    ),
    pytest.param(
        Row(placed(), ALL_NEW, 2, rollout(to=OLD), "the leader has not taken up the current spec yet"),
        id="rollout-record-of-another-spec",
    ),
    pytest.param(
        Row(placed(), ALL_NEW, 2, rollout(RolloutState.HELD), "rollout held (1/2 updated)"),
        id="held-rollout-not-converged",
    ),
    pytest.param(
        Row(placed(), ALL_NEW, 2, rollout(RolloutState.ROLLING_BACK), "rollout rolling_back (1/2 updated)"),
        id="rolling-back-not-converged",
    ),
    pytest.param(
        Row(
            mixed({"h1": {NEW: 1}, "h2": {OLD: 1}}),
            ALL_NEW,
            2,
            None,
            "the placement is not of the current spec yet",
        ),
        id="placement-still-mixed",
    ),
    pytest.param(Row(placed(), ALL_NEW, 1, None, "1 of 2 replicas passing"), id="one-not-passing"),
    pytest.param(
        Row(placed(), (runs("h1", {NEW: 1}),), 2, None, "1 of 2 replicas running the current spec"),
        id="one-not-running",
    ),
    pytest.param(
        Row(placed({"h1": 1}, unplaced=1), (runs("h1", {NEW: 1}),), 1, None, "1 replicas not placed"),
        id="unplaced",
    ),
    pytest.param(Row(None, (), 0, None, "not placed yet"), id="no-placement"),
    pytest.param(
        Row(
            placed(),
            (runs("h1", {NEW: 2}), runs("h2", {NEW: 1})),
            2,
            None,
            "3 of 2 replicas running the current spec",
        ),
        id="one-too-many-running",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_unconverged(row: Row) -> None:
    """The first reason a service is not converged, or "" for one that is."""
    assert unconverged(V2, row.placement, row.records, row.healthy, row.rollout) == row.why


def test_a_record_without_per_spec_counts_counts_under_its_reported_spec() -> None:
    """An older agent's record (no ``specs``) counts its running containers under its spec hash."""
    old_agent = (StatusRecord("web", "h1", NEW, 1, 1, 1), StatusRecord("web", "h2", OLD, 1, 1, 1))
    assert unconverged(V2, placed(), old_agent, 2, None) == "1 running replica of another spec"


def snapshot(
    placement: PlacementRecord, records: tuple[StatusRecord, ...], rollout: RolloutRecord | None
) -> ClusterSnapshot:
    """``web`` on two live hosts with V2 in KV, passing one per host."""
    return ClusterSnapshot(
        now=NOW,
        leader="h1",
        leader_since=NOW - 60,
        hosts=(HostRow("h1", True, {}), HostRow("h2", True, {})),
        manifests={"web": V2},
        placements={"web": placement},
        statuses={"web": {r.host: r for r in records}},
        passing={"web": dict(ONE_EACH)},
        rollouts={} if rollout is None else {"web": rollout},
    )


def test_status_and_wait_do_not_call_a_half_done_rollout_converged() -> None:
    """Issue 26: 1 old and 1 new running and passing, the rollout progressing: Progressing, and
    `wait` says what it waits for; the same with the rollout complete and all new: Converged."""
    half = build_status(
        snapshot(
            mixed({"h1": {NEW: 1}, "h2": {NEW: 1}}),
            (runs("h1", {NEW: 1}), runs("h2", {OLD: 1})),
            rollout(RolloutState.PROGRESSING),
        )
    )
    assert half.services[0].state == "Progressing (rollout 1/2)"
    assert not converged(half, ["web"])
    done = build_status(snapshot(placed(), ALL_NEW, rollout()))
    assert done.services[0].state == "Converged"
    assert converged(done, ["web"])


def test_wait_names_the_spec_it_waits_for() -> None:
    """Counts that match but a running replica of the old spec: wait's shortfall says so."""
    view = build_status(snapshot(placed(), (runs("h1", {NEW: 1}), runs("h2", {OLD: 1})), rollout()))
    assert shortfalls(view, ["web"]) == ["web: 2/2 healthy, waiting: 1 running replica of another spec"]


def test_a_held_rollout_shows_its_reason_in_status() -> None:
    """A held rollout: Progressing (rollout held), and the reason among the errors (status, describe)."""
    held = dataclasses.replace(
        rollout(RolloutState.HELD),
        reason="1 new replica fit on no host (each needs memory=8Gi cpus=0.25): h2: memory 1Gi free",
    )
    view = build_status(
        snapshot(mixed({"h1": {NEW: 1}, "h2": {OLD: 1}}), (runs("h1", {NEW: 1}), runs("h2", {OLD: 1})), held)
    )
    service = view.services[0]
    assert service.state == "Progressing (rollout held 1/2)"
    assert service.errors == (f"rollout held: {held.reason}",)
    assert not converged(view, ["web"])
