"""Each host's work key (`core.work`) and the leader's writes of it (`daemons.leader_writes`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import Indexed, KVEntry
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, ManifestError, UpdatePolicy, parse_manifest
from consul_operator.core.errors import ConsulError
from consul_operator.core.keys import Layout
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import (
    MAX_WORK_BYTES,
    PlacementRecord,
    StatusRecord,
    frozen_map,
    record_bound,
)
from consul_operator.core.txn import CONSUL_MAX_VALUE_BYTES, Sent, Writes
from consul_operator.core.work import (
    WorkEntry,
    WorkShard,
    host_work,
    work_digest,
    work_records,
    work_writes,
    written_work,
)
from consul_operator.daemons import scheduler as scheduler_module
from consul_operator.daemons.leader_writes import WORK_RESYNC, FencedWriter, WorkKeys, write_pass
from consul_operator.daemons.scheduler import Scheduler

LAYOUT = Layout()
WEB = Manifest(name="web", image="hello:1", replicas=3, drain=2.0)
API = Manifest(name="api", image="hello:1", replicas=1)


def placement(manifest: Manifest, hosts: dict[str, int], **specs: dict[str, int]) -> PlacementRecord:
    """``manifest``'s placement over ``hosts``; ``specs``: per host, per spec (a rollout)."""
    return PlacementRecord(
        manifest.name,
        manifest.spec_hash(),
        frozen_map(hosts),
        specs={h: frozen_map(c) for h, c in specs.items()},
    )


def invalid() -> ManifestError:
    """The error of a manifest with a negative replica count."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest("name: api\nimage: hello:1\nreplicas: -1\n", key_name="api")
    return caught.value


@pytest.mark.parametrize(
    ("placements", "manifests", "expected"),
    [
        pytest.param(
            {"web": placement(WEB, {"h1": 2, "h2": 1})},
            {"web": WEB},
            {
                "h1": {"web": WorkEntry(WEB.spec_hash(), 2, {}, 2.0, WEB.stop_grace)},
                "h2": {"web": WorkEntry(WEB.spec_hash(), 1, {}, 2.0, WEB.stop_grace)},
            },
            id="one-service-two-hosts",
        ),
        pytest.param(
            {"web": placement(WEB, {"h1": 2, "h2": 0})},
            {"web": WEB},
            {"h1": {"web": WorkEntry(WEB.spec_hash(), 2, {}, 2.0, WEB.stop_grace)}},
            id="a-host-with-none-has-no-entry",
        ),
        pytest.param({"web": placement(WEB, {"h1": 2})}, {}, {}, id="no-manifest-no-work"),
        pytest.param(
            {"web": placement(WEB, {"h1": 2}, h1={"aaaa": 1, WEB.spec_hash(): 1})},
            {"web": WEB},
            {
                "h1": {
                    "web": WorkEntry(WEB.spec_hash(), 2, {"aaaa": 1, WEB.spec_hash(): 1}, 2.0, WEB.stop_grace)
                }
            },
            id="rollout-counts-per-spec",
        ),
        pytest.param(
            {"api": placement(API, {"h2": 1})},
            {"api": invalid()},
            {"h2": {"api": WorkEntry(API.spec_hash(), 1, {}, invalid=str(invalid().problems[0]))}},
            id="invalid-manifest-holds",
        ),
    ],
)
def test_host_work(
    placements: dict[str, PlacementRecord],
    manifests: dict[str, Manifest | ManifestError],
    expected: dict[str, dict[str, WorkEntry]],
) -> None:
    """Every host's work follows its placements: counts, the rollout's specs, the invalid hold."""
    got = host_work(placements, manifests)
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=3000),
    bound=st.sampled_from([2_000, 10_000, MAX_WORK_BYTES]),
)
def test_work_shards_property(count: int, bound: int) -> None:
    """For any number of services, every shard is within its bound, the shards together hold the
    host's whole work once, and all of them agree on the session, the digest and their number."""
    work = {f"s{i:05d}": WorkEntry("0123456789abcdef", 1 + i % 7, {}, 5.0, 10.0) for i in range(count)}
    records = work_records(LAYOUT, "h1", work, "sess", max_bytes=bound)
    shards = [WorkShard.from_json(v, host="h1") for v in records.values()]
    assert all(len(v) <= bound for v in records.values())
    assert all(len(v) <= record_bound(LAYOUT, k) for k, v in records.items())
    assert sorted(records) == sorted(LAYOUT.work_key("h1", i) for i in range(len(records)))
    assert {(s.session, s.digest, s.shards) for s in shards} == {("sess", work_digest(work), len(records))}
    merged: dict[str, object] = {}
    for shard in shards:
        assert not set(shard.services) & set(merged)
        merged.update(shard.services)
    assert merged == {n: e.to_dict() for n, e in work.items()}


