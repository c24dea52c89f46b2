"""The leader's placement decision: stable, spread, honouring placement rules and lost hosts."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest

from consul_operator.core.desired_state import GI, MI, Manifest, Placement, Resources
from consul_operator.core.model import HostInfo
from consul_operator.core.reconcile import next_schedule_wakeup, schedule
from consul_operator.core.records import PlacementRecord, UnplacedCause, frozen_map

NOW = 1_700_000_000.0
GRACE = 30.0


def manifest(
    name: str = "web",
    replicas: int = 2,
    hosts: Sequence[str] | None = None,
    max_per_host: int | None = None,
    image: str = "hello:local",
    labels: Mapping[str, str] | None = None,
    memory: int = 256 * MI,
    cpus: int = 500,
) -> Manifest:
    """A valid manifest with only what scheduling looks at set (``cpus`` in thousandths)."""
    placement = Placement(
        hosts=None if hosts is None else tuple(sorted(hosts)),
        max_per_host=max_per_host,
        labels=tuple(sorted((labels or {}).items())),
    )
    return Manifest(
        name=name,
        image=image,
        replicas=replicas,
        port=5000,
        placement=placement,
        resources=Resources(memory, cpus),
    )


def live(name: str) -> HostInfo:
    return HostInfo(name=name)


def lost(name: str, seconds_ago: float) -> HostInfo:
    """A host whose agent stopped answering ``seconds_ago`` seconds before NOW."""
    return HostInfo(name=name, live=False, lost_since=NOW - seconds_ago)


def record(
    m: Manifest, hosts: Mapping[str, int], unplaced: int = 0, service: str | None = None
) -> PlacementRecord:
    return PlacementRecord(
        service=service or m.name,
        spec_hash=m.spec_hash(),
        hosts=frozen_map(hosts),
        unplaced=unplaced,
    )


H1, H2, H3 = live("host-1"), live("host-2"), live("host-3")


@pytest.mark.parametrize(
    ("m", "hosts", "before", "after", "unplaced"),
    [
        pytest.param(
            manifest(replicas=2), [H1, H2], None, {"host-1": 1, "host-2": 1}, 0,
            id="first-placement-spreads",
        ),
        pytest.param(
            manifest(replicas=3), [H2, H1], None, {"host-1": 2, "host-2": 1}, 0,
            id="first-placement-ties-go-to-first-name",
        ),
        pytest.param(
            manifest(replicas=4), [H1, H2], {"host-1": 1, "host-2": 1},
            {"host-1": 2, "host-2": 2}, 0,
            id="scale-up-2-to-4",
        ),
        pytest.param(
            manifest(replicas=1), [H1, H2], {"host-1": 2, "host-2": 2}, {"host-1": 1}, 0,
            id="scale-down-4-to-1-fullest-then-last-name",
        ),
        pytest.param(
            manifest(replicas=2), [H1, H2], {"host-1": 3, "host-2": 1},
            {"host-1": 1, "host-2": 1}, 0,
            id="scale-down-takes-from-fullest",
        ),
        pytest.param(
            manifest(replicas=2), [H1, H2, H3], {"host-1": 1, "host-2": 1},
            {"host-1": 1, "host-2": 1}, 0,
            id="stable-when-host-joins",
        ),
        pytest.param(
            manifest(replicas=2), [H1, H2, H3], {"host-1": 2}, {"host-1": 2}, 0,
            id="no-rebalancing-onto-new-host",
        ),
        pytest.param(
            manifest(replicas=3), [H1, H2, H3], {"host-1": 1, "host-2": 1},
            {"host-1": 1, "host-2": 1, "host-3": 1}, 0,
            id="scale-up-fills-new-host",
        ),
        pytest.param(
            manifest(replicas=2), [H1, lost("host-2", 10)], {"host-1": 1, "host-2": 1},
            {"host-1": 1, "host-2": 1}, 0,
            id="lost-within-grace-keeps-replicas",
        ),
        pytest.param(
            manifest(replicas=3), [H1, lost("host-2", 10)], {"host-1": 1, "host-2": 1},
            {"host-1": 2, "host-2": 1}, 0,
            id="lost-within-grace-gets-no-new-replicas",
        ),
        pytest.param(
            manifest(replicas=1), [H1, lost("host-2", 10)], {"host-1": 1, "host-2": 1},
            {"host-1": 1}, 0,
            id="scale-down-takes-from-lost-host-first",
        ),
        pytest.param(
            manifest(replicas=2), [H1, lost("host-2", GRACE)], {"host-1": 1, "host-2": 1},
            {"host-1": 2}, 0,
            id="lost-beyond-grace-moves-replicas",
        ),
        pytest.param(
            manifest(replicas=2), [H1, HostInfo("host-2", live=False)],
            {"host-1": 1, "host-2": 1}, {"host-1": 2}, 0,
            id="lost-without-timestamp-has-no-grace",
        ),
        pytest.param(
            manifest(replicas=2), [H1], {"host-1": 1, "host-9": 1}, {"host-1": 2}, 0,
            id="unknown-host-loses-replicas",
        ),
        pytest.param(
            manifest(replicas=2), [H1, H2], {"host-1": 1, "host-2": 1},
            {"host-1": 1, "host-2": 1}, 0,
            id="host-back-within-grace-kept-its-replicas",
        ),
        pytest.param(
            manifest(replicas=2), [H1, H2], {"host-1": 2}, {"host-1": 2}, 0,
            id="host-back-after-move-gets-nothing-back",
        ),
        pytest.param(
            manifest(replicas=2, hosts=["host-2", "host-3"]), [H1, H2, H3], None,
            {"host-2": 1, "host-3": 1}, 0,
            id="placement-hosts-restricts",
        ),
        pytest.param(
            manifest(replicas=2, hosts=["host-2", "host-3"]), [H1, H2, H3],
            {"host-1": 1, "host-2": 1}, {"host-2": 1, "host-3": 1}, 0,
            id="placement-hosts-changed-moves-replicas",
        ),
        pytest.param(
            manifest(replicas=2, hosts=["host-1"]), [H1, lost("host-2", 10)],
            {"host-1": 1, "host-2": 1}, {"host-1": 2}, 0,
            id="placement-hosts-excludes-lost-host-in-grace",
        ),
        pytest.param(
            manifest(replicas=5, max_per_host=2), [H1, H2], None,
            {"host-1": 2, "host-2": 2}, 1,
            id="max-per-host-caps-rest-unplaced",
        ),
        pytest.param(
            manifest(replicas=3, max_per_host=1), [H1, H2], {"host-1": 3},
            {"host-1": 1, "host-2": 1}, 1,
            id="lowered-cap-cuts-counts",
        ),
        pytest.param(
            manifest(replicas=2, max_per_host=1), [H1, lost("host-2", 10)], {"host-2": 1},
            {"host-1": 1, "host-2": 1}, 0,
            id="lost-host-in-grace-counts-toward-total",
        ),
        pytest.param(
            manifest(replicas=2), [], None, {}, 2,
            id="no-hosts-all-unplaced",
        ),
        pytest.param(
            manifest(replicas=2), [lost("host-1", 100), lost("host-2", 100)],
            {"host-1": 1, "host-2": 1}, {}, 2,
            id="no-live-hosts-all-unplaced",
        ),
        pytest.param(
            manifest(replicas=2, hosts=["host-7"]), [H1, H2], None, {}, 2,
            id="no-allowed-host-all-unplaced",
        ),
        pytest.param(
            manifest(replicas=0), [H1, H2], {"host-1": 1, "host-2": 1}, {}, 0,
            id="replicas-zero-empty",
        ),
    ],
)  # fmt: skip
def test_placement_of_one_service(
    m: Manifest,
    hosts: list[HostInfo],
    before: dict[str, int] | None,
    after: dict[str, int],
    unplaced: int,
) -> None:
    """One service's new replicas per host follow the scheduling rules."""
    current = {} if before is None else {m.name: record(m, before)}
    result = schedule({m.name: m}, hosts, current, NOW, GRACE)
    # Why replicas are unplaced is checked in the tables of its own below.
    assert {n: replace(r, cause=UnplacedCause.NONE, reason="") for n, r in result.items()} == {
        m.name: record(m, after, unplaced)
    }
    assert (result[m.name].cause == UnplacedCause.NONE) == (unplaced == 0)


