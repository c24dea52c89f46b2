"""The operator loop on the real staging environment: Consul, Docker, two agents."""

from __future__ import annotations

import itertools
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import docker
import pytest

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.backoff import backoff_delay
from consul_operator.core.errors import NotLeader
from consul_operator.core.model import LABEL_DRAIN, LABEL_HOST, LABEL_STOP_GRACE
from tests.support.bounds import (
    CONSUL_RETURN_S,
    CONVERGE_S,
    ENGINE_RESTART_S,
    NEW_LEADER_S,
    REACT_S,
    REMOVAL_S,
)
from tests.support.cluster import Cluster
from tests.support.daemons import json_lines, log_size
from tests.support.delays import assert_backs_off
from tests.support.staging import pid_alive, restart_docker_engine, wait_until


def answer(address: str, port: int) -> str:
    """The body a replica answers on /."""
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=3) as response:
        return str(response.read().decode())


def both_agents_up(cluster: Cluster) -> None:
    """Restart whatever agent a test killed; `up` returns once both are live and one leads."""
    cluster.staging.run("up")


@pytest.fixture
def foreign_container(docker_engine: docker.DockerClient) -> Iterator[docker.models.containers.Container]:
    """A container on the same engine without our labels; removed by id afterwards."""
    container = docker_engine.containers.run(
        "hello:local", detach=True, name=f"foreign-{uuid.uuid4().hex[:6]}"
    )
    container.reload()
    yield container
    container.remove(force=True)


def test_two_replicas_spread_over_both_hosts(cluster: Cluster, service_name: str) -> None:
    """2 replicas give one container per app host, each registered with its host's address and passing."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    by_host = {i.meta["host"]: i for i in cluster.passing(service_name)}
    assert by_host["host-1"].address == cluster.staging.addresses[0]
    assert by_host["host-2"].address == cluster.staging.addresses[1]
    for inst in by_host.values():
        container_id = inst.meta["container"]
        assert answer(inst.address, inst.port) == f"Hello World from {container_id[:12]}\n"


def test_a_replica_deleted_while_its_agent_was_down_drains_for_its_manifests_drain(
    cluster: Cluster, service_name: str
) -> None:
    """A replica is labelled with its manifest's drain and stop grace. Its service deleted while its
    agent was stopped, the restarted agent (which never read that manifest) deregisters it first and
    lets it run for that drain (5 s here, not the default 2 s), then stops it."""
    cluster.put(service_name, 1, drain="5s", stop_grace="3s", placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    (replica,) = cluster.containers(service_name)
    assert (replica.labels[LABEL_DRAIN], replica.labels[LABEL_STOP_GRACE]) == ("5.0", "3.0")

    cluster.kill("agent-host-1", signal.SIGTERM)  # its containers stay
    cluster.delete(service_name)
    cluster.staging.run("up")  # starts what is not running: host-1's agent
    wait_until(
        lambda: not cluster.registrations(service_name), timeout=REACT_S, what="the replica deregistered"
    )
    deregistered = time.monotonic()
    wait_until(
        lambda: not cluster.containers(service_name),
        timeout=REMOVAL_S + 5,
        what="the drained replica stopped",
    )
    drained = time.monotonic() - deregistered
    # Seen deregistered late by up to a poll and a read, so the drain seen here is a little short of 5 s.
    assert drained >= 3.5, f"stopped {drained:.1f}s after its deregistration: not its manifest's 5 s drain"


def test_scale_up_down_and_delete_leave_foreign_containers_alone(
    cluster: Cluster, service_name: str, foreign_container: docker.models.containers.Container
) -> None:
    """Scale to 4, then 1, then delete the key: containers and registrations follow; others are untouched."""
    started_at = foreign_container.attrs["State"]["StartedAt"]
    cluster.put(service_name, 4)
    cluster.wait_converged(service_name, 4)
    assert cluster.per_host(service_name) == {"host-1": 2, "host-2": 2}

    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1)

    cluster.delete(service_name)
    wait_until(
        lambda: (
            not cluster.containers(service_name, all_states=True) and not cluster.registrations(service_name)
        ),
        timeout=REMOVAL_S,
        what="every container drained and deregistered",
    )
    wait_until(
        lambda: (
            cluster.status(service_name, "host-1") is None and cluster.status(service_name, "host-2") is None
        ),
        timeout=REACT_S,
        what="status keys removed",
    )
    foreign_container.reload()
    assert foreign_container.status == "running"
    assert foreign_container.attrs["State"]["StartedAt"] == started_at


def test_killed_replica_is_replaced(cluster: Cluster, service_name: str) -> None:
    """`docker kill` of a replica: a new one runs and passes in its place."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    victim = cluster.containers(service_name)[0]
    victim.kill()
    wait_until(
        lambda: victim.name not in {c.name for c in cluster.containers(service_name)},
        timeout=REACT_S,
        what="the kill",
    )
    cluster.wait_converged(service_name, 2)
    assert victim.name not in {i.service_id for i in cluster.registrations(service_name)}


