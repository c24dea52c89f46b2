"""How many pytest-xdist workers `make test` starts when TEST_WORKERS is not set: one per core, and
two per core on a machine that is idle when the tests begin.

Measured on the 2-core machine of issue 29 (README, *Tests*): most of a test's time is waiting
(a health check's interval, a grace, a rollout's step), so an idle machine runs more workers than
cores. There, since the leader and host passes read only what moved, four workers ran the parallel
step in 8 min 45 s, three in 9 min 44 s to 10 min 17 s (two, earlier: 14 min 33 s to 15 min 35 s);
beside a CPU hog pinned to one core, three workers failed five timed tests, while two passed three
runs in a row. So the extra workers are taken only when less than a quarter of the machine is busy
before the run: a busy loop on one of two cores is half of it.

usage: python -m tests.support.workers     prints the count, and why on standard error
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

IDLE_BELOW = 0.25
"""The share of all cores busy below which the machine counts as idle (one hog of two cores: 0.5)."""
SAMPLE_S = 1.0
"""How long the machine is watched before the run."""
MAX_WORKERS = 4
"""Never more: each worker runs environments of its own, and more than four were never measured."""


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all cores from the text of /proc/stat; idle and iowait are not busy."""
    fields = [int(v) for v in stat.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already counted in user and nice
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of all cores busy between two `cpu_times` samples (0 when no time passed)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def workers(cores: int, busy: float) -> int:
    """One worker per core, two per core when less than `IDLE_BELOW` of the machine is busy; at most
    `MAX_WORKERS`."""
    cores = max(1, cores)
    return min(MAX_WORKERS, 2 * cores if busy < IDLE_BELOW else cores)


def main() -> int:
    stat = Path("/proc/stat")
    before = cpu_times(stat.read_text())
    time.sleep(SAMPLE_S)  # the sampling interval: what the machine does meanwhile is the measure
    busy = busy_share(before, cpu_times(stat.read_text()))
    cores = len(os.sched_getaffinity(0))
    count = workers(cores, busy)
    print(
        f"[test] {count} pytest workers: {cores} cores, {busy:.0%} busy before the run"
        f" (idle below {IDLE_BELOW:.0%}: two per core; at most {MAX_WORKERS}); TEST_WORKERS=N sets it",
        file=sys.stderr,
    )
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
