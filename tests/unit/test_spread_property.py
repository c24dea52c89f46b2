"""Spreading (issue #27), for every input: the leader's decision never runs a service short and
never puts a replica where the schedule would not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hypothesis import event, given
from hypothesis import strategies as st

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, Placement, Resources, UpdatePolicy
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader
from consul_operator.core.model import META_HOST, META_SPEC, HostInfo, ServiceInstance
from consul_operator.core.placement import allowed_hosts, schedule
from consul_operator.core.records import HostRecord, PlacementRecord, StatusRecord, frozen_map
from consul_operator.core.spread import SpreadSettings

NOW = 1000.0
WALL = 1.7e9
GRACE = 10.0
SETTLE = 30.0
MI = 2**20
SETTINGS = LeaderSettings("h1", Layout(), GRACE, SpreadSettings(settle=SETTLE))


@dataclass(frozen=True)
class World:
    """One leader pass's input: hosts, ``web`` (spread or not) and ``zz`` (pinned, never spread)."""

    state: ClusterState
    memory: LeaderMemory
    hosts: tuple[HostInfo, ...]


@st.composite
def worlds(draw: st.DrawFn, returned: bool = False) -> World:
    """Random hosts (live or lost, labels, capacities, maintenance), placements, containers and health;
    ``returned``: every host live, open and settled, ``web`` converged (what a host's return leaves)."""
    names = [f"h{i}" for i in range(1, draw(st.integers(2, 4)) + 1)]
    live = {h: h == "h1" or returned or draw(st.sampled_from([True, True, False])) for h in names}
    labels = {h: {"zone": draw(st.sampled_from("ab"))} for h in names}
    capacity = {
        h: draw(st.sampled_from([None, None, Resources(512 * MI, 8000), Resources(1024 * MI, 8000)]))
        for h in names
    }
    maintenance: dict[str, HostRecord] = {}
    for h in [] if returned else names[1:]:
        kind = draw(st.sampled_from(["open", "open", "open", "open", "cordoned", "draining"]))
        if kind != "open":
            maintenance[h] = HostRecord(h, draining=kind == "draining", deadline=60.0, started=WALL)
    web = Manifest(
        name="web",
        image="hello:1",
        replicas=draw(st.integers(1, 5)),
        port=5000,
        placement=Placement(
            hosts=draw(st.none() | st.just(tuple(names[:2]))),
            max_per_host=draw(st.sampled_from([None, None, 2, 1])),
            labels=draw(st.sampled_from([(), (), (("zone", "a"),)])),
            rebalance=draw(st.sampled_from([True, True, True, False])),
        ),
        update=UpdatePolicy(
            max_surge=draw(st.sampled_from([1, 2, 0])),
            max_unavailable=draw(st.integers(0, 1)),
            min_healthy=2.0,
        ),
        resources=Resources(draw(st.sampled_from([128, 256])) * MI, 250),
    )
    zz_hosts = {h: draw(st.integers(0, 2)) for h in names if live[h]}
    zz_hosts = {h: n for h, n in zz_hosts.items() if n}
    zz = Manifest(
        name="zz",
        image="hello:1",
        replicas=max(1, sum(zz_hosts.values())),
        port=5000,
        placement=Placement(hosts=tuple(sorted(zz_hosts)) or ("h1",), rebalance=False),
        resources=Resources(256 * MI, 250),
    )
    placed = {h: draw(st.integers(0, 3)) for h in names}
    placed = {h: n for h, n in placed.items() if n}
    calm = returned or draw(st.booleans())  # converged: what a spread starts from
    marker = "" if calm else draw(st.sampled_from(["", "spreading"]))
    if calm:
        allowed = {h.name for h in allowed_hosts(web, [HostInfo(h, labels[h]) for h in names])}
        cap = web.placement.max_per_host or 3
        placed = {
            h: min(n, cap) for h, n in placed.items() if live[h] and h not in maintenance and h in allowed
        }
        if "h1" in allowed:  # the pile-up a host's return leaves behind
            placed["h1"] = min(cap, draw(st.integers(2, 4)))
        web = dataclasses.replace(web, replicas=max(1, sum(placed.values())))
    running = {h: n + (0 if calm else draw(st.integers(0, 1))) for h, n in placed.items() if live[h]}
    passing = {h: n if calm else draw(st.integers(0, n)) for h, n in running.items()}
    instances = tuple(
        ServiceInstance(
            h, "a", f"{h}-{i}", "web", "a", 5000, {META_SPEC: web.spec_hash(), META_HOST: h}, "passing"
        )
        for h, n in sorted(passing.items())
        for i in range(n)
    )
    ages = {i.service_id: NOW - (9.0 if calm else draw(st.sampled_from([0.0, 1.0, 5.0]))) for i in instances}
    open_since = {h: NOW - (600.0 if returned else draw(st.sampled_from([600.0, 40.0, 10.0]))) for h in names}
    lost_since = {h: NOW - draw(st.sampled_from([0.0, 20.0])) for h in names if not live[h]}
    state = ClusterState(
        manifests={"web": web, "zz": zz},
        placements={
            "web": PlacementRecord("web", web.spec_hash(), frozen_map(placed), rebalancing=marker),
            "zz": PlacementRecord("zz", zz.spec_hash(), frozen_map(zz_hosts)),
        },
        revisions=frozenset({("web", web.spec_hash()), ("zz", zz.spec_hash())}),
        hosts={h: (live[h], labels[h]) for h in names},
        capacities={h: c for h, c in capacity.items() if c is not None},
        statuses={
            "web": {
                h: StatusRecord("web", h, specs=frozen_map({web.spec_hash(): n}), running=n)
                for h, n in running.items()
            }
        },
        maintenance=maintenance,
        passing={"web": instances},
        passing_counts={"web": len(instances)},
    )
    memory = LeaderMemory(
        lost_since=lost_since, first_passing={"web": ages}, open_since=open_since, observed=True
    )
    hosts = tuple(
        HostInfo(h, labels[h], live[h], None if live[h] else lost_since[h], capacity[h]) for h in names
    )
    return World(state, memory, hosts)


