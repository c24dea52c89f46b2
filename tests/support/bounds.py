"""How long a test waits for what it waits for: every bound in one place, each from a measured figure.

The figures are from this 2-core machine while other test runs loaded it (load
averages of 1.5 to 9, so pessimistic): two runs of `python -m bench.bounds`
(bench/results/bounds.md) and two of the integration tests' own waits
(`OPERATOR_TEST_WAITS=FILE pytest tests/integration` records each wait's time
against its bound: 465 waits, the worst at 0.62 of its bound, a coalescing
window's). Each bound is the worst figure seen times
a safety factor of about 3 to 10 for a loaded CI machine, never less than a
few seconds. None comes from the resync: the test environments resync every
600 s (`staging.SLOW_RESYNC`), so a test that converges within its bound
proves the reaction to events (Docker's event stream, Consul's blocking
queries). The goals themselves are measured in bench/, never asserted.

Issue 29 measured them again with `make test`'s parallel part (4 workers)
beside five other checkouts' test runs (load averages 20 to 30 on the two
cores, every process slowed ten-fold: a CLI run took 5 s, a unit test 30x
its idle time): 1,034 waits in two runs. Three bounds failed there and are
raised from those figures (REACT_S, CONVERGE_S, PROCESS_S below).
"""

from __future__ import annotations

from typing import Final

# kv put of a service (1-4 replicas) or of a new count -> every replica running,
# registered and passing. Measured 0.01-2.8 s (2.8 s: 3 -> 1 with a 2 s drain); 4.5 s
# for replicas that sleep 4 s before they answer. At a load of 20-30 (issue 29): p99
# 15.2 s, the worst 32 s (a wait whose condition runs the CLI).
CONVERGE_S: Final = 30.0

# 16 replicas at once on one host (twice the executor's workers). Measured 3.7-7.7 s.
CONVERGE_BURST_S: Final = 30.0

# `docker kill` of a replica -> a new one running and passing. Measured 0.7-1.8 s.
REPLACEMENT_S: Final = 10.0

# kill -9 of the leader agent -> the other agent holds the lock. Measured 3.1-4.0 s,
# of which the 3 s session TTL and the 1 s lock-delay are the floor.
NEW_LEADER_S: Final = 15.0

# Instances passing in Consul -> NGINX answers from exactly them. Measured 0.00-0.54 s; beside
# three busy workers (a CI-style run, issue 29) Consul's answers took over 5 s, and this failed at 5 s.
LB_UPDATE_S: Final = 15.0

# A change -> a daemon's next pass shows it: a status record, a metric, a rejection
# counted, the lock released. Measured 0.00-0.16 s; at a load of 20-30 (issue 29) p99
# 2.1 s, the worst 5.1 s (an agent's next host pass).
REACT_S: Final = 15.0

# Two replicas to a new spec (max_surge 1, min_healthy 1-2 s) -> the rollout complete,
# or a rollback of one -> rolled back. Measured 6.0-9.8 s.
ROLLOUT_S: Final = 30.0

# kv delete -> every container gone. Measured 2.0-3.3 s (drain 0.5 s, stop grace 2 s),
# 9.8 s for a replica that ignores SIGTERM and never passed.
REMOVAL_S: Final = 30.0

# A host's agent and replicas killed for good -> its replicas run on the other host.
# Measured 13.4-14.4 s, of which the 10 s lost-host grace.
LOST_HOST_S: Final = 45.0

# Consul back after an outage (staging.sh up) -> converged again. Measured 1.0 s; the
# watches retry at most 5 s apart (kv_state.WATCH_RETRY_CAP).
CONSUL_RETURN_S: Final = 30.0

# The Docker engine restarted -> converged again. Not measured by these runs (the
# test restarts the shared engine); chaos `docker_restart` converged 4.3 s after.
ENGINE_RESTART_S: Final = 60.0

# A process started -> healthy (/healthz 200, Consul's leader, Prometheus ready), or
# signalled -> exited. Measured 0.0-1.4 s; a daemon's loops get up to 30 s to stop. At a
# load of 20-30 (issue 29) the worst was 31 s (`operator lb` to pass: Python's start-up
# alone took seconds).
PROCESS_S: Final = 60.0

# Prometheus (1 s scrapes) -> a target up, or a metric's change visible in a query.
# Measured 0.5-5.6 s.
PROMETHEUS_S: Final = 20.0

# The load generator has made its first (or next) few dozen requests. Measured 0.5 s.
LOAD_S: Final = 10.0

# After a fault of the chaos run ends -> everything converged (tests/chaos/harness.py).
# Measured (docs/chaos.md, every fault once): p50 1.2 s, p95 4.3 s, max 17.1 s (host_lost,
# of which the 10 s lost-host grace).
CHAOS_CONVERGE_S: Final = 60.0
