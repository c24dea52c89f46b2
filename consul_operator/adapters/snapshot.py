"""Reading the whole cluster out of Consul: for the leader's pass and for `operator status`/`wait`/`plan`.

(The host loop reads only its own part, in `kv_state`.)

`read_cluster_state` is the one reader of a `ClusterState`; `read_snapshot`
adds the leader lock and the time for the status view. A failed read raises
(`ConsulError`): nothing is ever decided from a partial read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from consul_operator.adapters.consul_client import ConsulClient, KVEntry
from consul_operator.adapters.interfaces import ClusterReads
from consul_operator.adapters.kv_state import (
    StatusCache,
    TreeMirror,
    host_records_of,
    manifests_of,
    placements_of,
    read_leader,
    rollouts_of,
    statuses_of,
)
from consul_operator.adapters.lb_presence import read_lbs
from consul_operator.adapters.presence import (
    agent_nodes_of,
    agent_registrations,
    agents_of,
    capacities_of,
    hosts_of,
    placement_readers,
)
from consul_operator.core.cluster_state import ClusterState, passing_per_host
from consul_operator.core.desired_state import ManifestError, Resources, is_dns_label, parse_manifest
from consul_operator.core.keys import Layout
from consul_operator.core.model import is_extra_port
from consul_operator.core.ownership import owned
from consul_operator.core.status import ClusterSnapshot, HostRow


def read_cluster_state(
    consul: ClusterReads,
    layout: Layout,
    cluster: str | None,
    *,
    passing_of: Callable[[ClusterState], Iterable[str]],
    leader: bool = False,
    services: TreeMirror | None = None,
    statuses: StatusCache | None = None,
) -> ClusterState:
    """Read every record once, then the passing instances of the services ``passing_of`` names.

    The KV records are one read-only transaction (`ConsulClient.kv_trees`):
    one request, and one point in time for all of them.

    ``passing_of`` sees the state read so far (everything but the instances):
    the leader asks only for the services whose rollout it paces,
    `operator status` for every service. ``leader``: the view the leader
    schedules from: status records read consistently, an unreadable one kept
    (empty) so that the leader can remove it, and every service's passing
    count (its gauges). ``services``: the loop's mirror of ``services/``
    (`kv_state.TreeMirror`: only changed manifests are read), read just after
    the transaction; without one, ``services/`` is part of it. ``statuses``: the loop's
    status records parsed by its last read (`kv_state.StatusCache`), reused while unchanged.
    """
    prefixes = [
        *([] if services is not None else [layout.services_prefix]),
        layout.placement_prefix,
        layout.status_prefix,
        layout.rollout_prefix,
        layout.revisions_prefix,
        layout.rollback_prefix,
        layout.hosts_prefix,
        layout.agents_prefix,
    ]
    trees = consul.kv_trees(prefixes, consistent=True)
    manifests = trees[layout.services_prefix] if services is None else services.read(consul)
    nodes = agent_nodes_of(trees[layout.agents_prefix], layout)
    registrations = agent_registrations(consul, cluster, layout, nodes=nodes)
    records = statuses_of(trees[layout.status_prefix], layout, keep_unreadable=leader, cache=statuses)
    state = ClusterState(
        manifests=manifests_of(manifests, layout, by_index=services is not None),
        placements=placements_of(trees[layout.placement_prefix], layout),
        rollouts=rollouts_of(trees[layout.rollout_prefix], layout),
        revisions=frozenset(_revisions(trees[layout.revisions_prefix], layout)),
        rollback_requests=frozenset(
            name
            for e in trees[layout.rollback_prefix]
            if (name := layout.under(layout.rollback_prefix, e.key)) is not None
        ),
        hosts=hosts_of(registrations),
        capacities=capacities_of(registrations),
        agents=tuple(agents_of(registrations)),
        placement_readers=placement_readers(registrations),
        statuses=records,
        maintenance=host_records_of(trees[layout.hosts_prefix], layout),
    )
    passing = {
        name: owned(
            [i for i in consul.health_service(name, passing=True).value if not is_extra_port(i)],
            cluster,
            state.agents,
            records,
        ).kept
        for name in sorted(set(passing_of(state)))
        if is_dns_label(name)
    }
    counts = consul.passing_instances() if leader else {}
    sizes = _spec_sizes(trees[layout.revisions_prefix], layout, state.specs_in_use())
    return dataclasses.replace(state, passing=passing, passing_counts=counts, spec_sizes=sizes)


def _spec_sizes(
    entries: Iterable[KVEntry], layout: Layout, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], Resources]:
    """The resources of the kept revisions of ``wanted`` (service, spec): parsed only while in use.

    A revision that does not parse, or is not of its spec, is left out (its
    replicas are then charged at the manifest's resources).
    """
    sizes: dict[tuple[str, str], Resources] = {}
    for entry in entries:
        of = layout.revision_of(entry.key)
        if of is None or of not in wanted:
            continue
        name, spec = of
        try:
            manifest = parse_manifest(entry.value, key_name=name)
        except ManifestError:
            continue
        if manifest.spec_hash() == spec:
            sizes[name, spec] = manifest.resources
    return sizes


def _revisions(entries: Iterable[KVEntry], layout: Layout) -> Iterable[tuple[str, str]]:
    """(service, spec) of every kept revision."""
    for entry in entries:
        of = layout.revision_of(entry.key)
        if of is not None:
            yield of


def every_service(state: ClusterState) -> set[str]:
    """Every service with a manifest, a placement or a status record (what `operator status` shows)."""
    return set(state.manifests) | set(state.placements) | set(state.statuses)


def read_snapshot(consul: ConsulClient, layout: Layout, cluster: str | None, now: float) -> ClusterSnapshot:
    """Everything the status view is built from; raises `ConsulError` when Consul cannot be read."""
    leader = read_leader(consul, layout)
    state = read_cluster_state(consul, layout, cluster, passing_of=every_service)
    return ClusterSnapshot(
        now=now,
        leader=None if leader is None else leader.host,
        leader_since=None if leader is None else leader.since,
        hosts=tuple(
            HostRow(name, live, dict(labels)) for name, (live, labels) in sorted(state.hosts.items())
        ),
        manifests=state.manifests,
        placements=state.placements,
        statuses=state.statuses,
        passing={name: passing_per_host(instances) for name, instances in state.passing.items()},
        rollouts=state.rollouts,
        maintenance=state.maintenance,
        capacities=state.capacities,
        load_balancers=read_lbs(consul, cluster),
    )
