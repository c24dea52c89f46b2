"""Events as data: collapsing storms, bounded retention, the KV form, and the leader's events of a pass."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import ManifestError, Problem
from consul_operator.core.events import (
    CRASHED,
    INVALID,
    MAX_MESSAGE,
    MOVED,
    PLACED,
    ROLLED_BACK,
    ROLLOUT_STEP,
    UNPLACEABLE,
    ServiceEvent,
    add_events,
    collapse,
    crash_message,
    invalid_events,
    merge_records,
    new_event,
    parse_record,
    placement_events,
    record_json,
    retain,
    rollout_events,
)
from consul_operator.core.keys import Layout
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    UnplacedCause,
)


def ev(
    time: float, reason: str = CRASHED, message: str = "m", host: str = "h1", service: str = "web"
) -> ServiceEvent:
    return ServiceEvent(time, host, service, reason, message)


@dataclass(frozen=True)
class Collapse:
    id: str
    before: tuple[ServiceEvent, ...]
    new: ServiceEvent
    counts: tuple[int, ...]  # the counts of the result, oldest first
    last_first: float | None = None  # the `first` of the newest event


COLLAPSES = [
    Collapse("empty record: added", (), ev(10), (1,)),
    Collapse("crash again within the window: one event, count 2", (ev(10),), ev(20, message="n"), (2,), 10),
    Collapse("crash after the window: a new event", (ev(10),), ev(10 + 601), (1, 1)),
    Collapse("other host: a new event", (ev(10),), ev(20, host="h2"), (1, 1)),
    Collapse("other reason: a new event", (ev(10),), ev(20, reason="Started"), (1, 1)),
    Collapse("placed with the same message: collapsed", (ev(10, PLACED),), ev(20, PLACED), (2,), 10),
    Collapse("placed with a new message: a new event", (ev(10, PLACED),), ev(20, PLACED, "x"), (1, 1)),
    Collapse(
        "only the last of its kind collapses, and moves to the end",
        (ev(10), ev(15, "Started")),
        ev(20),
        (1, 2),
        10,
    ),
    Collapse("a collapsed event keeps its first time", (replace(ev(10), count=5, first=2),), ev(20), (6,), 2),
]


@pytest.mark.parametrize("case", COLLAPSES, ids=lambda c: c.id)
def test_collapse(case: Collapse) -> None:
    """A storm of like events is one event with a count; anything else is added."""
    out = collapse(case.before, case.new)
    assert tuple(e.count for e in out) == case.counts
    assert out[-1].time == case.new.time
    if case.last_first is not None:
        assert out[-1].first == case.last_first


@pytest.mark.parametrize(
    ("events", "now", "kept"),
    [
        pytest.param(
            [ev(float(t), message=str(t), reason=PLACED) for t in range(150)], 200.0, 100, id="last 100"
        ),
        pytest.param([ev(0.0, PLACED), ev(3000.0, PLACED, "b")], 3700.0, 1, id="older than an hour goes"),
        pytest.param([ev(0.0, PLACED)], 3600.0, 1, id="exactly an hour stays"),
        pytest.param([], 0.0, 0, id="nothing"),
    ],
)
def test_retain_keeps_the_last_100_of_the_last_hour(
    events: list[ServiceEvent], now: float, kept: int
) -> None:
    """Retention keeps the last MAX_EVENTS events of the last hour, whichever is less, oldest first."""
    out = retain(events, now)
    assert len(out) == kept
    assert out == sorted(out, key=lambda e: e.time)
    if out:
        assert out[-1] == max(events, key=lambda e: e.time)


def test_a_crash_storm_is_one_event_and_a_record_stays_bounded() -> None:
    """500 crashes in a minute are one event counting 500; 500 distinct placements keep 100."""
    crashes = add_events([], [ev(float(t) / 10, message=f"exit {t}") for t in range(500)], now=60.0)
    assert [(e.count, e.first, e.message) for e in crashes] == [(500, 0.0, "exit 499")]
    placed = add_events([], [ev(float(t), PLACED, f"p{t}") for t in range(500)], now=500.0)
    assert len(placed) == 100 and placed[-1].message == "p499"


def test_merge_interleaves_hosts_in_time_order() -> None:
    """The records of several hosts merge into one time line."""
    merged = merge_records([[ev(1), ev(3)], [ev(2, host="h2")]], now=10)
    assert [e.time for e in merged] == [1, 2, 3]


def test_record_round_trips_and_bad_input_reads_as_nothing() -> None:
    """A record reads back equal; malformed records and events are skipped, not fatal."""
    record = [replace(ev(1.5, message="<script>alert(1)</script>"), count=3, first=1.0), ev(2)]
    assert parse_record(record_json(record)) == record
    assert parse_record(b"{") == [] and parse_record(b'{"a":1}') == [] and parse_record(None) == []
    assert parse_record(b'[{"time":1}, ' + record_json([ev(2)])[1:]) == [ev(2)]


def test_long_messages_are_cut() -> None:
    """A long Docker error is cut to MAX_MESSAGE characters."""
    assert len(new_event(0, "h", "s", CRASHED, "x" * 10_000).message) == MAX_MESSAGE


@pytest.mark.parametrize(
    ("args", "text"),
    [
        pytest.param(
            ("web-1", 3, False, "", 4.0),
            "container web-1 exited with code 3; back-off 4s before the next start",
            id="exit code",
        ),
        pytest.param(("web-1", 137, True, "", 0.0), "container web-1 was OOM killed", id="oom"),
    ],
)
def test_crash_message(args: tuple[str, int, bool, str, float], text: str) -> None:
    """A crash names the container, the exit code or OOM, and the back-off."""
    assert crash_message(*args) == text


def placement(hosts: dict[str, int], unplaced: int = 0, reason: str = "") -> PlacementRecord:
    cause = UnplacedCause.MEMORY if unplaced else UnplacedCause.NONE
    return PlacementRecord("web", "s1", hosts, unplaced=unplaced, cause=cause, reason=reason)


LIVE = ClusterState(hosts={"h1": (True, {}), "h2": (True, {}), "h3": (False, {})})


@pytest.mark.parametrize(
    ("state", "before", "after", "expected"),
    [
        pytest.param(
            LIVE,
            None,
            placement({"h1": 1, "h2": 1}),
            [(PLACED, "replicas per host: h1=1, h2=1")],
            id="first placement",
        ),
        pytest.param(LIVE, placement({"h1": 1}), placement({"h1": 1}), [], id="unchanged"),
        pytest.param(
            LIVE,
            placement({"h1": 1, "h3": 1}),
            placement({"h1": 1, "h2": 1}),
            [(PLACED, "replicas per host: h1=1, h2=1"), (MOVED, "1 replica(s) moved off h3: host lost")],
            id="host lost",
        ),
        pytest.param(
            replace(LIVE, maintenance={"h2": HostRecord("h2", draining=True)}),
            placement({"h1": 1, "h2": 1}),
            placement({"h1": 2}),
            [(PLACED, "replicas per host: h1=2"), (MOVED, "1 replica(s) moved off h2: host draining")],
            id="host drained",
        ),
        pytest.param(
            replace(LIVE, maintenance={"h2": HostRecord("h2")}),
            placement({"h1": 1, "h2": 1}),
            placement({"h1": 2}),
            [(PLACED, "replicas per host: h1=2"), (MOVED, "1 replica(s) moved off h2: host cordoned")],
            id="host cordoned",
        ),
        pytest.param(
            LIVE,
            placement({"h1": 2}),
            placement({"h1": 1}),
            [(PLACED, "replicas per host: h1=1")],
            id="scaled down: no move",
        ),
        pytest.param(
            LIVE,
            placement({"h1": 1}),
            placement({"h1": 1}, unplaced=2, reason="h1: 64M free"),
            [(UNPLACEABLE, "2 replica(s) unplaced: h1: 64M free")],
            id="unplaceable",
        ),
        pytest.param(
            LIVE,
            placement({"h1": 1}, unplaced=2, reason="h1: 64M free"),
            placement({"h1": 1}, unplaced=2, reason="h1: 64M free"),
            [],
            id="still unplaceable: said once",
        ),
    ],
)
def test_placement_events(
    state: ClusterState,
    before: PlacementRecord | None,
    after: PlacementRecord,
    expected: list[tuple[str, str]],
) -> None:
    """A placement change is Placed, a replica taken off a lost, drained or cordoned host Moved, with why."""
    assert [(o.reason, o.message) for o in placement_events(state, before, after)] == expected


def rollout(state: RolloutState, updated: int = 0, reason: str = "") -> RolloutRecord:
    return RolloutRecord("web", "aaaa", "bbbb", state, 0.0, reason=reason, updated=updated, total=2)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            None,
            rollout(RolloutState.PROGRESSING),
            [(ROLLOUT_STEP, "rollout aaaa -> bbbb progressing: 0/2 updated")],
            id="started",
        ),
        pytest.param(
            rollout(RolloutState.PROGRESSING),
            rollout(RolloutState.PROGRESSING, 1),
            [(ROLLOUT_STEP, "rollout aaaa -> bbbb progressing: 1/2 updated")],
            id="step",
        ),
        pytest.param(
            rollout(RolloutState.PROGRESSING, 1),
            rollout(RolloutState.PROGRESSING, 1),
            [],
            id="no progress: nothing",
        ),
        pytest.param(
            rollout(RolloutState.PROGRESSING, 2),
            rollout(RolloutState.COMPLETE, 2),
            [(ROLLOUT_STEP, "rollout aaaa -> bbbb complete: 2/2 updated")],
            id="complete",
        ),
        pytest.param(
            rollout(RolloutState.PROGRESSING),
            rollout(RolloutState.ROLLING_BACK, reason="deadline passed"),
            [(ROLLED_BACK, "rolling back to bbbb: deadline passed")],
            id="rolled back",
        ),
    ],
)
def test_rollout_events(
    before: RolloutRecord | None, after: RolloutRecord, expected: list[tuple[str, str]]
) -> None:
    """Each rollout step is a RolloutStep event; turning back is RolledBack with the reason."""
    assert [(o.reason, o.message) for o in rollout_events(before, after)] == expected


def test_invalid_manifest_is_said_once_per_first_problem() -> None:
    """An invalid manifest is one event naming its first problem, again only when that problem changes."""
    bad = {"web": ManifestError([Problem("replicas", "must be at most 100"), Problem("port", "bad")])}
    first, seen = invalid_events(bad, {})
    assert [(o.service, o.reason) for o in first] == [("web", INVALID)]
    assert "replicas" in first[0].message and "port" not in first[0].message
    assert invalid_events(bad, seen)[0] == []
    assert invalid_events({}, seen) == ([], {})


def test_events_key_names_service_and_host() -> None:
    """Events live in operator/events/<service>/<host>, under the configured prefix."""
    assert Layout(operator_prefix="x/").events_key("web", "host-1") == "x/events/web/host-1"
