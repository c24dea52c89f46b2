"""Every documented metric, scraped from the real daemons' /metrics before and after what moves it.

docs/metrics.md lists each metric with the test here (or elsewhere) that proves it.
The agents are host-1 and host-2, the load balancer host-3; service-level
figures come from the leader only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

import docker

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.presence import ttl_check_id
from consul_operator.core.errors import ConsulError
from consul_operator.core.model import LABEL_HOST
from tests.support.bounds import CONVERGE_S, NEW_LEADER_S
from tests.support.cluster import Cluster, manifest_yaml, operator
from tests.support.daemons import consul_dev, started
from tests.support.metrics import Scrape, scrape
from tests.support.staging import HOSTS, Staging, wait_until

AGENTS = ("host-1", "host-2")
LB = "host-3"
UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "1s", "deadline": "2m"}
# A registry on a closed loopback port: a pull fails at once, without leaving this machine.
MISSING_IMAGE = "127.0.0.1:9/missing/image:v1"
ACTIONS = "operator_container_actions_total"
# The write-failure test's own Consul and agent: on the first test address, with ports apart
# from staging's and from the /healthz test's (test_cli_edges.py).
WF_PORTS = {"http": 28500, "server": 28300, "serf_lan": 28301, "serf_wan": 28302}
WF_METRICS_PORT = 29810
# Consul's request limits lowered from 512 KiB: a manifest of 120 KB can still be put,
# but the leader's transaction writing its revision (base64: 160 KB) is refused with 413.
# Consul takes the larger of the two limits for a transaction, so both are set.
WF_LIMIT = 140 * 1024
WF_BIG_ENV = {f"BIG_{i}": "x" * 30_000 for i in range(4)}


def scrapes(cluster: Cluster) -> dict[str, Scrape]:
    """One scrape of each daemon: both agents and the load balancer."""
    return {host: cluster.scrape(host) for host in HOSTS}


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much one sample moved between two scrapes (an absent sample counts 0)."""
    return after.value(name, **labels) - before.value(name, **labels)


