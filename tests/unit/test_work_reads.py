"""A host reads its own work keys (issue 31): `core.work.current_work`, `work_view`, `WorkKVReader`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_operator.adapters.consul_client import KVEntry
from consul_operator.adapters.host_reads import KVChanged, WorkKVReader
from consul_operator.adapters.presence import placement_readers
from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest, revision_json
from consul_operator.core.errors import WorkPending
from consul_operator.core.host_plan import host_desires
from consul_operator.core.keys import Layout
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import Hold, LeaderRecord
from consul_operator.core.work import WorkEntry, current_work, host_work, work_records, work_view
from tests.unit.test_executor import HOST, FakeConsul

LAYOUT = Layout()
WEB = Manifest(name="web", image="hello:1", replicas=2, drain=7.0)
API = Manifest(name="api", image="hello:2", replicas=1)


def values(work: Mapping[str, WorkEntry], session: str, max_bytes: int = 96 * 1024) -> list[bytes]:
    """``HOST``'s work as the values of its shard keys."""
    return list(work_records(LAYOUT, HOST, work, session, max_bytes).values())


entries = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True),
    st.builds(
        WorkEntry,
        spec=st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
        count=st.integers(0, 50),
        drain=st.sampled_from([0.0, 5.0, 30.0]),
    ),
    max_size=40,
)


@settings(max_examples=50, deadline=None)
@given(work=entries, bound=st.integers(300, 4000))
def test_current_work_reads_back_what_the_leader_wrote_property(
    work: dict[str, WorkEntry], bound: int
) -> None:
    """Whatever the work and its sharding, the host reads back exactly it under the lock's session."""
    assert current_work(HOST, values(work, "s1", bound), "s1") == work


@pytest.mark.parametrize(
    ("shards", "session"),
    [
        pytest.param(lambda: [], "s1", id="no-key"),
        pytest.param(lambda: values({"web": WorkEntry("a", 1)}, "s0"), "s1", id="an-older-leaders-key"),
        pytest.param(lambda: values({"web": WorkEntry("a", 1)}, "s1"), None, id="nobody-holds-the-lock"),
        pytest.param(lambda: [b"junk"], "s1", id="unreadable"),
        pytest.param(
            lambda: values({f"s{i}": WorkEntry("a", 1) for i in range(40)}, "s1", 600)[1:],
            "s1",
            id="a-shard-missing",
        ),
        pytest.param(
            lambda: [
                *values({f"s{i}": WorkEntry("a", 1) for i in range(40)}, "s1", 600)[:1],
                *values({f"s{i}": WorkEntry("a", 2) for i in range(40)}, "s1", 600)[1:],
            ],
            "s1",
            id="shards-of-two-writes",
        ),
    ],
)
def test_no_current_work_means_keep_what_runs(shards: object, session: str | None) -> None:
    """A missing key, one of an older leader's session, a torn or unreadable set: not current (None)."""
    assert callable(shards)
    assert current_work(HOST, shards(), session) is None


def test_work_view_gives_the_host_plan_its_manifests_counts_and_holds() -> None:
    """Each entry's manifest is its spec's revision with the entry's drain; invalid or unkept: a hold;
    a service gone from the work drains with its last manifest's timings."""
    old = Manifest(name="old", image="hello:1", replicas=1, drain=9.0)
    work = {
        "web": WorkEntry(WEB.spec_hash(), 2, drain=3.0),
        "api": WorkEntry(API.spec_hash(), 1),
        "bad": WorkEntry("x", 1, invalid="replicas: must be >= 0"),
    }
    kept = {("web", WEB.spec_hash()): WEB}
    manifests, placements, revisions = work_view(HOST, work, kept, {"old": old})
    desires = host_desires(HOST, manifests, placements, revisions)
    web = desires["web"]
    assert (web.count, web.manifest) == (2, dataclasses.replace(WEB, drain=3.0))
    assert desires["api"].manifest is None and desires["api"].hold == Hold.INVALID
    assert "not in KV yet" in str(desires["api"].error)
    assert desires["bad"].hold == Hold.INVALID and "replicas" in str(desires["bad"].error)
    assert (desires["old"].count, desires["old"].manifest) == (0, old)


def test_work_view_runs_each_spec_of_a_rollout_from_its_revision() -> None:
    """During a rollout the entry's per-spec counts go to the host plan with each spec's revision."""
    new = dataclasses.replace(WEB, image="hello:2")
    entry = WorkEntry(new.spec_hash(), 2, specs={WEB.spec_hash(): 1, new.spec_hash(): 1})
    kept = {("web", WEB.spec_hash()): WEB, ("web", new.spec_hash()): new}
    desire = host_desires(HOST, *work_view(HOST, {"web": entry}, kept))["web"]
    assert dict(desire.specs) == {WEB.spec_hash(): 1, new.spec_hash(): 1}
    assert set(desire.revisions) == {WEB.spec_hash(), new.spec_hash()}


class Reads(FakeConsul):
    """`FakeConsul` that records the prefixes and keys read."""

    def __init__(self) -> None:
        super().__init__()
        self.prefixes: list[str] = []
        self.gets: list[str] = []

    def kv_trees(self, prefixes: list[str], **kw: object) -> dict[str, list[KVEntry]]:
        self.prefixes.extend(prefixes)
        return super().kv_trees(prefixes, **kw)

    def kv_get_many(self, keys: list[str], **kw: object) -> list[KVEntry]:
        self.gets.extend(keys)
        return super().kv_get_many(keys, **kw)

    def lead(self, session: str) -> None:
        """``session`` holds the leader lock."""
        self.kv[LAYOUT.leader_key] = LeaderRecord("host-0", 0.0).to_json()
        self.sessions[LAYOUT.leader_key] = session

    def work(self, work: Mapping[str, WorkEntry], session: str) -> None:
        """``HOST``'s work written under ``session`` (the shards replaced), with the revisions it runs."""
        for key in [k for k in self.kv if k.startswith(LAYOUT.host_work_prefix(HOST))]:
            del self.kv[key]
        self.kv.update(work_records(LAYOUT, HOST, work, session))
        for manifest in (WEB, API):
            self.kv[LAYOUT.revision_key(manifest.name, manifest.spec_hash())] = revision_json(manifest)


