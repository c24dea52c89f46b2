"""Spread comes back: the leader's pure decision to move replicas back to a host that returned.

`placement.schedule` is stable: it never moves a replica that may stay. So when
a host comes back (its agent restarted, a partition healed, ``operator
uncordon``), the replicas that moved away while it was gone stay piled on the
hosts that survived, one fault away from an outage. Here the leader moves them
back, paced, on the same path as a drain:

* **Eligible hosts** (`spread_target`): live, not cordoned, allowed by
  ``placement.hosts`` and ``placement.labels`` (`placement.allowed_hosts`,
  the schedule's own filter), under ``max_per_host`` and with room for one
  more replica (`placement.fits`, every service's replicas counted). A host
  receives a replica only once it has been live and uncordoned for
  ``settle`` seconds (`open_since`, on the leader's monotonic clock; a new
  leader times it afresh, which only lengthens it): a flapping host draws
  nothing.
* **The target** is the service's placement made as even over its eligible
  hosts as the schedule would place it from scratch: one replica at a time
  from the host with the most (ties: the name sorting last, as the schedule
  scales down) to the eligible host with the fewest (ties: the fewest
  replicas of all services, then the name sorting first, as the schedule
  scales up), while the receiving host would then hold fewer than the giving
  one: a move never leaves a host above its share. Cordoned hosts keep what
  they run and hosts that do not match give nothing (the schedule already
  moved those).
* **Only a service otherwise converged** starts moving (`Candidate`): a
  valid manifest with ``placement.rebalance`` on, ``max_surge`` >= 1, no
  rollout and no drain under way, everything placed, and every placed
  replica running and passing on a live host.
* **Paced like a drain** (`step_toward`, which calls `maintenance.plan_drain`):
  the surplus of each giving host is a draining host of its own; a
  replacement is placed on the receiving host first, at most ``max_surge`` at
  a time, and a surplus replica goes only once its replacement has passed
  ``min_healthy`` (``max_unavailable`` is taken as 0: a voluntary move never
  runs a replica short). The host's agent drains it the usual way
  (deregister, wait ``drain``, SIGTERM).
* **Level-triggered**: the placement record says a service is being spread
  (``rebalancing``: why, shown by ``operator status`` as ``Rebalancing``);
  each pass recomputes the step from the records, the agents' running counts
  and the passing instances. A rollout or a drain that starts meanwhile takes
  the service over; switched off mid-move (``placement.rebalance: false``,
  ``--no-rebalance``) the move is undone, paced, an unproven replacement
  going first. The marker goes when the target is reached and no surplus
  container runs any more. A replacement that never passes holds the move
  (and its surge replica) until it passes or the spread is switched off.

No I/O and no clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from consul_operator.core.desired_state import Manifest, UpdatePolicy
from consul_operator.core.maintenance import plan_drain
from consul_operator.core.model import HostInfo
from consul_operator.core.placement import HostCharges, LazyUsage, allowed_hosts, fits, replicas_per_host
from consul_operator.core.records import PlacementRecord, frozen_map

DEFAULT_SETTLE = 30.0
"""Seconds a returning host must stay live and uncordoned before it receives replicas."""

_SURPLUS = "/surplus"
"""Suffix of the pseudo-host that holds a giving host's surplus in `step_toward` ('/' is in no host name)."""


@dataclass(frozen=True, slots=True)
class SpreadSettings:
    """What an agent is told about spreading: on or off cluster-wide, and the settling time."""

    enabled: bool = True
    settle: float = DEFAULT_SETTLE


@dataclass(frozen=True, slots=True)
class Move:
    """One replica placed on ``target`` to replace one on ``source``: the ``Rebalanced`` event."""

    service: str
    source: str
    target: str
    why: str

    @property
    def message(self) -> str:
        """What the event says."""
        return f"1 replica moving {self.source} -> {self.target}: {self.why}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One service as the spread sees it in a pass (built by the leader)."""

    manifest: Manifest
    current: PlacementRecord
    """Its placement record read at the start of the pass."""
    decided: PlacementRecord
    """The schedule's record for it this pass."""
    running: Mapping[str, int] = field(default_factory=dict)
    """Containers its live hosts' agents report running, per host (draining ones included)."""
    passing: Mapping[str, int] = field(default_factory=dict)
    """Its instances passing, per host."""
    matured: Mapping[str, int] = field(default_factory=dict)
    """Those passing for at least ``min_healthy``, per host."""
    busy: bool = False
    """In a rollout or a drain under way: left to those."""


