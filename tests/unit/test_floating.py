"""The LB hosts and their floating address: registrations read, holders judged, `ip` parsed, presence kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from consul_operator.adapters.consul_client import Indexed
from consul_operator.adapters.lb_presence import LBPresence
from consul_operator.core.errors import ConsulUnavailable
from consul_operator.core.floating import (
    LB_SERVICE,
    LBHost,
    LBState,
    addresses_in,
    floating_problems,
    lb_hosts,
    lb_meta,
    lb_service_id,
)
from consul_operator.core.model import ServiceInstance
from consul_operator.core.status import StatusView, render_table, to_json

VIP = "198.18.9.100"


def lb(node: str, *, holds: bool = False, live: bool = True, floating: str = VIP) -> LBHost:
    return LBHost(node, f"10.0.0.{node[-1]}", "0.0.0.0:80", floating, holds, live)


@pytest.mark.parametrize(
    ("host", "state"),
    [
        pytest.param(lb("host-3", holds=True), LBState.ACTIVE, id="live-and-holds-is-active"),
        pytest.param(lb("host-3"), LBState.STANDBY, id="live-without-it-is-standby"),
        pytest.param(lb("host-3", holds=True, live=False), LBState.DOWN, id="down-whatever-it-last-said"),
        pytest.param(lb("host-3", floating=""), LBState.LIVE, id="single-lb-without-floating-address"),
    ],
)
def test_lb_state(host: LBHost, state: LBState) -> None:
    """An LB is active only while live and holding the address; a down one is down whatever it last said."""
    assert host.state is state


@pytest.mark.parametrize(
    ("lbs", "problems"),
    [
        pytest.param([lb("host-3", holds=True), lb("host-4")], (), id="one-holder"),
        pytest.param(
            [lb("host-3"), lb("host-4")], (f"no load balancer holds the floating address {VIP}",), id="none"
        ),
        pytest.param(
            [lb("host-3", holds=True), lb("host-4", holds=True)],
            (f"the floating address {VIP} is held by 2: host-3, host-4",),
            id="both",
        ),
        pytest.param(
            [lb("host-3", holds=True, live=False), lb("host-4", holds=True)],
            (),
            id="a-down-lb-does-not-count",
        ),
        pytest.param(
            [lb("host-3", holds=True, live=False), lb("host-4")],
            (f"no load balancer holds the floating address {VIP}",),
            id="only-the-down-one-said-it-held",
        ),
        pytest.param([lb("host-3", floating="")], (), id="no-floating-address-no-problem"),
        pytest.param([], (), id="no-lb"),
    ],
)
def test_floating_problems(lbs: list[LBHost], problems: tuple[str, ...]) -> None:
    """Exactly one live holder per floating address is fine; none or several is named."""
    assert floating_problems(lbs) == problems


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(), st.booleans()), max_size=6))
def test_floating_problems_property_one_live_holder_is_the_only_quiet_case(
    hosts: list[tuple[str, bool, bool]],
) -> None:
    """For every set of LBs: no problem exactly when no live LB has the address or one live LB holds it."""
    lbs = [LBHost(f"host-{i}", "", "", VIP, holds, live) for i, (_, holds, live) in enumerate(hosts)]
    live = [x for x in lbs if x.live]
    holders = [x for x in live if x.holds]
    assert (floating_problems(lbs) == ()) == (not live or len(holders) == 1)


def instance(node: str, meta: Mapping[str, str], *, service_id: str | None = None) -> ServiceInstance:
    sid = service_id if service_id is not None else lb_service_id(meta["cluster"], meta["listen"])
    return ServiceInstance(node, "10.0.0.3", sid, LB_SERVICE, "", 0, meta, "passing")


def test_lb_hosts_reads_own_registrations_of_the_cluster_only() -> None:
    """Registrations of another cluster and look-alikes (an ID not of its meta) are left out."""
    ours = instance("host-3", lb_meta("prod", "0.0.0.0:80", VIP, True))
    other = instance("host-5", lb_meta("test", "0.0.0.0:80", VIP, True))
    forged = instance("host-6", lb_meta("prod", "0.0.0.0:80", VIP, True), service_id="operator-lb-x")
    found = lb_hosts([forged, other, ours], "prod")
    assert found == (LBHost("host-3", "10.0.0.3", "0.0.0.0:80", VIP, True, True),)
    assert {x.node for x in lb_hosts([forged, other, ours], None)} == {"host-3", "host-5"}


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "198.18.9.13", "prefixlen": 24},
                {"family": "inet", "local": VIP, "prefixlen": 24},
            ],
        },
    ]
)


def test_addresses_in_reads_every_interface() -> None:
    """Every ``local`` of every interface of ``ip -j addr show``; junk inside is skipped."""
    assert addresses_in(IP_JSON) == {"127.0.0.1", "198.18.9.13", VIP}
    assert addresses_in('[{"addr_info": "x"}, 3, {"addr_info": [{"local": 5}]}]') == frozenset()


@pytest.mark.parametrize("text", ["", "not json", '{"a": 1}'], ids=["empty", "not-json", "not-a-list"])
def test_addresses_in_refuses_what_is_not_ip_output(text: str) -> None:
    """Output that is not ``ip -j``'s is a clear ValueError, never an empty set (read as 'not held')."""
    with pytest.raises(ValueError, match="ip -j addr show"):
        addresses_in(text)


