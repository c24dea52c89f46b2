"""Several named ports (``ports:``, ``lb_port:``): validation, the normalised form and the spec hash,
which of them the load balancer serves, and how the host plan registers each."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.desired_state import Manifest, ManifestError, manifest_from_dict, parse_manifest
from consul_operator.core.model import (
    META_EXTRA_PORT,
    META_LB,
    ContainerInfo,
    InFlight,
    Register,
    Registration,
    ServiceDesire,
    ServiceInstance,
    extra_port_id,
    load_balanced,
)
from consul_operator.core.reconcile import plan_host

HEAD = "name: web\nimage: hello:local\nreplicas: 1\n"


def problems(extra: str) -> list[str]:
    """The problems of the manifest HEAD + ``extra``."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + extra)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("extra", "primary", "port", "served"),
    [
        pytest.param("port: 5000\n", None, 5000, True, id="shorthand"),
        pytest.param("ports: {http: 5000, metrics: 9100}\n", "http", 5000, True, id="http-is-primary"),
        pytest.param("ports: {web: 8080, metrics: 9100}\nlb_port: web\n", "web", 8080, True, id="lb-port"),
        pytest.param("ports: {redis: 6379}\n", "redis", 6379, False, id="tcp-only"),
        pytest.param("ports: {b: 2, a: 1}\n", "a", 1, False, id="first-by-name"),
        pytest.param("", None, None, False, id="no-port"),
    ],
)
def test_primary_port_and_load_balancing(
    extra: str, primary: str | None, port: int | None, served: bool
) -> None:
    """The primary port is ``lb_port``'s, else ``http``'s, else the first by name; the load balancer
    serves the shorthand ``port``, a port named ``http`` or ``lb_port``, and nothing else."""
    manifest = parse_manifest(HEAD + extra)
    assert (manifest.primary_port_name, manifest.port, manifest.load_balanced) == (primary, port, served)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("port: 1\nports: {http: 2}\n", "port: give either port or ports", id="both"),
        pytest.param("ports: {}\n", "ports: must be a non-empty mapping", id="empty"),
        pytest.param(
            "ports: [5000]\n", "ports: must be a non-empty mapping of name: port, got list", id="list"
        ),
        pytest.param("ports: {Http: 5000}\n", "ports: a port name must be", id="upper-case-name"),
        pytest.param("ports: {a-very-long-port-name: 1}\n", "ports: a port name must be", id="long-name"),
        pytest.param("ports: {http: 0}\n", "ports.http: must be an integer >= 1", id="zero"),
        pytest.param("ports: {http: '80'}\n", "ports.http: must be an integer", id="string-port"),
        pytest.param("ports: {a: 1, b: 1}\n", "ports.b: port 1 is also 'a'", id="same-port-twice"),
        pytest.param(
            "ports: {a: 1}\nlb_port: b\n", "lb_port: must name one of the ports (a), got 'b'", id="lb-unknown"
        ),
        pytest.param("lb_port: http\n", "lb_port: needs ports", id="lb-without-ports"),
        pytest.param(
            "ports: {" + ", ".join(f"p{i}: {i + 1}" for i in range(17)) + "}\n",
            "ports: must have at most 16 entries",
            id="too-many",
        ),
    ],
)
def test_bad_ports_are_named(extra: str, expected: str) -> None:
    """Each bad ``ports``/``lb_port`` is refused with a problem naming its path."""
    found = problems(extra)
    assert any(expected in p for p in found), found


def test_shorthand_hashes_as_before_and_ports_change_the_hash() -> None:
    """``port: 5000`` keeps the hash it had before ``ports`` existed (the value pinned here was
    computed on the base commit); ``ports: {http: 5000}`` is another spec, and so is a new port."""
    shorthand = parse_manifest(HEAD + "port: 5000\n")
    assert "ports" not in shorthand.to_dict() and "lb_port" not in shorthand.to_dict()
    assert shorthand.spec_hash() == "637d52321a9481a4"
    named = parse_manifest(HEAD + "ports: {http: 5000}\n")
    more = parse_manifest(HEAD + "ports: {http: 5000, metrics: 9100}\n")
    assert len({shorthand.spec_hash(), named.spec_hash(), more.spec_hash()}) == 3