def reader(consul: Reads) -> tuple[WorkKVReader, KVChanged]:
    """A reader of ``HOST``'s work on ``consul``, with its change signal."""
    changed = KVChanged()
    return WorkKVReader(consul, LAYOUT, HOST, changed), changed


def counts(consul_reader: WorkKVReader) -> dict[str, int]:
    """What the host plan would run of each service after a read (held services left out)."""
    desires = host_desires(HOST, *consul_reader.read())
    return {name: d.count for name, d in desires.items() if d.manifest is not None}


def test_a_host_reads_only_its_work_the_lock_and_each_revision_once() -> None:
    """The reader reads its own work prefix and the lock, never services/ or placements; a revision
    is read once and kept, however often the work changes."""
    consul = Reads()
    consul.lead("s1")
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s1")
    read, changed = reader(consul)
    assert counts(read) == {"web": 1}
    consul.work({"web": WorkEntry(WEB.spec_hash(), 2), "api": WorkEntry(API.spec_hash(), 1)}, "s1")
    changed.fire()
    assert counts(read) == {"web": 2, "api": 1}
    assert set(consul.prefixes) == {LAYOUT.host_work_prefix(HOST), LAYOUT.leader_key}
    assert sorted(consul.gets) == sorted(
        [LAYOUT.revision_key("web", WEB.spec_hash()), LAYOUT.revision_key("api", API.spec_hash())]
    )


def test_only_a_current_key_that_leaves_a_service_out_drains_it() -> None:
    """A key of an older leader's session that leaves ``api`` out keeps what ran; the new leader's key
    that leaves it out drains it (count 0, with its manifest's timings)."""
    consul = Reads()
    consul.lead("s1")
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1), "api": WorkEntry(API.spec_hash(), 1)}, "s1")
    read, changed = reader(consul)
    assert counts(read) == {"web": 1, "api": 1}

    consul.lead("s2")  # a new leader; the key is still the old one's, then someone rewrites it
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s1")
    changed.fire()
    assert counts(read) == {"web": 1, "api": 1}, "a key of an older session: keep what runs"
    del consul.kv[LAYOUT.work_key(HOST, 0)]
    changed.fire()
    assert counts(read) == {"web": 1, "api": 1}, "no key: keep what runs"

    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s2")
    changed.fire()
    read.settle({"web", "api"})  # api's container still runs here
    assert counts(read) == {"web": 1, "api": 0}
    assert host_desires(HOST, *read.read())["api"].manifest == API
    read.settle({"web"})  # drained: forgotten
    changed.fire()
    assert counts(read) == {"web": 1}


def test_a_new_agent_without_a_current_key_decides_nothing() -> None:
    """An agent that never read a current work key fails its read (`WorkPending`): nothing is decided,
    so nothing starts or stops, until the leader writes its key."""
    consul = Reads()
    consul.lead("s2")
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s1")
    read, _ = reader(consul)
    with pytest.raises(WorkPending, match=HOST):
        read.read()
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s2")
    assert counts(read) == {"web": 1}, "the failed read left the change pending"


def test_a_revision_not_kept_holds_the_service() -> None:
    """An entry whose spec has no revision in KV is held (what runs keeps running), not drained."""
    consul = Reads()
    consul.lead("s1")
    consul.work({"web": WorkEntry(WEB.spec_hash(), 1)}, "s1")
    del consul.kv[LAYOUT.revision_key("web", WEB.spec_hash())]
    read, _ = reader(consul)
    desire = host_desires(HOST, *read.read())["web"]
    assert (desire.manifest, desire.hold) == (None, Hold.INVALID)
    assert isinstance(read.read()[0]["web"], ManifestError)


def test_every_host_holds_and_reports_an_invalid_manifest_placed_nowhere() -> None:
    """An invalid manifest is in every registered host's work (count 0): each holds it and says why."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(b"name: [broken\n", key_name="bad")
    work = host_work({}, {"bad": caught.value}, ["h1", "h2"])
    assert set(work) == {"h1", "h2"}
    assert work["h1"]["bad"].count == 0 and "YAML" in work["h1"]["bad"].invalid
    desire = host_desires("h1", *work_view("h1", work["h1"], {}))["bad"]
    assert desire.hold == Hold.INVALID and str(desire.error).startswith("Invalid: ")


@pytest.mark.parametrize(
    ("meta", "status", "counted"),
    [
        pytest.param({"reads-work": "1"}, "passing", False, id="upgraded"),
        pytest.param({}, "passing", True, id="from-before-work-keys"),
        pytest.param({}, "critical", False, id="not-live"),
    ],
)
def test_the_leader_counts_live_agents_that_read_placements(
    meta: dict[str, str], status: str, counted: bool
) -> None:
    """A live agent without ``reads-work`` in its meta is one the rolling upgrade has not reached."""
    inst = ServiceInstance(
        "n1", "10.0.0.1", "operator-agent-h1", "operator-agent", "10.0.0.1", 0, {"host": "h1", **meta}, status
    )
    assert placement_readers([inst]) == (frozenset({"h1"}) if counted else frozenset())
