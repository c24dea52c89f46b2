"""The typed KV records: what each reader gets out of what an agent, the leader or a person wrote."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.records import (
    Hold,
    LeaderRecord,
    ReplicaMark,
    RollbackRequest,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)

FULL = StatusRecord(
    service="web",
    host="host-1",
    spec_hash="abc",
    desired=2,
    running=2,
    healthy=1,
    error="crash-looping",
    hold=None,
    specs=frozen_map({"abc": 2}),
    instances=("web-host-1-a", "web-host-1-b"),
    since=1.7e9,
    node="node-1",
    replicas={
        "web-host-1-a": ReplicaMark(31001, "0123456789ab", "abc"),
        "web-host-1-b": ReplicaMark(31002, "ba9876543210", "abc"),
    },
)


def test_status_record_round_trips() -> None:
    """What an agent writes reads back equal, the key naming service and host."""
    assert StatusRecord.from_json(FULL.to_json(), service="web", host="host-1") == FULL
    held = StatusRecord("web", "host-2", error="Invalid: replicas", hold=Hold.INVALID)
    assert StatusRecord.from_json(held.to_json(), service="web", host="host-2") == held


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        pytest.param({}, "instances", (), id="no-instances-field"),
        pytest.param({"instances": "web-1"}, "instances", (), id="instances-string-not-list"),
        pytest.param(
            {"instances": ["a", 1, None, "b"]}, "instances", ("a", "b"), id="non-string-ids-dropped"
        ),
        pytest.param({"running": "3"}, "running", 0, id="running-as-text-counts-0"),
        pytest.param({"running": -2}, "running", 0, id="negative-running-counts-0"),
        pytest.param({"running": True}, "running", 0, id="boolean-running-counts-0"),
        pytest.param({"error": 7}, "error", "", id="error-not-text"),
        pytest.param({"since": "yesterday"}, "since", None, id="since-not-a-number"),
        pytest.param({"since": float("inf")}, "since", None, id="since-not-finite"),
        pytest.param({"specs": {"a": "x"}}, "specs", {}, id="specs-with-junk-count-nothing"),
        pytest.param({"specs": ["a"]}, "specs", {}, id="specs-not-a-mapping"),
        pytest.param({"hold": "pending"}, "hold", None, id="unknown-hold-is-no-hold"),
        pytest.param({}, "node", "", id="no-node-an-older-agents-record"),
        pytest.param({"replicas": ["a"]}, "replicas", {}, id="replicas-not-a-mapping"),
        pytest.param(
            {
                "replicas": {
                    "a": [8080, "c", "s"],
                    "b": ["8080", "c", "s"],
                    "c": [65536, "c", "s"],
                    "d": [-1, "c", "s"],
                }
            },
            "replicas",
            {"a": ReplicaMark(8080, "c", "s")},
            id="marks-with-a-bad-port-dropped",
        ),
        pytest.param(
            {"replicas": {"w": [0, "c", "s"]}},
            "replicas",
            {"w": ReplicaMark(0, "c", "s")},
            id="mark-of-a-replica-without-a-port-kept",
        ),
        pytest.param(
            {"replicas": {"a": [8080, "c"], "b": [8080, 1, "s"], "d": [True, "c", "s"]}},
            "replicas",
            {},
            id="marks-of-the-wrong-shape-dropped",
        ),
        pytest.param({"hold": "unplaced"}, "hold", Hold.UNPLACED, id="unplaced-hold"),
    ],
)
def test_status_record_fields_are_read_defensively(
    body: dict[str, object], field: str, value: object
) -> None:
    """A field of the wrong type (an old or a hand-made record) reads as empty, never as a crash."""
    record = StatusRecord.from_json(json.dumps(body), service="web", host="host-1")
    got = getattr(record, field)
    assert (dict(got) if field in ("specs", "replicas") else got) == value


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'"text"'], ids=["not-json", "list", "string"])
def test_unreadable_status_record_is_refused(data: bytes) -> None:
    """A value that is no JSON object at all is no status record: the reader decides (skip or keep empty)."""
    with pytest.raises(ValueError, match="not a status record"):
        StatusRecord.from_json(data, service="web", host="host-1")


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
MARKS = st.builds(
    ReplicaMark,
    port=st.integers(min_value=0, max_value=65535),
    container=st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
    spec=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)


@given(
    replicas=st.dictionaries(NAMES, MARKS, max_size=5),
    specs=st.dictionaries(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.integers(0, 50)),
    counts=st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
    hold=st.none() | st.sampled_from(list(Hold)),
    since=st.none() | st.floats(min_value=0, max_value=4e9),
)
def test_every_status_record_an_agent_writes_reads_back_the_same(
    replicas: dict[str, ReplicaMark],
    specs: dict[str, int],
    counts: tuple[int, int, int],
    hold: Hold | None,
    since: float | None,
) -> None:
    """Whatever an agent writes reads back equal: else its status check finds it changed and rewrites it."""
    desired, running, healthy = counts
    record = StatusRecord(
        service="web",
        host="host-1",
        spec_hash="abc",
        desired=desired,
        running=running,
        healthy=healthy,
        hold=hold,
        specs=frozen_map(specs),
        instances=tuple(replicas),
        since=since,
        node="node-1",
        replicas=replicas,
    )
    read = StatusRecord.from_json(record.to_json(), service="web", host="host-1")
    assert read == record
    assert record.same_report(read)


def test_same_report_ignores_only_the_time() -> None:
    """An agent rewrites its record when anything but ``since`` changed."""
    assert FULL.same_report(dataclasses.replace(FULL, since=2e9))
    assert not FULL.same_report(dataclasses.replace(FULL, healthy=2))
    assert not FULL.same_report(dataclasses.replace(FULL, instances=("web-host-1-a",)))
    moved = {**FULL.replicas, "web-host-1-a": ReplicaMark(31009, "0123456789ab", "abc")}
    assert not FULL.same_report(dataclasses.replace(FULL, replicas=moved))


def test_a_replica_costs_few_bytes_in_a_status_record() -> None:
    """Each replica's mark adds its port, short container id and spec: under 70 bytes with its name."""
    one = dataclasses.replace(FULL, instances=(), replicas={})
    assert (len(FULL.to_json()) - len(one.to_json())) / 2 < 70
    assert not FULL.same_report(None)


def test_rollout_states_are_an_enum_with_three_active() -> None:
    """Only progressing, held and rolling back move replicas; a record with another state word is refused."""
    active = {RolloutState.PROGRESSING, RolloutState.HELD, RolloutState.ROLLING_BACK}
    assert {s for s in RolloutState if s.active} == active
    record = RolloutRecord("web", "a", "b", RolloutState.FAILED, 1.7e9, "deadline")
    assert RolloutRecord.from_json(record.to_json()) == record
    body = json.loads(record.to_json())
    body["state"] = "paused"
    with pytest.raises(ValueError, match="unknown state"):
        RolloutRecord.from_json(json.dumps(body).encode())


def test_leader_and_rollback_records() -> None:
    """The lock's value names the leader and a time; anything else is no leader record."""
    assert LeaderRecord.from_json(LeaderRecord("host-1", 1.7e9).to_json()) == LeaderRecord("host-1", 1.7e9)
    for junk in (b"{}", b'{"host": "h"}', b"nope"):
        with pytest.raises(ValueError):
            LeaderRecord.from_json(junk)
    assert json.loads(RollbackRequest(1.7e9).to_json()) == {"requested": 1.7e9}
