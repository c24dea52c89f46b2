"""Properties of bounded writes (issue 26): for any input, hostile text included, every record the
pure core builds fits its bound, the one packer never builds a transaction Consul refuses for its
size, and one group's refusal never keeps another group from being written."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.events import (
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    REASONS,
    ServiceEvent,
    add_events,
    invalid_events,
    new_event,
    parse_record,
    record_json,
)
from consul_operator.core.host_plan import host_desires
from consul_operator.core.records import (
    CONTAINER_ID_CHARS,
    MAX_ERROR_BYTES,
    MAX_PLACEMENT_BYTES,
    MAX_REASON_BYTES,
    MAX_ROLLOUT_BYTES,
    MAX_STATUS_BYTES,
    ROLLOUT_STATES,
    UNPLACED_CAUSES,
    Hold,
    PlacementRecord,
    ReplicaMark,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    UnplacedCause,
    bounded_text,
    encoded_size,
    frozen_map,
)
from consul_operator.core.txn import (
    CONSUL_MAX_REQUEST_BYTES,
    CONSUL_MAX_TXN_OPS,
    Writes,
    pack_writes,
    send_groups,
    txn_body,
)

# Hostile text: any code point (control characters, lone surrogates, emoji), repeated to be huge.
PIECES = st.text(st.characters(), max_size=40)
HOSTILE = st.builds(lambda piece, times: piece * times, PIECES, st.integers(0, 5_000))
LABEL = st.one_of(st.just("l" * 63), st.from_regex(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True))
SPEC = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)


@given(HOSTILE, st.integers(64, 70_000))
def test_property_bounded_text_fits_and_keeps_a_prefix(text: str, bound: int) -> None:
    """A cut text's JSON form fits its bound, and what it keeps is the text's own beginning."""
    cut = bounded_text(text, bound)
    assert encoded_size(cut) <= bound
    if cut != text:
        kept = cut.rsplit("… [", 1)[0]
        assert text.startswith(kept)


@given(
    HOSTILE,
    LABEL,
    LABEL,
    st.integers(0, 200),
    st.dictionaries(SPEC, st.integers(0, 200), max_size=3),
    st.sampled_from([None, *Hold]),
)
def test_property_status_record_fits_its_bound(
    error: str,
    service: str,
    host: str,
    count: int,
    specs: dict[str, int],
    hold: Hold | None,
) -> None:
    """A status record with any error text and up to 200 instances (named as the agents name them)
    fits its bound, for the longest service and host names too."""
    instances = tuple(f"{service}-{host}-{i:06x}" for i in range(count))
    marks = {name: ReplicaMark(65535, "f" * CONTAINER_ID_CHARS, "a" * 16) for name in instances}
    record = StatusRecord(
        service,
        host,
        "a" * 16,
        100,
        200,
        200,
        error,
        hold,
        frozen_map(specs),
        instances,
        1.7e9,
        node="n" * 255,
        replicas=MappingProxyType(marks),
    )
    assert encoded_size(record.error) <= MAX_ERROR_BYTES
    assert len(record.to_json()) <= MAX_STATUS_BYTES


@given(
    HOSTILE,
    st.dictionaries(LABEL, st.integers(1, 100), max_size=100),
    st.sampled_from(UNPLACED_CAUSES),
    st.sampled_from(ROLLOUT_STATES),
)
def test_property_placement_and_rollout_records_fit_their_bounds(
    reason: str, hosts: dict[str, int], cause: UnplacedCause, state: RolloutState
) -> None:
    """Placement and rollout records with any reason text and up to 100 hosts fit their bounds."""
    specs = {h: frozen_map({"a" * 16: 100, "b" * 16: 100, "c" * 16: 100}) for h in hosts}
    placement = PlacementRecord(
        "s" * 63,
        "a" * 16,
        frozen_map(hosts),
        100,
        "h" * 63,
        specs,
        cause,
        reason,
    )
    assert encoded_size(placement.reason) <= MAX_REASON_BYTES
    assert len(placement.to_json()) <= MAX_PLACEMENT_BYTES
    rollout = RolloutRecord("s" * 63, "a" * 16, "b" * 16, state, 1.7e9, reason, 100, 100, 1e9)
    assert len(rollout.to_json()) <= MAX_ROLLOUT_BYTES


@given(
    st.lists(st.tuples(st.floats(0, 3600), st.sampled_from(REASONS), HOSTILE), max_size=120),
    LABEL,
    st.text(max_size=80),
)
def test_property_event_record_fits_its_bound(
    happenings: list[tuple[float, str, str]], service: str, host: str
) -> None:
    """Any events, messages of any text, collapse and trim to a record within its bound, newest kept."""
    new = [new_event(t, host, service, reason, message) for t, reason, message in happenings]
    assert all(encoded_size(e.message) <= MAX_MESSAGE_BYTES for e in new)
    record = add_events([], new, 3600.0)
    value = record_json(record)
    assert len(value) <= MAX_RECORD_BYTES
    kept = parse_record(value)
    if kept:
        assert abs(kept[-1].time - record[-1].time) < 0.001


@given(st.lists(st.tuples(st.floats(0, 100), HOSTILE), max_size=30))
def test_property_event_records_read_back_are_bounded_again(raw: list[tuple[float, str]]) -> None:
    """Events read from KV (anyone may have written them) make a bounded record again."""
    events = [ServiceEvent(t, "h", "s", "Started", message) for t, message in raw]
    assert len(record_json(events)) <= MAX_RECORD_BYTES


# Groups of writes: many small ones (a delete, a few bytes), and a few up to past Consul's limits.
KEY = st.from_regex(r"[a-z0-9/]{1,80}", fullmatch=True)
SMALL = st.dictionaries(KEY, st.one_of(st.none(), st.binary(max_size=200)), max_size=70)
BIG = st.dictionaries(
    KEY, st.sampled_from([1_000, 100_000, 250_000, 390_000, 600_000]).map(lambda n: b"x" * n), max_size=2
)
GROUPS = st.dictionaries(LABEL, st.builds(lambda small, big: {**small, **big}, SMALL, BIG), max_size=6)


def _with_prefixes(groups: dict[str, dict[str, bytes | None]]) -> dict[str, Writes]:
    """Keys unique across groups: each group's keys under its own name."""
    return {
        name: {f"{name}/{key}": value for key, value in writes.items()} for name, writes in groups.items()
    }


