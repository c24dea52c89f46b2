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

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.actuators.nginx import ApplyResult, ManagedNginx, SystemNginx, render
from consul_operator.adapters.consul_client import ConsulClient, ConsulTLS
from consul_operator.adapters.health import HEALTH, tcp_probe
from consul_operator.adapters.kv_state import read_statuses, start_watch
from consul_operator.adapters.lb_presence import LBPresence
from consul_operator.adapters.metrics import read_page_token
from consul_operator.adapters.presence import read_agents
from consul_operator.adapters.status_page import status_page
from consul_operator.core import events
from consul_operator.core.backoff import retry_delay
from consul_operator.core.desired_state import is_dns_label
from consul_operator.core.keys import Layout
from consul_operator.core.model import ServiceInstance, load_balanced
from consul_operator.core.ownership import UNREPORTED, owned
from consul_operator.core.upstreams import (
    HOLD_LAST_GOOD,
    Hold,
    LBView,
    Rejected,
    Server,
    Upstream,
    build_view,
    find_faulty,
    hold_last_good,
    restrict,
    substitute,
    vet_server,
)
from consul_operator.daemons.loop import (
    PassResult,
    Trigger,
    run_loop,
    stop_on_signals,
    wait_for_stop,
)

log = structlog.get_logger()


# How long a refused config is taken as refused without testing it again (an NGINX
# upgrade or a fixed include may make it pass).
REFUSAL_RECHECK = 60.0


class RenderFn(Protocol):
    """`actuators.nginx.render`'s signature: the seam through which tests feed NGINX a bad config."""

    def __call__(self, view: LBView, *, listen: str, managed: bool, prefix: str = "") -> str: ...


@dataclass(frozen=True, slots=True)
class _Refusal:
    """The last whole config NGINX refused, what was installed instead, and when (clock seconds)."""

    text: str
    fallback: LBView
    fallback_text: str
    faulty: frozenset[str]
    at: float


