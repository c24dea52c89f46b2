"""What counts as ours: `ownership.owned`, over plain data."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.adapters import metrics
from consul_operator.core.model import ServiceInstance
from consul_operator.core.ownership import (
    FOREIGN_CLUSTER,
    OWNERSHIP_REASONS,
    UNKNOWN_HOST,
    UNREPORTED,
    WRONG_ADDRESS,
    WRONG_CONTAINER,
    WRONG_NODE,
    WRONG_PORT,
    WRONG_SPEC,
    AgentHost,
    owned,
)
from consul_operator.core.records import ReplicaMark, StatusRecord
from consul_operator.core.upstreams import REJECT_REASONS

AGENTS = (
    AgentHost("staging", "host-1", "127.0.0.11"),
    AgentHost("staging", "host-2", "127.0.0.12"),
    AgentHost("prod", "host-1", "127.0.0.31"),
)
CONTAINER = "0123456789ab" + "cd" * 26  # a full container id


def record(host: str, sid: str, *, node: str = "node-1", port: int = 5000) -> StatusRecord:
    """``host``'s record reporting one replica ``sid`` on ``node`` at ``port`` (no node: an older agent's)."""
    marks = {sid: ReplicaMark(port, CONTAINER[:12], "spec1")} if node else {}
    return StatusRecord("web", host, running=1, instances=(sid,), node=node, replicas=marks)


STATUSES: Mapping[str, Mapping[str, StatusRecord]] = {
    "web": {
        "host-1": record("host-1", "web-host-1-a"),
        "host-2": record("host-2", "web-host-2-b", node="node-2"),
    },
    "old": {"host-1": record("host-1", "old-host-1-a", node="")},
}


def inst(
    sid: str = "web-host-1-a",
    *,
    cluster: str | None = "staging",
    host: str | None = "host-1",
    address: str = "127.0.0.11",
    service: str = "web",
    node: str = "node-1",
    port: int = 5000,
    container: str = CONTAINER,
    spec: str = "spec1",
) -> ServiceInstance:
    """A passing instance of ``service`` with our registration meta (None leaves a key out)."""
    meta = {k: v for k, v in (("cluster", cluster), ("host", host)) if v is not None}
    meta |= {"container": container, "spec-hash": spec}
    return ServiceInstance(node, "127.0.0.1", sid, service, address, port, meta, "passing")


@pytest.mark.parametrize(
    ("instance", "cluster", "reason"),
    [
        pytest.param(inst(), "staging", None, id="ours-host-1"),
        pytest.param(
            inst("web-host-2-b", host="host-2", address="127.0.0.12", node="node-2"),
            "staging",
            None,
            id="ours-host-2",
        ),
        pytest.param(inst(cluster="prod"), "staging", FOREIGN_CLUSTER, id="other-cluster-meta"),
        pytest.param(inst(cluster=None), "staging", FOREIGN_CLUSTER, id="no-cluster-meta"),
        pytest.param(inst(host="host-9"), "staging", UNKNOWN_HOST, id="host-not-an-agent"),
        pytest.param(inst(host=None), "staging", UNKNOWN_HOST, id="no-host-meta"),
        pytest.param(inst(address="127.0.0.12"), "staging", WRONG_ADDRESS, id="another-hosts-address"),
        pytest.param(inst(address="::1%x"), "staging", WRONG_ADDRESS, id="scoped-address"),
        pytest.param(
            inst("forged", host="host-2", address="127.0.0.12"),
            "staging",
            UNREPORTED,
            id="forged-at-agent-address",
        ),
        pytest.param(inst("web-host-2-b"), "staging", UNREPORTED, id="reported-by-another-host"),
        pytest.param(inst(service="api"), "staging", UNREPORTED, id="no-status-record"),
        pytest.param(
            inst("prod-x", cluster="prod", address="127.0.0.31"),
            None,
            UNREPORTED,
            id="any-cluster-still-needs-report",
        ),
        pytest.param(inst(), None, None, id="any-cluster-ours"),
        pytest.param(inst(node="node-2"), "staging", WRONG_NODE, id="real-id-on-another-node"),
        pytest.param(inst(node="lb-node"), "staging", WRONG_NODE, id="real-id-on-the-lbs-node"),
        pytest.param(inst(port=8500), "staging", WRONG_PORT, id="real-id-at-consuls-port"),
        pytest.param(inst(port=5001), "staging", WRONG_PORT, id="real-id-at-a-neighbours-port"),
        pytest.param(inst(container="f" * 64), "staging", WRONG_CONTAINER, id="another-container"),
        pytest.param(inst(container=""), "staging", WRONG_CONTAINER, id="no-container-meta"),
        pytest.param(inst(spec="spec2"), "staging", WRONG_SPEC, id="another-spec"),
        pytest.param(
            inst("old-host-1-a", service="old", node="x", port=8500),
            "staging",
            None,
            id="older-agents-record-rules-1-to-4",
        ),
        pytest.param(inst(cluster="prod"), None, WRONG_ADDRESS, id="any-cluster-judged-by-its-own-agents"),
    ],
)
def test_owned(instance: ServiceInstance, cluster: str | None, reason: str | None) -> None:
    """An instance counts only with our cluster, a registered agent's host and address, and its report."""
    verdict = owned([instance], cluster, AGENTS, STATUSES)
    if reason is None:
        assert verdict.kept == (instance,) and verdict.rejected == ()
    else:
        assert verdict.kept == ()
        assert [(d.instance, d.reason) for d in verdict.rejected] == [(instance, reason)]