@dataclass(frozen=True, slots=True)
class Spreading:
    """What one pass decides about spreading."""

    placements: Mapping[str, PlacementRecord] = field(default_factory=dict)
    """The new records of the services being spread (or ending a spread) this pass."""
    moves: tuple[Move, ...] = ()
    """Replacements placed this pass."""
    open_since: Mapping[str, float] = field(default_factory=dict)
    """Per host live and uncordoned: since when (the leader's memory)."""
    wake_at: float | None = None
    """When the next open host settles (monotonic), if a service waits for it; else None."""

    @property
    def moving(self) -> tuple[str, ...]:
        """The services still being spread after this pass (the leader looks again soon)."""
        return tuple(sorted(n for n, r in self.placements.items() if r.rebalancing))


def open_since(
    hosts: Iterable[HostInfo], cordoned: Collection[str], before: Mapping[str, float], now: float
) -> dict[str, float]:
    """Since when each live, uncordoned host has been so (``now`` for one first seen so)."""
    return {h.name: before.get(h.name, now) for h in hosts if h.live and h.name not in cordoned}


def settled(since: Mapping[str, float], settle: float, now: float) -> frozenset[str]:
    """The hosts open for at least ``settle`` seconds: those that may receive replicas."""
    return frozenset(h for h, t in since.items() if now - t >= settle)


def next_settle(since: Mapping[str, float], settle: float, now: float) -> float | None:
    """When the next open host settles (after ``now``), or None."""
    return min((t + settle for t in since.values() if t + settle > now), default=None)


def spread_target(
    manifest: Manifest,
    counts: Mapping[str, int],
    hosts: Mapping[str, HostInfo],
    receiving: Collection[str],
    cordoned: Collection[str],
    load: Mapping[str, int],
    used: HostCharges,
) -> dict[str, int]:
    """``counts`` made as even over the service's eligible hosts as the schedule would place them.

    ``receiving``: the hosts that may receive a replica now (settled);
    ``load``: replicas of the other services per host (the schedule's tie-break);
    ``used``: the other services' resources per host (`placement.fits`).
    See the module doc for the rule.
    """
    target = {h: n for h, n in sorted(counts.items()) if n > 0}
    if max(target.values(), default=0) < 2:
        return target  # no host holds two: nothing to even out (the common case, and cheap)
    pool = {h.name for h in allowed_hosts(manifest, hosts.values()) if h.live and h.name not in cordoned}
    cap, need = manifest.placement.max_per_host, manifest.resources

    def takes_one(host: str) -> bool:
        held = target.get(host, 0)
        return (cap is None or held < cap) and fits(hosts[host], used.on(host) + need.times(held), need)

    while True:
        givers = [h for h in pool if target.get(h, 0) > 0]
        if not givers:
            break
        source = max(givers, key=lambda h: (target[h], h))
        takers = [h for h in pool & set(receiving) if target.get(h, 0) + 2 <= target[source] and takes_one(h)]
        if not takers:
            break
        dest = min(takers, key=lambda h: (target.get(h, 0), load.get(h, 0), h))
        target[source] -= 1
        target[dest] = target.get(dest, 0) + 1
    return {h: n for h, n in sorted(target.items()) if n > 0}


