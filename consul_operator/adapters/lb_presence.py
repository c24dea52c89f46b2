"""A load balancer's presence in Consul, and whether its host holds the floating address.

`operator lb` registers a service ``operator-lb`` on its host's Consul agent
(`floating.lb_service_id`), with a TTL check it keeps passing and, with
``--floating-address``, that address and whether this host holds it now
(`floating.lb_meta`). keepalived moves the address (VRRP, scripts/provision.sh);
this module only looks: every `POLL` seconds it asks ``ip -j addr show``
whether the address is on one of the host's interfaces, sets
``operator_lb_floating_address_held`` and, on a change, registers again with
the new meta and logs it. `operator status` reads the registrations
(`read_lbs`).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.errors import ConsulError
from consul_operator.core.floating import LB_SERVICE, LBHost, addresses_in, lb_hosts, lb_meta, lb_service_id

log = structlog.get_logger()

POLL = 0.5
"""Seconds between two looks at the interfaces: the gauge follows keepalived within this."""
TTL = 10.0
"""The registration's TTL check: a stopped LB shows as down this long after its last beat."""
IP_COMMAND = ("ip", "-j", "addr", "show")


def local_addresses() -> frozenset[str]:
    """Every address on this host's interfaces; OSError when ``ip`` fails or says something else."""
    try:
        out = subprocess.run(IP_COMMAND, capture_output=True, text=True, timeout=5, check=True).stdout
        return addresses_in(out)
    except (subprocess.SubprocessError, ValueError) as exc:
        raise OSError(f"cannot list this host's addresses with {' '.join(IP_COMMAND)}: {exc}") from exc


class Registrar(Protocol):
    """What `LBPresence` needs of `ConsulClient`: a registration and its TTL check."""

    def register_service(self, definition: Mapping[str, Any], *, timeout: float | None = None) -> None: ...

    def check_pass(self, check_id: str, note: str = "", *, timeout: float | None = None) -> None: ...


class LBPresence:
    """Registers this load balancer, keeps its TTL check passing, and follows the floating address."""

    def __init__(
        self,
        consul: Registrar,
        *,
        cluster: str,
        listen: str,
        floating: str | None,
        addresses: Callable[[], frozenset[str]] = local_addresses,
        ttl: float = TTL,
        poll: float = POLL,
    ) -> None:
        self.consul = consul
        self.cluster = cluster
        self.listen = listen
        self.floating = floating
        self.addresses = addresses
        self.ttl = ttl
        self.poll = poll
        self.service_id = lb_service_id(cluster, listen)
        self.holds: bool | None = None  # None: not looked yet (or `ip` failed so far)
        self._registered: bool | None = None  # the holds registered, None: not registered
        self._failing: set[str] = set()  # what failed last time ("ip", "consul"): logged once, not every poll

    def look(self) -> bool | None:
        """Whether this host holds the floating address now (None without one, or when ``ip`` fails)."""
        if not self.floating:
            return None
        try:
            holds = self.floating in self.addresses()
        except OSError as exc:
            if "ip" not in self._failing:
                log.error("cannot tell whether this host holds the floating address", error=str(exc))
                self._failing.add("ip")
            return self.holds
        self._failing.discard("ip")
        if holds != self.holds:
            metrics.lb_floating_address_held.labels(self.floating).set(1 if holds else 0)
            if self.holds is not None or holds:
                log.info(
                    "took the floating address" if holds else "gave up the floating address",
                    address=self.floating,
                )
            self.holds = holds
        return holds

    def register(self) -> None:
        """(Re-)register with what we hold now, the TTL check passing from the start."""
        holds = bool(self.holds)
        self.consul.register_service(
            {
                "ID": self.service_id,
                "Name": LB_SERVICE,
                "Meta": lb_meta(self.cluster, self.listen, self.floating, holds),
                "Check": {
                    "CheckID": f"{self.service_id}-ttl",
                    "Name": f"operator lb {self.listen} is alive",
                    "TTL": f"{int(self.ttl * 1000)}ms",
                    "Status": "passing",
                },
            },
            timeout=self.ttl / 3,
        )
        self._registered = holds

    def step(self, *, beat: bool) -> None:
        """One look; register again when what we hold changed (or we are not registered), else beat."""
        self.look()
        try:
            if self._registered is None or self._registered != bool(self.holds):
                self.register()
            elif beat:
                self.consul.check_pass(f"{self.service_id}-ttl", timeout=self.ttl / 3)
        except ConsulError as exc:
            # The local agent lost the registration (restarted without its data) or is away.
            self._registered = None
            if "consul" not in self._failing:
                log.warning("load balancer registration failed; retrying", error=str(exc))
                self._failing.add("consul")
            return
        if "consul" in self._failing and self._registered is not None:
            log.info("load balancer registered again")
            self._failing.discard("consul")

    def run(self, stop: threading.Event) -> None:
        """A `step` every `POLL` s, a TTL beat every third of the TTL, until ``stop``."""
        beat_every = max(1, round(self.ttl / 3 / self.poll))
        looks = 0
        while not stop.is_set():
            self.step(beat=looks % beat_every == 0)
            looks += 1
            stop.wait(self.poll)


def read_lbs(consul: ConsulClient, cluster: str | None) -> tuple[LBHost, ...]:
    """The registered load balancers of ``cluster`` (every cluster for None), live or not."""
    return lb_hosts(consul.health_service(LB_SERVICE).value, cluster)
