"""Tenant text bounded where it is stored, and records that heal (issue 26, items 3 and 4, and events).

On the tests' own staging environment: real Consul, Docker and NGINX.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from consul_operator.core.events import INVALID, MAX_RECORD_BYTES, PLACED, parse_record
from consul_operator.daemons.host_agent import STATUS_CHECK_EVERY
from tests.support.bounds import CONVERGE_S, LB_UPDATE_S, REACT_S, REMOVAL_S, REPLACEMENT_S
from tests.support.cluster import Cluster
from tests.support.served import get, replica
from tests.support.staging import wait_until

POISON = "name: !" + "a" * 450_000
"""The issue's invalid manifest: a YAML tag of 450 KB, which every agent's status record quoted whole."""
HEAL_S = 5.0
"""The issue's bound: status records deleted -> written again."""


@pytest.fixture
def poison(cluster: Cluster) -> Iterator[str]:
    """A name for the 450 KB invalid manifest; deleted afterwards."""
    name = "p" + uuid.uuid4().hex[:8]
    yield name
    cluster.delete(name)


def test_poison_manifest_does_not_stop_replacements_being_served(
    cluster: Cluster, service_name: str, poison: str
) -> None:
    """With a 450 KB invalid manifest in KV, killed replicas of another service are replaced and served."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="served")
    cluster.put_raw(poison, POISON)
    leader = cluster.leader()
    assert leader is not None
    wait_until(
        lambda: cluster.scrape(leader).get("operator_manifest_valid", service=poison) == 0,
        # Parsing the poison costs 0.5 s of CPU (the strict loader, ~1 µs a byte): a kv put's bound.
        timeout=CONVERGE_S,
        what="the leader sees the invalid manifest",
    )
    old = {c.id[:12] for c in cluster.containers(service_name)}
    for container in cluster.containers(service_name):
        container.kill()
    wait_until(
        lambda: not old & {c.id[:12] for c in cluster.containers(service_name)},
        timeout=REACT_S,
        what="the kill",
    )
    wait_until(
        lambda: cluster.lb_serves(service_name, 2),
        timeout=REPLACEMENT_S + LB_UPDATE_S,
        what="the replacements served by NGINX",
    )
    # Every agent holds the poison, and says why, in a record of bounded size.
    for host in ("host-1", "host-2"):
        wait_until(
            lambda: cluster.status_error(poison, host).startswith("Invalid"),  # noqa: B023
            timeout=REACT_S,
            what=f"{host} reports the invalid manifest",
        )
        record = cluster.consul.kv_get(cluster.layout.status_key(poison, host)).value
        assert record is not None and len(record.value) <= 4096, "the problem text is cut"


def test_deleted_status_records_heal_without_container_changes(cluster: Cluster, service_name: str) -> None:
    """`kv delete -recurse operator/status/`: records back within 5 s, same containers, NGINX serving on."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="served")
    before = {c.id for c in cluster.containers(service_name)}
    held = cluster.metric("host-3", "operator_lb_held_upstreams_total", result="held")
    answers: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, body = get(cluster.lb_address, service_name)
            answers.append(replica(body) if status == 200 else f"HTTP {status}")
            stop.wait(0.05)

    prober = threading.Thread(target=load, name="prober", daemon=True)
    prober.start()
    try:
        wait_until(lambda: len(answers) >= 5, timeout=REACT_S, what="the first requests")

        def held_after_a_deletion() -> bool:
            # The agents write the records again within a status check (2 s); a loaded load
            # balancer may read only after one of them did, and then has nothing to hold. So the
            # records go again until it saw them all gone once (each time the same real fault).
            cluster.consul.kv_delete(cluster.layout.status_prefix, recurse=True)
            deadline = time.monotonic() + 2 * STATUS_CHECK_EVERY
            while time.monotonic() < deadline:
                if cluster.metric("host-3", "operator_lb_held_upstreams_total", result="held") > held:
                    return True
                stop.wait(0.1)
            return False

        # The load balancer sees the records gone and holds the last good upstream meanwhile.
        wait_until(held_after_a_deletion, timeout=REACT_S, what="the load balancer holding", interval=0)

        def healed() -> bool:
            listed = [
                set((cluster.status(service_name, host) or {}).get("instances", []))
                for host in ("host-1", "host-2")
            ]
            return set().union(*listed) == {c.name for c in cluster.containers(service_name)}

        wait_until(healed, timeout=HEAL_S, what="the status records written again")
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 10, timeout=REACT_S, what="more requests")
    finally:
        stop.set()
        prober.join(timeout=10)
    assert {c.id for c in cluster.containers(service_name)} == before, "no container changed"
    failed = [a for a in answers if a.startswith("HTTP")]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {sorted(set(failed))}"


