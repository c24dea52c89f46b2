"""The load-balancer hosts and their floating address: who holds it, and what is wrong.

Two (or more) LB hosts share a floating address that keepalived moves between
them (VRRP; scripts/provision.sh, docs/deploy.md "Two load balancers"). Each
`operator lb` registers itself in Consul as a service ``operator-lb``
(`adapters.lb_presence`) with a TTL check it keeps passing, the address it
serves and whether its host holds that address now. From those registrations
`operator status` shows the LB hosts and which one is active, and
`floating_problems` says when none or several of the live ones hold it (the
alert ``OperatorFloatingAddressNotHeldOnce`` says the same from the metrics).

Everything here is pure: registrations and ``ip -j addr`` output in, rows and
problems out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from consul_operator.core.model import META_CLUSTER, ServiceInstance

LB_SERVICE = "operator-lb"
META_LISTEN = "listen"
META_FLOATING = "floating-address"
META_HOLDS = "holds"


def lb_service_id(cluster: str, listen: str) -> str:
    """The Consul service id of the load balancer of ``cluster`` listening on ``listen``."""
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in listen)
    return f"{LB_SERVICE}-{cluster}-{safe}"


def lb_meta(cluster: str, listen: str, floating: str | None, holds: bool) -> dict[str, str]:
    """What an LB registers: its cluster, where it listens, its floating address and whether it holds it."""
    meta = {META_CLUSTER: cluster, META_LISTEN: listen}
    if floating:
        meta[META_FLOATING] = floating
        meta[META_HOLDS] = "true" if holds else "false"
    return meta


class LBState(StrEnum):
    """One LB host as `operator status` shows it."""

    ACTIVE = "active"  # live and holds the floating address
    STANDBY = "standby"  # live, the floating address is on another host
    LIVE = "live"  # live, no floating address configured (a single LB)
    DOWN = "down"  # its daemon's TTL check or its node fails


@dataclass(frozen=True, slots=True)
class LBHost:
    """One registered load balancer: its Consul node and address, what it serves, what it holds."""

    node: str
    address: str
    listen: str
    floating: str  # "" without a floating address
    holds: bool
    live: bool

    @property
    def state(self) -> LBState:
        if not self.live:
            return LBState.DOWN
        if not self.floating:
            return LBState.LIVE
        return LBState.ACTIVE if self.holds else LBState.STANDBY


def lb_hosts(instances: Iterable[ServiceInstance], cluster: str | None) -> tuple[LBHost, ...]:
    """The load balancers of ``cluster`` (every cluster for None) among ``operator-lb`` instances, by node.

    Only an LB's own registration counts (`lb_service_id` of its meta); a hand-made look-alike is left out.
    """
    found: list[LBHost] = []
    for inst in instances:
        meta = inst.meta
        owner, listen = meta.get(META_CLUSTER, ""), meta.get(META_LISTEN, "")
        if (cluster is not None and owner != cluster) or inst.service_id != lb_service_id(owner, listen):
            continue
        found.append(
            LBHost(
                node=inst.node,
                address=inst.address or inst.node_address,
                listen=listen,
                floating=meta.get(META_FLOATING, ""),
                holds=meta.get(META_HOLDS) == "true",
                live=inst.status == "passing",
            )
        )
    return tuple(sorted(found, key=lambda lb: (lb.node, lb.listen)))


def floating_problems(lbs: Iterable[LBHost]) -> tuple[str, ...]:
    """Per floating address of the live LBs: none of them holds it, or more than one does."""
    holders: dict[str, list[str]] = {}
    for lb in lbs:
        if lb.live and lb.floating:
            held = holders.setdefault(lb.floating, [])
            if lb.holds:
                held.append(lb.node)
    problems: list[str] = []
    for address, nodes in sorted(holders.items()):
        if not nodes:
            problems.append(f"no load balancer holds the floating address {address}")
        elif len(nodes) > 1:
            problems.append(f"the floating address {address} is held by {len(nodes)}: {', '.join(nodes)}")
    return tuple(problems)


def addresses_in(ip_json: str) -> frozenset[str]:
    """Every address of every interface in ``ip -j addr show``'s output; ValueError when it is not that."""
    try:
        links = json.loads(ip_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not the JSON of `ip -j addr show`: {exc}") from exc
    if not isinstance(links, list):
        raise ValueError("not the JSON of `ip -j addr show`: not a list of interfaces")
    found: set[str] = set()
    for link in links:
        infos = link.get("addr_info", []) if isinstance(link, dict) else []
        for info in infos if isinstance(infos, list) else []:
            local = info.get("local") if isinstance(info, dict) else None
            if isinstance(local, str):
                found.add(local)
    return frozenset(found)
