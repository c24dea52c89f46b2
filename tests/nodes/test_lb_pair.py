"""Two LB hosts behind a floating address (keepalived, unicast VRRP), under load, faults on the active one.

A request every 20 ms goes to the floating address (each with a 1 s timeout).
Each fault hits the LB host that holds the address at that moment:

  nginx_killed         `systemctl kill -s KILL nginx`: its keepalived check fails once,
                       the host goes to FAULT and the peer takes the address
  operator_lb_stopped  `systemctl stop operator-lb`: /healthz fails twice, the priority
                       drops by 50 and the healthy peer (higher now) takes the address
                       (NGINX kept serving the last good config meanwhile)
  isolated             cut off from every other node both ways: the peer hears no adverts
                       and takes the address after about 3.5 adverts (1.8 s); the cut-off
                       host's Consul loses its leader, so when the cut heals it finds the
                       peer at a higher priority and steps down
  node_reboot          `systemctl reboot`: keepalived stops before NGINX (its unit is
                       ordered after it) and hands the address over at once

Each reports how long requests failed (the first failed request's start to the
last one's end) and how many, with the machine's load average. Goal: at most
3 s of failed requests per fault, then none; and once the faulted host is back,
the address stays where it went (equal priorities: no flapping back).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import pytest

from consul_operator.adapters.lb_presence import read_lbs
from consul_operator.core.floating import LBState
from tests.chaos.harness import LOG_DIR
from tests.support.cluster import Cluster
from tests.support.load import Load
from tests.support.metrics import scrape
from tests.support.nodes import LB_HOSTS, Nodes
from tests.support.served import get
from tests.support.staging import wait_until

FAULTS = ("nginx_killed", "operator_lb_stopped", "isolated", "node_reboot")
GOAL = 3.0
"""Seconds of failed requests a fault may cause (the issue's goal)."""
ARP_GRACE = 1.0
"""After the peer is seen holding the address: requests started later than this must all pass."""
SETTLE = 5.0
"""How long the address is watched after a fault, and again after the faulted host returned."""
SERVICE = "pairweb"
STATUS_S = 15.0
"""How long `operator status` may lag the address (the LB re-registers every 2 s until the catalog
shows it; without that, a sync that failed in the partition waited for Consul's next full sync)."""


@dataclass
class PairFault:
    """One fault on the active LB host and what the load saw."""

    name: str
    host: str
    took_over: str | None
    moved_after: float | None  # seconds from the fault to the peer holding the address
    requests: int
    failed: int
    failed_for: float  # first failed request's start to the last one's end; 0 when none failed
    failed_after_move: int  # failed requests that started ARP_GRACE after the move
    failed_after_return: int  # failed requests while and after the faulted host returned
    stayed: bool  # the address stayed on the peer once the faulted host was back
    held_metric: tuple[float, float]  # operator_lb_floating_address_held of (faulted host, peer), after
    status_active: str | None  # the LB host `operator status` shows as active, after
    load_average: float


def other(host: str) -> str:
    return LB_HOSTS[1 - LB_HOSTS.index(host)]


def healthy(nodes: Nodes, host: str) -> bool:
    try:
        status, _ = get(nodes.address(host), "x", port=9810, path="/healthz", timeout=2)
    except OSError:
        return False
    return status == 200


def held(nodes: Nodes, host: str) -> float:
    return scrape(f"{nodes.address(host)}:9810").value(
        "operator_lb_floating_address_held", address=nodes.floating
    )


class PairRun:
    """The faults, one after the other, each under its own load."""

    def __init__(self, cluster: Cluster, nodes: Nodes) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.faults: list[PairFault] = []

    def active(self) -> str:
        holders = self.nodes.holders()
        assert len(holders) == 1, f"the floating address is held by {holders}, not by one LB host"
        return holders[0]

    def run(self, name: str) -> PairFault:
        host = self.active()
        peer = other(host)
        inject, restore = getattr(self, f"_{name}")(host)
        moved_after: float | None = None
        with Load(self.nodes.floating, SERVICE, interval=0.02, timeout=1.0, limit=600) as load:
            wait_until(lambda: len(load.outcomes) >= 25, timeout=30, what="the load to run")
            started = time.monotonic()
            inject()
            try:
                wait_until(
                    lambda: peer in self.nodes.holders(), timeout=30, what=f"{peer} to take the address"
                )
                moved_after = time.monotonic() - started
            except AssertionError:
                pass
            moved_at = time.time()
            time.sleep(SETTLE)  # the fault lasts: the peer serves alone
            restore()
            returned_at = time.time()
            stayed = self._stays_on(peer)
            time.sleep(1.0)
        outcomes = list(load.outcomes)
        failures = [o for o in outcomes if o.status != 200]
        failed_for = max(o.at for o in failures) - min(o.at - o.took for o in failures) if failures else 0.0
        fault = PairFault(
            name=name,
            host=host,
            took_over=peer if moved_after is not None else None,
            moved_after=moved_after,
            requests=len(outcomes),
            failed=len(failures),
            failed_for=round(failed_for, 2),
            failed_after_move=sum(1 for o in failures if o.at - o.took > moved_at + ARP_GRACE),
            failed_after_return=sum(1 for o in failures if o.at - o.took > returned_at),
            stayed=stayed,
            held_metric=(held(self.nodes, host), held(self.nodes, peer)),
            status_active=self._status_active(peer),
            load_average=round(os.getloadavg()[0], 2),
        )
        self.faults.append(fault)
        print(f"lb pair: {json.dumps(asdict(fault))}")
        return fault

    def _stays_on(self, peer: str) -> bool:
        """The faulted host is back (healthy); the address stays on ``peer`` for `SETTLE` s."""
        wait_until(
            lambda: self.nodes.holders() == [peer], timeout=60, what=f"{peer} alone to hold the address"
        )
        wait_until(lambda: healthy(self.nodes, other(peer)), timeout=120, what=f"{other(peer)} healthy again")
        # Metrics and registrations catch up (they poll every 0.5 s, the status read is Consul's).
        wait_until(
            lambda: held(self.nodes, peer) == 1 and held(self.nodes, other(peer)) == 0,
            timeout=30,
            what="the held gauges to follow",
        )
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if self.nodes.holders() != [peer]:
                return False
            time.sleep(0.2)
        return True

    def _status_active(self, peer: str) -> str | None:
        """The LB host(s) `operator status` shows active, once it shows ``peer`` (at most `STATUS_S` s)."""
        actives: list[str] = []

        def shows_peer() -> bool:
            nonlocal actives
            actives = [
                lb.node for lb in read_lbs(self.cluster.consul, self.nodes.name) if lb.state is LBState.ACTIVE
            ]
            return actives == [peer]

        with contextlib.suppress(AssertionError):
            wait_until(shows_peer, timeout=STATUS_S, what=f"status to show {peer} active")
        return ",".join(actives) or None

    # --- the faults: each returns (inject, restore) -------------------------------------

    def _nginx_killed(self, host: str) -> tuple[Callable[[], object], Callable[[], object]]:
        return (
            lambda: self.nodes.exec(host, "systemctl", "kill", "-s", "KILL", "nginx"),
            lambda: self.nodes.exec(host, "systemctl", "start", "nginx"),
        )

    def _operator_lb_stopped(self, host: str) -> tuple[Callable[[], object], Callable[[], object]]:
        return (
            lambda: self.nodes.exec(host, "systemctl", "stop", "operator-lb"),
            lambda: self.nodes.exec(host, "systemctl", "start", "operator-lb"),
        )

    def _isolated(self, host: str) -> tuple[Callable[[], object], Callable[[], object]]:
        return (lambda: self.nodes.isolate(host), self.nodes.heal)

    def _node_reboot(self, host: str) -> tuple[Callable[[], object], Callable[[], object]]:
        return (
            lambda: self.nodes.exec(host, "systemctl", "reboot", check=False),
            lambda: self.nodes.power_on(host),
        )


@pytest.fixture(scope="module")
def pair(node_cluster: Cluster, nodes: Nodes) -> Iterator[PairRun]:
    """A service behind both LB hosts, then each fault once on whichever holds the address."""
    node_cluster.put(SERVICE, 2, placement={"max_per_host": 1})
    node_cluster.wait_converged(SERVICE, 2, timeout=120)
    for address in (nodes.floating, *(nodes.address(h) for h in LB_HOSTS)):
        wait_until(
            lambda a=address: get(a, SERVICE, timeout=2)[0] == 200,  # type: ignore[misc]
            timeout=60,
            what=f"{SERVICE} served at {address}",
        )
    run = PairRun(node_cluster, nodes)
    try:
        for name in FAULTS:
            run.run(name)
    finally:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / "lb-pair.json").write_text(json.dumps([asdict(f) for f in run.faults], indent=2))
        nodes.heal()
    yield run
    node_cluster.delete(SERVICE)


