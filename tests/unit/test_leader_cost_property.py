"""The leader's cheaper capacity charges decide what the plain rules decide (issue 31), for every input.

`placement.schedule_usage` charges each service once a pass and takes back the
charge it was given, shares one service's candidate hosts with every service
without ``placement.hosts`` or labels, and sorts the kept specs' sizes by
service once; `placement.LazyUsage` works the spread's charges out only when
read; a pass looks a service's kept revisions up by its name. Each is held
here equal to a plain reference on generated clusters (`tests/unit/strategies.py`):
the schedule as it was before, every charge worked out again from scratch,
and the plain rule for stale revisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.desired_state import Manifest, Resources
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader, running_specs
from consul_operator.core.maintenance import open_hosts
from consul_operator.core.model import HostInfo
from consul_operator.core.placement import (
    LazyUsage,
    SpecSizes,
    SpecsRunning,
    Usage,
    _Charge,
    _in_grace,
    _kept_counts,
    _larger,
    _scale_down,
    _scale_up,
    allowed_hosts,
    free_resources,
    live_running,
    replicas_per_host,
    schedule_usage,
    unplaced_reason,
)
from consul_operator.core.records import PlacementRecord, UnplacedCause, frozen_map
from tests.unit.strategies import GenCluster, clusters, counts

NOW = 100.0


def _charge(
    service: str,
    manifest: Manifest | None,
    previous: PlacementRecord | None,
    running: SpecsRunning,
    sizes: SpecSizes,
) -> _Charge:
    """One service's charge, its kept sizes picked out of all of them (as each charge did before)."""
    own = {spec: need for (name, spec), need in sizes.items() if name == service}
    return _Charge(service, manifest, previous, running.get(service, {}), own)


def _reference_usage(
    manifests: Mapping[str, Manifest | None],
    current: Mapping[str, PlacementRecord],
    running: SpecsRunning,
    sizes: SpecSizes,
) -> Usage:
    """Every service's charge, worked out from scratch (`Usage.of` as it was)."""
    usage = Usage()
    for service, manifest in manifests.items():
        previous = current.get(service)
        charge = _charge(service, manifest, previous, running, sizes)
        usage.charge(service, charge.of(previous.hosts if previous else {}))
    return usage


def _reference_place(
    service: str,
    manifest: Manifest,
    hosts: Mapping[str, HostInfo],
    previous: PlacementRecord | None,
    load: Mapping[str, int],
    used: Usage,
    lost_grace: float,
    cordoned: Collection[str],
    draining: Collection[str],
    charge: _Charge,
) -> PlacementRecord:
    """One service's record, its candidate hosts worked out for it alone (`_place` as it was)."""
    candidates = allowed_hosts(manifest, hosts.values())
    lost_grace = max(lost_grace, manifest.placement.lost_grace or 0.0)
    live = [h.name for h in candidates if h.live]
    grace = {h.name for h in candidates if _in_grace(h, NOW, lost_grace)}
    counts = _kept_counts(previous, (set(live) | grace) - set(draining), manifest.placement.max_per_host)
    _scale_down(counts, manifest.replicas, grace, cordoned)

    def room(host: str) -> bool:
        free = free_resources(hosts[host], used.on(host))
        return free is None or free.covers(charge.on(host, counts.get(host, 0) + 1))

    _scale_up(
        counts, manifest.replicas, open_hosts(live, cordoned), manifest.placement.max_per_host, load, room
    )
    unplaced = manifest.replicas - sum(counts.values())
    cause, reason = UnplacedCause.NONE, ""
    if unplaced > 0:
        closed = {**dict.fromkeys(cordoned, "cordoned"), **dict.fromkeys(draining, "draining")}
        cause, reason = unplaced_reason(manifest, unplaced, hosts.values(), counts, used, closed)
    return PlacementRecord(
        service=service,
        spec_hash=manifest.spec_hash(),
        hosts=frozen_map({h: n for h, n in sorted(counts.items()) if n > 0}),
        unplaced=unplaced,
        cause=cause,
        reason=reason,
    )


def _reference_schedule(
    manifests: Mapping[str, Manifest | None],
    hosts: Sequence[HostInfo],
    current: Mapping[str, PlacementRecord],
    lost_grace: float,
    cordoned: Collection[str],
    draining: Collection[str],
    running: SpecsRunning,
    sizes: SpecSizes,
) -> tuple[dict[str, PlacementRecord], Usage]:
    """`schedule_usage` as it was: each service's old and new charge worked out again in its turn."""
    by_name = {host.name: host for host in sorted(hosts, key=lambda h: h.name)}
    load = replicas_per_host(manifests, current)
    used = _reference_usage(manifests, current, running, sizes)
    result: dict[str, PlacementRecord] = {}
    for service in sorted(manifests):
        manifest = manifests[service]
        previous = current.get(service)
        if manifest is None:
            if previous is not None:
                result[service] = previous
            continue
        load.subtract(previous.hosts if previous else {})
        used.charge(service, {})
        charge = _charge(service, manifest, previous, running, sizes)
        record = _reference_place(
            service, manifest, by_name, previous, load, used, lost_grace, cordoned, draining, charge
        )
        load.update(record.hosts)
        before, after = charge.of(previous.hosts if previous else {}), charge.of(record.hosts)
        used.charge(service, {h: _larger(before.get(h), after.get(h)) for h in set(before) | set(after)})
        result[service] = record
    return result, used


