"""Partitions, systemd restarts and a reboot on the node environment: each node fault once, seeded."""

from __future__ import annotations

import pytest

from tests.chaos.harness import LOG_DIR
from tests.chaos.nodes import NODE_FAULTS, NodeChaos
from tests.chaos.test_chaos import PER_FAULT_BUDGET, RUN_BUDGET
from tests.support.cluster import Cluster

SEED = 20261128


@pytest.fixture(scope="module")
def node_chaos(node_cluster: Cluster) -> NodeChaos:
    """The run, done once for the module's assertions."""
    log_path = LOG_DIR / f"nodes-seed-{SEED}.log"
    # The run's log and, beside it, the daemons' journals per fault (`NodeChaos._keep_journals`).
    for old in LOG_DIR.glob(f"nodes-seed-{SEED}*"):
        old.unlink()
    chaos = NodeChaos(node_cluster, SEED, log_path)
    order = list(NODE_FAULTS)
    chaos.rng.shuffle(order)
    try:
        chaos.setup()
        chaos.run(order)
    finally:
        print(chaos.report())
        print(chaos.figures)
    return chaos


def test_every_node_fault_converges(node_chaos: NodeChaos) -> None:
    """After each partition, crash and reboot, every service is back at its count, passing, behind NGINX."""
    assert node_chaos.aborted is None, node_chaos.report()
    assert sorted(f.name for f in node_chaos.faults) == sorted(NODE_FAULTS)
    never = [f"{f.name} ({f.detail})" for f in node_chaos.faults if f.converged_after is None]
    assert never == [], f"did not converge: {never}; log {node_chaos.log_path}"


def test_node_faults_own_checks_held(node_chaos: NodeChaos) -> None:
    """Each fault's promise: a leader in the majority, cut-off containers kept, LB config kept."""
    assert node_chaos.violations.fault_checks == [], node_chaos.report()


def test_no_duplicates_and_only_the_lock_holder_wrote(node_chaos: NodeChaos) -> None:
    """No more replicas than desired on the majority's side, no orphan after a heal, placements fenced."""
    assert node_chaos.violations.extra_replicas == []
    assert node_chaos.violations.orphans == []
    assert node_chaos.violations.unfenced_writes == []


def test_monitor_sampled_throughout_the_node_faults(node_chaos: NodeChaos) -> None:
    """The monitor behind these checks sampled enough, and failed only where a fault explains it."""
    assert node_chaos.samples > 0
    assert node_chaos.monitor_failed() == [], node_chaos.report()


def test_node_faults_fail_requests_within_budget(node_chaos: NodeChaos) -> None:
    """A fault that leaves a replica of every service reachable fails at most a couple of requests."""
    assert node_chaos.over_budget(PER_FAULT_BUDGET, RUN_BUDGET) == [], node_chaos.report()


# Issue 33's goals, in seconds (docs/chaos.md, "Where the seconds of a fault go").
NEW_LEADER_GOAL = 5.0  # a cut-off leader replaced, from the cut
LOST_GRACE = 10.0  # the agents' --lost-grace
REPLACED_GOAL = LOST_GRACE + 3.0  # a cut-off host's replicas running and passing elsewhere, from the cut
CAUGHT_UP_GOAL = 2.0  # NGINX's upstreams the passing instances again, from partition_lb's heal
SETTLED_GOAL = 5.0  # everything converged, from each heal


def test_node_faults_heal_fast(node_chaos: NodeChaos) -> None:
    """Each fault's figures within issue 33's goals: a new leader within 5 s of a cut, the cut-off one
    stepped down before it, replacements within the grace + 3 s, NGINX caught up in 2 s, settled in 5 s."""
    missed = []
    for name, figures in node_chaos.figures.items():
        new_leader = figures.get("new_leader", 0.0)
        if new_leader > NEW_LEADER_GOAL:
            missed.append(f"{name}: new leader after {new_leader:.1f}s")
        stepped_down = figures.get("old_leader_stepped_down")
        if stepped_down is not None and stepped_down >= new_leader:
            missed.append(
                f"{name}: old leader said it led until {stepped_down:.1f}s, new at {new_leader:.1f}s"
            )
        if figures.get("replaced", 0.0) > REPLACED_GOAL:
            missed.append(f"{name}: replacements after {figures['replaced']:.1f}s")
        if figures.get("caught_up", 0.0) > CAUGHT_UP_GOAL:
            missed.append(f"{name}: NGINX caught up {figures['caught_up']:.1f}s after the heal")
    for fault in node_chaos.faults:
        if fault.converged_after is not None and fault.converged_after > SETTLED_GOAL:
            missed.append(f"{fault.name}: converged {fault.converged_after:.1f}s after it ended")
    assert missed == [], f"{missed}; figures {node_chaos.figures}"
