"""What the leader and `operator status` / `wait` decide from, as one value read once per pass.

Pure data: `snapshot.read_cluster_state` fills it in out of Consul (the one
reader), `leader_plan.decide_leader` and `status.build_status` decide from it
without any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from consul_operator.core.desired_state import Manifest, ManifestError, Resources
from consul_operator.core.model import META_HOST, META_SPEC, ServiceInstance
from consul_operator.core.ownership import AgentHost
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RenderedRecord,
    RolloutRecord,
    StatusRecord,
)

KnownHosts = Mapping[str, tuple[bool, Mapping[str, str]]]
"""Every registered agent host: host -> (live, labels)."""


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything in Consul the leader's and the status view's decisions depend on.

    * ``manifests``: ``services/<name>``, parsed, or why it is invalid;
    * ``placements``, ``rollouts``: the leader's records;
    * ``revisions``: the kept specs, (service, spec hash) of ``operator/revisions/``;
      ``spec_sizes``: what one replica takes, per (service, spec hash), of the
      kept specs that are placed or run but are not the manifest's (a
      rollout's old spec: what its hosts are charged);
    * ``rollback_requests``: services with an ``operator/rollback/<name>``;
    * ``hosts``: the registered agents, live or not, with their labels;
      ``capacities``: what each agent advertises (none: an older agent, unlimited);
      ``agents``: the same with their advertised addresses (`ownership.owned`);
      ``placement_readers``: the live ones from before work keys (no ``reads-work``
      meta), which run from every manifest and placement (a rolling upgrade);
    * ``maintenance``: the hosts cordoned or draining, ``operator/hosts/<host>``;
    * ``statuses``: the agents' ``operator/status/<service>/<host>`` records;
    * ``passing``: per service, its instances passing in Consul that this
      cluster's agents made (`ownership.owned`), for the services the reader
      was asked about;
    * ``rendered``: the leader's ``operator/rendered/<service>`` records (signal templates' text);
    * ``passing_counts``: per service, every instance passing in Consul, ours or
      not (the leader's healthy and drift gauges; read only for the leader).
    """

    manifests: Mapping[str, Manifest | ManifestError] = field(default_factory=dict)
    placements: Mapping[str, PlacementRecord] = field(default_factory=dict)
    rollouts: Mapping[str, RolloutRecord] = field(default_factory=dict)
    revisions: frozenset[tuple[str, str]] = frozenset()
    spec_sizes: Mapping[tuple[str, str], Resources] = field(default_factory=dict)
    rollback_requests: frozenset[str] = frozenset()
    hosts: KnownHosts = field(default_factory=dict)
    capacities: Mapping[str, Resources] = field(default_factory=dict)
    agents: tuple[AgentHost, ...] = ()
    statuses: Mapping[str, Mapping[str, StatusRecord]] = field(default_factory=dict)
    maintenance: Mapping[str, HostRecord] = field(default_factory=dict)
    passing: Mapping[str, tuple[ServiceInstance, ...]] = field(default_factory=dict)
    passing_counts: Mapping[str, int] = field(default_factory=dict)
    rendered: Mapping[str, RenderedRecord] = field(default_factory=dict)
    placement_readers: frozenset[str] = frozenset()

    def valid_manifests(self) -> dict[str, Manifest | None]:
        """Every service with a manifest: the manifest, or None when it is invalid (hands off)."""
        return {n: (m if isinstance(m, Manifest) else None) for n, m in self.manifests.items()}

    def specs_in_use(self) -> set[tuple[str, str]]:
        """(service, spec) placed or running that is not its valid manifest's spec (sizes to read)."""
        used: set[tuple[str, str]] = set()
        for name, record in self.placements.items():
            used.update((name, spec) for host in record.hosts for spec in record.spec_counts(host))
        for name, per_host in self.statuses.items():
            used.update((name, spec) for status in per_host.values() for spec in status.specs)
        current = {(n, m.spec_hash()) for n, m in self.manifests.items() if isinstance(m, Manifest)}
        return used - current

    def live(self, host: str) -> bool:
        """Whether ``host``'s agent is registered and live."""
        known = self.hosts.get(host)
        return known is not None and known[0]


def passing_per_host(instances: tuple[ServiceInstance, ...]) -> dict[str, int]:
    """Passing instances per host (their ``host`` meta, else their Consul node)."""
    counts: dict[str, int] = {}
    for inst in instances:
        host = inst.meta.get(META_HOST) or inst.node
        counts[host] = counts.get(host, 0) + 1
    return counts


def spec_of(instance: ServiceInstance) -> str:
    """The spec hash an instance was registered with ("" when it has none)."""
    return instance.meta.get(META_SPEC, "")
