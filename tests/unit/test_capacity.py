"""What an agent advertises as its capacity, and what every container is created with."""

from __future__ import annotations

import pytest

from consul_operator.adapters.actuators.docker import host_config
from consul_operator.adapters.presence import capacities_of, capacity_meta, capacity_of
from consul_operator.core.desired_state import GI, MI, Manifest, Resources, host_capacity, parse_capacity
from consul_operator.core.model import ServiceInstance
from consul_operator.core.records import PlacementRecord, UnplacedCause, frozen_map


@pytest.mark.parametrize(
    ("memory", "cpus", "expected"),
    [
        pytest.param(16 * GI, 4, Resources(16 * GI - 1638 * MI - MI, 3600), id="ten-percent"),
        pytest.param(2 * GI, 2, Resources(2 * GI - 256 * MI, 1800), id="at-least-256Mi-reserved"),
        pytest.param(200 * MI, 1, Resources(0, 900), id="tiny-host-has-no-memory-left"),
        pytest.param(4 * GI + 12345, 3, Resources(3686 * MI, 2700), id="rounded-down-to-whole-Mi"),
    ],
)
def test_default_capacity_is_the_host_less_a_reserve(memory: int, cpus: int, expected: Resources) -> None:
    """By default an agent offers its engine's memory and CPUs less 10% (at least 256Mi of memory)."""
    assert host_capacity(memory, cpus) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("memory=8Gi,cpus=4", (8 * GI, 4000), id="both"),
        pytest.param("cpus=1.5", (None, 1500), id="cpus-only"),
        pytest.param("memory=512Mi", (512 * MI, None), id="memory-only"),
        pytest.param(" memory=1Gi , cpus=2 ", (GI, 2000), id="spaces"),
    ],
)
def test_capacity_flag_parses(text: str, expected: tuple[int | None, int | None]) -> None:
    """--capacity names memory, CPUs or both; what it leaves out comes from the host."""
    assert parse_capacity(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("memory=8G", "did you mean 8Gi?", id="decimal-unit"),
        pytest.param("cpus=0", "more than 0", id="zero-cpus"),
        pytest.param("disk=10Gi", "looks like memory=8Gi,cpus=4", id="unknown-key"),
        pytest.param("memory=1Gi,memory=2Gi", "each once", id="twice"),
        pytest.param("cpus", "looks like", id="no-value"),
    ],
)
def test_bad_capacity_flag_is_refused(text: str, message: str) -> None:
    """A capacity flag the agent cannot read is a usage error naming the fix."""
    with pytest.raises(ValueError, match=message):
        parse_capacity(text)


def _agent(host: str, **meta: str) -> ServiceInstance:
    meta = {"host": host, "cluster": "c", **meta}
    return ServiceInstance(
        "n", "127.0.0.1", f"operator-agent-{host}", "operator-agent", "127.0.0.1", 0, meta, "passing"
    )


def test_capacity_round_trips_through_the_agents_meta() -> None:
    """An agent's capacity is written into and read back from its presence meta, readable by people."""
    capacity = Resources(7680 * MI, 1800)
    meta = capacity_meta(capacity)
    assert meta == {"capacity-memory": "7680Mi", "capacity-cpus": "1.8"}
    assert capacity_of(meta) == capacity


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param({}, id="older-agent-without-capacity"),
        pytest.param({"capacity-memory": "8Gi"}, id="half-a-capacity"),
        pytest.param({"capacity-memory": "lots", "capacity-cpus": "4"}, id="unreadable"),
    ],
)
def test_host_without_a_readable_capacity_is_unlimited(meta: dict[str, str]) -> None:
    """An agent that advertises no (readable) capacity has none: the scheduler treats it as unlimited."""
    assert capacities_of(
        [_agent("host-1", **meta), _agent("host-2", **capacity_meta(Resources(GI, 1000)))]
    ) == {"host-2": Resources(GI, 1000)}


def test_every_container_gets_limits_and_safe_defaults() -> None:
    """Memory without extra swap, a CPU quota, the pids limit, no-new-privileges, no restart, a capped log;
    every capability dropped but CHOWN, SETGID and SETUID; a writable root without tmpfs by default."""
    manifest = Manifest("web", "hello:local", 1, resources=Resources(300 * MI, 250), pids_limit=200)
    assert host_config(manifest) == {
        "cap_drop": ["ALL"],
        "cap_add": ["CHOWN", "SETGID", "SETUID"],
        "read_only": False,
        "tmpfs": {},
        "mem_limit": 300 * MI,
        "memswap_limit": 300 * MI,
        "nano_cpus": 250_000_000,
        "pids_limit": 200,
        "security_opt": ["no-new-privileges"],
        "restart_policy": {"Name": "no"},
        "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
    }


def test_placement_record_carries_why_replicas_are_unplaced() -> None:
    """The cause and reason survive KV; a fully placed record keeps the form it had before them."""
    record = PlacementRecord(
        "web", "abc", frozen_map({"h1": 1}), 1, cause=UnplacedCause.CPUS, reason="h2: cpus 0 free"
    )
    assert PlacementRecord.from_json(record.to_json()) == record
    placed = PlacementRecord("web", "abc", frozen_map({"h1": 1}))
    assert b"cause" not in placed.to_json() and b"reason" not in placed.to_json()
    assert PlacementRecord.from_json(placed.to_json()) == placed
    odd = PlacementRecord.from_json(
        b'{"service":"web","spec_hash":"a","hosts":{},"unplaced":1,"cause":"disk"}'
    )
    assert odd.cause == UnplacedCause.NONE
