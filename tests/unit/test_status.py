"""What `operator status` and `operator wait` show: states, counts, JSON, table, shortfalls."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.records import (
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    UnplacedCause,
    frozen_map,
)
from consul_operator.core.status import (
    JSON_FIELDS,
    PROGRESS_DEADLINE,
    STATES,
    ClusterSnapshot,
    HostPlacement,
    HostRow,
    ServiceStatus,
    StatusView,
    build_status,
    converged,
    format_age,
    render_table,
    rollout_ended_badly,
    shortfalls,
    to_json,
)

NOW = 1_700_000_000.0
SIMPLE = parse_manifest("name: simple\nimage: hello:local\nreplicas: 2\nport: 5000\n")
SIMPLE_V2 = parse_manifest("name: simple\nimage: hello:v2\nreplicas: 2\nport: 5000\n")
SPEC = SIMPLE.spec_hash()
OLD_SPEC = SIMPLE_V2.spec_hash()
CRASH = "crash-looping: exited with code 1 after 0.1s; next try in 8s"


def invalid(text: str) -> ManifestError:
    """The error parse_manifest raises for ``text``."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    return caught.value


BAD = invalid("name: simple\nimage: hello:local\nreplicas: -1\n")

HOSTS = (HostRow("host-1", True, {"zone": "a"}), HostRow("host-2", True, {}))


def placement(hosts: Mapping[str, int], spec: str = SPEC, unplaced: int = 0) -> PlacementRecord:
    return PlacementRecord(service="simple", spec_hash=spec, hosts=frozen_map(hosts), unplaced=unplaced)


def record(
    host: str,
    running: int,
    *,
    desired: int = 1,
    spec: str = SPEC,
    error: str = "",
    hold: str | None = None,
    since: float = NOW - 30,
) -> StatusRecord:
    """An ``operator/status/simple/<host>`` record as an agent writes it, read back."""
    body = {
        "host": host,
        "service": "simple",
        "spec_hash": spec,
        "desired": desired,
        "running": running,
        "healthy": running,
        "error": error,
        "hold": hold,
        "since": since,
    }
    return read_record(body)


def read_record(body: Mapping[str, object]) -> StatusRecord:
    """The record ``body`` as the readers parse it from KV."""
    return StatusRecord.from_json(json.dumps(body), service="simple", host=str(body["host"]))


def snapshot(
    manifest: Manifest | ManifestError | None = SIMPLE,
    place: PlacementRecord | None = None,
    records: tuple[StatusRecord, ...] = (),
    passing: Mapping[str, int] | None = None,
    hosts: tuple[HostRow, ...] = HOSTS,
    leader: str | None = "host-1",
) -> ClusterSnapshot:
    """A cluster with (at most) the one service ``simple``."""
    return ClusterSnapshot(
        now=NOW,
        leader=leader,
        leader_since=None if leader is None else NOW - 180,
        hosts=hosts,
        manifests={} if manifest is None else {"simple": manifest},
        placements={} if place is None else {"simple": place},
        statuses={"simple": {r.host: r for r in records}} if records else {},
        passing={"simple": dict(passing or {})},
    )


def converged_snapshot() -> ClusterSnapshot:
    """``simple`` with 2 replicas, one per host, all running the current spec and passing."""
    return snapshot(
        place=placement({"host-1": 1, "host-2": 1}),
        records=(record("host-1", 1), record("host-2", 1)),
        passing={"host-1": 1, "host-2": 1},
    )


def only(view: StatusView) -> ServiceStatus:
    assert len(view.services) == 1
    return view.services[0]


ONE_EACH = {"host-1": 1, "host-2": 1}


