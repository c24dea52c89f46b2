"""The leader's pure decisions of issue 12: transaction packing, the manifest cap, lost hosts'
status records, failed rollouts, stale requests and revisions, rollout time; and fenced-write outcomes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from consul.base import Response
from structlog.testing import capture_logs

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient, Indexed, KVEntry
from consul_operator.core.desired_state import (
    MAX_REVISION_BYTES,
    Manifest,
    ManifestError,
    Placement,
    UpdatePolicy,
    parse_manifest,
    revision_json,
)
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied, NotLeader
from consul_operator.core.keys import Layout
from consul_operator.core.model import HostInfo
from consul_operator.core.placement import gone_statuses, live_running
from consul_operator.core.records import PlacementRecord, RolloutRecord, RolloutState, frozen_map
from consul_operator.core.rollout import (
    ROLLOUT_ELAPSED_EVERY,
    dropped_rollback_requests,
    frozen_placement,
    orphaned_revisions,
    plan_rollout,
    rollout_needs_write,
    time_rollout,
)
from consul_operator.core.txn import (
    CONSUL_MAX_REQUEST_BYTES,
    CONSUL_MAX_TXN_OPS,
    TXN_MAX_BYTES,
    TXN_MAX_WRITES,
    operation_bytes,
    pack_writes,
    txn_body,
)
from consul_operator.daemons.leader import LeaderElection
from consul_operator.daemons.leader_writes import FencedWriter
from tests.support.staging import wait_until

LAYOUT = Layout()

# --- packing writes into transactions ---------------------------------------------------


def group(name: str, n: int, size: int = 10) -> dict[str, bytes | None]:
    """``n`` writes of ``size``-byte values under ``name``'s keys."""
    return {f"{name}/k{i:03}": b"v" * size for i in range(n)}


def groups(*sizes: tuple[str, int, int]) -> dict[str, dict[str, bytes | None]]:
    """Groups by name from (name, writes, value size)."""
    return {name: group(name, n, size) for name, n, size in sizes}


@dataclass(frozen=True)
class PackRow:
    """Groups of writes in, the groups of each transaction out."""

    groups: dict[str, dict[str, bytes | None]]
    expect: list[tuple[str, ...]]
    max_bytes: int = TXN_MAX_BYTES
    too_large: tuple[str, ...] = ()


A, B = ("a",), ("b",)
PACK_ROWS = [
    pytest.param(PackRow(groups(("a", 2, 10), ("b", 3, 10)), [("a", "b")]), id="small-groups-share-one-txn"),
    pytest.param(PackRow(groups(("a", 40, 10), ("b", 40, 10)), [A, B]), id="op-limit-starts-a-new-txn"),
    pytest.param(
        PackRow(groups(("a", 2, 300), ("b", 2, 300)), [A, B], 1500), id="byte-limit-starts-a-new-txn"
    ),
    pytest.param(PackRow(groups(("a", 100, 10), ("b", 1, 10)), [A, A, B]), id="huge-group-split-by-key"),
    pytest.param(PackRow(groups(("a", 0, 10), ("b", 1, 10)), [B]), id="empty-group-left-out"),
    pytest.param(
        PackRow(groups(("a", 1, 2000), ("b", 1, 10)), [B], 1000, A), id="oversized-write-left-out-unsent"
    ),
    pytest.param(
        PackRow(groups(("a", 1, 2000), ("a2", 1, 10), ("b", 1, 10)), [("a2", "b")], 1000, A),
        id="the-others-still-packed",
    ),
]


@pytest.mark.parametrize("row", PACK_ROWS)
def test_pack_writes(row: PackRow) -> None:
    """Writes are packed per service within the op and byte limits; each is in one batch or left out."""
    batches = pack_writes(row.groups, max_bytes=row.max_bytes)
    assert [b.groups for b in batches] == row.expect
    assert tuple(batches.too_large) == row.too_large
    keys = [k for b in batches for k in b.writes]
    left_out = [k for name in row.too_large for k in row.groups[name]]
    assert sorted(keys + left_out) == sorted(k for g in row.groups.values() for k in g)
    for batch in batches:
        assert len(batch.writes) <= TXN_MAX_WRITES
        size = sum(operation_bytes(k, v) for k, v in batch.writes.items())
        assert size <= row.max_bytes or len(batch.writes) == 1