def wait_value(cluster: Cluster, daemon: str, name: str, expected: float | None, **labels: str) -> None:
    """Wait until the daemon of host ``daemon`` exports ``expected`` (None: no such sample)."""
    last: list[float | None] = []

    def matches() -> bool:
        last[:] = [cluster.scrape(daemon).get(name, **labels)]
        return last[0] == expected

    try:
        wait_until(matches, timeout=60, what=f"{name}{labels} = {expected} on {daemon}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


def grown(before: Scrape, action: str) -> float:
    """One more successful ``action`` than ``before`` counted."""
    return before.value(ACTIONS, action=action, result="ok") + 1


def drains(cluster: Cluster, before: dict[str, Scrape]) -> float:
    """Successful drains on both agents since ``before``."""
    return sum(delta(before[h], cluster.scrape(h), ACTIONS, action="drain", result="ok") for h in AGENTS)


def leading(cluster: Cluster) -> str:
    """The one agent whose /metrics says it leads (waits until exactly one does)."""

    def one() -> str | None:
        found = [h for h in AGENTS if cluster.scrape(h).get("operator_is_leader", host=h) == 1]
        return found[0] if len(found) == 1 else None

    return str(wait_until(one, timeout=60, what="exactly one agent exporting is_leader 1"))


def other(host: str) -> str:
    """The other agent."""
    return AGENTS[1 - AGENTS.index(host)]


def test_deploy_scale_and_delete_move_the_replica_figures(cluster: Cluster, service_name: str) -> None:
    """Put 2, scale to 1, delete: actions, host and leader gauges, LB servers, convergence, loop figures."""
    leader = leading(cluster)
    before = scrapes(cluster)
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    for host in AGENTS:
        wait_value(cluster, host, "operator_host_healthy_replicas", 1, service=service_name, host=host)
    wait_value(cluster, leader, "operator_healthy_replicas", 2, service=service_name)
    wait_value(cluster, leader, "operator_convergence_seconds_count", 1, service=service_name)
    wait_value(cluster, LB, "operator_lb_upstream_servers", 2, service=service_name)
    after = scrapes(cluster)
    for host in AGENTS:
        b, a = before[host], after[host]
        assert a.get("operator_running_replicas", service=service_name, host=host) == 1
        assert delta(b, a, ACTIONS, action="start", result="ok") == 1, host
        assert delta(b, a, "operator_reconcile_duration_seconds_count", loop="host") > 0
        assert delta(b, a, "operator_last_successful_sync_timestamp_seconds", loop="host") > 0
    figures = {
        name: after[leader].get(f"operator_{name}", service=service_name)
        for name in (
            "desired_replicas",
            "healthy_replicas",
            "drift_replicas",
            "manifest_valid",
        )
    }
    figures["unplaced_replicas"] = after[leader].get(
        "operator_unplaced_replicas", service=service_name, cause="none"
    )
    assert figures == {
        "desired_replicas": 2,
        "healthy_replicas": 2,
        "drift_replicas": 0,
        "manifest_valid": 1,
        "unplaced_replicas": 0,
    }
    took = after[leader].value("operator_convergence_seconds_sum", service=service_name)
    assert 0 < took < CONVERGE_S
    assert after[leader].value("operator_convergence_seconds_bucket", service=service_name, le="+Inf") == 1
    assert delta(before[leader], after[leader], "operator_placement_writes_total") >= 1
    assert (
        delta(before[leader], after[leader], "operator_reconcile_duration_seconds_count", loop="schedule") > 0
    )
    assert after[other(leader)].get("operator_desired_replicas", service=service_name) is None, "leader only"
    assert delta(before[LB], after[LB], "operator_lb_reloads_total", result="ok") >= 1
    assert delta(before[LB], after[LB], "operator_reconcile_duration_seconds_count", loop="lb") > 0
    assert delta(before[LB], after[LB], "operator_last_successful_sync_timestamp_seconds", loop="lb") > 0
    for host in HOSTS:
        assert delta(before[host], after[host], "operator_consul_requests_total") > 0, host

    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1)
    wait_value(cluster, LB, "operator_lb_upstream_servers", 1, service=service_name)
    wait_value(cluster, leader, "operator_convergence_seconds_count", 2, service=service_name)
    wait_until(
        lambda: (
            sum(cluster.metric(h, "operator_running_replicas", service=service_name, host=h) for h in AGENTS)
            == 1
        ),
        timeout=60,
        what="running_replicas to add up to 1",
    )
    wait_until(lambda: drains(cluster, after) == 1, timeout=60, what="one drain counted")
    scaled = scrapes(cluster)
    assert sum(delta(after[h], scaled[h], ACTIONS, action="start", result="ok") for h in AGENTS) == 0
    assert scaled[leader].get("operator_desired_replicas", service=service_name) == 1
    assert scaled[leader].get("operator_drift_replicas", service=service_name) == 0
    assert delta(after[LB], scaled[LB], "operator_lb_reloads_total", result="ok") >= 1

    cluster.delete(service_name)
    wait_until(lambda: drains(cluster, scaled) == 1, timeout=60, what="the last drain counted")
    assert not cluster.containers(service_name, all_states=True)
    wait_value(cluster, LB, "operator_lb_upstream_servers", None, service=service_name)
    for host in AGENTS:
        wait_value(cluster, host, "operator_running_replicas", None, service=service_name, host=host)
    wait_value(cluster, leader, "operator_desired_replicas", None, service=service_name)
    gone = cluster.scrape(leader)
    for name in ("healthy_replicas", "drift_replicas", "manifest_valid", "convergence_seconds_count"):
        assert gone.get(f"operator_{name}", service=service_name) is None, name