def test_leader_killed_other_agent_takes_over(cluster: Cluster, service_name: str) -> None:
    """kill -9 of the leader agent: the other agent takes the lock and keeps converging."""
    wait_until(cluster.leader, timeout=NEW_LEADER_S, what="a leader")
    old = cluster.leader()
    assert old in ("host-1", "host-2")
    new = "host-2" if old == "host-1" else "host-1"
    try:
        cluster.kill(f"agent-{old}", signal.SIGKILL)
        wait_until(lambda: cluster.leader() == new, timeout=NEW_LEADER_S, what=f"{new} to lead")
        # Only the new leader can place: a service placed after the kill proves it schedules.
        cluster.put(service_name, 1, placement={"hosts": [new]})
        cluster.wait_converged(service_name, 1)
        assert cluster.per_host(service_name) == {new: 1}
    finally:
        both_agents_up(cluster)


def test_restarting_both_agents_changes_no_container(cluster: Cluster, service_name: str) -> None:
    """SIGTERM both agents and start them again: every container keeps running, none is started."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    before = {c.id for c in cluster.containers(service_name)}
    with cluster.recording_events(service_name) as events:
        for host in ("host-1", "host-2"):
            cluster.kill(f"agent-{host}", signal.SIGTERM)
        assert {c.id for c in cluster.containers(service_name)} == before, (
            "SIGTERM must leave containers running"
        )
        both_agents_up(cluster)
        # A few more passes, on every wake-up source, before we look.
        cluster.put(service_name, 2, drain="600ms")
        cluster.wait_passes(time.time())
    assert {c.id for c in cluster.containers(service_name)} == before
    touched = [action for _, action in events if action in ("create", "start", "stop", "kill", "destroy")]
    assert touched == [], f"containers were touched: {touched}"


def test_invalid_manifest_leaves_containers_untouched(cluster: Cluster, service_name: str) -> None:
    """Bad YAML, bad fields, a name that does not match its key: containers stay, status shows the error."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    before = {c.id for c in cluster.containers(service_name)}
    bad_inputs = {  # kind: (manifest text, a part of the error the status must show)
        "yaml": ("name: [unclosed\n", "YAML syntax error at line"),
        "fields": (f"name: {service_name}\nimage: hello:local\nreplicas: true\nreplica: 3\n", "replica"),
        "name": ("name: someone-else\nimage: hello:local\nreplicas: 0\n", "name: must equal its key"),
    }
    for kind, (text, expected) in bad_inputs.items():
        cluster.put_raw(service_name, text)
        for host in ("host-1", "host-2"):
            wait_until(
                lambda: (
                    cluster.status_error(service_name, host).startswith("Invalid: ")  # noqa: B023
                    and expected in cluster.status_error(service_name, host)  # noqa: B023
                ),
                timeout=REACT_S,
                what=f"the {kind} error in {host}'s status",
            )
        assert {c.id for c in cluster.containers(service_name)} == before, f"{kind}: containers changed"
        assert len(cluster.passing(service_name)) == 2
    # A valid manifest again: the service is managed again, with the same containers.
    cluster.put(service_name, 2)
    wait_until(
        lambda: cluster.status(service_name, "host-1")["error"] == "", timeout=REACT_S, what="error cleared"
    )
    assert {c.id for c in cluster.containers(service_name)} == before


# Failed attempts observed (a retry after each): the delays 1, 2, 4 and 8 s.
ATTEMPTS = 5
# How much later than its back-off a retry may begin: the pass that sees the failure
# (a crash is looked at again 50 ms, 200 ms and 1 s after Docker's event) and the pass
# at the deadline. Measured 0.0-0.3 s.
RETRY_SLACK = 3.0
# How much earlier it may seem to begin: a failed start is counted at the end of the
# pass that set its deadline, and the count is sampled every 50 ms. Measured 0.07 s.
RETRY_EARLY = 0.4


