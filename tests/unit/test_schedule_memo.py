"""`placement.ScheduleMemo`: a settled service is taken from the last pass only while nothing it
depends on changed; each row changes one thing and holds the schedule to the one without a memo."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from consul_operator.core.desired_state import GI, Manifest, Placement, Resources
from consul_operator.core.model import HostInfo
from consul_operator.core.placement import ScheduleMemo, schedule_usage
from consul_operator.core.records import PlacementRecord, frozen_map

WEB = Manifest(name="web", image="hello:1", replicas=2, resources=Resources(1 * GI, 500))
API = Manifest(name="api", image="api:1", replicas=1, placement=Placement(labels=(("zone", "a"),)))
HOSTS = (
    HostInfo("h1", {}, True, None, Resources(4 * GI, 4000)),
    HostInfo("h2", {"zone": "a"}, True, None, Resources(4 * GI, 4000)),
    HostInfo("h3", {"zone": "a"}, True, None, Resources(4 * GI, 4000)),
)
NOW = 100.0


@dataclass
class Pass:
    """One schedule's inputs."""

    manifests: dict[str, Manifest | None] = field(default_factory=lambda: {"web": WEB, "api": API})
    hosts: list[HostInfo] = field(default_factory=lambda: list(HOSTS))
    current: dict[str, PlacementRecord] = field(
        default_factory=lambda: {
            "web": PlacementRecord("web", WEB.spec_hash(), frozen_map({"h1": 1, "h2": 1})),
            "api": PlacementRecord("api", API.spec_hash(), frozen_map({"h3": 1})),
        }
    )
    now: float = NOW
    cordoned: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)
    running: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def schedule(
        self, memo: ScheduleMemo | None = None
    ) -> tuple[dict[str, PlacementRecord], Any, ScheduleMemo]:
        return schedule_usage(
            self.manifests, self.hosts, self.current, self.now, 10.0,
            cordoned=self.cordoned, draining=self.draining, running=self.running, memo=memo,
        )  # fmt: skip


def lost(p: Pass) -> None:
    p.hosts[0] = dataclasses.replace(p.hosts[0], live=False, lost_since=NOW - 60)


def unlabelled(p: Pass) -> None:
    p.hosts[2] = dataclasses.replace(p.hosts[2], labels={})


def draining(p: Pass) -> None:
    p.cordoned.add("h1")
    p.draining.add("h1")


CHANGES: dict[str, Callable[[Pass], None]] = {
    "nothing": lambda p: None,
    "its-manifest-scaled": lambda p: p.manifests.update(web=dataclasses.replace(WEB, replicas=3)),
    "its-manifest-invalid": lambda p: p.manifests.update(web=None),
    "another-service-changed": lambda p: p.manifests.update(api=dataclasses.replace(API, replicas=2)),
    "a-host-draining": draining,
    "a-host-cordoned": lambda p: p.cordoned.add("h1"),
    "a-host-lost-past-its-grace": lost,
    "a-host-lost-the-label-its-service-wants": unlabelled,
    "a-host-joined": lambda p: p.hosts.append(HostInfo("h4", {}, True, None, None)),
    "its-running-counts": lambda p: p.running.update(web={"h3": {"old-spec": 2}}),
    "its-placement-rewritten": lambda p: p.current.update(
        web=PlacementRecord("web", WEB.spec_hash(), frozen_map({"h2": 1, "h3": 1}))
    ),
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_pass_with_the_memo_decides_what_a_pass_without_decides(change: str) -> None:
    """After one change, the schedule given the last pass's memo equals the schedule without one:
    records and every host's and service's charge."""
    before = Pass()
    _, _, memo = before.schedule()
    assert set(memo.settled) == {"web", "api"}  # both settled: every replica kept, none wanted
    after = Pass()
    CHANGES[change](after)
    kept, kept_used, _ = after.schedule(memo)
    fresh, fresh_used, _ = after.schedule()
    assert kept == fresh
    names = [h.name for h in after.hosts]
    assert {h: kept_used.on(h) for h in names} == {h: fresh_used.on(h) for h in names}
    assert {s: dict(kept_used.of_service(s)) for s in after.manifests} == {
        s: dict(fresh_used.of_service(s)) for s in after.manifests
    }


def test_a_grace_that_runs_out_is_seen_though_nothing_was_written() -> None:
    """A host lost in its grace at the memo's pass and past it now: only the time moved, and the
    replicas move as a fresh schedule moves them."""
    before = Pass()
    lost(before)
    before.hosts[0] = dataclasses.replace(before.hosts[0], lost_since=NOW - 5)  # in its grace
    _, _, memo = before.schedule()
    assert "web" in memo.settled
    after = dataclasses.replace(before, now=NOW + 60)
    kept, _, _ = after.schedule(memo)
    assert kept == after.schedule()[0]
    assert "h1" not in kept["web"].hosts


def test_nothing_changed_reuses_every_settled_service() -> None:
    """With nothing changed, the settled services come from the memo, not placed again."""
    _, _, memo = Pass().schedule()
    _, _, again = Pass().schedule(memo)
    assert all(again.settled[n] is s for n, s in memo.settled.items())