@pytest.mark.parametrize(
    ("snap", "state", "errors"),
    [
        pytest.param(converged_snapshot(), "Converged", (), id="converged"),
        pytest.param(snapshot(), "Progressing", (), id="progressing-no-placement"),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH),
                records=(record("host-1", 1), record("host-2", 0)),
                passing={"host-1": 1},
            ),
            "Progressing",
            (),
            id="progressing-scaling",
        ),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH),
                records=(record("host-1", 1), record("host-2", 1, spec=OLD_SPEC)),
                passing=ONE_EACH,
            ),
            "Progressing",
            (),
            id="progressing-old-spec",
        ),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH, spec=OLD_SPEC),
                records=(record("host-1", 1), record("host-2", 1)),
                passing=ONE_EACH,
            ),
            "Progressing",
            (),
            id="progressing-old-placement",
        ),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH),
                records=(record("host-1", 1), record("host-2", 0, error=CRASH)),
                passing={"host-1": 1},
            ),
            "Degraded",
            (f"host-2: {CRASH}",),
            id="degraded-crashloop",
        ),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH),
                records=(record("host-1", 1),),
                passing={"host-1": 1},
                hosts=(HostRow("host-1", True, {}), HostRow("host-2", False, {})),
            ),
            "Degraded",
            ("host-2: host is lost",),
            id="degraded-lost-host",
        ),
        pytest.param(
            snapshot(
                place=placement({"host-1": 1, "host-3": 1}),
                records=(record("host-1", 1),),
                passing={"host-1": 1},
            ),
            "Degraded",
            ("host-3: host is lost",),
            id="degraded-unknown-host",
        ),
        pytest.param(
            snapshot(
                place=placement(ONE_EACH),
                records=(
                    record("host-1", 1, since=NOW - PROGRESS_DEADLINE - 1),
                    record("host-2", 0, since=NOW - PROGRESS_DEADLINE - 5),
                ),
                passing={"host-1": 1},
            ),
            "Degraded",
            (),
            id="degraded-deadline",
        ),
        pytest.param(
            snapshot(
                place=placement({"host-1": 1}, unplaced=1),
                records=(record("host-1", 1),),
                passing={"host-1": 1},
            ),
            "Unplaceable",
            (),
            id="unplaceable",
        ),
        pytest.param(
            snapshot(
                manifest=BAD,
                place=placement(ONE_EACH),
                records=(
                    record("host-1", 1, error=f"Invalid: {BAD.problems[0]}", hold="invalid"),
                    record("host-2", 1, error=f"Invalid: {BAD.problems[0]}", hold="invalid"),
                ),
                passing=ONE_EACH,
            ),
            f"Invalid: {BAD.problems[0]}",
            tuple(str(p) for p in BAD.problems),
            id="invalid",
        ),
        pytest.param(
            snapshot(manifest=None, records=(record("host-1", 1, desired=0),), passing={"host-1": 1}),
            "Progressing",
            ("being deleted",),
            id="being-deleted",
        ),
    ],
)
def test_state_decision_table(snap: ClusterSnapshot, state: str, errors: tuple[str, ...]) -> None:
    """Each service gets the first matching state, and exactly the errors that explain it."""
    service = only(build_status(snap))
    assert service.state == state
    assert service.state.partition(":")[0] in STATES
    assert service.errors == errors


def test_counts_and_per_host_placement() -> None:
    """desired/running/healthy/drift add up the hosts; placement lists every host seen, sorted."""
    snap = snapshot(
        place=placement({"host-2": 2}),
        records=(record("host-2", 1, desired=2), record("host-1", 1, desired=0)),
        passing={"host-2": 1, "host-3": 1},
    )
    service = only(build_status(snap))
    assert (service.desired, service.running, service.healthy, service.drift) == (2, 2, 2, 0)
    assert service.image == "hello:local"
    assert list(service.placement) == ["host-1", "host-2", "host-3"]
    assert service.placement["host-1"] == HostPlacement(desired=0, running=1, healthy=0)
    assert service.placement["host-2"] == HostPlacement(desired=2, running=1, healthy=1)
    assert service.placement["host-3"] == HostPlacement(desired=0, running=0, healthy=1)
    assert service.last_change == NOW - 30


