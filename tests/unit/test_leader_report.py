"""The leader's per-service gauges: set only when a figure changes, and exported again after a drop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderPlan, LeaderSettings, Now, decide_leader
from consul_operator.daemons import leader_report

SETTINGS = LeaderSettings("h1", Layout(), 10.0)
WEB = Manifest(name="report-web", image="hello:1", replicas=2)


def pass_over(passing: int, manifests: dict[str, Manifest] | None = None) -> tuple[ClusterState, LeaderPlan]:
    """One leader pass over one live host and ``report-web`` with ``passing`` instances passing."""
    state = ClusterState(
        manifests=manifests if manifests is not None else {WEB.name: WEB},
        hosts={"h1": (True, {})},
        passing_counts={WEB.name: passing},
    )
    return state, decide_leader(state, LeaderMemory(), Now(1000.0, 1.7e9), SETTINGS)


def sample(metric: str) -> float | None:
    """``metric``'s value for report-web in the process's registry (None: not exported)."""
    return REGISTRY.get_sample_value(metric, {"service": WEB.name})


@pytest.fixture(autouse=True)
def not_leading() -> Iterator[None]:
    """Each test starts and ends with no leader figures exported."""
    leader_report.drop_all()
    yield
    leader_report.drop_all()


def test_observe_exports_each_change_and_again_after_a_drop() -> None:
    """A changed figure is exported, and a dropped one comes back on the next pass with the same figures."""
    leader_report.observe(*pass_over(passing=0))
    assert (sample("operator_desired_replicas"), sample("operator_drift_replicas")) == (2.0, 2.0)
    leader_report.observe(*pass_over(passing=2))
    assert (sample("operator_healthy_replicas"), sample("operator_drift_replicas")) == (2.0, 0.0)
    leader_report.drop_all()  # leadership lost: nothing exported
    assert sample("operator_desired_replicas") is None
    leader_report.observe(*pass_over(passing=2))  # leading again, the same figures as before the drop
    assert (sample("operator_desired_replicas"), sample("operator_manifest_valid")) == (2.0, 1.0)
    assert sample("operator_healthy_replicas") == 2.0


def test_a_deleted_service_is_dropped_and_exported_again_when_it_returns() -> None:
    """A service the pass forgets loses its figures; written again later, they are exported again."""
    leader_report.observe(*pass_over(passing=1))
    leader_report.drop_service(WEB.name)
    assert sample("operator_desired_replicas") is None
    leader_report.observe(*pass_over(passing=1))
    assert sample("operator_desired_replicas") == 2.0