def step_toward(
    replicas: int,
    policy: UpdatePolicy,
    target: Mapping[str, int],
    placed: Mapping[str, int],
    running: Mapping[str, int],
    passing: Mapping[str, int],
    matured: Mapping[str, int],
) -> dict[str, int]:
    """One paced step from ``placed`` to ``target``: `maintenance.plan_drain`, each host's surplus a
    draining host of its own (``max_unavailable`` 0: a replica goes only once its replacement matured).

    The kept replicas of a giving host are taken to be its passing (and
    matured) ones: its agent drains the failing and youngest first.
    """
    t_in: dict[str, int] = {h: n for h, n in target.items() if n > 0}
    p_in, r_in, s_in, m_in = dict(placed), dict(running), dict(passing), dict(matured)
    surplus: set[str] = set()
    for host in sorted(set(placed) | set(running)):
        keep = target.get(host, 0)
        if placed.get(host, 0) <= keep and running.get(host, 0) <= keep:
            continue
        extra = host + _SURPLUS
        surplus.add(extra)
        for counts in (p_in, r_in, s_in, m_in):
            have = counts.pop(host, 0)
            counts[host], counts[extra] = min(have, keep), max(0, have - keep)
    step = plan_drain(
        replicas,
        replace(policy, max_unavailable=0),
        t_in,
        p_in,
        surplus,
        r_in,
        s_in,
        m_in,
    )
    result: Counter[str] = Counter()
    for host, count in step.items():
        result[host.removesuffix(_SURPLUS)] += count
    return {h: n for h, n in sorted(result.items()) if n > 0}


def plan_spreading(
    candidates: Mapping[str, Candidate],
    manifests: Mapping[str, Manifest | None],
    placements: Mapping[str, PlacementRecord],
    hosts: Sequence[HostInfo],
    cordoned: Collection[str],
    memory: Mapping[str, float],
    settings: SpreadSettings,
    now: float,
) -> Spreading:
    """One pass of spreading over ``candidates`` (services with a valid manifest and a placement).

    Starts a spread for a converged, uneven service, paces the ones under way
    (``current.rebalancing``) and ends them. ``manifests`` and ``placements``:
    every service's manifest (None: invalid) and this pass's records, for the
    hosts' load and room; ``memory``: `open_since` of the last pass.
    """
    since = open_since(hosts, cordoned, memory, now)
    receiving = settled(since, settings.settle, now)
    by_name = {h.name: h for h in hosts}
    live = {h.name for h in hosts if h.live}
    load: Counter[str] | None = None  # worked out at the first service looked at (none: most passes)
    used = LazyUsage(manifests, placements)  # read only where a host holds two replicas
    decided: dict[str, PlacementRecord] = {}
    moves: list[Move] = []
    waiting = False  # a service would move once a host has settled: wake up then
    for name in sorted(candidates):
        c = candidates[name]
        under_way = bool(c.current.rebalancing)
        if not under_way and max(c.decided.hosts.values(), default=0) < 2:
            continue  # no host holds two: even already, nothing to move (most services, most passes)
        if c.busy or not (under_way or (settings.enabled and _converged(c, live))):
            continue
        manifest, record = c.manifest, c.decided
        if load is None:
            load = replicas_per_host(manifests, placements)  # the services skipped so far changed none of it
        load.subtract(record.hosts)
        used.add(record.hosts, manifest.resources, -1)
        target = dict(record.hosts)
        placed = dict(c.current.hosts)
        if settings.enabled and _may_spread(c):
            target = spread_target(manifest, record.hosts, by_name, receiving, cordoned, load, used)
        elif under_way and not (settings.enabled and _asked_for(manifest)):
            target = _undone(placed, record.hosts, c.passing, manifest.replicas)  # switched off mid-move
        if target == placed and not under_way and not waiting and len(receiving) < len(since):
            # A host to settle first? (With every open host settled, `since` names the hosts
            # `receiving` does, and the target is the one above: most passes, every service.)
            waiting = spread_target(manifest, record.hosts, by_name, since, cordoned, load, used) != placed
        if target != placed or under_way:
            hosts_after = step_toward(
                manifest.replicas, manifest.update, target, placed, c.running, c.passing, c.matured
            )
            done = hosts_after == target and all(c.running.get(h, 0) <= n for h, n in target.items())
            done = done and not any(n for h, n in c.running.items() if h not in target)
            why = "" if done else (c.current.rebalancing or _why(placed, target))
            specs = (
                {h: frozen_map({record.spec_hash: n}) for h, n in hosts_after.items()} if record.specs else {}
            )
            decided[name] = replace(record, hosts=frozen_map(hosts_after), specs=specs, rebalancing=why)
            moves.extend(_moves(name, placed, hosts_after, target, why))
            record = decided[name]
        load.update(record.hosts)
        used.add(record.hosts, manifest.resources, 1)
    wake = next_settle(since, settings.settle, now) if waiting else None
    return Spreading(decided, tuple(moves), since, wake)