def _charged(usage: Usage, hosts: Collection[str], services: Collection[str]) -> object:
    """What a `Usage` says: each host's charge, and each service's per host."""
    return (
        {h: usage.on(h) for h in sorted(hosts)},
        {s: dict(usage.of_service(s)) for s in sorted(services)},
    )


@st.composite
def inputs(
    draw: st.DrawFn,
) -> tuple[GenCluster, dict[str, Manifest | None], list[HostInfo], float]:
    """A generated cluster, some manifests invalid or with a grace of their own, lost hosts in their
    grace or past it, and the leader's grace."""
    cluster = draw(clusters())
    manifests: dict[str, Manifest | None] = {}
    for name, service in cluster.services.items():
        grace = draw(st.sampled_from([None, None, 30.0, 90.0]))
        manifest = dataclasses.replace(
            service.manifest, placement=dataclasses.replace(service.manifest.placement, lost_grace=grace)
        )
        manifests[name] = None if draw(st.integers(0, 5)) == 0 else manifest
    hosts = [
        HostInfo(
            h.name,
            dict(h.labels),
            h.live,
            None if h.live else draw(st.sampled_from([None, NOW, NOW - 20.0, NOW - 60.0])),
            h.capacity,
        )
        for h in cluster.hosts
    ]
    return cluster, manifests, hosts, draw(st.sampled_from([10.0, 45.0]))


@given(inputs())
def test_property_schedule_usage_equals_the_plain_reference(
    given_input: tuple[GenCluster, dict[str, Manifest | None], list[HostInfo], float],
) -> None:
    """For every cluster, `schedule_usage` decides the records the plain rules decide, and charges
    every host and service what they charge: the shortcuts only skip work."""
    cluster, manifests, hosts, lost_grace = given_input
    state = cluster.state
    cordoned = frozenset(state.maintenance)
    draining = frozenset(h for h, r in state.maintenance.items() if r.draining)
    running = live_running(running_specs(state.statuses), hosts)
    got, used, _ = schedule_usage(
        manifests,
        hosts,
        state.placements,
        NOW,
        lost_grace,
        cordoned=cordoned,
        draining=draining,
        running=running,
        sizes=state.spec_sizes,
    )
    want, reference = _reference_schedule(
        manifests, hosts, state.placements, lost_grace, cordoned, draining, running, state.spec_sizes
    )
    assert got == want
    names = [h.name for h in hosts]
    assert _charged(used, names, manifests) == _charged(reference, names, manifests)


@given(st.data())
def test_property_lazy_usage_reads_what_usage_reads(data: st.DataObject) -> None:
    """For every cluster and every run of additions and take-aways, a host's charge read from a
    `LazyUsage`, before or after some of them, is the one of a `Usage.of` given the same ones."""
    cluster = data.draw(clusters())
    manifests: dict[str, Manifest | None] = {n: s.manifest for n, s in cluster.services.items()}
    placements = cluster.state.placements
    names = tuple(h.name for h in cluster.hosts)
    lazy, eager = LazyUsage(manifests, placements), Usage.of(manifests, placements)
    sizes = st.builds(Resources, st.integers(0, 2**30), st.integers(0, 2000))
    steps = data.draw(st.lists(st.tuples(counts(names), sizes, st.sampled_from([1, -1]), st.booleans())))
    for added, need, sign, read in steps:
        lazy.add(added, need, sign)
        eager.add(added, need, sign)
        if read:
            assert {h: lazy.on(h) for h in names} == {h: eager.on(h) for h in names}
    assert {h: lazy.on(h) for h in names} == {h: eager.on(h) for h in names}