@dataclass
class FakeRegistrar:
    """The calls of `ConsulClient` that `LBPresence` makes, recorded; the catalog syncs at once
    unless ``lagging`` (a local agent whose anti-entropy sync failed)."""

    registered: list[dict[str, Any]] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    catalog: list[ServiceInstance] = field(default_factory=list)
    lagging: bool = False

    def register_service(self, definition: Mapping[str, Any], *, timeout: float | None = None) -> None:
        self.registered.append(dict(definition))
        if not self.lagging:
            self.catalog = [
                ServiceInstance(
                    node="host-4",
                    service_id=definition["ID"],
                    service=definition["Name"],
                    node_address="198.18.9.14",
                    address="198.18.9.14",
                    port=0,
                    meta=dict(definition["Meta"]),
                    status="passing",
                )
            ]

    def check_pass(self, check_id: str, note: str = "", *, timeout: float | None = None) -> None:
        self.passed.append(check_id)

    def agent_node_name(self) -> str:
        return "host-4"

    def health_service(self, service: str) -> Indexed[list[ServiceInstance]]:
        return Indexed(1, list(self.catalog))


def held(address: str) -> float | None:
    return REGISTRY.get_sample_value("operator_lb_floating_address_held", {"address": address})


def test_presence_follows_the_address_into_the_gauge_and_the_registration() -> None:
    """Taking the address sets the gauge and re-registers with ``holds``; a TTL beat otherwise."""
    address = "198.18.9.101"
    on_host: set[str] = {"198.18.9.13"}
    consul = FakeRegistrar()
    presence = LBPresence(
        consul, cluster="prod", listen="0.0.0.0:80", floating=address, addresses=lambda: frozenset(on_host)
    )
    presence.look()
    presence.register()
    assert held(address) == 0
    assert consul.registered[-1]["Meta"]["holds"] == "false"

    on_host.add(address)
    presence.step(beat=True)
    assert consul.passed == []  # the change was a registration, which beats too
    assert held(address) == 1
    assert consul.registered[-1]["Meta"] == lb_meta("prod", "0.0.0.0:80", address, True)
    assert consul.registered[-1]["ID"] == lb_service_id("prod", "0.0.0.0:80")
    presence.step(beat=True)
    assert len(consul.registered) == 2
    assert consul.passed == [f"{lb_service_id('prod', '0.0.0.0:80')}-ttl"]