def test_replica_faults_count_their_container_actions(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """A lost registration, a killed replica, a vanished one, a missing image: each action counted."""
    leader = leading(cluster)
    host = other(leader)  # frozen below: the leader keeps leading meanwhile
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    (victim,) = [c for c in cluster.containers(service_name) if c.labels[LABEL_HOST] == host]
    consul = ConsulClient(cluster.staging.consul_addr(host))

    before = cluster.scrape(host)
    consul.deregister_service(victim.name)
    wait_value(cluster, host, ACTIONS, grown(before, "register"), action="register", result="ok")
    cluster.wait_converged(service_name, 2)

    before = cluster.scrape(host)
    victim.kill()
    wait_value(cluster, host, ACTIONS, grown(before, "remove_dead"), action="remove_dead", result="ok")
    cluster.wait_converged(service_name, 2)
    after = cluster.scrape(host)
    assert delta(before, after, ACTIONS, action="start", result="ok") == 1

    # Frozen while its container vanishes: the agent finds a registration without a container.
    (victim,) = [c for c in cluster.containers(service_name) if c.labels[LABEL_HOST] == host]
    before = cluster.scrape(host)
    pid = cluster.agent_pid(host)
    os.kill(pid, signal.SIGSTOP)
    try:
        victim.remove(force=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_value(cluster, host, ACTIONS, grown(before, "deregister"), action="deregister", result="ok")
    cluster.wait_converged(service_name, 2)
    after = cluster.scrape(host)
    assert delta(before, after, ACTIONS, action="start", result="ok") == 1
    assert delta(before, after, ACTIONS, action="remove_dead", result="ok") == 0

    before = cluster.scrape(host)
    cluster.put(other_service, 1, image=MISSING_IMAGE, placement={"hosts": [host]})
    wait_until(
        lambda: delta(before, cluster.scrape(host), ACTIONS, action="start", result="error") >= 2,
        timeout=60,
        what="two failed starts",
    )
    assert delta(before, cluster.scrape(host), ACTIONS, action="start", result="ok") == 0


def test_invalid_and_unplaceable_manifests_show_in_the_leaders_figures(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """manifest_valid 0 for bad YAML, 1 fixed, gone once deleted; unplaced_replicas: what no host takes."""
    leader = leading(cluster)
    cluster.put_raw(service_name, "name: [broken\n")
    wait_value(cluster, leader, "operator_manifest_valid", 0, service=service_name)
    assert cluster.scrape(leader).get("operator_desired_replicas", service=service_name) is None
    # Deleted without ever being valid: its figure goes (InvalidManifest must not fire for ever).
    cluster.delete(service_name)
    wait_value(cluster, leader, "operator_manifest_valid", None, service=service_name)
    cluster.put_raw(service_name, "name: [broken again\n")
    wait_value(cluster, leader, "operator_manifest_valid", 0, service=service_name)
    cluster.put(service_name, 0)
    wait_value(cluster, leader, "operator_manifest_valid", 1, service=service_name)
    assert cluster.scrape(leader).get("operator_desired_replicas", service=service_name) == 0

    cluster.put(other_service, 3, placement={"max_per_host": 1})
    wait_value(cluster, leader, "operator_unplaced_replicas", 1, service=other_service, cause="max_per_host")
    assert cluster.scrape(leader).get("operator_desired_replicas", service=other_service) == 3
    cluster.put(other_service, 2, placement={"max_per_host": 1})
    wait_value(cluster, leader, "operator_unplaced_replicas", 0, service=other_service, cause="none")
    # One series per service: the old cause's is gone (bounded labels).
    scrape = cluster.scrape(leader)
    assert scrape.get("operator_unplaced_replicas", service=other_service, cause="max_per_host") is None
    follower = cluster.scrape(other(leader))
    assert follower.get("operator_unplaced_replicas", service=other_service, cause="none") is None


def test_rollout_and_rollback_move_rollout_state_and_rollouts_total(
    cluster: Cluster, service_name: str
) -> None:
    """v1 -> v2: rollout_state progressing, complete; rollouts_total{complete} +1; a rollback: rolled_back."""
    leader = leading(cluster)
    cluster.put(service_name, 2, update=UPDATE)
    cluster.wait_converged(service_name, 2)
    before = cluster.scrape(leader)
    assert before.get("operator_rollout_state", service=service_name, state="complete") is None, (
        "no rollout yet"
    )

    cluster.put(service_name, 2, image="hello:v2", update=UPDATE)
    wait_value(cluster, leader, "operator_rollout_state", 1, service=service_name, state="progressing")
    wait_value(cluster, leader, "operator_rollout_state", 1, service=service_name, state="complete")
    after = cluster.scrape(leader)
    states = {
        s.labels["state"]: s.value
        for s in after.samples
        if s.name == "operator_rollout_state" and s.labels["service"] == service_name
    }
    assert states == {
        "progressing": 0,
        "held": 0,
        "complete": 1,
        "rolling_back": 0,
        "rolled_back": 0,
        "failed": 0,
    }
    assert delta(before, after, "operator_rollouts_total", result="complete") == 1
    assert delta(before, after, "operator_rollouts_total", result="rolled_back") == 0

    assert operator(cluster, "rollback", service_name).returncode == 0
    wait_value(cluster, leader, "operator_rollout_state", 1, service=service_name, state="rolled_back")
    back = cluster.scrape(leader)
    assert back.get("operator_rollout_state", service=service_name, state="complete") == 0
    assert delta(after, back, "operator_rollouts_total", result="rolled_back") == 1
    assert delta(after, back, "operator_rollouts_total", result="complete") == 0

    cluster.delete(service_name)
    wait_value(cluster, leader, "operator_rollout_state", None, service=service_name, state="rolled_back")


def test_refused_leader_write_is_counted_by_reason(
    staging: Staging, docker_engine: docker.DockerClient, tmp_path: Path
) -> None:
    """A Consul that refuses a service's fenced write (413): leader_write_failures_total{too_large} grows."""
    address = staging.addresses[0]
    consul_addr = f"{address}:{WF_PORTS['http']}"
    metrics_addr = f"{address}:{WF_METRICS_PORT}"
    name = f"wf-{uuid.uuid4().hex[:8]}"
    argv = [
        sys.executable, "-m", "consul_operator", "agent", "--host", "wf-1", "--advertise", address,
        "--consul", consul_addr, "--cluster", name, "--metrics", metrics_addr, "--log-json",
    ]  # fmt: skip
    limit = f"limits {{ txn_max_req_len = {WF_LIMIT}, kv_max_value_size = {WF_LIMIT} }}"
    with consul_dev(
        address, tmp_path / "consul", tmp_path / "consul.log", node="wf", ports=WF_PORTS, hcl=[limit]
    ):
        consul = ConsulClient(consul_addr)
        wait_until(consul.leader, timeout=60, what="the write-failure test's Consul")
        with started(argv, tmp_path / "agent.log"):
            wait_until(
                lambda: scrape(metrics_addr).get("operator_is_leader", host="wf-1") == 1,
                timeout=60,
                what="the agent to lead",
            )
            before = scrape(metrics_addr)
            big = manifest_yaml("big", 0, env=WF_BIG_ENV)
            assert 100_000 < len(big) < WF_LIMIT < len(big) * 4 / 3
            consul.kv_put("services/big", big)
            consul.kv_put("services/small", manifest_yaml("small", 0))
            wait_until(
                lambda: consul.kv_get("operator/placement/small").value is not None,
                timeout=60,
                what="the small service placed",
            )
            wait_until(
                lambda: (
                    delta(
                        before,
                        scrape(metrics_addr),
                        "operator_leader_write_failures_total",
                        reason="too_large",
                    )
                    >= 1
                ),
                timeout=60,
                what="a too_large write failure",
            )
            after = scrape(metrics_addr)
            assert consul.kv_get("operator/placement/big").value is None
            for reason in ("permission_denied", "refused"):
                assert delta(before, after, "operator_leader_write_failures_total", reason=reason) == 0
            # The refused request is a Consul error of the agent's too.
            assert delta(before, after, "operator_consul_errors_total") >= 1


# --- last in this module: they stop and restart daemons ------------------------------------------------


def test_consul_unreachable_grows_consul_errors_total(cluster: Cluster) -> None:
    """host-2's and host-3's Consul stopped: the agent of host-2 and the LB count failed Consul requests."""
    before = scrapes(cluster)
    try:
        for host in ("host-2", "host-3"):
            cluster.kill(f"consul-{host}", signal.SIGTERM)
        for daemon in ("host-2", LB):
            wait_until(
                lambda: delta(before[daemon], cluster.scrape(daemon), "operator_consul_errors_total") > 0,  # noqa: B023
                timeout=60,
                what=f"consul errors counted by {daemon}'s daemon",
            )
    finally:
        cluster.staging.run("up")
    leading(cluster)


def test_leader_killed_moves_is_leader_and_leader_changes(cluster: Cluster) -> None:
    """kill -9 of the leader: the other's is_leader 0 -> 1, leader_changes_total +1; the restarted one 0."""
    old = leading(cluster)
    new = other(old)
    before = cluster.scrape(new)
    assert before.get("operator_is_leader", host=new) == 0
    try:
        cluster.kill(f"agent-{old}", signal.SIGKILL)
        wait_value(cluster, new, "operator_is_leader", 1, host=new)
        assert delta(before, cluster.scrape(new), "operator_leader_changes_total") == 1
    finally:
        cluster.staging.run("up")
    restarted = cluster.scrape(old)
    assert restarted.get("operator_is_leader", host=old) == 0
    assert restarted.value("operator_leader_changes_total") == 0, "it never led"
    assert restarted.value("operator_orphan_sessions_reaped_total") == 0, "its session died with its TTL"
    assert leading(cluster) == new


def test_agent_restarted_within_its_ttl_reaps_its_session(cluster: Cluster) -> None:
    """kill -9 of an agent, restarted while its session lives: orphan_sessions_reaped_total 1, same leader."""
    leader = leading(cluster)
    victim = other(leader)
    changes = cluster.metric(leader, "operator_leader_changes_total")
    consul = ConsulClient(cluster.staging.consul_addr(victim))
    stop = threading.Event()

    def hold_ttl() -> None:
        # A supervisor's restart within the TTL, made certain: the dead process's TTL
        # check, and so its session, stays passing until the new process has reaped it.
        # Not only until `up` returns: /healthz answers before the new process registers,
        # and on a busy machine its registration came more than a TTL later, when the
        # session had died with its TTL (nothing left to reap; issue 29). A failed beat
        # (a slow Consul) is retried, never the end of the holding.
        while True:
            with contextlib.suppress(ConsulError):
                consul.check_pass(ttl_check_id(victim))
            if stop.wait(0.5):
                return

    cluster.kill(f"agent-{victim}", signal.SIGKILL)
    holder = threading.Thread(target=hold_ttl, daemon=True)
    holder.start()
    try:
        cluster.staging.run("up")
        # `up` returns once the new process answers /healthz; it registers and reaps just after.
        wait_until(
            lambda: cluster.metric(victim, "operator_orphan_sessions_reaped_total") >= 1,
            timeout=NEW_LEADER_S,
            what="the predecessor's session reaped",
        )
    finally:
        stop.set()
        holder.join(timeout=10)
    assert cluster.metric(victim, "operator_orphan_sessions_reaped_total") == 1
    assert leading(cluster) == leader
    assert cluster.metric(leader, "operator_leader_changes_total") == changes
