"""What the leader's pass costs per service stays flat (issue 31's profile of the idle pass)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import KVEntry
from consul_operator.adapters.kv_state import RecordCache, StatusCache, placements_of, statuses_of
from consul_operator.core.desired_state import Manifest, Resources, parse_manifest
from consul_operator.core.keys import Layout
from consul_operator.core.placement import _Charge
from consul_operator.core.records import PlacementRecord, StatusRecord, frozen_map
from consul_operator.core.rollout import spec_charge


def _series(service: str) -> set[str]:
    """The causes under which ``service``'s unplaced replicas are exported now."""
    return {
        sample.labels["cause"]
        for family in metrics.unplaced_replicas.collect()
        for sample in family.samples
        if sample.labels["service"] == service
    }


def test_set_unplaced_does_not_list_every_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting one service's unplaced replicas never lists the gauge's series (it was O(services) a
    call, O(services²) a pass: 13 s of a 16 s profiled pass at 1,000 services)."""

    def listing() -> None:
        raise AssertionError("set_unplaced listed every series of the gauge")

    for i in range(3):
        metrics.set_unplaced(f"cost-{i}", 0, "none")
    monkeypatch.setattr(metrics.unplaced_replicas, "collect", listing)
    metrics.set_unplaced("cost-1", 2, "memory")
    metrics.set_unplaced("cost-1", 2, "memory")
    metrics.drop_unplaced("cost-2")


def test_set_unplaced_keeps_one_cause_per_service() -> None:
    """A new cause replaces the service's old series; dropping the service removes its series."""
    metrics.set_unplaced("causes", 1, "memory")
    metrics.set_unplaced("causes", 0, "none")
    assert _series("causes") == {"none"}
    metrics.drop_unplaced("causes")
    assert _series("causes") == set()
    metrics.set_unplaced("causes", 3, "cpus")
    metrics.drop_unplaced(None)
    assert _series("causes") == set()


def test_spec_hash_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest's spec hash is computed once and then reused (the leader asks for it per service
    several times a pass), and equal manifests still hash and compare equal."""
    manifest = parse_manifest("name: web\nimage: hello:local\nreplicas: 2\n", key_name="web")
    again = parse_manifest("name: web\nimage: hello:local\nreplicas: 2\n", key_name="web")
    first = manifest.spec_hash()
    monkeypatch.setattr(type(manifest), "to_dict", lambda _self: pytest.fail("spec hashed again"))
    assert manifest.spec_hash() == first
    monkeypatch.undo()
    assert again == manifest
    assert again.spec_hash() == first


def test_status_records_are_parsed_again_only_when_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader's reads reuse each status record parsed before, and its key's service and host, while
    its modify index is the same (10,000 records parsed on every pass were a fifth of it); a changed
    index is parsed again, a key gone is forgotten, and an unreadable record stays one (kept empty for
    the leader)."""
    layout = Layout()
    good = StatusRecord("web", "h1", "abc", 1, 1, 1).to_json()
    entries = [
        KVEntry(layout.status_key("web", "h1"), good, 7),
        KVEntry(layout.status_key("web", "h2"), b"junk", 8),
    ]
    cache = StatusCache()
    first = statuses_of(entries, layout, keep_unreadable=True, cache=cache)
    assert first["web"]["h1"].running == 1 and first["web"]["h2"] == StatusRecord("web", "h2")
    monkeypatch.setattr(StatusRecord, "from_json", lambda *_a, **_k: pytest.fail("parsed again"))
    monkeypatch.setattr(Layout, "status_of", lambda *_a: pytest.fail("key split again"))
    assert statuses_of(entries, layout, keep_unreadable=True, cache=cache) == first
    monkeypatch.undo()
    changed = StatusRecord("web", "h1", "abc", 2, 2, 2).to_json()
    again = statuses_of([KVEntry(layout.status_key("web", "h1"), changed, 9)], layout, cache=cache)
    assert again["web"]["h1"].running == 2
    assert set(cache.entries) == {layout.status_key("web", "h1")}