def test_keepalived_runs_on_both_lb_hosts_with_unicast_peers(nodes: Nodes) -> None:
    """provision.sh lb installed keepalived, enabled and running, VRRP unicast to the other LB host only."""
    for host in LB_HOSTS:
        assert nodes.exec(host, "systemctl", "is-active", "keepalived", check=False).strip() == "active"
        assert nodes.exec(host, "systemctl", "is-enabled", "keepalived", check=False).strip() == "enabled"
        conf = nodes.exec(host, "cat", "/etc/keepalived/keepalived.conf")
        peers = conf.split("unicast_peer {", 1)[1].split("}", 1)[0].split()
        assert peers == [nodes.address(other(host))], conf
        assert f"unicast_src_ip {nodes.address(host)}" in conf
        assert f"{nodes.floating}/24 dev" in conf


def test_one_lb_host_holds_the_address_and_both_serve(nodes: Nodes, node_cluster: Cluster) -> None:
    """Exactly one LB host holds the floating address; both run `operator lb` and serve on their own."""
    assert len(nodes.holders()) == 1
    for host in LB_HOSTS:
        assert healthy(nodes, host), host
    lbs = read_lbs(node_cluster.consul, nodes.name)
    assert sorted(lb.node for lb in lbs) == list(LB_HOSTS)
    assert [lb.node for lb in lbs if lb.state is LBState.ACTIVE] == nodes.holders()


