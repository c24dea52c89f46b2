"""How many pytest workers `make test` starts by default (tests/support/workers.py)."""

from __future__ import annotations

import pytest

from tests.support.workers import busy_share, cpu_times, workers

STAT = """cpu  100 5 50 800 40 3 2 0 0 0
cpu0 50 2 25 400 20 1 1 0 0 0
intr 12345
"""


def test_cpu_times_count_idle_and_iowait_as_not_busy() -> None:
    """Busy is user, nice, system, irq, softirq and steal; idle and iowait are not."""
    assert cpu_times(STAT) == (100 + 5 + 50 + 3 + 2 + 0, 1000)


@pytest.mark.parametrize(
    ("before", "after", "share"),
    [
        pytest.param((0, 0), (50, 200), 0.25, id="a-quarter"),
        pytest.param((10, 100), (10, 300), 0.0, id="idle"),
        pytest.param((10, 100), (10, 100), 0.0, id="no-time-passed"),
    ],
)
def test_busy_share(before: tuple[int, int], after: tuple[int, int], share: float) -> None:
    """The busy share of all cores between two samples."""
    assert busy_share(before, after) == share


@pytest.mark.parametrize(
    ("cores", "busy", "count"),
    [
        pytest.param(2, 0.03, 4, id="idle-2-cores-two-per-core"),
        pytest.param(2, 0.5, 2, id="a-hog-on-one-of-2-cores"),
        pytest.param(2, 0.25, 2, id="at-the-threshold"),
        pytest.param(8, 0.1, 4, id="idle-8-cores-at-most-4"),
        pytest.param(8, 0.6, 4, id="busy-8-cores-at-most-4"),
        pytest.param(1, 0.1, 2, id="idle-1-core-two"),
        pytest.param(1, 0.5, 1, id="busy-1-core"),
        pytest.param(0, 0.0, 2, id="no-cores-known-counts-as-one"),
    ],
)
def test_workers(cores: int, busy: float, count: int) -> None:
    """One worker per core, two per core when the machine is idle before the run, at most four."""
    assert workers(cores, busy) == count