def test_record_carries_new_spec_hash_without_moving() -> None:
    """A changed image changes the record's spec hash but not where replicas run."""
    old, new = manifest(image="hello:1"), manifest(image="hello:2")
    current = {"web": record(old, {"host-1": 1, "host-3": 1})}
    result = schedule({"web": new}, [H1, H2, H3], current, NOW, GRACE)
    assert result["web"] == record(new, {"host-1": 1, "host-3": 1})
    assert result["web"].spec_hash != old.spec_hash()


def test_invalid_manifest_keeps_record() -> None:
    """An invalid manifest leaves its record exactly as it was, even on a lost host."""
    m = manifest()
    kept = record(m, {"host-1": 1, "host-9": 1})
    result = schedule({"web": None}, [H1, lost("host-2", 1000)], {"web": kept}, NOW, GRACE)
    assert result == {"web": kept}


def test_invalid_manifest_without_record_gets_none() -> None:
    """An invalid manifest never placed before gets no record (there is nothing to keep)."""
    assert schedule({"web": None}, [H1, H2], {}, NOW, GRACE) == {}


def test_deleted_manifest_drops_record() -> None:
    """A service whose manifest was deleted has no record in the result."""
    web, api = manifest("web"), manifest("api")
    current = {"web": record(web, {"host-1": 2}), "api": record(api, {"host-2": 2})}
    result = schedule({"api": api}, [H1, H2], current, NOW, GRACE)
    assert set(result) == {"api"}


