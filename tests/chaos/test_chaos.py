"""The short chaos run of `make test`: every fault once, in a seeded order, with every check."""

from __future__ import annotations

import pytest

from tests.chaos.harness import FAULTS, LOG_DIR, Chaos, schedule_for, start_environment

# Its docker_restart fault restarts the shared Docker engine: `make test` runs this module after
# the parallel part, alone (the engine_restart marker, pyproject.toml).
pytestmark = pytest.mark.engine_restart

SEED = 20261127
# The request budget. A fault that leaves some replica of every service (and
# NGINX) alive must be hidden by the drain and NGINX's retries: at most
# PER_FAULT_BUDGET failed requests (a response cut off mid-flight). A fault
# that takes every replica of a service down at once (an engine restart,
# killing them all, NGINX itself) fails requests until replacements pass:
# those are reported, and bounded only by the run's overall budget. Planned
# scale-downs must fail nothing (checked inside the run).
PER_FAULT_BUDGET = 2
RUN_BUDGET = 0.25


@pytest.fixture(scope="module")
def chaos_run() -> Chaos:
    """The run, done once for the module's assertions; its environment is torn down afterwards."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"chaos-seed-{SEED}.log"
    log_path.unlink(missing_ok=True)
    cluster = start_environment()
    chaos = Chaos(cluster, SEED, log_path)
    try:
        chaos.setup()
        chaos.run(schedule_for(SEED, None, list(FAULTS)))
    finally:
        print(chaos.report())
        cluster.staging.run("down")
    return chaos


def test_every_fault_converges(chaos_run: Chaos) -> None:
    """After each fault, every service is back at its count, passing, and served by NGINX within the bound."""
    assert chaos_run.aborted is None, chaos_run.report()
    assert sorted(f.name for f in chaos_run.faults) == sorted(FAULTS)
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