def test_the_very_listing_read_again_is_not_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror's unmoved listing (the same list object) gives the records of its last parse without a
    look at any entry, as copies a caller may change; the same entries in another list are walked, and
    other options parse again."""
    layout = Layout()
    entries = [
        KVEntry(
            layout.status_key("web", f"h{i}"), StatusRecord("web", f"h{i}", "abc", 1, 1, 1).to_json(), 7 + i
        )
        for i in range(3)
    ]
    cache = StatusCache()
    first = statuses_of(entries, layout, keep_unreadable=True, cache=cache)
    monkeypatch.setattr(RecordCache, "known", lambda *_a: pytest.fail("an entry looked at"))
    again = statuses_of(entries, layout, keep_unreadable=True, cache=cache)
    assert again == first
    again["web"].clear()  # the caller's own copy
    assert statuses_of(entries, layout, keep_unreadable=True, cache=cache) == first
    with pytest.raises(pytest.fail.Exception, match="an entry looked at"):
        statuses_of(list(entries), layout, keep_unreadable=True, cache=cache)
    with pytest.raises(pytest.fail.Exception, match="an entry looked at"):
        statuses_of(entries, layout, keep_unreadable=False, cache=cache)


def test_placement_records_are_parsed_again_only_when_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader's reads reuse each placement record parsed before while its modify index is the
    same (1,000 records parsed on every pass); a changed index is parsed again, a key gone is
    forgotten, and an unreadable record is left out on every read, never kept."""
    layout = Layout()
    web = PlacementRecord("web", "abc", frozen_map({"h1": 2}))
    entries = [
        KVEntry(layout.placement_key("web"), web.to_json(), 7),
        KVEntry(layout.placement_key("api"), b"junk", 8),
    ]
    cache: RecordCache[PlacementRecord] = RecordCache()
    first = placements_of(entries, layout, cache)
    assert first == {"web": web}
    real = PlacementRecord.from_json
    parsed: list[bytes] = []

    def counted(data: bytes) -> PlacementRecord:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(PlacementRecord, "from_json", counted)
    assert placements_of(entries, layout, cache) == first
    assert parsed == [b"junk"]
    moved = PlacementRecord("web", "abc", frozen_map({"h2": 2}))
    again = placements_of([KVEntry(layout.placement_key("web"), moved.to_json(), 9)], layout, cache)
    assert again == {"web": moved}
    assert set(cache.entries) == {layout.placement_key("web")}


def _general_charge(charge: _Charge, host: str, count: int) -> Resources:
    """`_Charge.on` without its one-spec shortcut: the spec mix cut or grown to ``count``."""
    mix = dict(charge.previous.spec_counts(host)) if charge.previous else {}
    for spec in sorted(mix, key=lambda s: (s == charge.spec, s)):
        mix[spec] -= min(mix[spec], max(0, sum(mix.values()) - count))
    mix[charge.spec] = mix.get(charge.spec, 0) + max(0, count - sum(mix.values()))
    return spec_charge(mix, charge.running.get(host, {}), charge.sizes, charge.size)


SPECS = st.sampled_from(["cur", "old", "older"])


@settings(max_examples=300, deadline=None)
@given(
    placed=st.dictionaries(SPECS, st.integers(0, 4), max_size=3),
    running=st.dictionaries(SPECS, st.integers(0, 4), max_size=3),
    count=st.integers(0, 6),
    mixed=st.booleans(),
    record_spec=SPECS,
)
def test_one_spec_charge_shortcut_property(
    placed: dict[str, int], running: dict[str, int], count: int, mixed: bool, record_spec: str
) -> None:
    """For every placed spec mix, running mix and count, a host's charge with the one-spec shortcut
    is the charge of the general rule (the shortcut only skips work)."""
    manifest = Manifest(name="web", image="hello:1", replicas=3, resources=Resources(64 * 1024**2, 250))
    spec = manifest.spec_hash()
    rename = {"cur": spec, "old": "0" * 16, "older": "1" * 16}
    placed_specs = {rename[s]: n for s, n in placed.items()}
    record = PlacementRecord(
        "web",
        rename[record_spec],
        frozen_map({"h1": sum(placed_specs.values())}),
        specs={"h1": frozen_map(placed_specs)} if mixed else {},
    )
    sizes = {"0" * 16: Resources(32 * 1024**2, 100)}
    charge = _Charge("web", manifest, record, {"h1": {rename[s]: n for s, n in running.items()}}, sizes)
    assert charge.on("h1", count) == _general_charge(charge, "h1", count)


COUNTS = st.dictionaries(st.sampled_from(["h1", "h2"]), st.integers(0, 2), max_size=2)
RECORDS = st.builds(
    PlacementRecord,
    service=st.sampled_from(["web", "api"]),
    spec_hash=SPECS,
    hosts=COUNTS,
    unplaced=st.integers(0, 1),
    written_by=st.sampled_from(["", "host-1"]),
    specs=st.dictionaries(st.sampled_from(["h1", "h2"]), COUNTS, max_size=2),
    reason=st.sampled_from(["", "no room"]),
    stuck=COUNTS,
    rebalancing=st.sampled_from(["", "host-2 returned"]),
)


@settings(max_examples=300, deadline=None)
@given(one=RECORDS, other=RECORDS, copy=st.booleans())
def test_same_decision_shortcut_property(one: PlacementRecord, other: PlacementRecord, copy: bool) -> None:
    """For any two placement records, `same_decision` is the comparison of their normal forms (zero
    counts dropped, the writer left out): its shortcut on equal fields only skips work."""
    if copy:
        other = PlacementRecord(**{f: getattr(one, f) for f in one.__dataclass_fields__})
    assert one.same_decision(other) == (one._decision() == other._decision())