def failure_times(cluster: Cluster, service: str, attempts: int) -> list[float]:
    """When host-1's agent counted the 1st, 2nd ... failure in a row of ``service`` (monotonic seconds)."""
    times: list[float] = []
    for failures in range(1, attempts + 1):
        wait_until(
            lambda: (
                cluster.metric("host-1", "operator_consecutive_failures", service=service, host="host-1")
                >= failures  # noqa: B023
            ),
            timeout=backoff_delay(failures - 1) + RETRY_SLACK + REACT_S,
            what=f"failure {failures} in a row",
            interval=0.05,
        )
        times.append(time.monotonic())
    return times


def assert_host_backoff(delays: list[float]) -> None:
    """The delays are the host agent's back-off after 1, 2 ... failures (`reconcile.backoff_delay`)."""
    wanted = [backoff_delay(n) for n in range(1, len(delays) + 1)]
    assert_backs_off(delays, wanted, early=RETRY_EARLY, late=RETRY_SLACK)


def test_missing_image_is_reported_and_backed_off(cluster: Cluster, service_name: str) -> None:
    """A missing image: no container is left behind, the error shows, retries come after 1, 2, 4, 8 s."""
    # A registry on a closed loopback port: the pull fails at once, without leaving this machine.
    cluster.put(service_name, 1, image="127.0.0.1:9/missing/image:v1", placement={"hosts": ["host-1"]})
    wait_until(
        lambda: "image" in str((cluster.status(service_name, "host-1") or {}).get("error", "")),
        timeout=REACT_S,
        what="the image error in status",
    )
    times = failure_times(cluster, service_name, ATTEMPTS)
    assert_host_backoff([b - a for a, b in itertools.pairwise(times)])
    assert cluster.containers(service_name, all_states=True) == []


def test_crashing_container_is_backed_off(cluster: Cluster, service_name: str) -> None:
    """A container that exits at once comes back 1, 2, 4, 8 s after each exit; status says it crash-loops."""
    with cluster.recording_events(service_name) as events:
        cluster.put(service_name, 1, command=["false"], placement={"hosts": ["host-1"]})
        wait_until(
            lambda: sum(1 for _, action in events if action == "die") >= ATTEMPTS,
            timeout=sum(backoff_delay(n) + RETRY_SLACK for n in range(ATTEMPTS)) + CONVERGE_S,
            what=f"{ATTEMPTS} crashes",
        )
        wait_until(
            lambda: "crash-looping" in cluster.status_error(service_name, "host-1"),
            timeout=REACT_S,
            what="crash-looping in status",
        )
    dies = [at for at, action in events if action == "die"]
    creates = [at for at, action in events if action == "create"]
    # From each exit to the next container's creation: the back-off of that many crashes.
    assert_host_backoff([next(c for c in creates if c > die) - die for die in dies[: ATTEMPTS - 1]])
    assert len(creates) <= ATTEMPTS + 1, f"{len(creates)} containers for {len(dies)} crashes"


def test_ex_leader_cannot_write_placements(cluster: Cluster) -> None:
    """A fenced write from a session that lost the lock fails with NotLeader and changes nothing."""
    consul = ConsulClient(cluster.staging.consul_addr("host-3"))
    prefix = f"fencing-test-{uuid.uuid4().hex[:8]}"
    lock, target = f"{prefix}/leader", f"{prefix}/placement/x"
    old = consul.session_create("old leader", checks=["serfHealth"], lock_delay=0)
    assert consul.kv_acquire(lock, b"old", old)
    consul.fenced_write(lock, old, {target: b"from-old"})

    consul.session_destroy(old)  # what a missed TTL does to a paused leader
    new = consul.session_create("new leader", checks=["serfHealth"], lock_delay=0)
    wait_until(
        lambda: consul.kv_acquire(lock, b"new", new), timeout=NEW_LEADER_S, what="the new leader's lock"
    )
    consul.fenced_write(lock, new, {target: b"from-new"})

    with pytest.raises(NotLeader):
        consul.fenced_write(lock, old, {target: b"stale"})
    entry = consul.kv_get(target, consistent=True).value
    assert entry is not None and entry.value == b"from-new"
    consul.session_destroy(new)
    consul.kv_delete(prefix, recurse=True)


