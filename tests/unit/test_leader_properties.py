"""Properties of the leader's decision and of the status judgement, over generated clusters
(`tests/unit/strategies.py`): what must hold for every input, not only for the tables' cases.

* `decide_leader` never puts a new or replaced replica on a host past its capacity, and never on
  a host that is not live, is cordoned or draining, lacks the labels or is not allowed;
* neither `operator status` (`build_status`) nor the leader's convergence time calls a service
  converged while a replica runs another spec or its rollout is not complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, Resources
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderPlan, LeaderSettings, Now, decide_leader
from consul_operator.core.records import PlacementRecord, RolloutState, StatusRecord
from consul_operator.core.rollout import spec_charge
from consul_operator.core.status import CONVERGED, ClusterSnapshot, HostRow, build_status
from tests.unit.strategies import WALL, GenCluster, clusters

NOW = 1000.0
GRACE = 10.0
SETTINGS = LeaderSettings("h1", Layout(), GRACE)


@st.composite
def memories(draw: st.DrawFn, cluster: GenCluster) -> LeaderMemory:
    """What a leader may remember: lost hosts in their grace or past it, changes being timed."""
    lost = {h.name: NOW - draw(st.sampled_from([0.0, 5.0, 100.0])) for h in cluster.hosts if not h.live}
    manifests = {n: s.manifest for n, s in cluster.services.items()}
    return LeaderMemory(
        lost_since=lost, seen=manifests, changed_at=dict.fromkeys(manifests, NOW - 5), observed=True
    )


def decide(cluster: GenCluster, memory: LeaderMemory) -> LeaderPlan:
    """One leader pass over the generated cluster."""
    return decide_leader(cluster.state, memory, Now(NOW, WALL), SETTINGS)


def spec_counts(record: PlacementRecord | None, host: str) -> dict[str, int]:
    return {} if record is None else record.spec_counts(host)


def running(state: ClusterState, service: str, host: str) -> Mapping[str, int]:
    record = state.statuses.get(service, {}).get(host)
    return {} if record is None else record.specs


def additions(state: ClusterState, plan: LeaderPlan) -> set[tuple[str, str]]:
    """(service, host) where the plan places more of some spec than was placed or ran there."""
    added = set()
    for service, after in plan.placements.items():
        before = state.placements.get(service)
        for host in after.hosts:
            ran = running(state, service, host)
            had = spec_counts(before, host)
            if any(n > max(had.get(s, 0), ran.get(s, 0)) for s, n in spec_counts(after, host).items()):
                added.add((service, host))
    return added


def charge(state: ClusterState, placements: Mapping[str, PlacementRecord], host: str) -> Resources:
    """What ``host`` holds after the plan: per service and spec the larger of placed and running."""
    total = Resources(0, 0)
    for service, manifest in state.manifests.items():
        assert isinstance(manifest, Manifest)
        sizes = {s: r for (n, s), r in state.spec_sizes.items() if n == service}
        sizes[manifest.spec_hash()] = manifest.resources
        placed = spec_counts(placements.get(service), host)
        total = total + spec_charge(placed, running(state, service, host), sizes, manifest.resources)
    return total


@given(st.data())
def test_property_decide_leader_never_adds_a_replica_past_a_hosts_capacity(data: st.DataObject) -> None:
    """Wherever the plan places a new or replaced replica, the host's charge (every service, per
    spec the larger of placed and running) stays within its advertised capacity."""
    cluster = data.draw(clusters())
    plan = decide(cluster, data.draw(memories(cluster)))
    for service, host in sorted(additions(cluster.state, plan)):
        capacity = cluster.state.capacities.get(host)
        if capacity is not None:
            used = charge(cluster.state, plan.placements, host)
            assert capacity.covers(used), (service, host, used, capacity)


@given(st.data())
def test_property_decide_leader_places_only_on_open_matching_hosts(data: st.DataObject) -> None:
    """A new or replaced replica goes only to a live host that is not cordoned or draining, that
    has every label the manifest asks for and that ``placement.hosts`` allows."""
    cluster = data.draw(clusters())
    plan = decide(cluster, data.draw(memories(cluster)))
    state = cluster.state
    for service, host in sorted(additions(state, plan)):
        manifest = state.manifests[service]
        assert isinstance(manifest, Manifest)
        live, host_labels = state.hosts.get(host, (False, {}))
        assert live, (service, host, "not live")
        assert host not in state.maintenance, (service, host, "cordoned")
        assert all(host_labels.get(k) == v for k, v in manifest.placement.labels), (service, host, "labels")
        allowed = manifest.placement.hosts
        assert allowed is None or host in allowed, (service, host, "not allowed")


def _runs_only(state: ClusterState, service: str, spec: str) -> bool:
    return all(set(r.specs) <= {spec} for r in state.statuses.get(service, {}).values())


@given(st.data())
def test_property_nothing_is_converged_while_another_spec_runs_or_a_rollout_is_not_complete(
    data: st.DataObject,
) -> None:
    """Neither the status view nor the leader's convergence time calls a service converged while
    one of its replicas runs another spec than the manifest's, or its rollout is not complete."""
    cluster = data.draw(clusters())
    state = cluster.state
    passing = {n: {h: sum(c.values()) for h, c in s.passing.items()} for n, s in cluster.services.items()}
    if data.draw(
        st.booleans()
    ):  # half the clusters: every service as good as done, so that Converged is reached
        partly = data.draw(st.lists(st.sampled_from(sorted(cluster.services)), unique=True))
        state = _as_done(cluster, partly)
        passing = {n: {h: sum(r.specs.values()) for h, r in per.items()} for n, per in state.statuses.items()}
    snapshot = ClusterSnapshot(
        now=WALL,
        leader="h1",
        leader_since=WALL - 60,
        hosts=tuple(HostRow(h, live, dict(labels)) for h, (live, labels) in sorted(state.hosts.items())),
        manifests=state.manifests,
        placements=state.placements,
        statuses=state.statuses,
        passing=passing,
        rollouts=state.rollouts,
        maintenance=state.maintenance,
    )
    for service in build_status(snapshot).services:
        if service.state == CONVERGED:
            manifest = state.manifests[service.name]
            assert isinstance(manifest, Manifest)
            assert _runs_only(state, service.name, manifest.spec_hash()), service
            rollout = state.rollouts.get(service.name)
            assert rollout is None or (rollout.state, rollout.to_spec) == (
                RolloutState.COMPLETE,
                manifest.spec_hash(),
            )
    plan = decide_leader(state, data.draw(memories(cluster)), Now(NOW, WALL), SETTINGS)
    for done in plan.converged:
        manifest = state.manifests[done.service]
        assert isinstance(manifest, Manifest)
        assert _runs_only(state, done.service, manifest.spec_hash()), done
        rollout = plan.rollouts.get(done.service)
        assert rollout is None or rollout.state == RolloutState.COMPLETE, (done, rollout)