def test_dead_agent_owns_nothing() -> None:
    """Instances of a host with no agent registration (absent from ``agents``) are not counted."""
    verdict = owned([inst()], "staging", AGENTS[1:], STATUSES)
    assert [d.reason for d in verdict.rejected] == [UNKNOWN_HOST]


def test_order_is_kept_and_split_complete() -> None:
    """Every instance is either kept or rejected, in input order."""
    many = [
        inst(),
        inst("x"),
        inst("web-host-2-b", host="host-2", address="127.0.0.12", node="node-2"),
        inst(cluster="prod"),
    ]
    verdict = owned(many, "staging", AGENTS, STATUSES)
    assert list(verdict.kept) == [many[0], many[2]]
    assert [d.instance for d in verdict.rejected] == [many[1], many[3]]


def test_every_reason_is_a_metric_label() -> None:
    """Grammar and ownership reasons are exactly the pre-created labels of operator_lb_rejected_total."""
    assert set(metrics.LB_REJECT_REASONS) == set(REJECT_REASONS) | set(OWNERSHIP_REASONS)


def test_a_listed_id_without_its_mark_has_no_port() -> None:
    """A record that names its node but gives no mark for a listed id vouches for no port of it."""
    bare = {"web": {"host-1": StatusRecord("web", "host-1", instances=("web-host-1-a",), node="node-1")}}
    verdict = owned([inst()], "staging", AGENTS, bare)
    assert [d.reason for d in verdict.rejected] == [WRONG_PORT]


@given(
    node=st.sampled_from(["node-1", "node-2", "", "NODE-1"]) | st.text(max_size=8),
    port=st.sampled_from([5000, 8500, 0]) | st.integers(1, 65535),
    container=st.sampled_from([CONTAINER, CONTAINER[:12], CONTAINER[:11], "", "f" * 64])
    | st.text(max_size=70),
    spec=st.sampled_from(["spec1", "spec2", "", "SPEC1"]) | st.text(max_size=16),
)
def test_property_a_real_id_is_kept_only_with_its_node_port_container_and_spec(
    node: str, port: int, container: str, spec: str
) -> None:
    """Whatever else a registration of a real replica's id says, it counts only as its agent reports it."""
    instance = inst(node=node, port=port, container=container, spec=spec)
    verdict = owned([instance], "staging", AGENTS, STATUSES)
    vouched = node == "node-1" and port == 5000 and container.startswith(CONTAINER[:12]) and spec == "spec1"
    assert verdict.kept == ((instance,) if vouched else ())
    assert len(verdict.kept) + len(verdict.rejected) == 1
