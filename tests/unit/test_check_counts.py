"""`check_counts.PassingCounts`: every check is read again only when the checks' index moved."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from consul_operator.adapters.check_counts import PassingCounts
from consul_operator.adapters.consul_client import Indexed


@dataclass
class Checks:
    """The cluster's checks as a Consul would answer for them: an index and the counts (our fake of
    the two reads `PassingCounts` makes, counting each)."""

    index: int = 10
    counts: dict[str, int] = field(default_factory=lambda: {"web": 2})
    probes: int = 0
    reads: int = 0

    def checks_index(self, **_: object) -> Indexed[int]:
        self.probes += 1
        return Indexed(self.index, 0)

    def passing_instances(self) -> Indexed[dict[str, int]]:
        self.reads += 1
        return Indexed(self.index, dict(self.counts))


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_checks_are_read_once_and_again_only_when_their_index_moves() -> None:
    """The first read reads every check; then an unmoved index answers from memory, and a check
    changed (the index moved on) or a restore (it went back) reads them all again."""
    consul, clock = Checks(), Clock()
    counts = PassingCounts(resync=300.0, clock=clock)
    assert counts.read(consul) == {"web": 2}  # type: ignore[arg-type]
    assert (consul.probes, consul.reads) == (0, 1)
    assert counts.read(consul) == {"web": 2}  # type: ignore[arg-type]
    assert (consul.probes, consul.reads) == (1, 1)
    consul.index, consul.counts = 11, {"web": 1}  # a replica's check failed
    assert counts.read(consul) == {"web": 1}  # type: ignore[arg-type]
    assert consul.reads == 2
    consul.index, consul.counts = 5, {"web": 3}  # a snapshot restored: the index went back
    assert counts.read(consul) == {"web": 3}  # type: ignore[arg-type]
    assert consul.reads == 3


@pytest.mark.parametrize(("later", "reads"), [(299.0, 1), (300.0, 2)], ids=["within-resync", "at-resync"])
def test_the_resync_reads_every_check_whatever_the_index(later: float, reads: int) -> None:
    """Every ``resync`` seconds the checks are read whole even though their index did not move."""
    consul, clock = Checks(), Clock()
    counts = PassingCounts(resync=300.0, clock=clock)
    counts.read(consul)  # type: ignore[arg-type]
    clock.now += later
    counts.read(consul)  # type: ignore[arg-type]
    assert consul.reads == reads