ENTRIES = st.builds(
    WorkEntry,
    spec=st.text(min_size=0, max_size=16),
    count=st.integers(min_value=0, max_value=10_000),
    specs=st.dictionaries(st.text(max_size=8), st.integers(min_value=0, max_value=50), max_size=3),
    drain=st.sampled_from([5.0, 0.5, 120.0]),
    stop_grace=st.sampled_from([10.0, 1.0]),
    invalid=st.text(max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(
    work=st.dictionaries(st.text(min_size=1, max_size=20), ENTRIES, max_size=40),
    bound=st.sampled_from([600, 2_000, MAX_WORK_BYTES]),
)
def test_work_records_are_the_plain_encoding_property(work: dict[str, WorkEntry], bound: int) -> None:
    """Each entry encoded once gives the records the plain encoding gives: every shard's bytes are
    `WorkShard.to_json` of what it holds, and the digest is that of the whole work's sorted JSON
    (any service name, unicode and quotes included)."""
    plain = json.dumps({n: e.to_dict() for n, e in work.items()}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(plain.encode()).hexdigest()[:16]
    assert work_digest(work) == digest
    records = work_records(LAYOUT, "h1", work, "sess", max_bytes=bound)
    merged: dict[str, object] = {}
    for value in records.values():
        shard = WorkShard.from_json(value, host="h1")
        assert value == shard.to_json()
        assert shard.digest == digest
        merged.update(shard.services)
    assert merged == {n: e.to_dict() for n, e in work.items()}


@settings(max_examples=60, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["web", "api", "db", 'x"y', "ü"]), ENTRIES, max_size=5),
    data=st.data(),
)
def test_members_of_an_earlier_pass_give_the_plain_writes_property(
    before: dict[str, WorkEntry], data: st.DataObject
) -> None:
    """The writes planned with the members an earlier pass encoded (`WorkWrites.encoded`) are the
    writes planned without them, whatever changed in between: a member is reused only for an equal
    entry of its service."""
    kept = data.draw(st.sets(st.sampled_from(sorted(before)))) if before else set()
    changed = data.draw(st.dictionaries(st.sampled_from(["web", "api", "db", 'x"y', "ü", "new"]), ENTRIES))
    after = {**{n: e for n, e in before.items() if n in kept}, **changed}
    first = work_writes(LAYOUT, {"h1": before}, {}, "s1")
    reused = work_writes(LAYOUT, {"h1": after}, first.written, "s1", None, None, first.encoded)
    plain = work_writes(LAYOUT, {"h1": after}, first.written, "s1", None)
    assert reused == plain


def test_unchanged_work_is_not_written_and_a_new_session_rewrites_it() -> None:
    """The same work under the same session writes nothing; a new leader's session writes every host."""
    work = {"h1": {"web": WorkEntry("a", 2)}}
    first = work_writes(LAYOUT, work, {}, "s1")
    assert set(first.additions) == {LAYOUT.work_key("h1", 0)}
    assert not work_writes(LAYOUT, work, first.written, "s1", work)
    read_back = written_work(LAYOUT, {k: v for k, v in first.additions.items() if v is not None})
    assert read_back == first.written
    again = work_writes(LAYOUT, work, read_back, "s2", None)
    assert set(again.additions) == {LAYOUT.work_key("h1", 0)}


def test_additions_before_removals_and_gone_hosts_lose_their_keys() -> None:
    """A replica moving from h1 to h2: h2's key is an addition, h1's a removal; a host neither known
    nor with work loses its keys, a known host without work gets an empty shard."""
    before = {"h1": {"web": WorkEntry("a", 2)}, "h9": {"web": WorkEntry("a", 1)}}
    written = work_writes(LAYOUT, before, {}, "s1").written
    after = {"h1": {"web": WorkEntry("a", 1)}, "h2": {"web": WorkEntry("a", 2)}}
    plan = work_writes(LAYOUT, after, written, "s1", before, hosts={"h1": 1, "h2": 1, "h3": 1})
    assert set(plan.additions) == {LAYOUT.work_key("h2", 0)}
    assert set(plan.removals) == {LAYOUT.work_key(h, 0) for h in ("h1", "h3", "h9")}
    assert plan.removals[LAYOUT.work_key("h9", 0)] is None
    empty = WorkShard.from_json(plan.removals[LAYOUT.work_key("h3", 0)] or b"", host="h3")
    assert empty.services == {} and empty.shards == 1
    assert "h9" not in plan.written


def test_torn_or_unreadable_work_is_written_again() -> None:
    """Shards that disagree (a torn write) or do not parse read as written under no session."""
    one = work_records(LAYOUT, "h1", {f"s{i}": WorkEntry("a", 1) for i in range(60)}, "s1", max_bytes=1_000)
    assert len(one) > 1
    torn = dict(one)
    torn[LAYOUT.work_key("h1", 1)] = work_records(LAYOUT, "h1", {"x": WorkEntry("b", 1)}, "s1")[
        LAYOUT.work_key("h1", 0)
    ]
    assert written_work(LAYOUT, torn)["h1"].session == ""
    assert written_work(LAYOUT, {LAYOUT.work_key("h2", 0): b"junk"})["h2"].session == ""
    assert written_work(LAYOUT, one)["h1"].session == "s1"


# --- the leader's pass: work keys behind the placements, logs and counts after the write -------


@dataclass
class FakeElection:
    """Leads with session ``s1``; refuses every fenced write holding a key of ``refuse``; keeps the rest."""

    refuse: dict[str, ConsulError] = field(default_factory=dict)
    kv: dict[str, bytes] = field(default_factory=dict)
    transactions: list[list[str]] = field(default_factory=list)
    host: str = "h1"
    is_leader: bool = True
    session: str | None = "s1"

    def fenced_write(self, writes: dict[str, bytes | None], session: str | None = None) -> None:
        """Refuse or write, like Consul."""
        for key, exc in self.refuse.items():
            if key in writes:
                raise exc
        self.transactions.append(list(writes))
        for key, value in writes.items():
            if value is None:
                self.kv.pop(key, None)
            else:
                self.kv[key] = value


@dataclass
class FakeConsul:
    """`ClusterReads` out of the fake election's KV (the work keys): no instances, no event records.
    The leader writes only fenced (through the election): an unfenced write fails the test."""

    election: FakeElection

    def _entries(self, keys: Iterable[str]) -> list[KVEntry]:
        kv = self.election.kv
        return [KVEntry(k, kv[k], 1) for k in sorted(keys) if k in kv]

    def kv_list(self, prefix: str, **_: object) -> Indexed[list[KVEntry]]:
        """Entries under ``prefix``."""
        return Indexed(1, self._entries(k for k in self.election.kv if k.startswith(prefix)))

    def kv_keys(self, prefix: str, **_: object) -> Indexed[list[str]]:
        """No keys (no event records)."""
        return Indexed(1, [])

    def kv_get(self, key: str, **_: object) -> Indexed[KVEntry | None]:
        """One key."""
        return Indexed(1, next(iter(self._entries([key])), None))

    def kv_trees(self, prefixes: list[str], **_: object) -> dict[str, list[KVEntry]]:
        """Entries under each prefix."""
        return {prefix: self.kv_list(prefix).value for prefix in prefixes}

    def kv_stale(self, known: Mapping[str, int], **_: object) -> set[str]:
        """The keys of ``known`` gone (modify indexes never change here)."""
        return {k for k in known if k not in self.election.kv}

    def kv_get_many(self, keys: list[str], **_: object) -> list[KVEntry]:
        """The entries of ``keys`` that exist."""
        return self._entries(keys)

    def kv_get_keys(self, keys: list[str], **_: object) -> dict[str, KVEntry]:
        """The entries of ``keys`` that exist, by key."""
        return {e.key: e for e in self._entries(keys)}

    def kv_txn(self, writes: Mapping[str, bytes | None]) -> None:
        """Not the leader's: it writes fenced."""
        raise AssertionError(f"unfenced write of {sorted(writes)}")

    def write_records(
        self, groups: Mapping[str, Writes], *, max_value: int | Callable[[str], int] = CONSUL_MAX_VALUE_BYTES
    ) -> Sent[ConsulError]:
        """Not the leader's: it writes fenced."""
        raise AssertionError(f"unfenced records of {sorted(groups)}")

    def health_service(self, service: str, **_: object) -> Indexed[list[ServiceInstance]]:
        """No instances."""
        return Indexed(1, [])

    def passing_instances(self) -> Indexed[dict[str, int]]:
        """No instances."""
        return Indexed(1, {})

    def checks_index(self, **_: object) -> Indexed[int]:
        """No check ever changes."""
        return Indexed(1, 0)


def test_pass_writes_work_keys_behind_the_placements() -> None:
    """One change: the placement, the revision and the hosts' work keys go in one fenced transaction,
    the work keys after the service's writes; an idle pass writes no work key again."""
    election = FakeElection()
    writer, work = FencedWriter(election, LAYOUT), WorkKeys(LAYOUT)
    state = ClusterState(manifests={"web": WEB}, hosts={"h1": (True, {}), "h2": (True, {})})
    decided = {"web": placement(WEB, {"h1": 2, "h2": 1})}
    writes: dict[str, bytes | None] = {
        LAYOUT.placement_key("web"): decided["web"].to_json(),
        LAYOUT.revision_key("web", WEB.spec_hash()): b"{}",
    }
    written = write_pass(writer, work, FakeConsul(election), "s1", state, decided, writes, 0.0)
    assert len(election.transactions) == 1
    keys = election.transactions[0]
    assert keys[-2:] == [LAYOUT.work_key("h1", 0), LAYOUT.work_key("h2", 0)]
    assert set(written.keys) == set(keys)
    h1 = WorkShard.from_json(election.kv[LAYOUT.work_key("h1", 0)], host="h1")
    assert h1.services["web"]["count"] == 2 and h1.session == "s1"
    state = dataclasses.replace(state, placements=decided)
    write_pass(writer, work, FakeConsul(election), "s1", state, decided, {}, 1.0)
    assert len(election.transactions) == 1


def test_refused_placement_leaves_work_keys_as_kv_holds_them() -> None:
    """A service whose placement Consul refuses: the work keys say what KV's placements say."""
    election = FakeElection(refuse={LAYOUT.placement_key("web"): ConsulError("too large", status=413)})
    writer, work = FencedWriter(election, LAYOUT), WorkKeys(LAYOUT)
    before = {"web": placement(WEB, {"h1": 1})}
    state = ClusterState(
        manifests={"web": WEB}, placements=before, hosts={"h1": (True, {}), "h2": (True, {})}
    )
    decided = {"web": placement(WEB, {"h1": 1, "h2": 2})}
    writes: dict[str, bytes | None] = {LAYOUT.placement_key("web"): decided["web"].to_json()}
    written = write_pass(writer, work, FakeConsul(election), "s1", state, decided, writes, 0.0)
    assert "web" in written.refused
    h2 = WorkShard.from_json(election.kv[LAYOUT.work_key("h2", 0)], host="h2")
    assert h2.services == {}
    h1 = WorkShard.from_json(election.kv[LAYOUT.work_key("h1", 0)], host="h1")
    assert h1.services["web"]["count"] == 1


def test_refused_rollout_is_logged_and_counted_once_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler logs and counts a rollout change only after its write succeeds: a refused write
    logs nothing and counts nothing, the pass that writes it logs and counts it once (issue 30)."""
    v1 = Manifest(name="web", image="hello:1", replicas=2, update=UpdatePolicy(min_healthy=0.0))
    v2 = dataclasses.replace(v1, image="hello:2")
    state = ClusterState(
        manifests={"web": v2},
        placements={"web": placement(v1, {"h1": 2})},
        revisions=frozenset({("web", v1.spec_hash())}),
        hosts={"h1": (True, {})},
        statuses={
            "web": {
                "h1": StatusRecord(
                    "web", "h1", v1.spec_hash(), 2, 2, 2, specs=frozen_map({v1.spec_hash(): 2})
                )
            }
        },
    )
    refusal = ConsulError("denied", status=403)
    election = FakeElection(refuse={LAYOUT.rollout_key("web"): refusal})
    scheduler = Scheduler(FakeConsul(election), LAYOUT, election, "c", 10.0, clock=lambda: 100.0)
    gauge = metrics.rollout_state.labels("web", "progressing")
    gauge.set(0)
    monkeypatch.setattr(scheduler_module, "read_cluster_state", lambda *_a, **_k: state)
    with structlog.testing.capture_logs() as refused_logs:
        scheduler.reconcile()
    assert [e for e in refused_logs if e["event"] == "rollout"] == []
    assert gauge._value.get() == 0
    election.refuse.clear()
    scheduler.writer.backoffs.clear()
    with structlog.testing.capture_logs() as written_logs:
        scheduler.reconcile()
    assert [e["state"] for e in written_logs if e["event"] == "rollout"] == ["progressing"]
    assert gauge._value.get() == 1
    assert json.loads(election.kv[LAYOUT.rollout_key("web")])["state"] == "progressing"


def test_work_key_changed_by_hand_is_written_again_at_the_resync() -> None:
    """A work key deleted or changed by someone else is written again by the leader's full read of
    ``operator/work/`` (every `WORK_RESYNC` s), not before: passes in between write nothing."""
    election = FakeElection()
    writer, work = FencedWriter(election, LAYOUT), WorkKeys(LAYOUT)
    decided = {"web": placement(WEB, {"h1": 2})}
    state = ClusterState(manifests={"web": WEB}, placements=decided, hosts={"h1": (True, {})})
    consul = FakeConsul(election)
    write_pass(writer, work, consul, "s1", state, decided, {}, 0.0)
    key = LAYOUT.work_key("h1", 0)
    kept = election.kv.pop(key)
    write_pass(writer, work, consul, "s1", state, decided, {}, 1.0)
    assert key not in election.kv
    write_pass(writer, work, consul, "s1", state, decided, {}, WORK_RESYNC)
    assert election.kv[key] == kept
