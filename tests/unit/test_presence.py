"""Which ``operator-agent`` registrations say that a host is live."""

from __future__ import annotations

import pytest

from consul_operator.adapters.presence import is_agent_registration
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import AgentRecord


def _instance(service_id: str, node: str = "node-1", **meta: str) -> ServiceInstance:
    return ServiceInstance(node, "127.0.0.1", service_id, "operator-agent", "127.0.0.1", 0, meta, "passing")


NODES = {"host-1": "node-1"}
"""The node each agent claimed (``operator/agents/<host>``)."""


@pytest.mark.parametrize(
    ("instance", "counts"),
    [
        pytest.param(_instance("operator-agent-host-1", host="host-1", cluster="c"), True, id="agent-itself"),
        pytest.param(
            _instance("operator-agent-host-2", host="host-1", cluster="c"), False, id="id-of-another-host"
        ),
        pytest.param(
            _instance("operator-agent-host-1-a1b2c3", host="host-1", cluster="c"), False, id="replica-like-id"
        ),
        pytest.param(
            _instance(
                "operator-agent-host-1", host="host-1", cluster="c", **{"managed-by": "consul-operator"}
            ),
            False,
            id="carries-replica-meta",
        ),
        pytest.param(_instance("operator-agent-", cluster="c"), False, id="no-host-meta"),
        pytest.param(
            _instance("operator-agent-host-1", "attacker", host="host-1", cluster="c"),
            False,
            id="registered-on-another-node",
        ),
        pytest.param(
            _instance("operator-agent-host-9", "node-1", host="host-9", cluster="c"),
            False,
            id="phantom-host-no-agent-claimed-it",
        ),
        pytest.param(
            _instance("operator-agent-host-2", "host-2", host="host-2", cluster="c"),
            True,
            id="unclaimed-host-on-the-node-named-after-it",
        ),
        pytest.param(
            _instance("operator-agent-host-1", "host-1", host="host-1", cluster="c"),
            False,
            id="claimed-host-only-on-its-claimed-node",
        ),
    ],
)
def test_only_an_agents_own_registration_counts_as_presence(instance: ServiceInstance, counts: bool) -> None:
    """A host is live only by its agent's own registration on the node it claimed, never by a look-alike."""
    assert is_agent_registration(instance, NODES) is counts


def test_agent_record_round_trips_and_refuses_junk() -> None:
    """``operator/agents/<host>`` names a node; without one (or with one too long) it is no record."""
    record = AgentRecord("host-1", "node-1")
    assert AgentRecord.from_json(record.to_json(), host="host-1") == record
    for junk in (b"{}", b'{"node": 3}', b'{"node": ""}', b"[]", b"nope", b'{"node": "' + b"n" * 300 + b'"}'):
        with pytest.raises(ValueError, match="agent record"):
            AgentRecord.from_json(junk, host="host-1")