@given(st.data())
def test_property_stale_revisions_go_as_the_plain_rule_says(data: st.DataObject) -> None:
    """For every cluster with extra kept revisions, a pass deletes exactly the revisions the plain rule
    names: of a service with a rollout record after the pass, every kept spec but its rollout's two and
    its manifest's (each service's kept specs are looked up by name, not walked over all of them)."""
    cluster = data.draw(clusters())
    state = cluster.state
    extra = data.draw(
        st.sets(st.tuples(st.sampled_from(sorted(cluster.services)), st.sampled_from(["0" * 16, "1" * 16])))
    )
    state = dataclasses.replace(state, revisions=state.revisions | extra)
    layout = Layout()
    plan = decide_leader(state, LeaderMemory(), Now(1000.0, 1.7e9), LeaderSettings("h1", layout, 10.0))
    deleted = {
        of
        for key, value in plan.writes.items()
        if value is None and (of := layout.revision_of(key)) is not None
    }
    want = set()
    for name, rollout in plan.rollouts.items():
        manifest = state.manifests[name]
        assert isinstance(manifest, Manifest)
        keep = {rollout.from_spec, rollout.to_spec, manifest.spec_hash()}
        want |= {(n, s) for n, s in state.revisions if n == name and s not in keep}
    assert deleted == want


CHANGES = (
    "manifest",
    "deleted",
    "invalid",
    "host-lost",
    "host-back",
    "cordoned",
    "draining",
    "running",
    "time",
)
"""What may change between two passes of the memo's property below."""


@given(inputs(), st.data())
def test_property_the_last_pass_memo_decides_what_a_fresh_schedule_decides(
    given_input: tuple[GenCluster, dict[str, Manifest | None], list[HostInfo], float], data: st.DataObject
) -> None:
    """A pass given the last pass's `ScheduleMemo` decides the records and charges that the same
    pass decides without one, whatever changed between them (a manifest changed,
    deleted or made invalid, a host lost or back, cordoned or draining, running counts, the
    time); and with nothing changed, it places no settled service again."""
    cluster, manifests, hosts, lost_grace = given_input
    state = cluster.state
    cordoned = set(state.maintenance)
    draining = {h for h, r in state.maintenance.items() if r.draining}
    running = dict(live_running(running_specs(state.statuses), hosts))

    def written(
        decided: Mapping[str, PlacementRecord], stored: Mapping[str, PlacementRecord]
    ) -> dict[str, PlacementRecord]:
        """What KV holds after the leader wrote ``decided``: a record only where the decision changed."""
        kept = {n: r for n, r in stored.items() if n in manifests}
        return {**kept, **{n: r for n, r in decided.items() if not r.same_decision(stored.get(n))}}

    kw = {"cordoned": cordoned, "draining": draining, "running": running, "sizes": state.spec_sizes}
    # A pass from the generated state, then one from what it wrote: most services settle there.
    first, _, _ = schedule_usage(manifests, hosts, state.placements, NOW, lost_grace, **kw)  # type: ignore[arg-type]
    current = written(first, state.placements)
    second, _, memo = schedule_usage(manifests, hosts, current, NOW, lost_grace, **kw)  # type: ignore[arg-type]
    current = written(second, current)
    names, hostnames = sorted(manifests), [h.name for h in hosts]
    now, hosts2, manifests2 = NOW, list(hosts), dict(manifests)
    # Changes where they matter most: to a settled service, on a host that holds replicas.
    settled = sorted(memo.settled) or names
    holding = sorted({h for r in current.values() for h in r.hosts if h in hostnames}) or hostnames
    changes = data.draw(st.lists(st.sampled_from(CHANGES), max_size=2))
    for change in changes:
        name = data.draw(st.sampled_from(settled))
        host = data.draw(st.sampled_from(holding))
        index = hostnames.index(host)
        valid = manifests2.get(name)
        if change == "manifest" and valid is not None:
            manifests2[name] = dataclasses.replace(valid, replicas=data.draw(st.integers(0, 4)))
        elif change == "deleted":
            manifests2.pop(name, None)
        elif change == "invalid":
            manifests2[name] = None
        elif change == "host-lost":
            hosts2[index] = dataclasses.replace(hosts2[index], live=False, lost_since=now)
        elif change == "host-back":
            hosts2[index] = dataclasses.replace(hosts2[index], live=True, lost_since=None)
        elif change in ("cordoned", "draining"):
            cordoned.add(host)
            if change == "draining":
                draining.add(host)
        elif change == "running":
            running[name] = {**running.get(name, {}), host: {"some-spec": data.draw(st.integers(0, 3))}}
        elif change == "time":
            now += data.draw(st.sampled_from([5.0, 50.0]))
    kept, kept_used, memo2 = schedule_usage(manifests2, hosts2, current, now, lost_grace, memo=memo, **kw)  # type: ignore[arg-type]
    fresh, fresh_used, _ = schedule_usage(manifests2, hosts2, current, now, lost_grace, **kw)  # type: ignore[arg-type]
    assert kept == fresh
    assert _charged(kept_used, hostnames, manifests2) == _charged(fresh_used, hostnames, manifests2)
    if not changes:  # nothing changed: every settled service whose record was not rewritten is reused
        assert all(memo2.settled.get(n) is s for n, s in memo.settled.items() if current.get(n) is s.previous)