@given(worlds() | worlds(returned=True))
def test_spreading_keeps_replicas_passing_and_places_only_where_schedule_would_property(world: World) -> None:
    """Whatever the cluster looks like, a pass that spreads ``web`` keeps at least ``replicas -
    max_unavailable`` of it passing (or as many as passed), stays within ``max_surge``, and gives
    a host no more replicas than the schedule could place there from scratch."""
    state = world.state
    plan = decide_leader(state, world.memory, Now(NOW, WALL), SETTINGS)
    web, before, after = state.manifests["web"], state.placements["web"], plan.placements["web"]
    assert isinstance(web, Manifest)
    if not after.rebalancing and not plan.rebalanced:
        return  # spreading did not act on it this pass
    event("spread acted")
    if plan.rebalanced:
        event("a replacement placed")
    passing: dict[str, int] = {}
    for instance in state.passing["web"]:
        passing[instance.node] = passing.get(instance.node, 0) + 1
    running = {h: r.running for h, r in state.statuses["web"].items()}
    kept = sum(min(passing.get(h, 0), n) for h, n in after.hosts.items())
    had = sum(min(passing.get(h, 0), n) for h, n in before.hosts.items())
    assert kept >= min(had, web.replicas - web.update.max_unavailable)

    def occupancy(hosts: dict[str, int]) -> int:
        return sum(max(hosts.get(h, 0), running.get(h, 0)) for h in hosts | running)

    surge = web.replicas + web.update.max_surge
    assert occupancy(dict(after.hosts)) <= max(occupancy(dict(before.hosts)), surge)

    draining = {h for h, r in state.maintenance.items() if r.draining}
    # The schedule from scratch, first in name order, with as many replicas as fit: the most it
    # would place on each host.
    oracle = schedule(
        {" web": dataclasses.replace(web, name=" web", replicas=50), "zz": state.valid_manifests()["zz"]},
        world.hosts,
        {"zz": plan.placements["zz"]},
        NOW,
        GRACE,
        cordoned=set(state.maintenance),
        draining=draining,
    )[" web"]
    for host, count in after.hosts.items():
        if count > before.hosts.get(host, 0):
            assert count <= oracle.hosts.get(host, 0), f"{host} gets {count}; schedule: {dict(oracle.hosts)}"