def test_invalid_manifest_takes_desired_from_placement() -> None:
    """An invalid manifest shows no image and the placed total as desired (0 without a placement)."""
    with_placement = only(build_status(snapshot(manifest=BAD, place=placement({"host-1": 2}))))
    assert (with_placement.image, with_placement.desired) == ("", 2)
    assert only(build_status(snapshot(manifest=BAD))).desired == 0


def test_being_deleted_wants_nothing() -> None:
    """A service with status records but no manifest wants 0 replicas, so what still runs is drift."""
    service = only(
        build_status(snapshot(manifest=None, records=(record("host-1", 1),), passing={"host-1": 1}))
    )
    assert (service.image, service.desired, service.running, service.healthy, service.drift) == (
        "",
        0,
        1,
        1,
        -1,
    )


def test_pending_and_invalid_host_errors_are_not_failures() -> None:
    """A host that holds off a service not placed yet (``hold``) leaves it Progressing, with no error."""
    snap = snapshot(records=(record("host-1", 0, error="Pending: not placed yet", hold="unplaced"),))
    service = only(build_status(snap))
    assert (service.state, service.errors) == ("Progressing", ())


def test_converged_wins_over_an_old_deadline() -> None:
    """A converged service whose status has not changed for long is still Converged."""
    snap = snapshot(
        place=placement(ONE_EACH),
        records=(record("host-1", 1, since=NOW - 3600), record("host-2", 1, since=NOW - 3600)),
        passing=ONE_EACH,
    )
    assert only(build_status(snap)).state == "Converged"


def test_malformed_status_record_fields_count_as_nothing() -> None:
    """Junk in a status record (wrong types) counts as 0 running, no error and no time."""
    junk: dict[str, object] = {"host": "host-1", "running": "3", "error": 7, "since": "yesterday"}
    service = only(build_status(snapshot(records=(read_record(junk),))))
    assert (service.running, service.errors, service.last_change) == (0, (), None)


def test_services_and_hosts_are_sorted() -> None:
    """Services and hosts come out sorted by name whatever order the snapshot had."""
    web = Manifest(name="web", image="nginx:1", replicas=1)
    snap = ClusterSnapshot(
        now=NOW,
        leader=None,
        leader_since=None,
        hosts=(HostRow("host-2", True, {}), HostRow("host-1", True, {})),
        manifests={"web": web, "simple": SIMPLE},
        placements={},
        statuses={},
        passing={},
    )
    view = build_status(snap)
    assert [s.name for s in view.services] == ["simple", "web"]
    assert [h.name for h in view.hosts] == ["host-1", "host-2"]


# --- JSON ----------------------------------------------------------------------------


def test_json_has_exactly_the_documented_fields() -> None:
    """to_json has exactly JSON_FIELDS at every level and survives json.dumps."""
    view = build_status(
        snapshot(
            place=placement(ONE_EACH),
            records=(record("host-1", 1), record("host-2", 0, error=CRASH)),
            passing={"host-1": 1},
        )
    )
    body = to_json(view)
    assert tuple(body) == JSON_FIELDS["top"]
    leader = body["leader"]
    assert isinstance(leader, dict) and tuple(leader) == JSON_FIELDS["leader"]
    hosts = body["hosts"]
    assert isinstance(hosts, list) and hosts
    assert all(tuple(host) == JSON_FIELDS["host"] for host in hosts)
    services = body["services"]
    assert isinstance(services, list) and len(services) == 1
    service = services[0]
    assert tuple(service) == JSON_FIELDS["service"]
    assert service["placement"]
    assert all(tuple(p) == JSON_FIELDS["placement"] for p in service["placement"].values())
    assert json.loads(json.dumps(body)) == body