@dataclass
class LoadBalancer:
    """One load-balancer pass: read, keep what is ours, vet, render, apply, isolate what NGINX refuses."""

    consul: ConsulClient
    layout: Layout
    nginx: ManagedNginx | SystemNginx
    listen: str
    default_service: str | None
    coalesce: float
    cluster: str = "default"
    hold_last_good: float = HOLD_LAST_GOOD
    clock: Callable[[], float] = time.monotonic
    template: RenderFn = render
    _last_reload: float = field(default=float("-inf"), init=False)
    _reported: frozenset[tuple[str, str, str]] = field(default=frozenset(), init=False)
    # Each service's upstream as last installed: what a service NGINX refuses keeps serving.
    _last_good: dict[str, Upstream] = field(default_factory=dict, init=False)
    _refused: _Refusal | None = field(default=None, init=False)
    # Services served at their last good upstream while no instance of theirs is reported.
    _holds: dict[str, Hold] = field(default_factory=dict, init=False)
    _quarantined: frozenset[str] = field(default=frozenset(), init=False)
    _reload_failures: int = field(default=0, init=False)
    # Services whose upstream size is exported: a deleted service's gauge goes with it.
    _exported: frozenset[str] = field(default=frozenset(), init=False)

    def reconcile(self) -> PassResult:
        """One pass; raises on a failed read so that nothing is rendered from it."""
        view, unreported = self._read_view()
        self._report_rejected(view.rejected)
        view, hold_until = self._hold(view, unreported)
        text = self._render(view)

        wait = self._last_reload + self.coalesce - self.clock()
        if wait > 0 and text != self.nginx.current():
            return PassResult(requeue_after=wait)  # apply this burst together, soon
        refused = self._refused
        if refused is not None and refused.text == text and self.clock() - refused.at < REFUSAL_RECHECK:
            # Refused a moment ago: go straight to what was installed instead.
            return self._install(refused.fallback, refused.fallback_text, refused.faulty)
        result = self.nginx.apply(text)
        if result.ok or result.reload_failed:
            self._refused = None
            return _sooner(self._installed(view, result, frozenset()), hold_until, self.clock())
        metrics.lb_reloads.labels("failed").inc()
        log.error("config refused; finding the services at fault", error=result.error)
        return _sooner(self._isolate(view, text), hold_until, self.clock())

    def _read_view(self) -> tuple[LBView, dict[str, list[Server]]]:
        """Manifests' names, and for each our agents' passing instances, vetted; and per service
        the passing servers left out only as `ownership.UNREPORTED` (what `_hold` may keep)."""
        names = self._service_names()
        agents = read_agents(self.consul, self.cluster, self.layout)
        statuses = read_statuses(self.consul, self.layout)
        instances: dict[str, list[ServiceInstance]] = {}
        disowned: list[Rejected] = []
        unreported: dict[str, list[Server]] = {}
        for name in names:
            if not is_dns_label(name):
                continue
            # A replica's extra ports and a TCP service's replicas are no HTTP servers.
            found = [
                i
                for i in self.consul.health_service(name, passing=True, consistent=True).value
                if load_balanced(i)
            ]
            verdict = owned(found, self.cluster, agents, statuses)
            instances[name] = list(verdict.kept)
            disowned.extend(
                Rejected(name, d.instance.service_id, d.reason, d.detail) for d in verdict.rejected
            )
            for d in verdict.rejected:
                server = vet_server(name, d.instance)
                if d.reason == UNREPORTED and isinstance(server, Server):
                    unreported.setdefault(name, []).append(server)
        view = build_view(names, instances, self.default_service)
        return dataclasses.replace(view, rejected=(*disowned, *view.rejected)), unreported

    def _hold(self, view: LBView, unreported: dict[str, list[Server]]) -> tuple[LBView, float | None]:
        """Keep the last good upstream of a service whose status records went (`upstreams.hold_last_good`)."""
        now = self.clock()
        decision = hold_last_good(view, unreported, self._last_good, self._holds, now, self.hold_last_good)
        self._holds = dict(decision.holds)
        for name in decision.started:
            metrics.lb_held_upstreams.labels("held").inc()
            log.warning(
                "no instance of the service is reported by its agents, yet they pass in Consul: "
                "serving its last good upstream",
                service=name,
                hold_for=self.hold_last_good,
            )
        for name in decision.expired:
            metrics.lb_held_upstreams.labels("expired").inc()
            log.error("held upstream expired; serving the service as it is", service=name)
        return decision.view, decision.wake_at

    def _render(self, view: LBView) -> str:
        managed = isinstance(self.nginx, ManagedNginx)
        return self.template(view, listen=self.listen, managed=managed, prefix=self._prefix())

    def _isolate(self, view: LBView, text: str) -> PassResult:
        """NGINX refused ``view``: test services in groups, serve the rest fresh, the culprits as before."""
        names = [up.name for up in view.upstreams]

        def passes(group: frozenset[str]) -> bool:
            return self.nginx.check(self._render(restrict(view, group)))[0]

        if not passes(frozenset()):
            log.error("config refused even without any service; the last good one keeps serving")
            return PassResult()
        faulty = find_faulty(names, passes)
        for fallback in (substitute(view, faulty, self._last_good), substitute(view, faulty, {})):
            fallback_text = self._render(fallback)
            if self.nginx.check(fallback_text)[0]:
                self._refused = _Refusal(text, fallback, fallback_text, faulty, self.clock())
                return self._install(fallback, fallback_text, faulty)
        log.error("no config without the faulty services passes; the last good one keeps serving")
        return PassResult()

    def _install(self, view: LBView, text: str, faulty: frozenset[str]) -> PassResult:
        result = self.nginx.apply(text)
        if not result.ok and not result.reload_failed:
            metrics.lb_reloads.labels("failed").inc()
            log.error("config refused; the last good one keeps serving", error=result.error)
            self._refused = None
            return PassResult()
        return self._installed(view, result, faulty)

    def _installed(self, view: LBView, result: ApplyResult, faulty: frozenset[str]) -> PassResult:
        """Bookkeeping after ``view`` (with ``faulty`` services held back) is on disk."""
        self._quarantine(faulty, view)
        if result.changed:
            self._last_reload = self.clock()
        for up in view.upstreams:
            metrics.lb_upstream_servers.labels(up.name).set(len(up.servers))
            if up.name not in faulty:
                self._last_good[up.name] = up
        names = frozenset(up.name for up in view.upstreams)
        for gone in set(self._last_good) - names:
            del self._last_good[gone]
        for gone in self._exported - names:
            metrics.lb_upstream_servers.remove(gone)
        self._exported = names
        if result.reload_failed:
            self._reload_failures += 1
            delay = retry_delay(self._reload_failures)
            metrics.lb_reloads.labels("error").inc()
            log.error("nginx reload failed; retrying", error=result.error, retry_in=delay)
            return PassResult(requeue_after=delay)
        if self._reload_failures:
            log.info("nginx reloaded again", after_failures=self._reload_failures)
            self._reload_failures = 0
        if result.changed:
            metrics.lb_reloads.labels("ok").inc()
            log.info("nginx reloaded", servers={up.name: len(up.servers) for up in view.upstreams})
        return PassResult()

    def _quarantine(self, faulty: frozenset[str], view: LBView) -> None:
        """Log services newly held back or released; the gauge counts those held back."""
        served = {up.name: up for up in view.upstreams}
        for name in sorted(faulty - self._quarantined):
            kept = served.get(name)
            serving = (
                f"its last good upstream ({len(kept.servers)} servers)" if kept and kept.servers else "503"
            )
            log.error("service held back: nginx -t refuses its upstream", service=name, serving=serving)
            event_log.record(name, events.RELOAD_REFUSED, f"nginx -t refuses its upstream; serving {serving}")
        for name in sorted(self._quarantined - faulty):
            log.info("service no longer held back", service=name)
        self._quarantined = faulty
        metrics.lb_quarantined.set(len(faulty))

    def _service_names(self) -> list[str]:
        names = []
        # Keys only: the values (up to 512 KiB each) are not needed here.
        for key in self.consul.kv_keys(self.layout.services_prefix, consistent=True).value:
            name = self.layout.service_name(key)
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


