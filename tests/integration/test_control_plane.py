"""The control plane survives what real hosts do: an agent restarted by its supervisor within its TTL."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.support.bounds import CONVERGE_S, NEW_LEADER_S
from tests.support.cluster import Cluster
from tests.support.staging import wait_until

# What the shipped unit does: Restart=always, RestartSec=2s, with --ttl 3s. The
# delays span a restart at once to one just inside the TTL.
RESTART_DELAYS = (0.2, 1.0, 2.0, 2.9)


def _leader_session_valid(cluster: Cluster) -> bool:
    """The lock is held by a session that still exists, of an agent that runs."""
    entry = cluster.consul.kv_get("operator/leader", consistent=True).value
    if entry is None or not entry.session:
        return False
    return cluster.consul.session_info(entry.session) is not None


@pytest.mark.parametrize("delay", RESTART_DELAYS, ids=[f"restart-after-{d}s" for d in RESTART_DELAYS])
def test_leader_restarted_within_its_ttl_leads_again(
    cluster: Cluster, service_name: str, delay: float
) -> None:
    """kill -9 of the leader and a restart within the TTL: a service put afterwards is placed and passing."""
    wait_until(cluster.leader, timeout=NEW_LEADER_S, what="a leader")
    old = cluster.leader()
    assert old in ("host-1", "host-2")
    old_session = cluster.consul.kv_get("operator/leader", consistent=True).value
    assert old_session is not None and old_session.session
    cluster.kill(f"agent-{old}", signal.SIGKILL)
    time.sleep(delay)  # the fault itself: how long the supervisor waits before the restart
    cluster.staging.run("up")  # starts exactly the killed agent again
    restarted = time.monotonic()

    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1, timeout=CONVERGE_S)
    took = time.monotonic() - restarted
    print(f"restart after {delay}s: placed and passing {took:.1f}s after the restart")
    # The dead process's session no longer holds the lock, and whoever holds it is alive.
    assert cluster.consul.session_info(old_session.session) is None
    assert _leader_session_valid(cluster)
    placement = cluster.kv_json(f"operator/placement/{service_name}")
    assert placement["written_by"] in ("host-1", "host-2")
    leader = cluster.consul.kv_get("operator/leader", consistent=True).value
    assert leader is not None and json.loads(leader.value)["host"] in ("host-1", "host-2")
