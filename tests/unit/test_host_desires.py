"""What one host should run of a service: `host_desires` and `revisions_wanted`, as a table."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.host_plan import host_desires, revisions_wanted
from consul_operator.core.records import Hold, PlacementRecord, frozen_map

V1 = Manifest(name="web", image="hello:1", replicas=2, port=5000)
V2 = dataclasses.replace(V1, image="hello:2")
OLD, NEW = V1.spec_hash(), V2.spec_hash()


def invalid() -> ManifestError:
    """The error of a manifest with a negative replica count."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest("name: web\nimage: hello:1\nreplicas: -1\n", key_name="web")
    return caught.value


def placed(hosts: Mapping[str, int], spec: str) -> PlacementRecord:
    return PlacementRecord("web", spec, frozen_map(hosts))


def per_spec(specs: Mapping[str, Mapping[str, int]]) -> PlacementRecord:
    hosts = frozen_map({h: sum(c.values()) for h, c in specs.items()})
    return PlacementRecord("web", NEW, hosts, specs={h: frozen_map(c) for h, c in specs.items()})


@dataclass(frozen=True)
class Row:
    """The manifest and placement of web, the revisions kept; what host h1 wants of web."""

    manifest: Manifest | ManifestError
    placement: PlacementRecord | None
    kept: frozenset[str]  # specs of web with a kept revision
    wanted: list[str]  # the revisions h1 must read first
    count: int
    hold: Hold | None = None
    specs: Mapping[str, int] | None = None  # per-spec counts (a paced rollout); None: none
    runnable: frozenset[str] = frozenset()  # specs h1 has a manifest for


ROWS = [
    pytest.param(
        Row(invalid(), placed({"h1": 1}, OLD), frozenset(), [], 0, Hold.INVALID), id="invalid-hands-off"
    ),
    pytest.param(Row(V1, None, frozenset(), [], 0, Hold.UNPLACED), id="not-placed-yet-hands-off"),
    pytest.param(
        Row(V1, placed({"h1": 2, "h2": 1}, OLD), frozenset(), [], 2), id="placed-count-of-the-manifest-spec"
    ),
    pytest.param(Row(V1, placed({"h2": 1}, OLD), frozenset(), [], 0), id="placed-elsewhere-wants-none"),
    pytest.param(
        Row(
            V2,
            placed({"h1": 1}, OLD),
            frozenset({OLD}),
            [OLD],
            1,
            specs={OLD: 1},
            runnable=frozenset({OLD, NEW}),
        ),
        id="unpaced-change-keeps-the-placed-spec-from-its-revision",
    ),
    pytest.param(
        Row(V2, placed({"h1": 1}, OLD), frozenset(), [OLD], 1),
        id="unpaced-change-without-revision-left-to-the-host-plan",
    ),
    pytest.param(
        Row(
            V2,
            per_spec({"h1": {OLD: 1, NEW: 1}, "h2": {OLD: 1}}),
            frozenset({OLD}),
            [OLD],
            2,
            specs={OLD: 1, NEW: 1},
            runnable=frozenset({OLD, NEW}),
        ),
        id="rollout-counts-per-spec-each-from-its-revision",
    ),
    pytest.param(
        Row(
            V2,
            per_spec({"h1": {OLD: 1, NEW: 1}}),
            frozenset(),
            [OLD],
            2,
            specs={OLD: 1, NEW: 1},
            runnable=frozenset({NEW}),
        ),
        id="rollout-spec-without-revision-is-not-runnable",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_host_desires(row: Row) -> None:
    """Host h1 wants the leader's count of web, per spec during a rollout, and holds off when it must."""
    manifests = {"web": row.manifest}
    placements = {} if row.placement is None else {"web": row.placement}
    assert revisions_wanted("h1", manifests, placements) == [("web", s) for s in row.wanted]
    revisions = {("web", s): (V1 if s == OLD else V2) for s in row.kept}
    desire = host_desires("h1", manifests, placements, revisions)["web"]
    assert (desire.count, desire.hold) == (row.count, row.hold)
    assert (desire.manifest is None) == (row.hold is not None)
    assert (dict(desire.specs) or None) == row.specs
    assert set(desire.revisions) == set(row.runnable)