def _sooner(result: PassResult, at: float | None, now: float) -> PassResult:
    """``result``, requeued by ``at`` (a clock time) at the latest."""
    if at is None:
        return result
    wait = max(0.0, at - now) + 0.05
    if result.requeue_after is not None and result.requeue_after <= wait:
        return result
    return dataclasses.replace(result, requeue_after=wait)


def lb_host(listen: str) -> str:
    """The name the load balancer records its events under: one writer per key, so one per listener."""
    return "lb-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in listen)


@dataclass(frozen=True)
class LBConfig:
    """Everything ``operator lb`` is told on its command line."""

    consul_addr: str | None
    consul_token: str | None
    layout: Layout
    cluster: str
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
    consul_tls: ConsulTLS | None = None  # None: the consul CLI's environment variables
    metrics_tls: tuple[str, str] | None = None  # --metrics-tls-cert, --metrics-tls-key
    page_token_file: str | None = None  # --page-token-file: the status page's bearer token
    hold_last_good: float = HOLD_LAST_GOOD  # --hold-last-good
    floating_address: str | None = None  # --floating-address: the address keepalived moves


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
    consul = ConsulClient(config.consul_addr, config.consul_token, tls=config.consul_tls)
    # /healthz: NGINX must accept connections where it listens (Consul reports itself).
    HEALTH.add_probe("nginx", tcp_probe(config.listen))
    if config.metrics_addr:
        served_by = f"load balancer {config.listen}"
        metrics.serve(
            config.metrics_addr,
            page=status_page(consul, config.layout, config.cluster, served_by),
            tls=config.metrics_tls,
            page_token=None if config.page_token_file is None else read_page_token(config.page_token_file),
        )
    event_log.start_flusher(consul, config.layout, lb_host(config.listen), stop)
    # Registered in Consul for `operator status`, with whether this host holds the floating address.
    presence = LBPresence(
        consul, cluster=config.cluster, listen=config.listen, floating=config.floating_address
    )
    threading.Thread(target=presence.run, args=(stop,), name="lb-presence", daemon=True).start()
    lb = LoadBalancer(
        consul,
        config.layout,
        nginx,
        config.listen,
        config.default_service,
        config.coalesce,
        cluster=config.cluster,
        hold_last_good=config.hold_last_good,
    )
    prefix = config.layout.services_prefix
    start_watch("services", lambda i, w: consul.kv_keys(prefix, index=i, wait=w), [trigger], stop)
    start_watch("health", lambda i, w: consul.checks_index(index=i, wait=w), [trigger], stop)
    # The agents' status records list their instances: a new one is served once listed. One level
    # deep, keys only: the index moves with every record under it, and the watch no longer receives
    # every record (4 MB at 10,000) on each change only to drop them.
    status_prefix = config.layout.status_prefix
    start_watch(
        "status",
        lambda i, w: consul.kv_keys(status_prefix, index=i, wait=w, separator="/"),
        [trigger],
        stop,
    )
    # A registration without checks changes no check: the catalog's index tells.
    start_watch("catalog", lambda i, w: consul.catalog_services(index=i, wait=w), [trigger], stop)
    loop = threading.Thread(
        target=run_loop,
        args=("lb", lb.reconcile, trigger, stop),
        kwargs={"resync": config.resync},
        name="lb-loop",
    )
    loop.start()
    log.info(
        "load balancer started",
        listen=config.listen,
        default_service=config.default_service,
        cluster=config.cluster,
        floating_address=config.floating_address,
    )
    wait_for_stop(stop)
    trigger.fire()
    loop.join(timeout=30)
    nginx.stop()
    log.info("load balancer stopped")
    return 0