def test_json_values() -> None:
    """The JSON carries the view's values, with converged for the whole cluster."""
    body = to_json(build_status(converged_snapshot()))
    assert body["leader"] == {"host": "host-1", "since": NOW - 180}
    assert body["converged"] is True
    services = body["services"]
    assert isinstance(services, list)
    assert services[0]["placement"]["host-2"] == {"desired": 1, "running": 1, "healthy": 1}
    assert services[0]["errors"] == []
    assert to_json(build_status(snapshot(leader=None)))["leader"] == {"host": None, "since": None}


def documented_fields(level: str) -> tuple[str, ...]:
    """The field names in docs/status.md's table under the heading ending in (`level`)."""
    text = (Path(__file__).parents[2] / "docs" / "status.md").read_text(encoding="utf-8")
    section = text.split(f"(`{level}`)\n", 1)[1].split("\n#", 1)[0]
    return tuple(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


@pytest.mark.parametrize("level", list(JSON_FIELDS))
def test_docs_list_exactly_the_json_fields(level: str) -> None:
    """docs/status.md documents exactly JSON_FIELDS, in order, for each level of the JSON."""
    assert documented_fields(level) == JSON_FIELDS[level]


# --- table ---------------------------------------------------------------------------


def crashing_view() -> StatusView:
    return build_status(
        snapshot(
            place=placement(ONE_EACH),
            records=(record("host-1", 1), record("host-2", 0, error=CRASH)),
            passing={"host-1": 1},
            hosts=(HostRow("host-1", True, {"zone": "a"}), HostRow("host-2", False, {})),
        )
    )


def test_table_without_colour() -> None:
    """The plain table has leader, hosts, the service row and its errors, and no escape codes."""
    text = render_table(crashing_view(), color=False)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "Leader: host-1 (for 3m)"
    assert "host-1  live   zone=a" in text
    assert "host-2  lost   -" in text
    header = next(line for line in lines if line.startswith("SERVICE"))
    row = next(line for line in lines if line.startswith("simple"))
    assert header.split() == [
        "SERVICE",
        "IMAGE",
        "DESIRED",
        "RUNNING",
        "HEALTHY",
        "DRIFT",
        "PLACEMENT",
        "AGE",
        "STATE",
    ]
    assert row.split() == [
        "simple",
        "hello:local",
        "2",
        "1",
        "1",
        "1",
        "host-1",
        "1/1",
        "host-2",
        "0/1",
        "30s",
        "Degraded",
    ]
    assert header.index("STATE") == row.index("Degraded")
    assert header.index("PLACEMENT") == row.index("host-1 1/1 host-2 0/1")
    assert f"  ! host-2: {CRASH}" in lines
    assert "  ! host-2: host is lost" in lines


def test_table_with_colour() -> None:
    """With colour the state cell and the error lines carry ANSI codes; the text is otherwise the same."""
    text = render_table(crashing_view(), color=True)
    assert "\x1b[31mDegraded\x1b[0m" in text
    assert f"\x1b[31m  ! host-2: {CRASH}\x1b[0m" in text
    plain = render_table(crashing_view(), color=False)
    assert text.replace("\x1b[31m", "").replace("\x1b[0m", "") == plain
    green = render_table(build_status(converged_snapshot()), color=True)
    assert "\x1b[32mConverged\x1b[0m" in green
    yellow = render_table(build_status(snapshot()), color=True)
    assert "\x1b[33mProgressing\x1b[0m" in yellow


def test_table_without_leader_or_services() -> None:
    """Nobody leading reads "Leader: none"; a service with no status shows "-" for age and placement."""
    text = render_table(build_status(snapshot(leader=None)), color=False)
    assert text.splitlines()[0] == "Leader: none"
    row = next(line for line in text.splitlines() if line.startswith("simple"))
    assert row.split()[-3:] == ["-", "-", "Progressing"]


def test_table_escapes_control_characters_from_errors() -> None:
    """An error text with escape codes or newlines is shown escaped, so it cannot drive the terminal."""
    hostile = "boom\x1b[2J\nsecond line"
    view = build_status(snapshot(place=placement(ONE_EACH), records=(record("host-1", 0, error=hostile),)))
    text = render_table(view, color=False)
    assert "\x1b" not in text
    assert "  ! host-1: boom\\x1b[2J\\nsecond line" in text.splitlines()


# --- converged / shortfalls / format_age ---------------------------------------------


def two_services() -> StatusView:
    """``simple`` converged, ``broken`` invalid."""
    good = converged_snapshot()
    bad = invalid("name: broken\nimage: hello:local\nreplicas: -1\n")
    return build_status(
        ClusterSnapshot(
            now=NOW,
            leader="host-1",
            leader_since=NOW - 10,
            hosts=HOSTS,
            manifests={"simple": SIMPLE, "broken": bad},
            placements=good.placements,
            statuses=good.statuses,
            passing=good.passing,
        )
    )


def test_converged_for_existing_missing_and_invalid_names() -> None:
    """converged() is true only when every named service exists and is Converged."""
    view = two_services()
    assert converged(view, ["simple"])
    assert not converged(view, ["simple", "web"])
    assert not converged(view, ["broken"])
    assert not converged(view)
    assert converged(build_status(converged_snapshot()))


def test_shortfalls_for_existing_missing_and_invalid_names() -> None:
    """shortfalls() names nothing for a converged service and says what is missing for the others."""
    view = two_services()
    assert shortfalls(view, ["simple"]) == []
    assert shortfalls(view, ["web", "broken"]) == [
        "web: no such service",
        f"broken: Invalid: {view.services[0].errors[0]}",
    ]


def test_shortfall_names_the_failing_host() -> None:
    """A crash-looping host appears with its healthy/desired count and its error."""
    assert shortfalls(crashing_view(), ["simple"]) == [
        f"simple: 1/2 healthy, 1 running (host-2 0/1: {CRASH}; host is lost)"
    ]


def test_shortfall_for_scaling_unplaceable_and_old_spec() -> None:
    """Shortfalls explain a missing replica, an unplaced one, and a rollout still under way."""
    scaling = snapshot(place=placement(ONE_EACH), records=(record("host-1", 1),), passing={"host-1": 1})
    assert shortfalls(build_status(scaling), ["simple"]) == ["simple: 1/2 healthy, 1 running (host-2 0/1)"]
    unplaceable = snapshot(
        place=placement({"host-1": 1}, unplaced=1), records=(record("host-1", 1),), passing={"host-1": 1}
    )
    assert shortfalls(build_status(unplaceable), ["simple"]) == [
        "simple: 1/2 healthy, 1 running, 1 cannot be placed"
    ]
    old = snapshot(
        place=placement(ONE_EACH, spec=OLD_SPEC),
        records=(record("host-1", 1), record("host-2", 1)),
        passing=ONE_EACH,
    )
    assert shortfalls(build_status(old), ["simple"]) == [
        "simple: 2/2 healthy, waiting: the placement is not of the current spec yet"
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0.0, "0s", id="zero"),
        pytest.param(5.9, "5s", id="seconds-round-down"),
        pytest.param(59.0, "59s", id="under-a-minute"),
        pytest.param(180.0, "3m", id="minutes"),
        pytest.param(2 * 3600 + 59 * 60, "2h", id="hours"),
        pytest.param(4 * 86400 + 1, "4d", id="days"),
        pytest.param(-3.0, "0s", id="clock-skew"),
    ],
)
def test_format_age(seconds: float, text: str) -> None:
    """Ages are rounded down to the largest whole unit; a negative age (clock skew) is 0s."""
    assert format_age(seconds) == text


