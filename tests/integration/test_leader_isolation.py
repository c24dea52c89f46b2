"""No single manifest, write or lost host stops the leader: real Consul, Docker and agents (issue 12)."""

from __future__ import annotations

import signal
import time
import uuid

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.keys import Layout
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SERVICE
from consul_operator.daemons.leader import LeaderElection
from consul_operator.daemons.scheduler import Scheduler
from tests.support.bounds import CONVERGE_S, LOST_HOST_S, REACT_S, ROLLOUT_S
from tests.support.cluster import Cluster, manifest_yaml, operator
from tests.support.staging import wait_until

UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "1s", "deadline": "2m"}


def test_oversized_manifest_is_refused_and_other_services_are_placed(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """A 450 KB manifest is refused by the validator (size and limit named); a service put after it runs."""
    env = {f"BIG_{i}": "x" * 30_000 for i in range(15)}
    big = manifest_yaml(other_service, 1, env=env)
    assert 450_000 < len(big) < 512 * 1024  # Consul stores it; the leader could not write its revision
    cluster.put_raw(other_service, big)
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(
        lambda: "more than the limit of" in cluster.status_error(other_service, "host-1"),
        timeout=REACT_S,
        what="the size refusal in host-1's status",
    )
    error = cluster.status_error(other_service, "host-1")
    assert error.startswith("Invalid: ") and "bytes" in error, error
    assert cluster.kv_json(f"operator/placement/{other_service}") is None
    assert not cluster.consul.kv_list(f"operator/revisions/{other_service}/").value


def test_a_refused_write_blocks_only_its_own_service(cluster: Cluster) -> None:
    """Consul refuses one service's fenced write (HTTP 413): the others' land; that one backs off alone."""
    consul = ConsulClient(cluster.staging.consul_addr("host-3"))
    layout = Layout(operator_prefix=f"isolation-test-{uuid.uuid4().hex[:8]}")
    session = consul.session_create("isolation test", checks=["serfHealth"], lock_delay=0)
    try:
        assert consul.kv_acquire(layout.leader_key, b"test", session)
        # The lock is ours (acquired above), confirmed now, with a lease longer than the test.
        election = LeaderElection(consul, layout, host="isolation-test", node="", lock_delay=0, lease=600)
        election._session = session
        election._confirm(time.monotonic())
        scheduler = Scheduler(consul, layout, election, "isolation-test", lost_grace=10.0)
        writes: dict[str, bytes | None] = {
            layout.placement_key("alpha"): b'{"a":1}',
            layout.revision_key("bravo", "0123456789abcdef"): b"x" * (600 * 1024),  # over Consul's limits
            layout.placement_key("bravo"): b'{"b":1}',
            layout.placement_key("charlie"): b'{"c":1}',
        }
        written = list(scheduler.writer.write(session, writes, 100.0).keys)
        for name in ("alpha", "charlie"):
            assert layout.placement_key(name) in written
            assert consul.kv_get(layout.placement_key(name), consistent=True).value is not None
        big = layout.revision_key("bravo", "0123456789abcdef")
        assert big not in written and consul.kv_get(big, consistent=True).value is None
        backoff = scheduler.writer.backoffs["bravo"]
        assert backoff.failures == 1 and backoff.retry_at > 100.0 and "413" in backoff.last_error
        assert election.is_leader, "a refused write is not a lost lock"
        # In back-off, bravo's writes are not even tried; the others still go through.
        again = list(
            scheduler.writer.write(session, {**writes, layout.placement_key("delta"): b"{}"}, 100.1).keys
        )
        assert layout.placement_key("bravo") not in again and layout.placement_key("delta") in again
    finally:
        consul.session_destroy(session)
        consul.kv_delete(layout.operator_prefix, recurse=True)


def test_host_lost_for_good_lets_its_services_roll_out(cluster: Cluster, service_name: str) -> None:
    """host-2's agent and replicas die for good: its status records go; a v2 rollout completes."""
    cluster.put(service_name, 2, update=UPDATE)
    cluster.wait_converged(service_name, 2)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    try:
        cluster.kill("agent-host-2", signal.SIGKILL)
        labels = [
            f"{LABEL_CLUSTER}={cluster.staging.name}",
            f"{LABEL_SERVICE}={service_name}",
            f"{LABEL_HOST}=host-2",
        ]
        for container in cluster.docker.containers.list(filters={"label": labels}):
            container.kill()
        wait_until(
            lambda: (
                cluster.per_host(service_name) == {"host-1": 2} and len(cluster.passing(service_name)) == 2
            ),
            timeout=LOST_HOST_S,
            what="the lost host's replica to move to host-1",
        )
        wait_until(
            lambda: cluster.status(service_name, "host-2") is None,
            timeout=LOST_HOST_S,
            what="the leader to remove host-2's status record",
        )
        cluster.put(service_name, 2, image="hello:v2", update=UPDATE)
        wait_until(
            lambda: (cluster.kv_json(f"operator/rollout/{service_name}") or {}).get("state") == "complete",
            timeout=ROLLOUT_S,
            what="the v2 rollout to complete",
        )
        waited = operator(cluster, "wait", service_name, "--timeout", f"{CONVERGE_S:g}s")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        status = operator(cluster, "status", service_name)
        assert "Converged" in status.stdout, status.stdout
        images = {c.image.tags[0] for c in cluster.containers(service_name)}
        assert images == {"hello:v2"} and cluster.per_host(service_name) == {"host-1": 2}
    finally:
        cluster.staging.run("up")  # host-2's agent again, for the tests after this one