@pytest.mark.parametrize(
    ("manifests", "before", "after"),
    [
        pytest.param(
            {"a": manifest("a", 1), "b": manifest("b", 1)}, {},
            {"a": {"host-1": 1}, "b": {"host-2": 1}},
            id="new-services-spread-over-hosts",
        ),
        pytest.param(
            {"a": manifest("a", 1), "b": manifest("b", 1), "c": manifest("c", 1)}, {},
            {"a": {"host-1": 1}, "b": {"host-2": 1}, "c": {"host-1": 1}},
            id="three-services-two-hosts",
        ),
        pytest.param(
            {"a": manifest("a", 1), "b": manifest("b", 2)}, {"b": {"host-1": 2}},
            {"a": {"host-2": 1}, "b": {"host-1": 2}},
            id="new-service-avoids-loaded-host",
        ),
        pytest.param(
            {"a": manifest("a", 1), "b": None}, {"b": {"host-1": 3}},
            {"a": {"host-2": 1}, "b": {"host-1": 3}},
            id="invalid-service-replicas-count-as-load",
        ),
        pytest.param(
            {"a": manifest("a", 1)}, {"gone": {"host-1": 3}},
            {"a": {"host-1": 1}},
            id="deleted-service-replicas-do-not-count",
        ),
    ],
)  # fmt: skip
def test_load_spreads_across_services(
    manifests: dict[str, Manifest | None],
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
) -> None:
    """Ties between hosts go to the host with fewer replicas of all services."""
    current = {s: record(manifest(s), hosts) for s, hosts in before.items()}
    result = schedule(manifests, [H1, H2], current, NOW, GRACE)
    assert {s: dict(r.hosts) for s, r in result.items()} == after


def test_determinism() -> None:
    """Input order does not matter, and scheduling its own output again changes nothing."""
    manifests: dict[str, Manifest | None] = {
        name: manifest(name, replicas) for name, replicas in [("c", 3), ("a", 2), ("b", 5)]
    }
    hosts = [H3, lost("host-4", 5), H1, H2]
    current = {"b": record(manifest("b", 5), {"host-4": 1, "host-2": 2})}
    first = schedule(manifests, hosts, current, NOW, GRACE)
    reordered = schedule(dict(reversed(manifests.items())), hosts[::-1], current, NOW, GRACE)
    assert first == reordered
    assert [r.to_json() for r in first.values()] == [r.to_json() for r in reordered.values()]
    assert schedule(manifests, hosts, first, NOW, GRACE) == first


HOST_SETS = [
    [H1, H2, H3],
    [H1, lost("host-2", 5), lost("host-3", 500)],
    [lost("host-1", 5)],
]


@pytest.mark.parametrize("hosts", HOST_SETS, ids=["all-live", "mixed", "only-lost"])
def test_invariants_over_many_inputs(hosts: list[HostInfo]) -> None:
    """Placed + unplaced always equals replicas; caps and eligibility always hold."""
    placements = [{}, {"host-1": 3}, {"host-2": 2, "host-3": 1}, {"host-1": 1, "host-9": 4}]
    for replicas, cap, allowed, before in itertools.product(
        [0, 1, 2, 5], [None, 1, 2], [None, ("host-1", "host-3")], placements
    ):
        m = manifest(replicas=replicas, max_per_host=cap, hosts=allowed)
        out = schedule({"web": m}, hosts, {"web": record(m, before)}, NOW, GRACE)["web"]
        assert out.total + out.unplaced == replicas
        assert all(n > 0 for n in out.hosts.values())
        assert cap is None or all(n <= cap for n in out.hosts.values())
        assert allowed is None or set(out.hosts) <= set(allowed)
        new_hosts = {h for h, n in out.hosts.items() if n > before.get(h, 0)}
        assert all(h.live for h in hosts if h.name in new_hosts)