PORT_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(st.dictionaries(PORT_NAMES, st.integers(1, 65535), min_size=1, max_size=6))
def test_ports_round_trip_property(ports: dict[str, int]) -> None:
    """Any valid ``ports`` survives the normalised form (the revision the leader keeps) unchanged,
    and every port is published exactly once, the primary first."""
    if len(set(ports.values())) != len(ports):
        return  # two names for one port: refused (test_bad_ports_are_named)
    manifest = manifest_from_dict({"name": "web", "image": "x", "replicas": 1, "ports": ports})
    assert manifest_from_dict(manifest.to_dict()) == manifest
    assert sorted(manifest.container_ports) == sorted(ports.values())
    assert manifest.container_ports[0] == manifest.port


def _instance(meta: dict[str, str]) -> ServiceInstance:
    return ServiceInstance("n", "127.0.0.1", "web-1", "web", "127.0.0.1", 30000, meta, "passing")


@pytest.mark.parametrize(
    ("meta", "served"),
    [
        pytest.param({}, True, id="shorthand-replica"),
        pytest.param({"port": "http"}, True, id="http-replica"),
        pytest.param({"port": "metrics", META_EXTRA_PORT: "true", META_LB: "no"}, False, id="extra-port"),
        pytest.param({"port": "redis", META_LB: "no"}, False, id="tcp-service"),
    ],
)
def test_load_balancer_serves_only_http_replicas(meta: dict[str, str], served: bool) -> None:
    """NGINX gets a replica's primary registration of an HTTP service, never an extra port or a TCP
    service's replica."""
    assert load_balanced(_instance(meta)) is served


TWO = Manifest("web", "hello:1", 1, port=5000, ports=(("http", 5000), ("metrics", 9100)))
RUNNING = ContainerInfo(
    "c1",
    "web-c1",
    "web",
    TWO.spec_hash(),
    "running",
    host_port=32000,
    host_ports=((5000, 32000), (9100, 32001)),
)


def _reg(sid: str, port: int, *, extra: str = "", healthy: bool = True) -> Registration:
    return Registration(sid, "web", "c1", TWO.spec_hash(), "127.0.0.11", port, healthy, extra)


def _plan(registrations: list[Registration]) -> tuple[list[str], int]:
    """Kinds of the actions plan_host takes, and the healthy count it reports."""
    desires = {"web": ServiceDesire("web", TWO, 1)}
    result = plan_host(desires, [RUNNING], registrations, InFlight(), {}, 0.0, mono=0.0)
    kinds = [
        type(a).__name__ + ("" if not hasattr(a, "service_id") else f":{a.service_id}")
        for a in result.actions
    ]
    return kinds, result.reports[0].healthy


METRICS_ID = extra_port_id("web-c1", "metrics")


@pytest.mark.parametrize(
    ("registrations", "actions", "healthy"),
    [
        pytest.param([], ["Register"], 0, id="none-registers-all"),
        pytest.param([_reg("web-c1", 32000)], ["Register"], 1, id="extra-missing"),
        pytest.param(
            [_reg("web-c1", 32000), _reg(METRICS_ID, 32009, extra="metrics")],
            ["Register"],
            1,
            id="extra-wrong-port",
        ),
        pytest.param(
            [_reg("web-c1", 32000), _reg(METRICS_ID, 32001, extra="metrics")], [], 1, id="both-registered"
        ),
        pytest.param(
            [_reg("web-c1", 32000, healthy=False), _reg(METRICS_ID, 32001, extra="metrics")],
            [],
            0,
            id="extra-passing-is-no-healthy-replica",
        ),
        pytest.param(
            [
                _reg("web-c1", 32000),
                _reg(METRICS_ID, 32001, extra="metrics"),
                _reg("web-c1-old", 1, extra="old"),
            ],
            ["Deregister:web-c1-old"],
            1,
            id="stray-extra-deregistered",
        ),
    ],
)
def test_host_plan_registers_each_port(
    registrations: list[Registration], actions: list[str], healthy: int
) -> None:
    """A replica with ``ports`` is registered (again) until each published port is, at its host
    port; only the primary registration's health counts the replica as healthy."""
    kinds, healthy_count = _plan(registrations)
    assert kinds == actions
    assert healthy_count == healthy


def test_register_action_carries_the_manifest() -> None:
    """The Register action hands the whole manifest to the executor (which registers every port)."""
    desires = {"web": ServiceDesire("web", TWO, 1)}
    result = plan_host(desires, [RUNNING], [], InFlight(), {}, 0.0, mono=0.0)
    (action,) = result.actions
    assert isinstance(action, Register) and action.manifest == TWO
    assert dataclasses.replace(TWO, ports=()).extra_ports == ()