def test_a_portless_services_status_records_are_not_rewritten_while_idle(
    cluster: Cluster, service_name: str
) -> None:
    """A service without a port (a worker): once its records are written, idle agents leave them be.

    Its replicas' marks hold port 0, which the reader used to drop: the record read back
    differed from the one written, so every status check (2 s) woke a pass that wrote
    every such record again, for as long as the service ran.
    """
    cluster.put(service_name, 2, port=None, health=None)
    keys = [cluster.layout.status_key(service_name, host) for host in ("host-1", "host-2")]

    def reported() -> bool:
        running = {c.name for c in cluster.containers(service_name)}
        listed = {name for key in keys for name in (cluster.kv_json(key) or {}).get("instances", [])}
        return len(running) == 2 and listed == running

    wait_until(reported, timeout=CONVERGE_S, what="2 portless replicas reported")
    written = {
        key: entry.modify_index for key in keys if (entry := cluster.consul.kv_get(key).value) is not None
    }
    # A window of three status checks: blocking queries on each record, which return early only
    # when something in KV changed (then the record's index is compared and the query repeated).
    index = dict(written)
    deadline = time.monotonic() + 3 * STATUS_CHECK_EVERY + 1
    while (left := deadline - time.monotonic()) > 0:
        for key, was in written.items():
            answer = cluster.consul.kv_get(key, index=index[key], wait=max(left / len(written), 0.1))
            assert answer.value is not None and answer.value.modify_index == was, f"{key} written again"
            index[key] = max(index[key], answer.index)


def test_deleted_service_takes_its_event_records_with_it(cluster: Cluster, service_name: str) -> None:
    """A service's ``operator/events/<name>/`` records go once its manifest is deleted and it is drained."""
    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1)
    prefix = f"{cluster.layout.events_prefix}{service_name}/"
    wait_until(lambda: cluster.consul.kv_list(prefix).value, timeout=REACT_S, what="event records")
    cluster.delete(service_name)
    wait_until(
        lambda: not cluster.containers(service_name, all_states=True), timeout=REMOVAL_S, what="drained"
    )
    wait_until(
        lambda: not cluster.consul.kv_list(prefix).value,
        timeout=REMOVAL_S,
        what=f"{prefix} removed",
    )


def test_distinct_invalid_manifest_events_never_stop_the_leaders_events(
    cluster: Cluster, service_name: str, poison: str
) -> None:
    """100 distinct invalid-manifest events of emoji (600 KB unbounded) keep the leader's events flowing."""
    leader = cluster.leader()
    assert leader is not None
    emoji = "%F0%9F%98%80" * 600  # a YAML tag's URI escapes: the problem quotes 600 emoji
    for i in range(100):
        seen = cluster.metric(leader, "operator_events_recorded_total", reason=INVALID)
        cluster.put_raw(poison, f"name: !t{i}{emoji}")
        wait_until(
            lambda: cluster.metric(leader, "operator_events_recorded_total", reason=INVALID) > seen,  # noqa: B023
            timeout=CONVERGE_S,
            what=f"the leader records invalid manifest {i}",
        )
    # A decision of the leader about another service is still written.
    cluster.put(service_name, 1)
    key = cluster.layout.events_key(service_name, leader)

    def placed() -> bool:
        entry = cluster.consul.kv_get(key).value
        return entry is not None and any(e.reason == PLACED for e in parse_record(entry.value))

    wait_until(placed, timeout=CONVERGE_S + 5, what=f"the leader's Placed event of {service_name}")
    record = cluster.consul.kv_get(cluster.layout.events_key(poison, leader)).value
    assert record is not None and len(record.value) <= MAX_RECORD_BYTES
    assert len(parse_record(record.value)) > 5, "the newest invalid-manifest events are kept"