@pytest.mark.parametrize(
    ("hosts", "now", "expected"),
    [
        pytest.param([H1, H2], NOW, None, id="all-live"),
        pytest.param([H1, lost("host-2", 10)], NOW, NOW + GRACE - 10, id="one-lost"),
        pytest.param(
            [lost("host-1", 20), lost("host-2", 10)], NOW, NOW + GRACE - 20, id="earliest-wins"
        ),
        pytest.param(
            [lost("host-1", 40), lost("host-2", 10)], NOW, NOW + GRACE - 10,
            id="expired-grace-ignored",
        ),
        pytest.param([lost("host-1", GRACE)], NOW, None, id="expiring-now-is-past"),
        pytest.param([HostInfo("host-1", live=False)], NOW, None, id="no-timestamp"),
        pytest.param([lost("host-1", 40)], None, NOW + GRACE - 40, id="without-now"),
    ],
)  # fmt: skip
def test_next_schedule_wakeup(hosts: list[HostInfo], now: float | None, expected: float) -> None:
    """The leader wakes up when the next lost host's grace runs out."""
    assert next_schedule_wakeup(hosts, GRACE, now) == expected


def test_wakeup_matches_when_schedule_moves() -> None:
    """Just before the wake-up the replicas stay; at the wake-up they move."""
    m = manifest(replicas=2)
    hosts = [H1, lost("host-2", 10)]
    current = {"web": record(m, {"host-1": 1, "host-2": 1})}
    wake = next_schedule_wakeup(hosts, GRACE, NOW)
    assert wake is not None
    before = schedule({"web": m}, hosts, current, wake - 0.001, GRACE)["web"]
    at = schedule({"web": m}, hosts, current, wake, GRACE)["web"]
    assert dict(before.hosts) == {"host-1": 1, "host-2": 1}
    assert dict(at.hosts) == {"host-1": 2}


# --- capacity, spread where it fits, label constraints --------------------------------


def sized(name: str, memory: int = 8 * GI, cpus: int = 4000, **labels: str) -> HostInfo:
    """A live host advertising a capacity (``cpus`` in thousandths) and labels."""
    return HostInfo(name=name, labels=labels, capacity=Resources(memory, cpus))