def _asked_for(manifest: Manifest) -> bool:
    """Whether the manifest lets its service be spread: ``placement.rebalance``, a surge to move with."""
    return manifest.placement.rebalance and manifest.update.max_surge >= 1


def _may_spread(c: Candidate) -> bool:
    """Whether the service may be spread now: asked for, everything placed."""
    return _asked_for(c.manifest) and c.decided.unplaced == 0


def _undone(
    placed: Mapping[str, int], decided: Mapping[str, int], passing: Mapping[str, int], replicas: int
) -> dict[str, int]:
    """A spread switched off mid-move goes back to ``replicas``: the replicas not passing (an unproven
    replacement) go first, then the fullest host's; a host the schedule dropped keeps none."""
    counts = {h: n for h, n in placed.items() if decided.get(h, 0) > 0}
    while sum(counts.values()) > replicas:
        host = max(counts, key=lambda h: (counts[h] - passing.get(h, 0), counts[h], h))
        counts[host] -= 1
        if counts[host] == 0:
            del counts[host]
    return counts if sum(counts.values()) == replicas else dict(decided)


def _converged(c: Candidate, live: Collection[str]) -> bool:
    """Whether a spread may start: every replica placed, on a live host, running and passing there."""
    placed = dict(c.current.hosts)
    return (
        _may_spread(c)
        and dict(c.decided.hosts) == placed
        and sum(placed.values()) == c.manifest.replicas
        and all(h in live for h in placed)
        and all(c.running.get(h, 0) == n and c.passing.get(h, 0) >= n for h, n in placed.items())
        and not any(n for h, n in c.running.items() if h not in placed)
    )


def _why(placed: Mapping[str, int], target: Mapping[str, int]) -> str:
    """Why the service is spread again, for people: how it is placed and how it will be."""
    shown = ", ".join(f"{h}={placed.get(h, 0)}" for h in sorted(set(placed) | set(target)))
    even = ", ".join(f"{h}={n}" for h, n in sorted(target.items()))
    return f"spreading {shown} to {even}"


def _moves(
    name: str, placed: Mapping[str, int], after: Mapping[str, int], target: Mapping[str, int], why: str
) -> list[Move]:
    """The replacements placed this step, each paired with a host it replaces a replica of (a replica
    the schedule adds, e.g. a scale-up during a spread, replaces none: no move)."""
    gained = [h for h, n in sorted(after.items()) for _ in range(max(0, n - placed.get(h, 0)))]
    givers = [h for h, n in sorted(placed.items()) for _ in range(max(0, n - target.get(h, 0)))]
    return [Move(name, giver, host, why) for host, giver in zip(gained, givers, strict=False)]


def may_move(
    manifests: Mapping[str, Manifest | None],
    placements: Mapping[str, PlacementRecord],
    hosts: Sequence[HostInfo],
    cordoned: Collection[str],
    *,
    enabled: bool = True,
) -> list[str]:
    """The services a spread may move on this view (the leader reads their passing instances).

    Those being spread, and (``enabled``) those whose placement is uneven over
    every open host, settled or not: a superset of what `plan_spreading` moves.
    """
    by_name = {h.name: h for h in hosts}
    load: Counter[str] | None = None  # worked out at the first uneven-looking service
    used = LazyUsage(manifests, placements)  # read only where a host holds two replicas
    found: list[str] = []
    for name, manifest in sorted(manifests.items()):
        record = placements.get(name)
        if manifest is None or record is None:
            continue
        if record.rebalancing:
            found.append(name)
            continue
        if not enabled or not manifest.placement.rebalance or manifest.update.max_surge < 1:
            continue
        if max(record.hosts.values(), default=0) < 2:
            continue  # no host holds two: even already
        if load is None:
            load = replicas_per_host(manifests, placements)  # the services skipped so far changed none of it
        load.subtract(record.hosts)
        used.add(record.hosts, manifest.resources, -1)
        target = spread_target(manifest, record.hosts, by_name, by_name, cordoned, load, used)
        load.update(record.hosts)
        used.add(record.hosts, manifest.resources, 1)
        if target != {h: n for h, n in sorted(record.hosts.items()) if n > 0}:
            found.append(name)
    return found