def _as_done(cluster: GenCluster, partly: list[str]) -> ClusterState:
    """The cluster with every service placed and running at its manifest's spec, all passing; the
    services in ``partly`` keep one replica of the old spec running (and their rollout)."""
    state = cluster.state
    placements, statuses, rollouts = dict(state.placements), dict(state.statuses), dict(state.rollouts)
    for name, service in cluster.services.items():
        spec, old = service.manifest.spec_hash(), service.old.spec_hash()
        record = state.placements.get(name)
        if record is None:
            continue
        hosts = dict(record.hosts)
        placements[name] = PlacementRecord(name, spec, record.hosts)
        per_host = {h: {spec: n} for h, n in hosts.items()}
        if name in partly and hosts:
            first = min(hosts)
            per_host[first] = {**per_host[first], old: 1}
        else:
            rollouts.pop(name, None)
        statuses[name] = {h: StatusRecord(name, h, spec, specs=c) for h, c in per_host.items()}
    manifests = {
        n: dataclasses.replace(s.manifest, replicas=sum(placements[n].hosts.values()))
        for n, s in cluster.services.items()
        if n in placements
    }
    counts = {n: sum(sum(r.specs.values()) for r in per.values()) for n, per in statuses.items()}
    return dataclasses.replace(
        state,
        manifests={**state.manifests, **manifests},
        placements=placements,
        statuses=statuses,
        rollouts=rollouts,
        passing_counts=counts,
    )
