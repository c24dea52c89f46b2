"""Reading the whole cluster out of Consul: for the leader's pass and for `operator status`/`wait`/`plan`.

(The host loop reads only its own part, in `kv_state`.)

`read_cluster_state` is the one reader of a `ClusterState`; `read_snapshot`
adds the leader lock and the time for the status view. A failed read raises
(`ConsulError`): nothing is ever decided from a partial read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from consul_operator.adapters.check_counts import PassingCounts
from consul_operator.adapters.consul_client import ConsulClient, KVEntry
from consul_operator.adapters.interfaces import ClusterReads
from consul_operator.adapters.kv_state import (
    PrefixMirrors,
    RecordCache,
    StatusCache,
    TreeMirror,
    host_records_of,
    manifests_of,
    placements_of,
    read_leader,
    rendered_of,
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
    report_writers,
)
from consul_operator.adapters.status_mirror import StatusMirror
from consul_operator.core.cluster_state import ClusterState, passing_per_host
from consul_operator.core.desired_state import (
    Manifest,
    ManifestError,
    Resources,
    is_dns_label,
    parse_manifest,
)
from consul_operator.core.errors import ConsulPermissionDenied
from consul_operator.core.keys import Layout
from consul_operator.core.model import META_CLUSTER, META_CONTAINER, META_PORT, ServiceInstance, is_extra_port
from consul_operator.core.ownership import owned
from consul_operator.core.records import PlacementRecord
from consul_operator.core.resolve import SecretVersions, resolve_manifests
from consul_operator.core.status import ClusterSnapshot, HostRow
from consul_operator.core.templating import Instance, TemplateInputs


def _status_entries(
    consul: ClusterReads,
    layout: Layout,
    reported: StatusMirror,
    mirrors: PrefixMirrors | None,
    registrations: list[ServiceInstance],
) -> list[KVEntry]:
    """``operator/status/``'s entries: through ``reported`` while every registered agent writes its
    report, else read as a large prefix (an agent from before reports writes records no report names)."""
    if report_writers(registrations):
        return reported.read(consul)
    reported.forget()
    status = layout.status_prefix
    trees = (
        mirrors.read(consul, [status]) if mirrors is not None else consul.kv_trees([status], consistent=True)
    )
    return trees[status]


def read_cluster_state(
    consul: ClusterReads,
    layout: Layout,
    cluster: str | None,
    *,
    passing_of: Callable[[ClusterState], Iterable[str]],
    leader: bool = False,
    services: TreeMirror | None = None,
    statuses: StatusCache | None = None,
    placements: RecordCache[PlacementRecord] | None = None,
    mirrors: PrefixMirrors | None = None,
    checks: PassingCounts | None = None,
    reported: StatusMirror | None = None,
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
    status records parsed by its last read (`kv_state.StatusCache`), reused while unchanged;
    ``placements``: the same for its placement records. ``mirrors``: the loop's large prefixes as
    last read (`kv_state.PrefixMirrors`), read again only when they moved. ``checks``: the
    leader's passing counts as last read (`check_counts.PassingCounts`), read again only when a
    check moved. ``reported``: the leader's status records as last read
    (`status_mirror.StatusMirror`), brought up to date through the agents' reports while every
    registered agent writes them; without one, or while one does not, ``operator/status/`` is part
    of the transaction (or of ``mirrors``), read just after the agents' registrations.
    """
    prefixes = [
        *([] if services is not None else [layout.services_prefix]),
        layout.placement_prefix,
        *([] if reported is not None else [layout.status_prefix]),
        layout.rollout_prefix,
        layout.revisions_prefix,
        layout.rollback_prefix,
        layout.hosts_prefix,
        layout.agents_prefix,
        layout.rendered_prefix,
    ]
    trees = (
        mirrors.read(consul, prefixes) if mirrors is not None else consul.kv_trees(prefixes, consistent=True)
    )
    manifests = trees[layout.services_prefix] if services is None else services.read(consul)
    nodes = agent_nodes_of(trees[layout.agents_prefix], layout)
    registrations = agent_registrations(consul, cluster, layout, nodes=nodes)
    records = statuses_of(
        trees[layout.status_prefix]
        if reported is None
        else _status_entries(consul, layout, reported, mirrors, registrations),
        layout,
        keep_unreadable=leader,
        cache=statuses,
    )
    parsed = manifests_of(manifests, layout, by_index=services is not None)
    state = ClusterState(
        manifests=parsed,
        placements=placements_of(trees[layout.placement_prefix], layout, placements),
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
        rendered=rendered_of(trees[layout.rendered_prefix], layout),
    )
    versions = _secret_versions(consul, layout, parsed, leader=leader)
    # Each service's passing instances are read once per view: a template and the
    # service's own count must see one moment. Read twice, a replica that passed in
    # between made its service Converged while a template still rendered without it,
    # and so the template's user Converged too (`operator wait` returned early).
    found = _PassingReads(consul)
    inputs = (
        _template_inputs(consul, found, layout, cluster, state, leader=leader)
        if versions is not None
        else None
    )
    resolved = resolve_manifests(
        parsed, versions if inputs is not None else None, layout.secrets_prefix, inputs, layout.config_prefix
    )
    state = dataclasses.replace(state, manifests=resolved)
    passing = {
        name: owned(
            [i for i in found(name) if not is_extra_port(i)],
            cluster,
            state.agents,
            records,
        ).kept
        for name in sorted(set(passing_of(state)))
        if is_dns_label(name)
    }
    counts = {}
    if leader:
        counts = checks.read(consul) if checks is not None else consul.passing_instances().value
    sizes = _spec_sizes(trees[layout.revisions_prefix], layout, state.specs_in_use())
    return dataclasses.replace(state, passing=passing, passing_counts=counts, spec_sizes=sizes)


