"""Which ``operator-agent`` registrations say that a host is live."""

from __future__ import annotations

import pytest

from consul_operator.adapters.presence import is_agent_registration
from consul_operator.core.model import ServiceInstance


def _instance(service_id: str, **meta: str) -> ServiceInstance:
    return ServiceInstance("node", "127.0.0.1", service_id, "operator-agent", "127.0.0.1", 0, meta, "passing")


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
    ],
)
def test_only_an_agents_own_registration_counts_as_presence(instance: ServiceInstance, counts: bool) -> None:
    """A host is live only by its agent's own registration, never by a look-alike entry."""
    assert is_agent_registration(instance) is counts
