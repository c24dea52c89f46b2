"""Bounded records (issue 26): tenant text cut with a marker, event records within their bound,
one packer whose refusals stay with their group, the load balancer's hold of a last good upstream,
and a deleted service's event records removed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.events import (
    INVALID,
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    RECORDS_GRACE,
    ServiceEvent,
    expire_records,
    new_event,
    parse_record,
    record_json,
)
from consul_operator.core.keys import Layout
from consul_operator.core.records import (
    MAX_ERROR_BYTES,
    MAX_PLACEMENT_BYTES,
    MAX_ROLLOUT_BYTES,
    MAX_STATUS_BYTES,
    Hold,
    PlacementRecord,
    StatusRecord,
    bounded_text,
    encoded_size,
    frozen_map,
    record_bound,
)
from consul_operator.core.txn import CONSUL_MAX_VALUE_BYTES, Writes, pack_writes, send_groups
from consul_operator.core.upstreams import Hold as LBHold
from consul_operator.core.upstreams import LBView, Server, Upstream, hold_last_good

POISON_PROBLEM = "YAML tag !" + "a" * 450_000


# --- tenant text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(POISON_PROBLEM, id="450-kb-ascii"),
        pytest.param("\U0001f600" * 5000, id="astral-12-bytes-each-in-json"),
        pytest.param("\x01" * 3000, id="control-chars-6-bytes-each"),
        pytest.param("é" * 2000, id="two-byte-utf8"),
    ],
)
def test_long_text_is_cut_with_a_marker_within_its_bound(text: str) -> None:
    """A text over its bound keeps a prefix and says how many bytes were cut, within the bound."""
    cut = bounded_text(text, 1024)
    assert encoded_size(cut) <= 1024
    assert text.startswith(cut.rsplit("…", 1)[0])
    assert cut.endswith("bytes cut]")


def test_short_text_is_kept_as_it_is() -> None:
    """A text within its bound is not touched."""
    assert bounded_text("Invalid: replicas: must be 0-100", 1024) == "Invalid: replicas: must be 0-100"


def test_status_record_of_the_poison_manifest_is_small() -> None:
    """The issue's 450 KB problem makes a status record of a few hundred bytes, not 600 KB."""
    record = StatusRecord("p", "host-1", error=f"Invalid: {POISON_PROBLEM}", hold=Hold.INVALID)
    assert encoded_size(record.error) <= MAX_ERROR_BYTES
    assert len(record.to_json()) <= MAX_STATUS_BYTES
    again = StatusRecord.from_json(record.to_json(), service="p", host="host-1")
    assert record.same_report(again), "a record read back says the same: no rewrite on every pass"


def test_placement_reason_is_bounded() -> None:
    """A placement's reason naming huge text is cut."""
    record = PlacementRecord("s", "a" * 16, frozen_map({}), 1, reason="x" * 100_000)
    assert len(record.to_json()) < 10_000


# --- events ----------------------------------------------------------------------------


def test_distinct_invalid_manifest_events_keep_the_record_within_its_bound() -> None:
    """100 distinct invalid-manifest events of emoji stay within the record's byte bound, newest kept."""
    events = [new_event(1000.0 + i, "host-1", "s", INVALID, f"{i} " + "\U0001f600" * 600) for i in range(100)]
    assert all(encoded_size(e.message) <= MAX_MESSAGE_BYTES for e in events)
    value = record_json(events)
    assert len(value) <= MAX_RECORD_BYTES
    kept = parse_record(value)
    assert kept and kept[-1] == events[-1], "the oldest go first"
    # As the base cut them (511 characters), the same events made a record Consul refuses.
    raw = [ServiceEvent(e.time, e.host, e.service, e.reason, "\U0001f600" * 511) for e in events]
    assert len(json.dumps([e.to_dict() for e in raw])) > 512 * 1024
    assert len(record_json(raw)) <= MAX_RECORD_BYTES