def test_consul_outage_starts_and_stops_nothing(cluster: Cluster, service_name: str) -> None:
    """All Consul servers down: containers keep running untouched; convergence resumes when they return."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    before = {c.id for c in cluster.containers(service_name)}
    # The agent woken below is the victim's: its Docker event is what makes it look
    # (the test environment's resync, 600 s, never would within the bound).
    victim = cluster.containers(service_name)[0]
    host = victim.labels[LABEL_HOST]
    errors_before = cluster.metric(
        host, "operator_reconcile_errors_total", loop="host", reason="consul_unavailable"
    )
    pids = [cluster.kill(f"consul-{h}", signal.SIGTERM) for h in ("host-1", "host-2", "host-3")]
    try:
        assert not any(pid_alive(p) for p in pids)
        # Wake the agent (a Docker event) while Consul is away: it must not act.
        victim.kill()
        wait_until(
            lambda: (
                cluster.metric(
                    host, "operator_reconcile_errors_total", loop="host", reason="consul_unavailable"
                )
                > errors_before
            ),
            timeout=REACT_S,
            what="the agents to notice the outage",
        )
        survivors = {c.id for c in cluster.containers(service_name, all_states=True)}
        assert survivors == before, "no container may be started or removed while Consul is away"
    finally:
        cluster.staging.run("up")
    cluster.wait_converged(service_name, 2, timeout=CONSUL_RETURN_S)
    after = {c.id for c in cluster.containers(service_name)}
    assert after & before == before - {victim.id}, (
        f"the survivor keeps running; only the killed replica is replaced: before={sorted(before)}"
        f" victim={victim.id} after={sorted(after)}"
    )


def test_sigterm_gives_the_lock_up_at_once(cluster: Cluster) -> None:
    """A leader stopped with SIGTERM has released operator/leader by the time it has exited."""
    wait_until(cluster.leader, timeout=NEW_LEADER_S, what="a leader")
    old = cluster.leader()
    old_session = cluster.consul.kv_get("operator/leader", consistent=True).value
    assert old_session is not None
    try:
        cluster.kill(f"agent-{old}", signal.SIGTERM)
        entry = cluster.consul.kv_get("operator/leader", consistent=True).value
        assert entry is None or entry.session != old_session.session, "the lock outlived its holder"
        assert cluster.consul.session_info(str(old_session.session)) is None, "the session outlived its agent"
    finally:
        both_agents_up(cluster)


# The leader's own writes, by their log events (scheduler.py): none may come from an ex-leader.
LEADER_WRITES = frozenset(
    {"placements written", "removing status records of lost hosts", "rollout started", "rollout"}
)


def test_paused_leader_steps_down_and_writes_nothing(cluster: Cluster, service_name: str) -> None:
    """The leader paused (SIGSTOP) past its TTL: another leads; resumed, it steps down and writes nothing."""
    wait_until(cluster.leader, timeout=30, what="a leader")
    old = cluster.leader()
    assert old in ("host-1", "host-2")
    new = "host-2" if old == "host-1" else "host-1"
    wait_until(lambda: cluster.metric(old, "operator_is_leader", host=old) == 1, timeout=30, what="the gauge")
    log = cluster.staging.run_dir / "logs" / f"agent-{old}.log"
    pid = cluster.agent_pid(old)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: cluster.leader() == new, timeout=60, what=f"{new} to lead")
        # A decision the paused leader knows nothing of, placed by the new one (on the only live host).
        cluster.put(service_name, 1)
        cluster.wait_converged(service_name, 1)
        placement = cluster.consul.kv_get(cluster.layout.placement_key(service_name), consistent=True).value
        assert placement is not None
        mark = log_size(log)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.time()
    wait_until(lambda: cluster.metric(old, "operator_is_leader", host=old) == 0, timeout=60, what="step-down")
    # Its scheduler and host loop have run since it resumed: had it written, it would have by now.
    for loop in ("schedule", "host"):
        sync = partial(cluster.metric, old, "operator_last_successful_sync_timestamp_seconds", loop=loop)
        wait_until(lambda: sync() > resumed, timeout=60, what=f"a {loop} pass of {old} after it resumed")  # noqa: B023
    assert cluster.leader() == new
    records = json_lines(log, mark)
    assert any(r["event"] == "leadership changed" and r["leader"] is False for r in records), records
    assert not [r for r in records if r["event"] in LEADER_WRITES], records
    after = cluster.consul.kv_get(cluster.layout.placement_key(service_name), consistent=True).value
    assert after == placement, "the new leader's placement stands"
    assert cluster.converged(service_name, 1)


def lifetime(cluster: Cluster, container_id: str, since: float) -> tuple[int, float]:
    """Exit code and seconds from start to death of a container, from Docker's own events."""
    events = cluster.engine.events(
        since=f"{since:.9f}",
        until=f"{time.time() + 0.5:.9f}",
        decode=True,
        filters={"type": "container", "container": container_id},
    )
    times = {}
    code = -1
    for event in events:
        if event["Action"] in ("start", "die"):
            times[event["Action"]] = event["timeNano"] / 1e9
        if event["Action"] == "die":
            code = int(event["Actor"]["Attributes"]["exitCode"])
    return code, times["die"] - times["start"]