def _with_rollout(state: str, reason: str = "", updated: int = 1) -> ClusterSnapshot:
    """A cluster where ``simple`` is in (or after) a rollout in ``state``."""
    snap = snapshot(
        place=placement({"host-1": 1, "host-2": 1}), records=(record("host-1", 1),), passing={"host-1": 1}
    )
    rollout = RolloutRecord("simple", OLD_SPEC, SPEC, RolloutState(state), NOW - 30, reason, updated, 2)
    return dataclasses.replace(snap, rollouts={"simple": rollout})


@pytest.mark.parametrize(
    ("rollout_state", "reason", "shown"),
    [
        pytest.param("progressing", "", "Progressing (rollout 1/2)", id="progressing-shows-progress"),
        pytest.param(
            "rolling_back",
            "not healthy within 15s",
            "RollingBack (1/2): not healthy within 15s",
            id="rolling-back",
        ),
        pytest.param("failed", "not healthy within 15s", "Failed: not healthy within 15s", id="failed"),
        pytest.param("rolled_back", "rollback requested", "RolledBack: rollback requested", id="rolled-back"),
    ],
)
def test_rollout_states_are_shown(rollout_state: str, reason: str, shown: str) -> None:
    """A rollout's progress, a rollback and a failure show in the service's state."""
    service = only(build_status(_with_rollout(rollout_state, reason)))
    assert service.state == shown