def _secret_versions(
    consul: ClusterReads, layout: Layout, manifests: Mapping[str, Manifest | ManifestError], *, leader: bool
) -> SecretVersions | None:
    """The version (KV ModifyIndex) of every secret of the valid manifests that name some, in one
    transaction; the values are read (Consul has no read of the index alone) and dropped here.

    None for a reader whose token may not read ``secrets/`` (the load balancer's status page): it shows
    such a service by its manifest as written. The leader must read them: a refusal fails its pass.
    """
    prefixes = [
        layout.service_secrets_prefix(name)
        for name, m in sorted(manifests.items())
        if isinstance(m, Manifest) and m.secrets and is_dns_label(name)
    ]
    if not prefixes:
        return {}
    try:
        trees = consul.kv_trees(prefixes, consistent=True)
    except ConsulPermissionDenied:
        if leader:
            raise
        return None
    versions: dict[str, dict[str, int]] = {}
    for entries in trees.values():
        for entry in entries:
            of = layout.secret_of(entry.key)
            if of is not None:
                versions.setdefault(of[0], {})[of[1]] = entry.modify_index
    return versions


class _PassingReads:
    """The passing instances of a service, read from Consul on the first ask only."""

    def __init__(self, consul: ClusterReads) -> None:
        self._consul = consul
        self._read: dict[str, list[ServiceInstance]] = {}

    def __call__(self, name: str) -> list[ServiceInstance]:
        if name not in self._read:
            self._read[name] = self._consul.health_service(name, passing=True).value
        return self._read[name]


def _template_inputs(
    consul: ClusterReads,
    found: _PassingReads,
    layout: Layout,
    cluster: str | None,
    state: ClusterState,
    *,
    leader: bool,
) -> TemplateInputs | None:
    """What the templates of the valid manifests read (`templating.dependencies`): their config keys,
    and the passing instances of their services that this cluster's agents vouch for (`ownership.owned`),
    each with its named ports, sorted. None for a reader not allowed to read the config prefix."""
    templates = [t for m in state.manifests.values() if isinstance(m, Manifest) for t in m.templates]
    keys = sorted({k for t in templates for k in t.keys})
    services = sorted({s for t in templates for s in t.services})
    config: dict[str, str] = {}
    if keys:
        try:
            entries = consul.kv_get_many([layout.config_key(k) for k in keys], consistent=True)
        except ConsulPermissionDenied:
            if leader:
                raise
            return None
        config = {e.key[len(layout.config_prefix) :]: e.value.decode("utf-8", "replace") for e in entries}
    instances: dict[str, tuple[Instance, ...]] = {}
    for name in services:
        instances_of = found(name)
        kept = owned(
            [i for i in instances_of if not is_extra_port(i)], cluster, state.agents, state.statuses
        ).kept
        extra: dict[str, dict[str, int]] = {}
        for inst in instances_of:
            if is_extra_port(inst) and inst.meta.get(META_CLUSTER) == cluster:
                extra.setdefault(inst.meta.get(META_CONTAINER, ""), {})[inst.meta.get(META_PORT, "")] = (
                    inst.port
                )
        instances[name] = tuple(
            sorted(
                (
                    Instance(
                        i.address,
                        i.port,
                        {
                            **({i.meta[META_PORT]: i.port} if i.meta.get(META_PORT) else {}),
                            **extra.get(i.meta.get(META_CONTAINER, "-"), {}),
                        },
                    )
                    for i in kept
                ),
                key=lambda i: (i.address, i.port),
            )
        )
    return TemplateInputs(config, instances)


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
