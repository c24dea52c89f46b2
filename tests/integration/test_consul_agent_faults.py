"""A stalled or restarted Consul agent under our agent (issue 33): no storm of registrations."""

from __future__ import annotations

import os
import signal
import threading
import time

from tests.support.cluster import Cluster
from tests.support.daemons import json_lines, log_size
from tests.support.staging import wait_until

TTL = 3.0  # the agents' --ttl in staging (the default): a beat every second, each given up after 1 s
STALL = 2.2  # how long Consul is stopped: past two beats' time-outs, short of the TTL


def test_a_stalled_consul_gets_no_storm_of_agent_registrations(cluster: Cluster) -> None:
    """host-1's Consul stopped (SIGSTOP) for less than the TTL: beats time out, nothing is registered."""
    host = "host-1"
    wait_until(lambda: cluster.leader(), timeout=30, what="a leader")
    registrations = cluster.metric(host, "operator_agent_registrations_total")
    assert registrations >= 1  # its first registration, at start
    log = cluster.staging.run_dir / "logs" / f"agent-{host}.log"
    mark = log_size(log)
    pid = cluster.staging.pids()[f"consul-{host}"]
    os.kill(pid, signal.SIGSTOP)
    try:
        threading.Event().wait(STALL)  # the fault's length
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    # The window: two TTLs of beats after the resume, each answered again (a registration
    # queued behind the stall would have been run by then).
    wait_until(lambda: time.monotonic() > resumed + 2 * TTL, timeout=4 * TTL, what="two TTLs of beats")
    failed = [r for r in json_lines(log, mark) if r["event"] == "heartbeat failed"]
    assert failed, "the stall timed out no heartbeat: the test proves nothing"
    assert cluster.metric(host, "operator_agent_registrations_total") == registrations
    live = [i for i in cluster.passing("operator-agent") if i.meta.get("host") == host]
    assert live, f"{host}'s agent is not live after the stall"