def trap_set(container: Any) -> bool:
    """Whether the replica's shell has started ``/start.sh``, which it does after setting its trap."""
    try:
        processes = container.top()["Processes"] or []
    except docker.errors.APIError:  # not running yet, or gone
        return False
    return any("/start.sh" in " ".join(row) for row in processes)


@pytest.mark.parametrize(
    ("code", "crash"),
    [pytest.param(143, False, id="exit-143-is-no-crash"), pytest.param(1, True, id="exit-1-is-a-crash")],
)
def test_docker_stop_of_a_young_replica_is_a_crash_by_its_exit_code(
    cluster: Cluster, service_name: str, code: int, crash: bool
) -> None:
    """`docker stop` of a replica younger than 10 s: exit 143 (SIGTERM) is no crash, exit 1 is one."""
    since = time.time()
    log = cluster.staging.run_dir / "logs" / "agent-host-1.log"
    mark = log_size(log)
    # The shell that is PID 1 ends on SIGTERM with ``code``; the hello server runs beside it.
    command = ["sh", "-c", f"trap 'exit {code}' TERM; sh /start.sh & wait"]
    cluster.put(service_name, 1, command=command, placement={"hosts": ["host-1"]})
    first = wait_until(lambda: cluster.containers(service_name), timeout=60, what="a replica")[0]  # type: ignore[index]
    # The shell sets its trap before it starts the server: stopped earlier, PID 1 ignores SIGTERM
    # and Docker kills it after the timeout (exit 137; seen once on a loaded machine).
    wait_until(lambda: trap_set(first), timeout=30, what="the replica's shell past its trap")
    first.stop(timeout=5)
    exit_code, ran = lifetime(cluster, first.id, since)
    assert (exit_code, ran < 10) == (code, True), (
        f"exit {exit_code} after {ran:.1f}s: not the case under test"
    )

    def removal() -> list[dict[str, Any]]:
        return [
            r
            for r in json_lines(log, mark)
            if r["event"] == "removing dead container" and r["container"] == first.name
        ]

    wait_until(removal, timeout=60, what="the agent removing it")
    (removed,) = removal()
    assert removed["crashed"] is crash
    if crash:
        wait_until(
            lambda: cluster.status_error(service_name, "host-1").startswith(
                f"crash-looping: exited with code {code}"
            ),
            timeout=60,
            what="crash-looping in status",
        )
    cluster.wait_converged(service_name, 1)
    assert first.id not in {c.id for c in cluster.containers(service_name)}
    failures = cluster.metric("host-1", "operator_consecutive_failures", service=service_name, host="host-1")
    if not crash:
        assert failures == 0
        assert cluster.status_error(service_name, "host-1") == ""


# It disturbs every container on the engine, every worker's: `make test` runs it after the
# parallel part, alone (the engine_restart marker, pyproject.toml).
@pytest.mark.engine_restart
def test_docker_engine_restart_converges_again(cluster: Cluster, service_name: str) -> None:
    """After the Docker engine restarts (stopping every container), the agents reconnect and converge."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    before = {c.id for c in cluster.containers(service_name)}
    restart_docker_engine()
    cluster.wait_converged(service_name, 2, timeout=ENGINE_RESTART_S)
    assert not before & {c.id for c in cluster.containers(service_name)}, (
        "old containers died with the engine"
    )