def test_presence_keeps_what_it_knew_when_ip_fails() -> None:
    """A failing ``ip`` neither says 'not held' nor drops the gauge: the last known answer stands."""
    address = "198.18.9.102"
    answers: list[frozenset[str] | OSError] = [frozenset({address}), OSError("ip: not found")]

    def addresses() -> frozenset[str]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    presence = LBPresence(
        FakeRegistrar(), cluster="c", listen="0.0.0.0:80", floating=address, addresses=addresses
    )
    assert presence.look() is True
    assert presence.look() is True
    assert held(address) == 1


def test_status_shows_the_lb_hosts_and_the_active_one() -> None:
    """The status table lists each LB host with its state, and names a floating address nobody holds."""
    view = StatusView(0.0, None, None, (), (), (lb("host-3", holds=True), lb("host-4")))
    table = render_table(view, color=False)
    assert [line.split()[0::4] for line in table.splitlines() if line.startswith("host-")] == [
        ["host-3", "active"],
        ["host-4", "standby"],
    ]
    assert "!" not in table
    both = StatusView(0.0, None, None, (), (), (lb("host-3", holds=True), lb("host-4", holds=True)))
    assert f"  ! the floating address {VIP} is held by 2: host-3, host-4" in render_table(both, color=False)
    body = to_json(view)["load_balancers"]
    assert isinstance(body, list)
    assert [(x["node"], x["state"], x["holds"]) for x in body] == [
        ("host-3", "active", True),
        ("host-4", "standby", False),
    ]


def test_presence_registers_again_while_the_catalog_lags_its_registration() -> None:
    """An address taken while the local agent cannot sync: registered again every 2 s until the
    catalog (what `operator status` reads) shows it held, then only beats."""
    address = "198.18.9.103"
    on_host: set[str] = set()
    now = [100.0]
    consul = FakeRegistrar()
    presence = LBPresence(
        consul,
        cluster="prod",
        listen="0.0.0.0:80",
        floating=address,
        addresses=lambda: frozenset(on_host),
        clock=lambda: now[0],
    )
    presence.step(beat=True)
    assert [r["Meta"]["holds"] for r in consul.registered] == ["false"]
    consul.lagging = True
    on_host.add(address)
    presence.step(beat=False)
    assert [r["Meta"]["holds"] for r in consul.registered] == ["false", "true"]
    now[0] += 1.0
    presence.step(beat=False)  # 1 s: the sync may still come
    assert len(consul.registered) == 2
    now[0] += 1.5
    with capture_logs() as logs:
        presence.step(beat=False)  # 2.5 s unseen: register again, the agent syncs again
    assert [r["Meta"]["holds"] for r in consul.registered] == ["false", "true", "true"]
    assert [e["event"] for e in logs] == [
        "the catalog lags this load balancer's registration; registering again"
    ]
    consul.lagging = False
    now[0] += 2.5
    presence.step(beat=False)  # synced by this registration
    now[0] += 5.0
    presence.step(beat=True)
    presence.step(beat=True)
    assert len(consul.registered) == 4
    assert consul.catalog[0].meta["holds"] == "true"
    assert len(consul.passed) == 2


@dataclass
class AwayRegistrar(FakeRegistrar):
    """A local Consul agent that refuses while ``away``."""

    away: bool = True

    def register_service(self, definition: Mapping[str, Any], *, timeout: float | None = None) -> None:
        if self.away:
            raise ConsulUnavailable("127.0.0.1:8500 unreachable during registering: refused")
        super().register_service(definition, timeout=timeout)


def test_presence_logs_an_away_consul_once_and_registers_when_it_returns() -> None:
    """Consul away: one warning, not one per poll; back: registered again, said once."""
    consul = AwayRegistrar()
    presence = LBPresence(
        consul, cluster="c", listen="0.0.0.0:80", floating=None, addresses=lambda: frozenset()
    )
    with capture_logs() as logs:
        for _ in range(5):
            presence.step(beat=True)
        consul.away = False
        presence.step(beat=True)
        presence.step(beat=True)
    assert [entry["event"] for entry in logs] == [
        "load balancer registration failed; retrying",
        "load balancer registered again",
    ]
    assert len(consul.registered) == 1
    assert consul.passed == [f"{lb_service_id('c', '0.0.0.0:80')}-ttl"]
