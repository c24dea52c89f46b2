"""Hypothesis strategies for the pure core: hosts, manifests, placements, status records,
rollouts, maintenance records, and whole `ClusterState`s built from them.

Shared by the property tests (names containing ``property``). The states are
*plausible*: what a leader could find in KV, not any bytes (the records'
parsers have their own tests). In particular:

* every spec that is placed or runs and is not the manifest's has a kept
  revision and a known size (``spec_sizes``), as the leader keeps one of
  every spec in use (a spec without one is replaced unpaced, outside these);
* a rollout record, when there is one, is of the service's two specs:
  ``progressing``, ``held`` or ``complete`` towards the manifest's, or
  ``rolling_back`` to the old one (``failed`` and ``rolled_back`` freeze or
  relabel the placement: their own tests are tables);
* a status record counts per host and spec, at most a few more than placed
  (draining containers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import strategies as st

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import GI, MI, Manifest, Placement, Resources, UpdatePolicy
from consul_operator.core.model import META_HOST, META_SPEC, ServiceInstance
from consul_operator.core.records import (
    HostRecord,
    PlacementRecord,
    RolloutRecord,
    RolloutState,
    StatusRecord,
    frozen_map,
)

HOST_NAMES = ("h1", "h2", "h3", "h4")
SERVICE_NAMES = ("api", "db", "web")
WALL = 1.7e9
"""The wall-clock stamp of generated records (for people only: no decision reads it)."""

LABEL_KEYS = ("zone", "disk")
LABEL_VALUES = ("a", "b")

memories = st.sampled_from([128 * MI, 256 * MI, 512 * MI, 1 * GI, 2 * GI])
millicpus = st.sampled_from([100, 250, 500, 1000])
resources = st.builds(Resources, memories, millicpus)
"""What one replica takes."""
capacities = st.sampled_from([True, True, True, False]).flatmap(
    lambda limited: (
        st.builds(
            Resources, st.sampled_from([512 * MI, 1 * GI, 2 * GI, 4 * GI]), st.sampled_from([500, 1000, 2000])
        )
        if limited
        else st.none()
    )
)
"""What a host advertises (None, one in four: an agent without capacities, unlimited)."""
labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)


@dataclass(frozen=True)
class GenHost:
    """A generated app host."""

    name: str
    live: bool
    labels: Mapping[str, str]
    capacity: Resources | None


@st.composite
def hosts(draw: st.DrawFn) -> tuple[GenHost, ...]:
    """One to four app hosts, mostly live, with labels and capacities."""
    names = draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=4, unique=True))
    return tuple(
        GenHost(name, draw(st.booleans() | st.just(True)), draw(labels), draw(capacities))
        for name in sorted(names)
    )


@st.composite
def update_policies(draw: st.DrawFn) -> UpdatePolicy:
    """A valid ``update:`` section (max_surge and max_unavailable not both 0)."""
    surge = draw(st.integers(0, 3))
    unavailable = draw(st.integers(1 if surge == 0 else 0, 2))
    return UpdatePolicy(
        max_surge=surge,
        max_unavailable=unavailable,
        min_healthy=draw(st.sampled_from([0.0, 2.0, 5.0])),
        deadline=draw(st.sampled_from([30.0, 300.0])),
        auto_rollback=draw(st.booleans()),
    )


@st.composite
def placements(draw: st.DrawFn) -> Placement:
    """``placement:``: maybe some hosts only, maybe a cap, maybe labels."""
    some = st.sampled_from([False, False, False, True])  # mostly no constraint, so that replicas go somewhere
    allowed = None
    if draw(some):
        allowed = tuple(draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, unique=True)))
    wanted = draw(labels) if draw(some) else {}
    return Placement(
        hosts=None if allowed is None else tuple(sorted(allowed)),
        max_per_host=draw(st.integers(1, 3)) if draw(some) else None,
        labels=tuple(sorted(wanted.items())),
    )


@st.composite
def manifests(draw: st.DrawFn, name: str) -> Manifest:
    """A valid manifest of ``name``."""
    return Manifest(
        name=name,
        image=draw(st.sampled_from(["hello:1", "hello:2"])),
        replicas=draw(st.integers(0, 6)),
        port=5000,
        placement=draw(placements()),
        update=draw(update_policies()),
        resources=draw(resources),
    )


def counts(names: tuple[str, ...], most: int = 3) -> st.SearchStrategy[dict[str, int]]:
    """Replicas per host, over ``names`` (zeros left out)."""
    return st.dictionaries(st.sampled_from(names), st.integers(1, most), max_size=len(names))


@dataclass(frozen=True)
class GenService:
    """A generated service: its manifest, the spec it ran before (``old``), and its records."""

    manifest: Manifest
    old: Manifest
    placement: PlacementRecord | None
    rollout: RolloutRecord | None
    running: Mapping[str, Mapping[str, int]]
    """Per host, per spec: running containers (the agents' status records)."""
    passing: Mapping[str, Mapping[str, int]]
    """Per host, per spec: instances passing."""


def _mixed(service: str, spec: str, specs: Mapping[str, Mapping[str, int]]) -> PlacementRecord:
    kept = {h: {s: n for s, n in c.items() if n > 0} for h, c in specs.items()}
    kept = {h: c for h, c in kept.items() if c}
    return PlacementRecord(
        service,
        spec,
        frozen_map({h: sum(c.values()) for h, c in kept.items()}),
        specs={h: frozen_map(c) for h, c in kept.items()},
    )


@st.composite
def services(draw: st.DrawFn, name: str, host_names: tuple[str, ...]) -> GenService:
    """A service in one of the states a leader finds: new, steady, changed, rolling out or back."""
    manifest = draw(manifests(name))
    old = draw(manifests(name))
    if old.spec_hash() == manifest.spec_hash():
        old = dataclasses.replace(old, image="hello:old")
    new_spec, old_spec = manifest.spec_hash(), old.spec_hash()
    stage = draw(st.sampled_from(["new", "steady", "changed", "rolling", "rolling_back"]))
    placement = rollout = None
    specs: dict[str, dict[str, int]] = {}
    if stage != "new":
        first = old_spec if stage in ("changed", "rolling", "rolling_back") else new_spec
        specs = {h: {first: n} for h, n in draw(counts(host_names)).items()}
        if stage in ("rolling", "rolling_back"):
            for host, n in draw(counts(host_names, 2)).items():
                specs.setdefault(host, {})[new_spec] = n
        spec = old_spec if stage == "rolling_back" else new_spec
        placement = (
            _mixed(name, spec, specs)
            if stage in ("rolling", "rolling_back")
            else PlacementRecord(name, first, frozen_map({h: sum(c.values()) for h, c in specs.items()}))
        )
        if stage == "rolling":
            state = draw(st.sampled_from([RolloutState.PROGRESSING, RolloutState.HELD]))
            elapsed = draw(st.sampled_from([0.0, 10.0, 400.0]))
            rollout = RolloutRecord(name, old_spec, new_spec, state, WALL, "", elapsed=elapsed)
        elif stage == "rolling_back":
            rollout = RolloutRecord(name, new_spec, old_spec, RolloutState.ROLLING_BACK, WALL, "deadline")
        elif stage == "steady" and draw(st.booleans()):
            rollout = RolloutRecord(name, old_spec, new_spec, RolloutState.COMPLETE, WALL)
    running: dict[str, dict[str, int]] = {}
    passing: dict[str, dict[str, int]] = {}
    for host, per_spec in specs.items():
        for spec, n in per_spec.items():
            ran = draw(st.integers(0, n + 1))
            if ran:
                running.setdefault(host, {})[spec] = ran
                passing.setdefault(host, {})[spec] = draw(st.integers(0, ran))
    return GenService(manifest, old, placement, rollout, running, passing)


@dataclass(frozen=True)
class GenCluster:
    """A generated cluster: the `ClusterState` the leader reads, and what it was built from."""

    state: ClusterState
    hosts: tuple[GenHost, ...]
    services: Mapping[str, GenService]


@st.composite
def clusters(draw: st.DrawFn) -> GenCluster:
    """Hosts (live or lost, labelled, with capacities, some cordoned or draining) and up to three
    services in any of the states of `services`, as one `ClusterState`."""
    app_hosts = draw(hosts())
    names = tuple(h.name for h in app_hosts)
    cordoned = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    maintenance = {
        h: HostRecord(h, draining=draw(st.booleans()), deadline=draw(st.none() | st.just(60.0)), started=WALL)
        for h in cordoned
    }
    wanted = draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=3, unique=True))
    generated = {name: draw(services(name, names)) for name in sorted(wanted)}
    revisions: set[tuple[str, str]] = set()
    sizes: dict[tuple[str, str], Resources] = {}
    instances: dict[str, tuple[ServiceInstance, ...]] = {}
    for name, service in generated.items():
        old_spec = service.old.spec_hash()
        revisions.update({(name, old_spec), (name, service.manifest.spec_hash())})
        sizes[name, old_spec] = service.old.resources
        instances[name] = tuple(
            ServiceInstance(
                host, "127.0.0.1", f"{name}-{host}-{spec[:6]}-{i}", name, "127.0.0.1", 5000,
                {META_SPEC: spec, META_HOST: host}, "passing",
            )
            for host, per_spec in service.passing.items()
            for spec, n in per_spec.items()
            for i in range(n)
        )  # fmt: skip
    state = ClusterState(
        manifests={n: s.manifest for n, s in generated.items()},
        placements={n: s.placement for n, s in generated.items() if s.placement is not None},
        rollouts={n: s.rollout for n, s in generated.items() if s.rollout is not None},
        revisions=frozenset(revisions),
        hosts={h.name: (h.live, dict(h.labels)) for h in app_hosts},
        capacities={h.name: h.capacity for h in app_hosts if h.capacity is not None},
        statuses={
            n: {h: status_record(n, h, s.manifest.spec_hash(), c) for h, c in s.running.items()}
            for n, s in generated.items()
            if s.running
        },
        maintenance=maintenance,
        passing=instances,
        passing_counts={n: len(i) for n, i in instances.items()},
        spec_sizes=sizes,
    )
    return GenCluster(state, app_hosts, generated)


def status_record(service: str, host: str, spec: str, running: Mapping[str, int]) -> StatusRecord:
    """An agent's record of ``running`` containers per spec (``spec``: the one it works towards)."""
    total = sum(running.values())
    return StatusRecord(service, host, spec, total, total, total, specs=frozen_map(dict(running)))
