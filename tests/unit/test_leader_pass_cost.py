"""What the leader's pass costs per service stays flat (issue 31's profile of the idle pass)."""

from __future__ import annotations

import pytest

from consul_operator.adapters import metrics
from consul_operator.core.desired_state import parse_manifest


def _series(service: str) -> set[str]:
    """The causes under which ``service``'s unplaced replicas are exported now."""
    return {
        sample.labels["cause"]
        for family in metrics.unplaced_replicas.collect()
        for sample in family.samples
        if sample.labels["service"] == service
    }


def test_set_unplaced_does_not_list_every_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting one service's unplaced replicas never lists the gauge's series (it was O(services) a
    call, O(services²) a pass: 13 s of a 16 s profiled pass at 1,000 services)."""

    def listing() -> None:
        raise AssertionError("set_unplaced listed every series of the gauge")

    for i in range(3):
        metrics.set_unplaced(f"cost-{i}", 0, "none")
    monkeypatch.setattr(metrics.unplaced_replicas, "collect", listing)
    metrics.set_unplaced("cost-1", 2, "memory")
    metrics.set_unplaced("cost-1", 2, "memory")
    metrics.drop_unplaced("cost-2")


def test_set_unplaced_keeps_one_cause_per_service() -> None:
    """A new cause replaces the service's old series; dropping the service removes its series."""
    metrics.set_unplaced("causes", 1, "memory")
    metrics.set_unplaced("causes", 0, "none")
    assert _series("causes") == {"none"}
    metrics.drop_unplaced("causes")
    assert _series("causes") == set()
    metrics.set_unplaced("causes", 3, "cpus")
    metrics.drop_unplaced(None)
    assert _series("causes") == set()


def test_spec_hash_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest's spec hash is computed once and then reused (the leader asks for it per service
    several times a pass), and equal manifests still hash and compare equal."""
    manifest = parse_manifest("name: web\nimage: hello:local\nreplicas: 2\n", key_name="web")
    again = parse_manifest("name: web\nimage: hello:local\nreplicas: 2\n", key_name="web")
    first = manifest.spec_hash()
    monkeypatch.setattr(type(manifest), "to_dict", lambda _self: pytest.fail("spec hashed again"))
    assert manifest.spec_hash() == first
    monkeypatch.undo()
    assert again == manifest
    assert again.spec_hash() == first
