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


# Issue 33's figures, in seconds (docs/chaos.md, "Where the seconds of a fault go"). The goal for a
# new leader is 5 s, for both kinds of cut of the leader: measured 3.4 s isolated and 3.4 s one way
# (the run of faults33b, load average 5-8; 3.5-4.5 s isolated in run4 and run7 at 15-38). One way
# took 6.2-7.4 s before, and never ended in CI once the LB pair's host-4, left out of the cut,
# relayed the host's gossip (`Nodes.cut_off`). The other goals (replacements within the grace + 3 s,
# NGINX caught up in 2 s, settled in 5 s) are not met on this machine; docs/chaos.md gives their
# figures and where their seconds go instead of a bound here.
# The bound is the goal with a margin for a loaded CI machine: 8 s. A run beside busy workers (load
# 40) took 16.7 s one way when the cut host was also Consul's Raft leader: the follower's consistent
# read of the lock went to that leader and hung for its whole 10 s wait. Followers now read the lock
# stale (`LeaderElection._campaign`), from their own server's copy.
NEW_LEADER_BOUND = 8.0


def test_node_faults_heal_fast(node_chaos: NodeChaos) -> None:
    """A cut-off leader stops saying it leads before the majority's new leader took over (the lease),
    and the new one leads within NEW_LEADER_BOUND of the cut."""
    missed = []
    for name, figures in node_chaos.figures.items():
        new_leader = figures.get("new_leader", 0.0)
        if new_leader > NEW_LEADER_BOUND:
            missed.append(f"{name}: new leader after {new_leader:.1f}s")
        stepped_down = figures.get("old_leader_stepped_down")
        if stepped_down is not None and stepped_down >= new_leader:
            missed.append(f"{name}: old leader led until {stepped_down:.1f}s, new one at {new_leader:.1f}s")
    assert any("old_leader_stepped_down" in f for f in node_chaos.figures.values()), node_chaos.figures
    assert missed == [], f"{missed}; figures {node_chaos.figures}"
