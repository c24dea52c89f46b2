"""The rollout state machine (`rollout.plan_rollout`) as a Hypothesis stateful test: a model of
the agents and of health around the leader's pacing steps, with whatever ``update:`` policy,
capacities and closed hosts, and the invariants that every interleaving keeps.

* never more than ``replicas + max_surge`` replicas placed or running;
* a step never takes the passing replicas it keeps placed below ``replicas - max_unavailable``
  (nor below what passed before the step, when that was already less), and never removes a
  running old replica, failing its check or not, that the proven ones (old running, new
  matured) need to stay at that floor; an old replica placed and not running counts as
  running (it may be starting, its record not read yet) unless its host's agent reports the
  service failing there;
* a new replica goes only to an open host where it fits (what the other services leave free);
* states move only along the allowed transitions; ``updated`` never exceeds ``total``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consul_operator.core.desired_state import GI, MI, Resources, UpdatePolicy
from consul_operator.core.records import RolloutRecord, RolloutState
from consul_operator.core.rollout import plan_rollout, spec_charge
from tests.unit.strategies import WALL, update_policies

OLD, NEW = "old", "new"
HOSTS = ("h1", "h2", "h3")
S = RolloutState
ALLOWED: Mapping[RolloutState, frozenset[RolloutState]] = {
    # Past its deadline a forward rollout rolls back, and at once rolled back when nothing new runs.
    S.PROGRESSING: frozenset({S.PROGRESSING, S.HELD, S.COMPLETE, S.ROLLING_BACK, S.ROLLED_BACK, S.FAILED}),
    S.HELD: frozenset({S.PROGRESSING, S.HELD, S.COMPLETE, S.ROLLING_BACK, S.ROLLED_BACK, S.FAILED}),
    S.ROLLING_BACK: frozenset({S.ROLLING_BACK, S.ROLLED_BACK}),
    S.COMPLETE: frozenset({S.COMPLETE}),
    S.ROLLED_BACK: frozenset({S.ROLLED_BACK}),
    S.FAILED: frozenset({S.FAILED}),
}
"""Where each state may go in one step."""

sizes = st.builds(Resources, st.sampled_from([256 * MI, 1 * GI, 2 * GI]), st.sampled_from([250, 500]))


def total(counts: Mapping[str, Mapping[str, int]], spec: str) -> int:
    return sum(c.get(spec, 0) for c in counts.values())


class RolloutMachine(RuleBasedStateMachine):
    """One service's rollout from OLD to NEW, the agents following the placement with delays."""

    replicas: int
    placed: dict[str, dict[str, int]]
    running: dict[str, dict[str, int]]
    passing: dict[str, int]
    matured: dict[str, int]

    @initialize(
        policy=update_policies(),
        replicas=st.integers(1, 4),
        hosts=st.integers(1, 3),
        need=st.fixed_dictionaries({OLD: sizes, NEW: sizes}),
        room=st.lists(st.none() | st.integers(0, 3), min_size=3, max_size=3),
        closed=st.sets(st.sampled_from(HOSTS), max_size=1),
        unreported=st.sets(st.sampled_from(HOSTS)),
    )
    def start(
        self,
        policy: UpdatePolicy,
        replicas: int,
        hosts: int,
        need: dict[str, Resources],
        room: list[int | None],
        closed: set[str],
        unreported: set[str],
    ) -> None:
        """R old replicas spread over the target hosts, all running, passing and matured but on the
        ``unreported`` hosts, whose agents have started them and not reported it yet (the leader's
        read came first: not running, and no passing instance is vouched for); each host leaves
        room for a few new replicas beyond its old ones (None: unlimited)."""
        self.policy, self.replicas, self.need = policy, replicas, need
        names = HOSTS[:hosts]
        self.target = {h: replicas // hosts + (1 if i < replicas % hosts else 0) for i, h in enumerate(names)}
        self.placed = {h: {OLD: n} for h, n in self.target.items() if n}
        self.running = {h: dict(c) for h, c in self.placed.items() if h not in unreported}
        reported = total(self.running, OLD)
        self.passing, self.matured = {OLD: reported}, {OLD: reported}
        self.failing: set[str] = set()
        self.free: dict[str, Resources | None] = {}
        for host, extra in zip(names, room, strict=False):
            old = spec_charge(self.placed.get(host, {}), {}, need, need[NEW])
            self.free[host] = None if extra is None else old + need[NEW].times(extra)
        self.closed = {h: "cordoned" for h in closed if h in names}
        self.record = RolloutRecord("web", OLD, NEW, S.PROGRESSING, WALL)

    # --- the leader ---------------------------------------------------------------------

    @rule()
    def step(self) -> None:
        """One pacing step, checked against what it was given."""
        before = {h: dict(c) for h, c in self.placed.items()}
        healthy_before = sum(min(n, total(before, s)) for s, n in self.passing.items())
        step = plan_rollout(
            self.record, self.replicas, self.policy, self.target, before, self.running,
            dict(self.passing), dict(self.matured), WALL,
            free=self.free, need=self.need, closed=self.closed, failing=frozenset(self.failing),
        )  # fmt: skip
        assert step.rollout.state in ALLOWED[self.record.state], (self.record.state, step.rollout.state)
        assert 0 <= step.rollout.updated <= step.rollout.total == self.replicas
        floor = self.replicas - self.policy.max_unavailable
        kept = sum(min(n, total(step.specs, s)) for s, n in self.passing.items())
        assert kept >= min(floor, healthy_before), (kept, floor, healthy_before)
        # Failing or not, a running old replica goes only while the proven ones (old placed
        # and running, new matured) stay at the floor: a check failing once under load costs
        # no replica; nor does a record not read yet (an old replica placed and not running where
        # the agent reports no failure may be starting).
        to = step.rollout.to_spec
        proven_new = self.matured.get(to, 0)
        old_running = sum(n for c in self.running.values() for s, n in c.items() if s != to)
        old_running += sum(
            max(0, n - self.running.get(h, {}).get(s, 0))
            for h, c in before.items()
            if h not in self.failing
            for s, n in c.items()
            if s != to
        )

        def proven(specs: Mapping[str, Mapping[str, int]]) -> int:
            old = sum(n for c in specs.values() for s, n in c.items() if s != to)
            return min(old, old_running) + min(proven_new, total(specs, to))

        assert proven(step.specs) >= min(floor, proven(before)), (step.specs, before, proven_new)
        for host, counts in step.specs.items():
            ran, had = self.running.get(host, {}), before.get(host, {})
            if any(n > max(had.get(s, 0), ran.get(s, 0)) for s, n in counts.items()):
                assert host not in self.closed, (host, counts)
                left = self.free.get(host)
                assert left is None or left.covers(spec_charge(counts, ran, self.need, self.need[NEW]))
        self.record, self.placed = step.rollout, {h: dict(c) for h, c in step.specs.items()}

    @rule(seconds=st.sampled_from([1.0, 30.0, 400.0]))
    def time_passes(self, seconds: float) -> None:
        """The rollout's own clock runs while it is active (the deadline)."""
        if self.record.active:
            self.record = replace(self.record, elapsed=self.record.elapsed + seconds)

    # --- the agents and health ----------------------------------------------------------

    @rule(host=st.sampled_from(HOSTS))
    def agent_starts(self, host: str) -> None:
        """The host's agent starts what is placed and not running yet (not passing yet)."""
        ran = self.running.setdefault(host, {})
        for spec, n in self.placed.get(host, {}).items():
            ran[spec] = max(ran.get(spec, 0), n)
        self.failing.discard(host)

    @rule(host=st.sampled_from(HOSTS))
    def agent_reports_failure(self, host: str) -> None:
        """The host's replicas crash, and its agent reports the service failing there."""
        self.running.pop(host, None)
        self.failing.add(host)
        for spec in list(self.passing):
            self.passing[spec] = min(self.passing[spec], total(self.running, spec))
            self.matured[spec] = min(self.matured.get(spec, 0), self.passing[spec])

    @rule(host=st.sampled_from(HOSTS))
    def agent_stops(self, host: str) -> None:
        """The host's agent has drained and stopped what is no longer placed there."""
        placed = self.placed.get(host, {})
        self.running[host] = {s: min(n, placed.get(s, 0)) for s, n in self.running.get(host, {}).items()}
        self.running[host] = {s: n for s, n in self.running[host].items() if n}
        for spec in list(self.passing):
            self.passing[spec] = min(self.passing[spec], total(self.running, spec))
            self.matured[spec] = min(self.matured.get(spec, 0), self.passing[spec])

    @precondition(lambda self: any(total(self.running, s) > self.passing.get(s, 0) for s in (OLD, NEW)))
    @rule(spec=st.sampled_from([OLD, NEW]))
    def one_passes(self, spec: str) -> None:
        """A running replica of ``spec`` starts passing."""
        self.passing[spec] = min(total(self.running, spec), self.passing.get(spec, 0) + 1)

    @rule(spec=st.sampled_from([OLD, NEW]))
    def one_matures(self, spec: str) -> None:
        """A passing replica of ``spec`` has passed for min_healthy."""
        self.matured[spec] = min(self.passing.get(spec, 0), self.matured.get(spec, 0) + 1)

    @rule(spec=st.sampled_from([OLD, NEW]))
    def one_fails(self, spec: str) -> None:
        """A replica of ``spec`` stops passing (its health check fails)."""
        self.passing[spec] = max(0, self.passing.get(spec, 0) - 1)
        self.matured[spec] = min(self.matured.get(spec, 0), self.passing[spec])

    # --- always ---------------------------------------------------------------------------

    @invariant()
    def within_the_surge(self) -> None:
        """Never more than R + max_surge replicas placed or running (per host and spec, the larger)."""
        if not hasattr(self, "record"):
            return
        occupancy = sum(
            max(self.placed.get(h, {}).get(s, 0), self.running.get(h, {}).get(s, 0))
            for h in set(self.placed) | set(self.running)
            for s in (OLD, NEW)
        )
        assert occupancy <= self.replicas + self.policy.max_surge, (occupancy, self.placed, self.running)


RolloutMachine.TestCase.settings = settings(RolloutMachine.TestCase.settings, stateful_step_count=30)
test_property_rollout_state_machine = RolloutMachine.TestCase