def test_limits_leave_room_for_the_lock_check() -> None:
    """With the check-session op, a full batch stays within Consul's 64 ops and 512 KiB body."""
    assert TXN_MAX_WRITES + 1 == CONSUL_MAX_TXN_OPS
    writes = {f"operator/revisions/s/{i:016}": b"v" * (TXN_MAX_BYTES // 80) for i in range(63)}
    (batch, *_) = pack_writes({"s": writes})
    body = txn_body("operator/leader", "0" * 36, batch.writes)
    assert len(body.encode()) <= CONSUL_MAX_REQUEST_BYTES


def biggest_manifest() -> Manifest:
    """A manifest whose revision record is right at the validator's cap."""
    base = Manifest(name="big", image="hello:local", replicas=100, port=5000)
    room = MAX_REVISION_BYTES - len(revision_json(base))
    env = {f"E{i}": "x" * 30_000 for i in range(room // 30_020)}
    text = json.dumps({"name": "big", "image": "hello:local", "replicas": 100, "port": 5000, "env": env})
    filler = MAX_REVISION_BYTES - len(revision_json(parse_manifest(text, key_name="big"))) - 20
    env["FILL"] = "y" * filler
    text = json.dumps({"name": "big", "image": "hello:local", "replicas": 100, "port": 5000, "env": env})
    return parse_manifest(text, key_name="big")


def test_biggest_accepted_manifest_fits_one_transaction_with_its_records() -> None:
    """The largest valid manifest's revision, placement (100 hosts, 3 specs) and rollout write in one txn."""
    manifest = biggest_manifest()
    assert MAX_REVISION_BYTES - 200 < len(revision_json(manifest)) <= MAX_REVISION_BYTES
    hosts = {f"{'h' * 58}{i:05}": 1 for i in range(100)}
    specs = {h: frozen_map({"a" * 16: 100, "b" * 16: 100, "c" * 16: 100}) for h in hosts}
    placement = PlacementRecord("big", "a" * 16, frozen_map(hosts), 0, "h" * 63, specs)
    rollout = RolloutRecord(
        "big", "a" * 16, "b" * 16, RolloutState.ROLLING_BACK, 1.7e9, "r" * 500, 100, 100, 1e6
    )
    writes: dict[str, bytes | None] = {
        LAYOUT.revision_key("big", manifest.spec_hash()): revision_json(manifest),
        LAYOUT.placement_key("big"): placement.to_json(),
        LAYOUT.rollout_key("big"): rollout.to_json(),
        LAYOUT.rollback_key("big"): None,
        **{LAYOUT.revision_key("big", f"{i:016}"): None for i in range(3)},
    }
    assert len(pack_writes({"big": writes})) == 1


def test_450_kb_manifest_is_refused_naming_size_and_limit() -> None:
    """15 env values of 30 KB pass every per-field cap but not the revision cap: a clear refusal."""
    env = {f"BIG_{i}": "x" * 30_000 for i in range(15)}
    text = json.dumps({"name": "big", "image": "hello:local", "replicas": 1, "env": env})
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, key_name="big")
    message = str(caught.value)
    assert "more than the limit of" in message and str(MAX_REVISION_BYTES) in message
    assert "normalised JSON" in message


# --- fenced writes: decided by status code -----------------------------------------------


@dataclass
class FakeHttp:
    """Answers every PUT with one response and keeps the bodies sent."""

    response: Response
    sent: list[str] = field(default_factory=list)

    def put(self, callback: Any, path: str, **kwargs: Any) -> Any:
        """What py-consul's http.put does: the callback gets the response."""
        self.sent.append(str(kwargs.get("data")))
        return callback(self.response)


def txn_error(op: int, what: str) -> str:
    """Consul's body of a refused transaction."""
    return json.dumps({"Results": None, "Errors": [{"OpIndex": op, "What": what}]})


FENCED = [
    pytest.param(200, "{}", None, None, id="ok"),
    pytest.param(
        409, txn_error(0, 'failed session check for key "operator/leader"'), NotLeader, None, id="lock"
    ),
    pytest.param(409, txn_error(1, "Permission denied"), ConsulPermissionDenied, 409, id="acl-in-txn"),
    pytest.param(403, "Permission denied", ConsulPermissionDenied, 403, id="acl-forbidden"),
    pytest.param(413, "Request body(600000 bytes) too large", ConsulError, 413, id="too-large"),
    pytest.param(
        500, "rpc error: index 409 not found", ConsulError, 500, id="500-mentioning-409-is-no-lock-loss"
    ),
]


@pytest.mark.parametrize(("code", "body", "error", "status"), FENCED)
def test_fenced_write_outcome_follows_the_status_code(
    code: int, body: str, error: type[Exception] | None, status: int | None
) -> None:
    """NotLeader only when the lock check (op 0) fails on a 409; other refusals keep their HTTP status."""
    client = ConsulClient("127.0.0.1:1")
    http = FakeHttp(Response(code, {}, body))
    client._client.http = http
    if error is None:
        client.fenced_write("operator/leader", "s1", {"k": b"v"})
        assert json.loads(http.sent[0])[0]["KV"]["Verb"] == "check-session"
        return
    with pytest.raises(error) as caught:
        client.fenced_write("operator/leader", "s1", {"k": b"v"})
    if status is not None:
        assert isinstance(caught.value, ConsulError) and caught.value.status == status
    assert not (error is not NotLeader and isinstance(caught.value, NotLeader))


class LockConsul:
    """`LeaderLock` for the fakes below: each call a test does not expect fails it."""

    def kv_get(
        self, key: str, *, index: int = 0, wait: float = 0.0, consistent: bool = False, stale: bool = False
    ) -> Indexed[KVEntry | None]:
        raise AssertionError(f"read of {key} not expected")

    def kv_acquire(self, key: str, value: bytes | str, session: str) -> bool:
        raise AssertionError(f"acquire of {key} not expected")

    def kv_release(self, key: str, session: str) -> bool:
        raise AssertionError(f"release of {key} not expected")

    def fenced_write(self, lock_key: str, session: str, writes: Mapping[str, bytes | None]) -> None:
        raise AssertionError("fenced write not expected")

    def session_create(
        self, name: str, *, checks: Sequence[str], lock_delay: float, ttl: float | None = None
    ) -> str:
        raise AssertionError("new session not expected")

    def session_renew(self, session: str) -> bool:
        raise AssertionError(f"renewal of {session} not expected")

    def session_destroy(self, session: str) -> None:
        raise AssertionError(f"end of session {session} not expected")

    def session_info(self, session: str) -> dict[str, Any] | None:
        raise AssertionError(f"read of session {session} not expected")

    def node_sessions(self, node: str) -> list[dict[str, Any]]:
        raise AssertionError(f"sessions of {node} not expected")


@dataclass
class RefusingConsul(LockConsul):
    """A Consul whose fenced writes all fail the lock check; records the sessions used."""

    sessions: list[str] = field(default_factory=list)

    def fenced_write(self, lock_key: str, session: str, writes: Mapping[str, bytes | None]) -> None:
        """Refuse: the lock is not held by ``session``."""
        self.sessions.append(session)
        raise NotLeader(f"{lock_key} not held by {session}")


def test_write_decided_under_an_old_session_uses_it_and_keeps_the_new_leadership() -> None:
    """A pass decided under session s1 writes with s1; its NotLeader does not step down the leader of s2."""
    consul = RefusingConsul()
    election = LeaderElection(consul, LAYOUT, host="h1", node="n1", lock_delay=0)
    election._session = "s2"
    election._confirm(time.monotonic())  # the lock seen held by s2 just now
    with pytest.raises(NotLeader):
        election.fenced_write({"k": b"v"}, session="s1")
    assert consul.sessions == ["s1"] and election.is_leader
    with pytest.raises(NotLeader):
        election.fenced_write({"k": b"v"})
    assert consul.sessions == ["s1", "s2"] and not election.is_leader


# --- lost hosts' status records ------------------------------------------------------------


HOSTS = [
    HostInfo("h1"),
    HostInfo("h2", live=False, lost_since=95.0),  # in grace at 100 (grace 10)
    HostInfo("h3", live=False, lost_since=50.0),  # gone past the grace
    HostInfo("h4", live=False),  # lost, no grace known
]


def test_live_running_ignores_hosts_not_live() -> None:
    """Rollout occupancy counts only live hosts' records: a dead host's last words hold no surge."""
    running = {"web": {"h1": {"a": 1}, "h2": {"a": 1}, "h3": {"a": 2}}, "db": {"h3": {"b": 1}}}
    assert live_running(running, HOSTS) == {"web": {"h1": {"a": 1}}}


@pytest.mark.parametrize(
    ("host", "gone"),
    [
        pytest.param("h1", False, id="live-host-keeps-its-record"),
        pytest.param("h2", False, id="host-in-grace-keeps-its-record"),
        pytest.param("h3", True, id="host-gone-past-grace-loses-it"),
        pytest.param("h4", True, id="lost-host-without-grace-loses-it"),
        pytest.param("h9", True, id="unknown-host-loses-it"),
    ],
)
def test_gone_statuses(host: str, gone: bool) -> None:
    """Status records go once their host has been lost past the lost-host grace."""
    assert gone_statuses({"web": [host]}, HOSTS, 100.0, 10.0) == ([("web", host)] if gone else [])


# --- rollout state ----------------------------------------------------------------------


OLD, NEW = "old", "new"


def placement(specs: dict[str, dict[str, int]]) -> PlacementRecord:
    """A placement record during a rollout."""
    hosts = {h: sum(c.values()) for h, c in specs.items()}
    return PlacementRecord("web", NEW, frozen_map(hosts), specs={h: frozen_map(c) for h, c in specs.items()})


@pytest.mark.parametrize(
    ("before", "hosts", "expect"),
    [
        pytest.param(
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            {"h1": 2, "h2": 1},
            {"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}},
            id="nothing-lost-nothing-changes",
        ),
        pytest.param(
            {"h1": {OLD: 1}, "h2": {OLD: 1, NEW: 1}},
            {"h1": 2, "h3": 1},
            {"h1": {OLD: 2}, "h3": {NEW: 1}},
            id="lost-hosts-replicas-move-with-their-specs",
        ),
        pytest.param(
            {"h1": {OLD: 1, NEW: 1}},
            {"h1": 1, "h2": 2},
            {"h1": {OLD: 1}, "h2": {NEW: 1, OLD: 1}},
            id="fewer-on-a-host-cuts-the-failed-spec-first-extra-is-the-good-one",
        ),
    ],
)
def test_frozen_placement(
    before: dict[str, dict[str, int]], hosts: dict[str, int], expect: dict[str, dict[str, int]]
) -> None:
    """A failed rollout keeps its spec mix, but the schedule may still move a lost host's replicas."""
    decided = PlacementRecord("web", NEW, frozen_map(hosts))
    frozen = frozen_placement(placement(before), decided, keep=OLD)
    assert {h: dict(c) for h, c in frozen.specs.items()} == expect
    assert dict(frozen.hosts) == hosts


def test_rollback_requests_against_invalid_or_missing_manifests_are_dropped() -> None:
    """Only a request for a valid manifest is acted on; the others go, so they cannot fire later."""
    valid = Manifest(name="ok", image="hello:local", replicas=1)
    manifests: dict[str, Manifest | None] = {"ok": valid, "bad": None}
    assert dropped_rollback_requests({"ok", "bad", "gone"}, manifests) == ["bad", "gone"]


def test_revisions_of_deleted_services_are_orphaned() -> None:
    """A deleted service's revisions go; an invalid manifest's stay (it may be fixed and roll back)."""
    kept = [("web", "a"), ("web", "b"), ("bad", "c"), ("gone", "d"), ("gone", "e")]
    assert orphaned_revisions(kept, {"web": object(), "bad": object()}) == [("gone", "d"), ("gone", "e")]


# --- rollout time: monotonic, skew-tolerant ------------------------------------------------

WALL = 1.7e9  # a wall-clock stamp: only ever shown to people


def record(state: str = "progressing", elapsed: float = 0.0, started: float = WALL) -> RolloutRecord:
    """A rollout of NEW from OLD."""
    return RolloutRecord("web", OLD, NEW, RolloutState(state), started, elapsed=elapsed)


def test_rollout_time_runs_on_the_leaders_monotonic_clock() -> None:
    """A leader adds its own monotonic time to the recorded elapsed; a successor resumes from the record."""
    first, timer = time_rollout(record(elapsed=4.0), None, now=500.0)
    assert first.elapsed == 4.0
    later, timer = time_rollout(record(elapsed=4.0), timer, now=507.5)
    assert later.elapsed == 11.5
    successor, _ = time_rollout(record(elapsed=9.0), None, now=3.0)  # another host, another clock
    assert successor.elapsed == 9.0
    changed, _ = time_rollout(record(state="rolling_back", elapsed=0.0, started=WALL + 9), timer, now=600.0)
    assert changed.elapsed == 0.0, "a new state starts its own time"


def test_wall_clock_step_does_not_end_a_rollout() -> None:
    """The wall clock an hour ahead (NTP step) with 1 s elapsed: still progressing, not past its deadline."""
    step = plan_rollout(
        record(elapsed=1.0),
        2,
        UpdatePolicy(deadline=60.0),
        {"h1": 1, "h2": 1},
        {"h1": {OLD: 1}, "h2": {OLD: 1}},
        {"h1": {OLD: 1}, "h2": {OLD: 1}},
        {OLD: 2},
        {},
        WALL + 3600,
    )
    assert step.rollout.state == "progressing"


@pytest.mark.parametrize(
    ("old", "new", "write"),
    [
        pytest.param(None, record(), True, id="new-rollout"),
        pytest.param(record(elapsed=1.0), record(elapsed=2.0), False, id="only-time-passed"),
        pytest.param(record(elapsed=1.0), record(elapsed=1.0 + ROLLOUT_ELAPSED_EVERY), True, id="time-due"),
        pytest.param(record(elapsed=1.0), record(state="failed", elapsed=1.5), True, id="state-changed"),
        pytest.param(record("complete", 1.0), record("complete", 99.0), False, id="inactive-time-never-due"),
    ],
)
def test_rollout_needs_write(old: RolloutRecord | None, new: RolloutRecord, write: bool) -> None:
    """The rollout record is written on a change, and its elapsed time every few seconds while active."""
    assert rollout_needs_write(old, new) is write


def test_old_record_without_elapsed_reads_as_zero() -> None:
    """A record written before ``elapsed`` existed starts its deadline afresh (only ever longer)."""
    body = json.loads(record().to_json())
    del body["elapsed"]
    assert RolloutRecord.from_json(json.dumps(body).encode()).elapsed == 0.0


def test_placement_kept_for_small_manifest() -> None:
    """A small manifest passes the cap unchanged (its revision is far below it)."""
    manifest = Manifest(name="web", image="hello:local", replicas=2, placement=Placement(max_per_host=1))
    assert len(revision_json(manifest)) < MAX_REVISION_BYTES // 100


# --- the leader's writer: one service's refusal stays its own ------------------------------


@dataclass
class FakeElection:
    """Refuses every fenced write that holds one of ``refuse``'s keys, with its error."""

    refuse: dict[str, ConsulError]
    sessions: list[str | None] = field(default_factory=list)

    def fenced_write(self, writes: dict[str, bytes | None], session: str | None = None) -> None:
        """Refuse or accept, like Consul."""
        self.sessions.append(session)
        for key, exc in self.refuse.items():
            if key in writes:
                raise exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        pytest.param(ConsulError("too large", status=413), "too_large", id="413-too-large"),
        pytest.param(ConsulPermissionDenied("denied", status=409), "permission_denied", id="acl-on-one-key"),
        pytest.param(ConsulError("bad", status=400), "refused", id="other-refusal"),
    ],
)
def test_refused_service_backs_off_alone(error: ConsulError, reason: str) -> None:
    """A refusal for one service's key: the others are written with the pass's session; it backs off."""
    bad = LAYOUT.placement_key("bravo")
    election = FakeElection({bad: error})
    writer = FencedWriter(election, LAYOUT)
    before = metrics.leader_write_failures.labels(reason)._value.get()
    writes: dict[str, bytes | None] = {LAYOUT.placement_key(n): b"{}" for n in ("alpha", "bravo", "charlie")}
    written = list(writer.write("s1", writes, 10.0).keys)
    assert sorted(written) == [LAYOUT.placement_key("alpha"), LAYOUT.placement_key("charlie")]
    assert set(election.sessions) == {"s1"}
    assert writer.backoffs["bravo"].retry_at == 11.0
    assert metrics.leader_write_failures.labels(reason)._value.get() == before + 1
    assert list(writer.write("s1", writes, 10.5).keys) == [
        LAYOUT.placement_key("alpha"),
        LAYOUT.placement_key("charlie"),
    ]
    election.refuse.clear()
    assert LAYOUT.placement_key("bravo") in list(writer.write("s1", writes, 11.0).keys)
    assert "bravo" not in writer.backoffs


def test_consul_server_error_ends_the_pass() -> None:
    """A 5xx (no Raft leader) is Consul's trouble, not a service's: the pass fails and the loop retries."""
    election = FakeElection({LAYOUT.placement_key("a"): ConsulError("No cluster leader", status=500)})
    writer = FencedWriter(election, LAYOUT)
    with pytest.raises(ConsulError):
        list(writer.write("s1", {LAYOUT.placement_key("a"): b"{}"}, 0.0).keys)
    assert not writer.backoffs


def test_a_lease_not_confirmed_in_time_stops_the_writes_and_the_gauge() -> None:
    """A leader whose last confirmation is older than its lease writes nothing; the watch drops the gauge."""
    consul = RefusingConsul()
    election = LeaderElection(consul, LAYOUT, host="h-lease", node="n1", lock_delay=0, lease=0.3)
    election._session = "s1"
    election._confirm(time.monotonic())
    leading_before = election.is_leader
    stop = threading.Event()
    watch = threading.Thread(target=election.watch_lease, args=(stop,), daemon=True)
    watch.start()
    try:
        wait_until(lambda: metrics.is_leader.labels("h-lease")._value.get() == 0, timeout=5, what="the gauge")
    finally:
        stop.set()
    assert leading_before and not election.is_leader
    with pytest.raises(NotLeader):
        election.fenced_write({"k": b"v"})
    assert consul.sessions == []  # refused before any write was sent


@pytest.mark.parametrize(
    ("asked_ago", "leading"),
    [
        pytest.param(0.0, True, id="read-sent-now-confirms"),
        pytest.param(1.9, True, id="read-sent-within-the-lease-confirms"),
        pytest.param(2.1, False, id="answer-to-a-read-sent-before-the-lease-does-not"),
    ],
)
def test_a_confirmation_counts_from_when_its_read_was_sent(asked_ago: float, leading: bool) -> None:
    """A read that saw our session holding the lock confirms the lease as of when it was sent."""
    election = LeaderElection(RefusingConsul(), LAYOUT, host="h-asked", node="n1", lock_delay=0, lease=2.0)
    election._confirm(time.monotonic() - asked_ago)
    assert election.is_leader is leading


def test_a_lapse_the_watch_did_not_see_still_wakes_the_scheduler_when_confirmed_again() -> None:
    """A lease that ran out between two looks of the watch (a pass then saw no leader and did
    nothing): the next confirmation says it stepped down and up, and wakes the scheduler."""
    changes: list[bool] = []
    election = LeaderElection(
        RefusingConsul(),
        LAYOUT,
        host="h-unseen",
        node="n1",
        lock_delay=0,
        lease=2.0,
        on_change=changes.append,
    )
    election._confirm(time.monotonic())
    assert changes == [True]
    election._confirmed -= 5.0  # 5 s without a confirmation, the watch not looking meanwhile
    lapsed = election.is_leader  # what the scheduler's pass saw meanwhile
    with capture_logs() as logs:
        election._confirm(time.monotonic())
    assert (lapsed, election.is_leader) == (False, True)
    assert changes == [True, False, True]
    assert [e["event"] for e in logs] == [
        "leader lease ran out: not confirmed by Consul",
        "leadership changed",
        "leadership changed",
    ]


@dataclass
class HeldLockConsul(LockConsul):
    """A Consul where our session holds the lock; blocking reads block (up to 1 s); the first is slow."""

    session: str
    slow: float
    stop: threading.Event
    waits: list[float] = field(default_factory=list)

    def session_info(self, session: str) -> dict[str, Any]:
        return {"ID": session}

    def kv_get(
        self, key: str, *, index: int = 0, wait: float = 0.0, consistent: bool = False, stale: bool = False
    ) -> Indexed[KVEntry | None]:
        """The lock, held by ``session``: the first read takes ``slow`` s, later ones their wait."""
        self.waits.append(wait)
        time.sleep(self.slow if len(self.waits) == 1 else min(wait, 1.0) if index else 0.0)
        if len(self.waits) >= 6:
            self.stop.set()
        return Indexed(7, KVEntry(key, b"{}", 7, session=self.session))


def test_a_leader_whose_lease_lapsed_leads_again_at_its_next_confirmation() -> None:
    """A read slower than the lease steps the leader down; the lock still ours, it confirms it again
    with short reads (not a follower's 10 s wait, which would date every confirmation too old)."""
    stop = threading.Event()
    consul = HeldLockConsul(session="s1", slow=0.5, stop=stop)
    election = LeaderElection(consul, LAYOUT, host="h-lapse", node="n1", lock_delay=0, lease=0.3)
    election._session = "s1"
    election._campaign(stop)
    assert election.is_leader
    assert all(wait == 0.3 / 4 for wait in consul.waits[1:]), consul.waits