@given(GROUPS)
def test_property_packed_transactions_fit_consul_limits(raw: dict[str, dict[str, bytes | None]]) -> None:
    """Every packed transaction, fenced (lock check added), is within 64 ops and 512 KiB with
    base64; every write is in one transaction, or its group is left out as too large."""
    groups = _with_prefixes(raw)
    packing = pack_writes(groups)
    seen: list[str] = []
    for batch in packing.batches:
        assert len(batch.writes) + 1 <= CONSUL_MAX_TXN_OPS
        body = txn_body("operator/leader", "0" * 36, batch.writes)
        assert len(body.encode()) <= CONSUL_MAX_REQUEST_BYTES
        seen.extend(batch.writes)
    assert len(seen) == len(set(seen))
    expected = [k for name, writes in groups.items() if name not in packing.too_large for k in writes]
    assert sorted(seen) == sorted(expected)
    for name, key in packing.too_large.items():
        value = groups[name][key]
        assert value is not None and len(value) > 300_000


@given(GROUPS, st.data())
def test_property_one_refusal_never_stops_another_groups_write(
    raw: dict[str, dict[str, bytes | None]], data: st.DataObject
) -> None:
    """With the outcome of each write as data: every group without a refused key is written whole,
    every group with one is refused, whatever shares its transaction."""
    groups = _with_prefixes(raw)
    keys = sorted(k for writes in groups.values() for k in writes)
    refused_keys = set(data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else [])
    written: set[str] = set()

    def send(writes: Writes) -> str | None:
        if refused_keys & set(writes):
            return "refused"
        written.update(writes)
        return None

    packing = pack_writes(groups)
    sent = send_groups(packing, send, "too_large")
    for name, writes in groups.items():
        if not writes:
            continue
        if name in packing.too_large:
            assert sent.refused[name] == "too_large"
        elif refused_keys & set(writes):
            assert name in sent.refused and name not in sent.groups
        else:
            assert name in sent.groups, name
            assert set(writes) <= written
    assert set(sent.keys) == written


SHAPES = ("name: !{}", "{}", 'name: "{}"', "name: web\nimage: {}\nreplicas: 1", "{}: 1")


@given(st.text(st.characters(), max_size=3000), st.sampled_from(SHAPES))
def test_property_invalid_manifest_status_and_event_fit_their_bounds(text: str, shape: str) -> None:
    """Any manifest text, through the validator, the host's desires and the leader's invalid event,
    makes a status record and an event within their bounds that read back as written."""
    try:
        manifest: Manifest | ManifestError = parse_manifest(
            shape.format(text).encode("utf-8", "surrogatepass"), key_name="web"
        )
    except ManifestError as exc:
        manifest = exc
    desire = host_desires("host-1", {"web": manifest}, {}, {})["web"]
    record = StatusRecord("web", "host-1", error=desire.error or "", hold=desire.hold)
    assert len(record.to_json()) <= MAX_STATUS_BYTES
    assert record.same_report(StatusRecord.from_json(record.to_json(), service="web", host="host-1"))
    occurred, _ = invalid_events({"web": manifest}, {})
    for event in occurred:
        value = record_json([new_event(1.0, "host-1", event.service, event.reason, event.message)])
        assert len(value) <= MAX_RECORD_BYTES and parse_record(value)
