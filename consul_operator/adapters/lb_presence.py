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

A registration reaches the catalog through the local Consul agent's
anti-entropy. When that sync fails (the agent's server was cut off, as in a
partition that moved the address here), Consul retries it only at its next
full sync, up to a minute later, and `operator status` would show no active
LB meanwhile. So after each registration this module reads the catalog until
it shows what was registered, and registers again (which makes the agent sync
again) every `CONFIRM_AGAIN` seconds until it does.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient, Indexed
from consul_operator.core.errors import ConsulError
from consul_operator.core.floating import (
    LB_SERVICE,
    META_HOLDS,
    LBHost,
    addresses_in,
    lb_hosts,
    lb_meta,
    lb_service_id,
)
from consul_operator.core.model import ServiceInstance

log = structlog.get_logger()

POLL = 0.5
"""Seconds between two looks at the interfaces: the gauge follows keepalived within this."""
TTL = 10.0
"""The registration's TTL check: a stopped LB shows as down this long after its last beat."""
IP_COMMAND = ("ip", "-j", "addr", "show")
CONFIRM_AGAIN = 2.0
"""Seconds a registration may stay unseen in the catalog before it is made again."""


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

    def agent_node_name(self) -> str: ...

    def health_service(self, service: str) -> Indexed[list[ServiceInstance]]: ...


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consul = consul
        self.cluster = cluster
        self.listen = listen
        self.floating = floating
        self.addresses = addresses
        self.ttl = ttl
        self.poll = poll
        self.clock = clock
        self.service_id = lb_service_id(cluster, listen)
        self.holds: bool | None = None  # None: not looked yet (or `ip` failed so far)
        self._registered: bool | None = None  # the holds registered, None: not registered
        self._failing: set[str] = set()  # what failed last time ("ip", "consul"): logged once, not every poll
        self._node: str | None = None  # our Consul node, asked once
        self._registered_at = -float("inf")  # monotonic time of the last registration
        self._confirmed = True  # the catalog shows the last registration's holds

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
        self._registered_at = self.clock()
        self._confirmed = not self.floating  # without a floating address there is nothing to follow

    def confirm(self) -> None:
        """Until the catalog shows the registered ``holds``: look, and register again when it lags."""
        if self._confirmed or self._registered is None:
            return
        if self._node is None:
            self._node = self.consul.agent_node_name()
        mine = [
            i
            for i in self.consul.health_service(LB_SERVICE).value
            if i.node == self._node and i.service_id == self.service_id
        ]
        want = "true" if self._registered else "false"
        if mine and mine[0].meta.get(META_HOLDS) == want:
            self._confirmed = True
            return
        if self.clock() - self._registered_at >= CONFIRM_AGAIN:
            log.info("the catalog lags this load balancer's registration; registering again", holds=want)
            self.register()

    def step(self, *, beat: bool) -> None:
        """One look; register again when what we hold changed (or we are not registered), else beat."""
        self.look()
        try:
            if self._registered is None or self._registered != bool(self.holds):
                self.register()
            elif beat:
                self.consul.check_pass(f"{self.service_id}-ttl", timeout=self.ttl / 3)
            self.confirm()
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