@pytest.mark.parametrize("rollout_state", ["failed", "rolled_back"], ids=["failed", "rolled-back"])
def test_wait_gives_up_on_a_rollout_that_ended_badly(rollout_state: str) -> None:
    """`operator wait` stops for a failed or rolled-back rollout: not converged, and ended badly."""
    view = build_status(_with_rollout(rollout_state, "deadline"))
    assert not converged(view, ["simple"])
    assert rollout_ended_badly(only(view))


def test_a_rollout_in_progress_has_not_ended_badly() -> None:
    """A rollout still progressing is waited for."""
    assert not rollout_ended_badly(only(build_status(_with_rollout("progressing"))))


def test_json_carries_the_rollout() -> None:
    """`status --json` gives the rollout's state, specs and progress with the documented fields."""
    services = to_json(build_status(_with_rollout("rolling_back", "deadline")))["services"]
    assert isinstance(services, list)
    service = services[0]
    assert service["rollout"] == {
        "state": "rolling_back",
        "from": OLD_SPEC,
        "to": SPEC,
        "updated": 1,
        "total": 2,
        "reason": "deadline",
    }
    assert tuple(service["rollout"]) == JSON_FIELDS["rollout"]


def test_unplaceable_service_says_why() -> None:
    """The leader's reason (resource, hosts' free amounts, labels) is an error and in wait's shortfall."""
    reason = (
        "1 of 2 replicas fit on no host (each needs memory=4Gi cpus=0.5): "
        "host-1: memory 1Gi free; host-2: lacks label zone=a"
    )
    place = dataclasses.replace(
        placement({"host-1": 1}, unplaced=1), cause=UnplacedCause.MEMORY, reason=reason
    )
    view = build_status(snapshot(place=place, records=(record("host-1", 1),), passing={"host-1": 1}))
    service = only(view)
    assert (service.state, service.errors) == ("Unplaceable", (reason,))
    assert shortfalls(view, ["simple"]) == [f"simple: 1/2 healthy, 1 running, 1 cannot be placed: {reason}"]
    assert f"  ! {reason}" in render_table(view, color=False).splitlines()
    assert to_json(view)["services"][0]["errors"] == [reason]  # type: ignore[index]


def test_invalid_manifest_does_not_repeat_an_old_unplaced_reason() -> None:
    """A manifest made invalid shows its own problems, not the reason of its last valid placement."""
    place = dataclasses.replace(placement({"host-1": 1}, unplaced=1), reason="1 of 2 replicas fit on no host")
    service = only(build_status(snapshot(manifest=BAD, place=place)))
    assert service.unplaced_reason == ""
    assert not any("fit on no host" in error for error in service.errors)