@pytest.mark.parametrize(
    ("m", "hosts", "before", "after", "unplaced"),
    [
        pytest.param(
            manifest(replicas=4, memory=2 * GI), [sized("host-1", 4 * GI), sized("host-2", 8 * GI)], None,
            {"host-1": 2, "host-2": 2}, 0,
            id="spreads-while-both-fit",
        ),
        pytest.param(
            manifest(replicas=6, memory=2 * GI), [sized("host-1", 4 * GI), sized("host-2", 8 * GI)], None,
            {"host-1": 2, "host-2": 4}, 0,
            id="rest-goes-where-it-fits",
        ),
        pytest.param(
            manifest(replicas=3, memory=3 * GI), [sized("host-1", 2 * GI), sized("host-2", 16 * GI)], None,
            {"host-2": 3}, 0,
            id="only-one-host-fits-all-go-there",
        ),
        pytest.param(
            manifest(replicas=2, cpus=1500), [sized("host-1", cpus=1000), sized("host-2", cpus=2000)], None,
            {"host-2": 1}, 1,
            id="cpus-fit-too",
        ),
        pytest.param(
            manifest(replicas=2, memory=1 * GI), [sized("host-1", 1 * GI), sized("host-2", 1 * GI)], None,
            {"host-1": 1, "host-2": 1}, 0,
            id="exactly-full-fits",
        ),
        pytest.param(
            manifest(replicas=2, memory=16 * GI), [sized("host-1"), sized("host-2")], None, {}, 2,
            id="fits-nowhere",
        ),
        pytest.param(
            manifest(replicas=3, memory=16 * GI), [live("host-1"), sized("host-2")], None, {"host-1": 3}, 0,
            id="host-without-capacity-is-unlimited",
        ),
        pytest.param(
            manifest(replicas=4, memory=4 * GI), [sized("host-1", 4 * GI), sized("host-2", 4 * GI)],
            {"host-1": 3, "host-2": 1},
            {"host-1": 3, "host-2": 1}, 0,
            id="overfull-host-keeps-its-replicas",
        ),
        pytest.param(
            manifest(replicas=5, memory=4 * GI), [sized("host-1", 4 * GI), sized("host-2", 8 * GI)],
            {"host-1": 3, "host-2": 1},
            {"host-1": 3, "host-2": 2}, 0,
            id="overfull-host-gets-no-more",
        ),
        pytest.param(
            manifest(replicas=2, memory=4 * GI), [sized("host-1", 64 * GI), sized("host-2", 64 * GI)],
            {"host-1": 2},
            {"host-1": 2}, 0,
            id="more-capacity-moves-nothing",
        ),
        pytest.param(
            manifest(replicas=3, labels={"zone": "a"}),
            [sized("host-1", zone="a"), sized("host-2", zone="b"), sized("host-3")], None,
            {"host-1": 3}, 0,
            id="labels-limit-to-matching-hosts",
        ),
        pytest.param(
            manifest(replicas=2, labels={"zone": "a", "disk": "ssd"}),
            [sized("host-1", zone="a"), sized("host-2", zone="a", disk="ssd")], None,
            {"host-2": 2}, 0,
            id="every-label-must-match",
        ),
        pytest.param(
            manifest(replicas=2, labels={"zone": "a"}),
            [sized("host-1", zone="b"), sized("host-2", zone="a")], {"host-1": 1, "host-2": 1},
            {"host-2": 2}, 0,
            id="host-no-longer-matching-loses-its-replicas",
        ),
        pytest.param(
            manifest(replicas=2, labels={"zone": "c"}), [sized("host-1", zone="a"), sized("host-2")], None,
            {}, 2,
            id="no-host-matches",
        ),
        pytest.param(
            manifest(replicas=4, memory=3 * GI, labels={"zone": "a"}),
            [sized("host-1", 8 * GI, zone="a"), sized("host-2", 64 * GI, zone="b")], None,
            {"host-1": 2}, 2,
            id="labels-and-capacity-together",
        ),
    ],
)  # fmt: skip
def test_capacity_and_labels(
    m: Manifest, hosts: list[HostInfo], before: dict[str, int] | None, after: dict[str, int], unplaced: int
) -> None:
    """A replica goes only to a matching host where it fits; spread among those; placed ones stay."""
    current = {} if before is None else {m.name: record(m, before)}
    result = schedule({m.name: m}, hosts, current, NOW, GRACE)[m.name]
    assert (dict(result.hosts), result.unplaced) == (after, unplaced)


def test_capacity_counts_every_services_replicas() -> None:
    """Fit sums the replicas of all services on a host, this pass's decisions included."""
    a, b = manifest("a", 2, memory=3 * GI), manifest("b", 2, memory=3 * GI)
    hosts = [sized("host-1", 6 * GI), sized("host-2", 6 * GI)]
    big = manifest("big", 1, memory=4 * GI)
    result = schedule({"a": a, "b": b, "big": big}, hosts, {}, NOW, GRACE)
    assert {n: (dict(r.hosts), r.unplaced) for n, r in result.items()} == {
        "a": ({"host-1": 1, "host-2": 1}, 0),
        "b": ({"host-1": 1, "host-2": 1}, 0),
        "big": ({}, 1),
    }


def test_invalid_manifest_replicas_count_with_default_resources() -> None:
    """An invalid manifest's kept replicas use the default 256Mi each against a host's capacity."""
    kept = record(manifest("old", 4), {"host-1": 4})
    new = manifest("new", 1, memory=256 * MI)
    result = schedule({"new": new, "old": None}, [sized("host-1", 1 * GI)], {"old": kept}, NOW, GRACE)
    assert result["new"].unplaced == 1
    assert result["new"].cause == UnplacedCause.MEMORY