def test_each_fault_moves_the_address_to_the_peer(pair: PairRun) -> None:
    """Every fault on the active LB host hands the floating address to the other within 30 s."""
    assert [f.name for f in pair.faults] == list(FAULTS)
    assert [(f.name, f.took_over) for f in pair.faults] == [(f.name, other(f.host)) for f in pair.faults]


def test_each_fault_fails_requests_for_at_most_3s_then_none(pair: PairRun) -> None:
    """Requests to the floating address fail for at most 3 s per fault, and none once the peer holds it."""
    over = [(f.name, f.failed_for, f.failed) for f in pair.faults if f.failed_for > GOAL]
    assert over == [], pair.faults
    after = [(f.name, f.failed_after_move, f.failed_after_return) for f in pair.faults]
    assert after == [(f.name, 0, 0) for f in pair.faults], pair.faults


def test_the_address_stays_on_the_peer_when_the_faulted_host_returns(pair: PairRun) -> None:
    """No flapping back: once the faulted host is healthy again, the address stays where it went."""
    assert [(f.name, f.stayed) for f in pair.faults] == [(f.name, True) for f in pair.faults]


def test_metrics_and_status_follow_the_address(pair: PairRun) -> None:
    """After each fault the peer exports held=1, the returned host 0; status shows the peer active."""
    got = [(f.name, f.held_metric, f.status_active) for f in pair.faults]
    assert got == [(f.name, (0.0, 1.0), f.took_over) for f in pair.faults]
