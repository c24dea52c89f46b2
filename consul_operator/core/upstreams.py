"""What the load balancer serves, as pure data: services and their vetted servers.

Anyone who can write to Consul's catalog can register anything, so catalog
data is *whitelisted*, never escaped, before it reaches NGINX's config (the
lesson of ingress-nginx's configuration-injection CVEs): a service name must
be a DNS label as a whole (`desired_state.is_dns_label`: no trailing
newline, no control character), an address must be IPv4 or IPv6 *without*
a scope id (CPython accepts ``::1%x`` and keeps the scope in ``str()``;
NGINX refuses it), a port must be 1-65535. Whatever fails is left out and
reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from consul_operator.core.desired_state import is_dns_label
from consul_operator.core.model import ServiceInstance

# Bounded reasons, used as a metric label.
BAD_NAME = "bad_name"
BAD_ADDRESS = "bad_address"
BAD_PORT = "bad_port"
REJECT_REASONS = (BAD_NAME, BAD_ADDRESS, BAD_PORT)


@dataclass(frozen=True, slots=True, order=True)
class Server:
    """One upstream server, already vetted; ``hostport`` is safe to write into a config."""

    address: str
    port: int

    @property
    def hostport(self) -> str:
        """``a.b.c.d:port``, or ``[v6]:port``."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service the load balancer routes to, with its passing servers (maybe none)."""

    name: str
    servers: tuple[Server, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Catalog data left out of the config, and why."""

    service: str
    instance: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class LBView:
    """Everything the config is rendered from."""

    upstreams: tuple[Upstream, ...]
    default_service: str | None
    rejected: tuple[Rejected, ...] = ()


def parse_ip(text: object) -> str | None:
    """``text`` as a normalised IPv4 or unscoped IPv6 address, or None.

    Only a printable ASCII string qualifies (`ipaddress` also takes integers,
    and an IPv6 scope id may carry anything, a newline included).
    """
    if not isinstance(text, str) or not text.isascii() or not text.isprintable():
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


def vet_server(service: str, instance: ServiceInstance) -> Server | Rejected:
    """The instance as a `Server`, or why it cannot be one."""
    address = parse_ip(instance.address)
    if address is None:
        return Rejected(
            service,
            instance.service_id,
            BAD_ADDRESS,
            f"address {instance.address!r} is not an IPv4 or unscoped IPv6 address",
        )
    port = instance.port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return Rejected(service, instance.service_id, BAD_PORT, f"port {port!r} is not 1-65535")
    return Server(address, port)


def build_view(
    services: Iterable[str],
    instances: Mapping[str, Sequence[ServiceInstance]],
    default_service: str | None,
) -> LBView:
    """Vet every service name and passing instance; sorted, so equal input renders equal text."""
    upstreams: list[Upstream] = []
    rejected: list[Rejected] = []
    for name in sorted(set(services)):
        if not is_dns_label(name):
            rejected.append(Rejected(name, "", BAD_NAME, f"service name {name!r} is not a DNS label"))
            continue
        servers: set[Server] = set()
        for inst in instances.get(name, ()):
            vetted = vet_server(name, inst)
            if isinstance(vetted, Rejected):
                rejected.append(vetted)
            else:
                servers.add(vetted)
        upstreams.append(Upstream(name, tuple(sorted(servers))))
    default = default_service if default_service and is_dns_label(default_service) else None
    return LBView(tuple(upstreams), default, tuple(rejected))


# --- isolating what NGINX refuses ------------------------------------------------------


def restrict(view: LBView, names: Collection[str]) -> LBView:
    """``view`` with only the services in ``names`` (the default server too, if its service is one)."""
    default = view.default_service if view.default_service in names else None
    return LBView(tuple(up for up in view.upstreams if up.name in names), default, view.rejected)


def find_faulty(names: Sequence[str], passes: Callable[[frozenset[str]], bool]) -> frozenset[str]:
    """The services that make ``passes`` fail, by bisection: O(k log n) tests for k faulty of n.

    ``passes(group)`` tests a config of only that group of services; the whole of
    ``names`` is known to fail. A group that fails while both its halves pass
    (services at fault only together) yields no culprit: the caller's final
    test of the config it builds catches that.
    """
    faulty: set[str] = set()

    def search(group: Sequence[str], known_bad: bool) -> None:
        if not group or (not known_bad and passes(frozenset(group))):
            return
        if len(group) == 1:
            faulty.add(group[0])
            return
        middle = len(group) // 2
        search(group[:middle], False)
        search(group[middle:], False)

    search(sorted(set(names)), True)
    return frozenset(faulty)


def substitute(view: LBView, faulty: Collection[str], last_good: Mapping[str, Upstream]) -> LBView:
    """``view`` with each faulty service's upstream replaced by its last good one, or none (503)."""
    upstreams = tuple(
        (last_good.get(up.name) or Upstream(up.name, ())) if up.name in faulty else up
        for up in view.upstreams
    )
    return LBView(upstreams, view.default_service, view.rejected)


# --- holding the last good upstream while status records are missing -------------------

HOLD_LAST_GOOD: Final = 60.0
"""Seconds a service keeps its last good upstream at most (``operator lb --hold-last-good``)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A service served at its last good upstream since ``since`` (clock seconds); ``expired``
    once ``hold_for`` has run out (it is then served as it is, until it has servers again)."""

    since: float
    expired: bool = False


@dataclass(frozen=True, slots=True)
class HoldDecision:
    """The upstreams to serve, the holds for the next pass, and what changed (to log and count)."""

    view: LBView
    holds: Mapping[str, Hold]
    started: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    wake_at: float | None = None


def hold_last_good(
    view: LBView,
    unreported: Mapping[str, Collection[Server]],
    last_good: Mapping[str, Upstream],
    holds: Mapping[str, Hold],
    now: float,
    hold_for: float = HOLD_LAST_GOOD,
) -> HoldDecision:
    """Keep serving a service whose owned instances dropped to none while Consul still shows them passing.

    Ownership counts an instance only when its agent lists it in its status
    record (`ownership.owned`); records deleted (an admin's clean-up, a
    snapshot restore) made NGINX answer 503 for healthy replicas until their
    agents wrote them again. So a service with no owned server now, whose
    last good upstream's servers are still passing but ``unreported``
    (rejected only for the missing record), is served at those servers, for
    ``hold_for`` seconds at most from when it started; then as it is (503),
    until it has owned servers again. Never a server that is not passing
    now, never one that was not in the last good upstream: a forged
    registration gains nothing.
    """
    upstreams: list[Upstream] = []
    kept: dict[str, Hold] = {}
    started: list[str] = []
    expired: list[str] = []
    wakes: list[float] = []
    for up in view.upstreams:
        previous = last_good.get(up.name)
        passing = set(unreported.get(up.name, ()))
        keep = tuple(s for s in previous.servers if s in passing) if previous and not up.servers else ()
        if not keep:
            upstreams.append(up)
            continue
        hold = holds.get(up.name) or Hold(now)
        if up.name not in holds:
            started.append(up.name)
        if now - hold.since < hold_for:
            upstreams.append(Upstream(up.name, keep))
            wakes.append(hold.since + hold_for)
        else:
            if not hold.expired:
                expired.append(up.name)
                hold = Hold(hold.since, expired=True)
            upstreams.append(up)
        kept[up.name] = hold
    return HoldDecision(
        LBView(tuple(upstreams), view.default_service, view.rejected),
        kept,
        tuple(started),
        tuple(expired),
        min(wakes) if wakes else None,
    )