def test_one_event_read_back_unbounded_is_bounded_again() -> None:
    """An event read back from KV with a huge message is written within the bound."""
    huge = ServiceEvent(1.0, "h", "s", INVALID, "\x00" * 200_000)
    assert len(record_json([huge])) <= MAX_RECORD_BYTES


STATE = ClusterState(
    manifests={},
    statuses={"draining": {"host-1": StatusRecord("draining", "host-1", running=1)}},
)


@dataclass(frozen=True)
class ExpireRow:
    """Services with event records, when each was first seen gone, now -> removed, kept, wake."""

    with_records: set[str]
    gone: dict[str, float] = field(default_factory=dict)
    now: float = 100.0
    remove: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    wake_at: float | None = None


EXPIRE_ROWS = [
    pytest.param(
        ExpireRow({"web"}, left=("web",), wake_at=100 + RECORDS_GRACE), id="first-seen-gone-waits-grace"
    ),
    pytest.param(
        ExpireRow({"web"}, {"web": 100 - RECORDS_GRACE}, remove=("web",)), id="gone-past-grace-removed"
    ),
    pytest.param(ExpireRow({"draining"}, wake_at=100 + RECORDS_GRACE), id="status-left-kept-looked-at-again"),
    pytest.param(ExpireRow({"live"}), id="service-with-manifest-kept"),
]


@pytest.mark.parametrize("row", EXPIRE_ROWS)
def test_event_records_of_deleted_services_expire(row: ExpireRow) -> None:
    """A deleted service's event records go RECORDS_GRACE after nothing else of it is left."""
    from consul_operator.core.desired_state import Manifest

    state = ClusterState(
        manifests={"live": Manifest(name="live", image="i", replicas=1)}, statuses=STATE.statuses
    )
    cleanup = expire_records(row.with_records, state, row.gone, row.now)
    assert cleanup.remove == row.remove
    assert tuple(cleanup.gone) == row.left
    assert cleanup.wake_at == row.wake_at


# --- one packer, refusals stay with their group ------------------------------------------------


def test_a_refused_group_in_a_shared_transaction_fails_alone() -> None:
    """A shared transaction refused: each group is sent alone, and only the one at fault is refused."""
    groups: dict[str, Writes] = {name: {f"k/{name}": b"v"} for name in ("a", "bad", "c")}
    sent_log: list[set[str]] = []

    def send(writes: Writes) -> str | None:
        sent_log.append(set(writes))
        return "denied" if "k/bad" in writes else None

    sent = send_groups(pack_writes(groups), send, "too_large")
    assert sent.groups == ("a", "c")
    assert sent.refused == {"bad": "denied"}
    assert sorted(sent.keys) == ["k/a", "k/c"]


def test_an_oversized_group_is_never_sent_and_the_others_are() -> None:
    """A value over the bound is refused unsent; every other group is written."""
    groups: dict[str, Writes] = {"big": {"k/big": b"x" * 600_000}, "small": {"k/small": b"v"}}
    sent = send_groups(pack_writes(groups), lambda w: None if "k/big" not in w else "413", "too_large")
    assert sent.refused == {"big": "too_large"}
    assert sent.groups == ("small",)


# --- the load balancer's hold ------------------------------------------------------------


A, B, C = Server("10.0.0.1", 1), Server("10.0.0.2", 2), Server("10.0.0.3", 3)
GOOD = {"web": Upstream("web", (A, B))}
EMPTY = LBView((Upstream("web", ()),), None)


@dataclass(frozen=True)
class HoldRow:
    """The fresh view, unreported passing servers, holds and now -> servers served, holds, counts."""

    view: LBView
    unreported: dict[str, set[Server]]
    holds: dict[str, LBHold]
    now: float
    served: tuple[Server, ...]
    held: bool
    started: bool = False
    expired: bool = False


