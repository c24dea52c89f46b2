"""``operator lb``: NGINX upstreams that follow Consul health.

Watches (blocking queries) say *when* to look: the manifests under
``services/`` (which services exist), ``/v1/health/state/any`` (any check
changed) and ``/v1/catalog/services`` (any registration changed). Every
pass re-reads the passing instances of every service with a manifest, vets
them (`upstreams.build_view`), renders the whole config and applies it
safely (`actuators.nginx`). A failed Consul read raises
before anything is rendered, so an outage never empties the config; the last
good config keeps serving.

Bursts are coalesced: a change is applied at once, and further changes within
``--coalesce`` of the last reload are applied together when that window ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from consul_operator import metrics
from consul_operator.actuators.nginx import ManagedNginx, SystemNginx, render
from consul_operator.consul_client import ConsulClient, ServiceInstance
from consul_operator.desired_state import is_dns_label
from consul_operator.keys import Layout
from consul_operator.kv_state import start_watch
from consul_operator.loop import PassResult, Trigger, run_loop, stop_on_signals, wait_for_stop
from consul_operator.upstreams import Rejected, build_view

log = structlog.get_logger()


@dataclass
class LoadBalancer:
    """One load-balancer pass: read, vet, render, apply."""

    consul: ConsulClient
    layout: Layout
    nginx: ManagedNginx | SystemNginx
    listen: str
    default_service: str | None
    coalesce: float
    clock: Callable[[], float] = time.monotonic
    _last_reload: float = field(default=float("-inf"), init=False)
    _reported: frozenset[tuple[str, str, str]] = field(default=frozenset(), init=False)

    def reconcile(self) -> PassResult:
        """One pass; raises on a failed read so that nothing is rendered from it."""
        names = self._service_names()
        instances: dict[str, list[ServiceInstance]] = {
            name: self.consul.health_service(name, passing=True, consistent=True).value
            for name in names
            if is_dns_label(name)
        }
        view = build_view(names, instances, self.default_service)
        self._report_rejected(view.rejected)
        text = render(
            view, listen=self.listen, managed=isinstance(self.nginx, ManagedNginx), prefix=self._prefix()
        )
        for up in view.upstreams:
            metrics.lb_upstream_servers.labels(up.name).set(len(up.servers))

        wait = self._last_reload + self.coalesce - self.clock()
        if wait > 0 and text != self.nginx.current():
            return PassResult(requeue_after=wait)  # apply this burst together, soon
        result = self.nginx.apply(text)
        if result.changed:
            self._last_reload = self.clock()
        if not result.ok:
            metrics.lb_reloads.labels("failed").inc()
            log.error("config refused; the last good one keeps serving", error=result.error)
        elif result.changed:
            metrics.lb_reloads.labels("ok").inc()
            log.info("nginx reloaded", servers={up.name: len(up.servers) for up in view.upstreams})
        return PassResult()

    def _service_names(self) -> list[str]:
        names = []
        for entry in self.consul.kv_list(self.layout.services_prefix, consistent=True).value:
            name = self.layout.service_name(entry.key)
            if name is not None:
                names.append(name)
        return names

    def _prefix(self) -> str:
        return str(self.nginx.prefix) if isinstance(self.nginx, ManagedNginx) else ""

    def _report_rejected(self, rejected: tuple[Rejected, ...]) -> None:
        """Log and count each rejected piece of catalog data once, not on every pass."""
        seen = frozenset((r.service, r.instance, r.reason) for r in rejected)
        for r in rejected:
            if (r.service, r.instance, r.reason) not in self._reported:
                metrics.lb_rejected.labels(r.reason).inc()
                log.warning("catalog data rejected", service=r.service, instance=r.instance, reason=r.detail)
        self._reported = seen


@dataclass(frozen=True)
class LBConfig:
    """Everything ``operator lb`` is told on its command line."""

    consul_addr: str | None
    consul_token: str | None
    layout: Layout
    listen: str
    default_service: str | None
    nginx_dir: Path | None
    nginx_binary: str
    system_conf: Path | None
    test_cmd: str
    reload_cmd: str
    metrics_addr: str | None
    coalesce: float
    resync: float


def run_lb(config: LBConfig) -> int:
    """Run until SIGTERM/SIGINT; stops a managed NGINX on the way out."""
    stop = stop_on_signals()

    trigger = Trigger()
    nginx: ManagedNginx | SystemNginx
    if config.system_conf is not None:
        nginx = SystemNginx(config.system_conf, test_cmd=config.test_cmd, reload_cmd=config.reload_cmd)
    else:
        assert config.nginx_dir is not None
        nginx = ManagedNginx(config.nginx_dir, binary=config.nginx_binary, on_exit=trigger.fire)
        # The last good config of a previous run serves until the first pass.
        if nginx.current() is not None and nginx.test(nginx.conf)[0]:
            nginx.ensure_running()
    consul = ConsulClient(config.consul_addr, config.consul_token)
    if config.metrics_addr:
        metrics.serve(config.metrics_addr)
    lb = LoadBalancer(consul, config.layout, nginx, config.listen, config.default_service, config.coalesce)
    prefix = config.layout.services_prefix
    start_watch("services", lambda i, w: consul.kv_list(prefix, index=i, wait=w), [trigger], stop)
    start_watch("health", lambda i, w: consul.health_state_any(index=i, wait=w), [trigger], stop)
    # A registration without checks changes no check: the catalog's index tells.
    start_watch("catalog", lambda i, w: consul.catalog_services(index=i, wait=w), [trigger], stop)
    loop = threading.Thread(
        target=run_loop,
        args=("lb", lb.reconcile, trigger, stop),
        kwargs={"resync": config.resync},
        name="lb-loop",
    )
    loop.start()
    log.info("load balancer started", listen=config.listen, default_service=config.default_service)
    wait_for_stop(stop)
    trigger.fire()
    loop.join(timeout=30)
    nginx.stop()
    log.info("load balancer stopped")
    return 0
