"""Checking a measured back-off against the schedule the code means to keep."""

from __future__ import annotations

import itertools


def assert_backs_off(measured: list[float], wanted: list[float], *, early: float, late: float) -> None:
    """Each measured delay is its wanted one (within ``early`` / ``late`` seconds), and grows where it should.

    ``wanted`` comes from the code's own back-off function, so a test of it fails
    when a retry comes sooner than the back-off allows, much later, or without growing
    (until the cap, where the wanted delays stop growing).
    """
    shown = [round(d, 2) for d in measured]
    print(f"measured delays: {shown}, back-off: {wanted}")
    assert len(measured) == len(wanted), f"{len(measured)} delays measured, {len(wanted)} wanted"
    for delay, want in zip(measured, wanted, strict=True):
        assert want - early <= delay <= want + late, f"delays {shown}, back-off {wanted}"
    for (a, b), (wa, wb) in zip(itertools.pairwise(measured), itertools.pairwise(wanted), strict=True):
        assert wb <= wa or b > a, f"delays do not grow: {shown}, back-off {wanted}"