HOLD_ROWS = [
    pytest.param(
        HoldRow(EMPTY, {"web": {A, B}}, {}, 10.0, (A, B), True, started=True), id="records-gone-held"
    ),
    pytest.param(
        HoldRow(EMPTY, {"web": {A}}, {}, 10.0, (A,), True, started=True), id="only-servers-still-passing"
    ),
    pytest.param(HoldRow(EMPTY, {"web": {C}}, {}, 10.0, (), False), id="never-a-server-not-in-last-good"),
    pytest.param(HoldRow(EMPTY, {}, {}, 10.0, (), False), id="nothing-passing-503"),
    pytest.param(
        HoldRow(EMPTY, {"web": {A, B}}, {"web": LBHold(0.0)}, 59.9, (A, B), True), id="within-60s-held"
    ),
    pytest.param(
        HoldRow(EMPTY, {"web": {A, B}}, {"web": LBHold(0.0)}, 60.0, (), True, expired=True),
        id="at-60s-expires",
    ),
    pytest.param(
        HoldRow(EMPTY, {"web": {A, B}}, {"web": LBHold(0.0, expired=True)}, 90.0, (), True), id="expired-once"
    ),
    pytest.param(
        HoldRow(
            LBView((Upstream("web", (B,)),), None), {"web": {A}}, {"web": LBHold(0.0)}, 10.0, (B,), False
        ),
        id="owned-servers-again-hold-ends",
    ),
]


@pytest.mark.parametrize("row", HOLD_ROWS)
def test_hold_last_good_upstream(row: HoldRow) -> None:
    """The last good upstream is kept, bounded in time, only while its servers pass unreported."""
    decision = hold_last_good(row.view, row.unreported, GOOD, row.holds, row.now, 60.0)
    assert decision.view.upstreams[0].servers == row.served
    assert ("web" in decision.holds) == row.held
    assert decision.started == (("web",) if row.started else ())
    assert decision.expired == (("web",) if row.expired else ())


def test_hold_wakes_the_load_balancer_when_it_runs_out() -> None:
    """A hold asks for a pass when it ends, so that its expiry needs no other event."""
    decision = hold_last_good(EMPTY, {"web": {A}}, GOOD, {"web": LBHold(5.0)}, 10.0, 60.0)
    assert decision.wake_at == 65.0


LAYOUT = Layout()


@pytest.mark.parametrize(
    ("key", "bound"),
    [
        pytest.param(LAYOUT.status_key("web", "host-1"), MAX_STATUS_BYTES, id="status"),
        pytest.param(LAYOUT.placement_key("web"), MAX_PLACEMENT_BYTES, id="placement"),
        pytest.param(LAYOUT.rollout_key("web"), MAX_ROLLOUT_BYTES, id="rollout"),
        pytest.param(LAYOUT.events_key("web", "host-1"), MAX_RECORD_BYTES, id="events"),
        pytest.param(
            LAYOUT.revision_key("web", "a" * 16), CONSUL_MAX_VALUE_BYTES, id="revision-validator-bounds-it"
        ),
    ],
)
def test_every_record_has_a_bound(key: str, bound: int) -> None:
    """Each kind of record has its byte bound, checked by the packer before any write."""
    assert record_bound(LAYOUT, key) == bound


def test_a_record_over_its_bound_is_never_sent_and_the_other_services_are() -> None:
    """A placement over its bound is left out unsent with its service's other writes; another service's go."""
    groups: dict[str, Writes] = {
        "big": {
            LAYOUT.placement_key("big"): b"x" * (MAX_PLACEMENT_BYTES + 1),
            LAYOUT.rollout_key("big"): b"{}",
        },
        "web": {LAYOUT.placement_key("web"): b"{}"},
    }
    packing = pack_writes(groups, max_value=lambda key: record_bound(LAYOUT, key))
    assert dict(packing.too_large) == {"big": LAYOUT.placement_key("big")}
    assert [dict(b.writes) for b in packing] == [groups["web"]]
