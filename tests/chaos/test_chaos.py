"""The short chaos run of `make test`: every fault once, in a seeded order, with every check.

Two runs, each on an environment of its own: every fault but `docker_restart`
in the seed's order, in `make test`'s parallel part beside the other workers;
and `docker_restart` (the engine_restart marker), after the parallel part and
alone: it restarts the shared Docker engine, which kills every container on it,
the other workers' too. (The faults run used to be alone as well, after a host
stalled for 95 s beside busy workers; that was a back-off grown while the
engine was away and a container's end seen late, both fixed in the agent.)
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import FAULTS, LOG_DIR, Chaos, schedule_for, start_environment
from tests.support.places import PLACE

SEED = 20261127
ENGINE_FAULT = "docker_restart"
# The request budget. A fault that leaves some replica of every service (and
# NGINX) alive must be hidden by the drain and NGINX's retries: at most
# PER_FAULT_BUDGET failed requests (a response cut off mid-flight). A fault
# that takes every replica of a service down at once (an engine restart,
# killing them all, NGINX itself) fails requests until replacements pass:
# those are reported, and bounded only by the run's overall budget. Planned
# scale-downs must fail nothing (checked inside the run).
PER_FAULT_BUDGET = 2
RUN_BUDGET = 0.25


def chaos(schedule: list[str], label: str) -> Chaos:
    """One run of ``schedule`` on a fresh environment of this worker's, torn down afterwards."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"chaos-seed-{SEED}-{label}.log"
    log_path.unlink(missing_ok=True)
    cluster = start_environment(f"{PLACE.name}-chaos")
    run = Chaos(cluster, SEED, log_path)
    try:
        run.setup()
        run.run(schedule)
    finally:
        print(run.report())
        cluster.staging.run("down")
    return run


@pytest.fixture(scope="module")
def chaos_run() -> Chaos:
    """The run of every fault but the engine restart, done once for the module's assertions."""
    return chaos([f for f in schedule_for(SEED, None, list(FAULTS)) if f != ENGINE_FAULT], "faults")


def test_every_fault_converges(chaos_run: Chaos) -> None:
    """After each fault, every service is back at its count, passing, and served by NGINX within the bound."""
    assert chaos_run.aborted is None, chaos_run.report()
    assert sorted(f.name for f in chaos_run.faults) == sorted(set(FAULTS) - {ENGINE_FAULT})
    never = [f"{f.name} ({f.detail})" for f in chaos_run.faults if f.converged_after is None]
    assert never == [], f"did not converge: {never}; log {chaos_run.log_path}"


def test_never_more_replicas_than_desired(chaos_run: Chaos) -> None:
    """At no sample did a service run more containers than desired."""
    assert chaos_run.violations.extra_replicas == []


def test_placements_only_written_by_the_lock_holder(chaos_run: Chaos) -> None:
    """Every placement write came from the host holding the leader lock at that Consul index (fencing)."""
    assert chaos_run.violations.unfenced_writes == []


def test_faults_own_checks_held(chaos_run: Chaos) -> None:
    """Each fault's own promise held: no hot loop, nothing moved by a clock step, services still placed."""
    assert chaos_run.violations.fault_checks == []


def test_monitor_sampled_throughout(chaos_run: Chaos) -> None:
    """The monitor behind the checks above sampled enough, and failed only where a fault explains it."""
    assert chaos_run.samples > 0
    assert chaos_run.monitor_failed() == [], chaos_run.report()


def test_no_orphans_left(chaos_run: Chaos) -> None:
    """At the end no container or registration of ours is left that nothing desires."""
    assert chaos_run.violations.orphans == []


def test_failed_requests_within_budget(chaos_run: Chaos) -> None:
    """Faults that leave a replica alive fail (almost) no request; the whole run stays within its budget."""
    assert chaos_run.over_budget(PER_FAULT_BUDGET, RUN_BUDGET) == [], chaos_run.report()


@pytest.mark.engine_restart
def test_docker_restart_converges_and_keeps_every_promise() -> None:
    """The engine restarted under load: converged, never too many replicas, fenced, nothing left."""
    run = chaos([ENGINE_FAULT], "engine")
    assert run.aborted is None, run.report()
    assert [(f.name, f.converged_after is not None) for f in run.faults] == [(ENGINE_FAULT, True)], (
        run.report()
    )
    violations = run.violations
    assert (violations.extra_replicas, violations.unfenced_writes, violations.fault_checks) == ([], [], [])
    assert run.monitor_failed() == [], run.report()
    assert violations.orphans == []
    # This run is that one fault, which takes every replica down at once: its failed requests are
    # reported, and the run budget (a share of a whole run's requests) does not apply to it alone.
    assert run.over_budget(PER_FAULT_BUDGET, 1.0) == [], run.report()
