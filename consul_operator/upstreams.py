"""What the load balancer serves, as pure data: services and their vetted servers.

Anyone who can write to Consul's catalog can register anything, so catalog
data is *whitelisted*, never escaped, before it reaches NGINX's config (the
lesson of ingress-nginx's configuration-injection CVEs): a service name must
be a DNS label, an address must parse as an IP address, a port must be
1-65535. Whatever fails is left out and reported.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from consul_operator.consul_client import ServiceInstance

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

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


def vet_server(service: str, instance: ServiceInstance) -> Server | Rejected:
    """The instance as a `Server`, or why it cannot be one."""
    try:
        address = str(ipaddress.ip_address(instance.address))
    except ValueError:
        return Rejected(
            service, instance.service_id, BAD_ADDRESS, f"address {instance.address!r} is not an IP"
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
        if not DNS_LABEL.match(name):
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
    default = default_service if default_service and DNS_LABEL.match(default_service) else None
    return LBView(tuple(upstreams), default, tuple(rejected))