@pytest.mark.parametrize(
    ("m", "hosts", "before", "cause", "reason"),
    [
        pytest.param(
            manifest(replicas=3, memory=2 * GI, cpus=1000),
            [sized("host-1", 4 * GI, cpus=8000), sized("host-2", 1 * GI, cpus=500)], None,
            UnplacedCause.MEMORY,
            "1 of 3 replicas fit on no host (each needs memory=2Gi cpus=1): "
            "host-1: memory 0 free; host-2: memory 1Gi free, cpus 0.5 free",
            id="memory-names-each-hosts-free-amount",
        ),
        pytest.param(
            manifest(replicas=2, cpus=2500), [sized("host-1", cpus=4000)], None,
            UnplacedCause.CPUS,
            "1 of 2 replicas fit on no host (each needs memory=256Mi cpus=2.5): host-1: cpus 1.5 free",
            id="cpus",
        ),
        pytest.param(
            manifest(replicas=2, labels={"zone": "c"}),
            [sized("host-1", zone="a"), sized("host-2"), HostInfo("host-3", {"zone": "c"}, live=False)], None,
            UnplacedCause.LABELS,
            "2 of 2 replicas fit on no host (each needs memory=256Mi cpus=0.5): "
            "host-1: lacks label zone=c; host-2: lacks label zone=c; host-3: not live",
            id="labels-name-the-hosts-that-do-not-match",
        ),
        pytest.param(
            manifest(replicas=3, memory=1 * GI, max_per_host=1, labels={"zone": "a"}),
            [sized("host-1", zone="a"), sized("host-2", 1 * GI, zone="a"), sized("host-3", zone="b")],
            {"host-2": 1},
            UnplacedCause.MAX_PER_HOST,
            "1 of 3 replicas fit on no host (each needs memory=1Gi cpus=0.5): "
            "host-1: holds max_per_host 1; host-2: holds max_per_host 1; host-3: lacks label zone=a",
            id="cap-reached-is-named-before-resources",
        ),
        pytest.param(
            manifest(replicas=3, max_per_host=1), [sized("host-1"), sized("host-2")], None,
            UnplacedCause.MAX_PER_HOST,
            "1 of 3 replicas fit on no host (each needs memory=256Mi cpus=0.5): "
            "host-1: holds max_per_host 1; host-2: holds max_per_host 1",
            id="max-per-host",
        ),
        pytest.param(
            manifest(replicas=1), [], None, UnplacedCause.NO_HOSTS,
            "1 of 1 replicas fit on no host (each needs memory=256Mi cpus=0.5): no live app host",
            id="no-hosts",
        ),
        pytest.param(
            manifest(replicas=1, hosts=["host-7"]), [H1], None, UnplacedCause.NO_HOSTS,
            "1 of 1 replicas fit on no host (each needs memory=256Mi cpus=0.5): "
            "no live app host in placement.hosts",
            id="placement-hosts-leaves-others-unnamed",
        ),
    ],
)  # fmt: skip
def test_unplaced_reason(
    m: Manifest, hosts: list[HostInfo], before: dict[str, int] | None, cause: UnplacedCause, reason: str
) -> None:
    """What fits nowhere says why: the resource short with each host's free amount, labels, lost hosts."""
    current = {} if before is None else {m.name: record(m, before)}
    result = schedule({m.name: m}, hosts, current, NOW, GRACE)[m.name]
    assert (result.cause, result.reason) == (cause, reason)


def test_unplaced_reason_names_at_most_ten_hosts() -> None:
    """A reason stays short on a large cluster: ten hosts named, the rest counted."""
    hosts = [sized(f"host-{i:02d}", 128 * MI) for i in range(15)]
    reason = schedule({"web": manifest(replicas=1)}, hosts, {}, NOW, GRACE)["web"].reason
    assert reason.count("memory 128Mi free") == 10
    assert reason.endswith("; and 5 more hosts")


def test_capacity_invariants_over_many_inputs() -> None:
    """Whatever the input, no host gets a new replica beyond its capacity or against the labels."""
    hosts = [sized("host-1", 2 * GI, 1000, zone="a"), sized("host-2", 5 * GI, 3000, zone="b"), live("host-3")]
    for replicas, memory, cpus, zone, before in itertools.product(
        [1, 3, 7], [512 * MI, 2 * GI], [250, 1500], [None, "a", "b"], [{}, {"host-1": 3}, {"host-2": 1}]
    ):
        m = manifest(
            replicas=replicas, memory=memory, cpus=cpus, labels=None if zone is None else {"zone": zone}
        )
        out = schedule({"web": m}, hosts, {"web": record(m, before)}, NOW, GRACE)["web"]
        assert out.total + out.unplaced == replicas
        for host in hosts:
            n = out.hosts.get(host.name, 0)
            assert zone is None or n == 0 or host.labels.get("zone") == zone
            if n > before.get(host.name, 0) and host.capacity is not None:
                assert host.capacity.covers(m.resources.times(n))
