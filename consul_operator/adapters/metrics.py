"""Every Prometheus metric of the operator, and the HTTP endpoint that serves them.

Label sets are bounded: ``service`` takes the names of manifests (capped in
number by Consul's KV and our schema), ``host`` the app hosts, and every other
label a fixed set of values listed next to its metric.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import ssl
import sys
import threading
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from consul_operator.adapters.health import HEALTH
from consul_operator.adapters.http_pool import DROP_REASONS, REQUEST_TIMEOUT, PooledHTTPServer
from consul_operator.core.errors import REFUSAL_REASONS
from consul_operator.core.events import REASONS as EVENT_REASONS
from consul_operator.core.registry import PULL_REASONS

# Fixed label values, pre-created below so that a rate() over them starts at 0.
LOOPS = ("schedule", "host", "refresh", "lb")
ERROR_REASONS = (
    "consul_unavailable",
    "consul_error",
    "docker_unavailable",
    "docker_error",
    "not_leader",
    "permission_denied",
    "work_pending",
    "internal",
)
ACTIONS = ("start", "drain", "remove_dead", "register", "deregister")
RESULTS = ("ok", "error")

desired_replicas = Gauge("operator_desired_replicas", "Replicas the manifest asks for.", ["service"])
running_replicas = Gauge(
    "operator_running_replicas", "Containers of the service running on the host.", ["service", "host"]
)
host_healthy_replicas = Gauge(
    "operator_host_healthy_replicas",
    "Containers of the service on the host whose Consul checks pass (exported by the host's agent).",
    ["service", "host"],
)
healthy_replicas = Gauge(
    "operator_healthy_replicas",
    "Instances of the service passing in Consul, over all hosts (exported by the leader).",
    ["service"],
)
drift_replicas = Gauge(
    "operator_drift_replicas",
    "Desired minus healthy replicas (exported by the leader): what an alert watches.",
    ["service"],
)
convergence_seconds = Histogram(
    "operator_convergence_seconds",
    "Time from a manifest change seen by the leader until every desired replica passes.",
    ["service"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
manifest_valid = Gauge(
    "operator_manifest_valid",
    "1 when the service's manifest validates, else 0 (exported by the leader).",
    ["service"],
)
unplaced_replicas = Gauge(
    "operator_unplaced_replicas",
    "Replicas the scheduler could not place on any host, and why (exported by the leader).",
    ["service", "cause"],
)
# The cause: one of records.UNPLACED_CAUSES (none, memory, cpus, max_per_host, labels,
# no_hosts); one series per service at a time (`set_unplaced`).

rollout_state = Gauge(
    "operator_rollout_state",
    "1 for the state the service's last rollout is in (progressing, held, complete, rolling_back, "
    "rolled_back, failed), 0 for the others (exported by the leader).",
    ["service", "state"],
)
rollouts_total = Counter(
    "operator_rollouts_total",
    "Rollouts that ended, by result: complete, rolled_back or failed (counted by the leader).",
    ["result"],
)

# What only the leader knows; a non-leader exports none of it, so that a sum or
# max over all daemons is the leader's value.
LEADER_SERVICE_GAUGES = (
    desired_replicas,
    healthy_replicas,
    drift_replicas,
    manifest_valid,
)


_UNPLACED_CAUSE: dict[str, str] = {}
"""The cause under which each service's unplaced replicas are exported now (one series per service)."""
_UNPLACED_LOCK = threading.Lock()


def set_unplaced(service: str, count: int, cause: str) -> None:
    """Export ``service``'s unplaced replicas under their cause, and no other cause's series.

    The cause exported is remembered per service: listing the gauge's series
    (``collect``) on every call made a leader pass over 1,000 services take
    seconds (a million samples built per pass: issue 31's profile).
    """
    with _UNPLACED_LOCK:
        before = _UNPLACED_CAUSE.get(service)
        if before is not None and before != cause:
            with contextlib.suppress(KeyError):
                unplaced_replicas.remove(service, before)
        _UNPLACED_CAUSE[service] = cause
        unplaced_replicas.labels(service, cause).set(count)


def drop_unplaced(service: str | None = None) -> None:
    """Stop exporting ``service``'s unplaced replicas (a deleted service); every service's for None."""
    with _UNPLACED_LOCK:
        if service is None:
            _UNPLACED_CAUSE.clear()
            unplaced_replicas.clear()
            return
        cause = _UNPLACED_CAUSE.pop(service, None)
        if cause is not None:
            with contextlib.suppress(KeyError):
                unplaced_replicas.remove(service, cause)


consecutive_failures = Gauge(
    "operator_consecutive_failures",
    "Failed starts and crashes of the service on the host since its last good run (back-off).",
    ["service", "host"],
)
HOST_SERVICE_GAUGES = (running_replicas, host_healthy_replicas, consecutive_failures)
"""What a host agent exports per service and host (`host_pass.Gauges`)."""
reconcile_duration = Histogram(
    "operator_reconcile_duration_seconds",
    "Time of one reconcile pass.",
    ["loop"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
reconcile_errors = Counter(
    "operator_reconcile_errors_total", "Reconcile passes that failed, by reason.", ["loop", "reason"]
)
last_successful_sync = Gauge(
    "operator_last_successful_sync_timestamp_seconds",
    "Unix time of the last reconcile pass that succeeded.",
    ["loop"],
)
container_actions = Counter(
    "operator_container_actions_total",
    "Container and registration actions, by result.",
    ["action", "result"],
)
PULL_RESULTS = ("ok", *PULL_REASONS)
image_pulls = Counter(
    "operator_image_pulls_total",
    "Image pulls an agent asked of its engine, by result: ok, or why it failed: unauthorized (the "
    "registry refused the credentials), not_found, tls, unreachable, timeout (longer than the pull's "
    "bound), secret (the manifest's image_pull_secret cannot be read), error.",
    ["result"],
)
is_leader = Gauge("operator_is_leader", "1 while this agent holds the leader lock.", ["host"])
agents_reading_placements = Gauge(
    "operator_agents_reading_placements",
    "Live agents from before work keys (no reads-work meta): a rolling upgrade is not done while above 0.",
)
leader_changes = Counter("operator_leader_changes_total", "Times this agent gained or lost the leader lock.")
agent_registrations = Counter(
    "operator_agent_registrations_total",
    "Registrations of this agent's own service and TTL check with its Consul agent: the first, "
    "then one each time Consul answers that it lost the check (never one per timed-out heartbeat).",
)
orphan_sessions_reaped = Counter(
    "operator_orphan_sessions_reaped_total",
    "Leader-election sessions of an earlier run of this agent (killed, restarted within its TTL) "
    "that this agent released and destroyed.",
)
placement_writes = Counter(
    "operator_placement_writes_total",
    "Keys the leader wrote or deleted in KV: placements, rollouts, revisions, lost hosts' status records.",
)
rebalanced_replicas = Counter(
    "operator_rebalanced_replicas_total",
    "Replicas the leader moved to spread a service again once a host returned (a replacement placed "
    "on it, the replica it replaces drained once it passes).",
)
kv_prefix_reads = Counter(
    "operator_kv_prefix_reads_total",
    "The leader's reads of its large prefixes (status records, placements, kept revisions), one per "
    "prefix and pass: read whole (it moved), or unmoved since its last read and taken from memory "
    "(`kv_state.PrefixMirrors`); for the status records, reported: only those a moved agent's "
    "report names (`status_mirror.StatusMirror`).",
    ["prefix", "read"],
)
check_reads = Counter(
    "operator_check_reads_total",
    "The leader's reads of every check's status (its healthy and drift figures), one per pass: read "
    "whole (a check changed), or unmoved since its last read and taken from memory "
    "(`check_counts.PassingCounts`).",
    ["read"],
)
for _read in ("whole", "unmoved"):
    check_reads.labels(_read)
WRITE_FAILURE_REASONS = REFUSAL_REASONS
leader_write_failures = Counter(
    "operator_leader_write_failures_total",
    "Fenced writes of one service's records that Consul refused (too_large: HTTP 413; "
    "permission_denied; refused: any other answer). That service's writes back off; "
    "the other services' go on (exported by the leader).",
    ["reason"],
)
KV_RECORDS = ("status", "events")
kv_write_failures = Counter(
    "operator_kv_write_failures_total",
    "Unfenced KV writes of one record that were not written: too_large (over the record's bound "
    "or Consul's limits: left out unsent, or HTTP 413), permission_denied (an ACL), refused (any "
    "other answer); record: status (an agent's operator/status/), report (its operator/reports/<host>) "
    "or events (operator/events/). "
    "Every other record of the pass is written; this one is tried again on the next.",
    ["record", "reason"],
)
LB_HOLD_RESULTS = ("held", "expired")
lb_held_upstreams = Counter(
    "operator_lb_held_upstreams_total",
    "A service whose owned instances dropped to none while Consul still shows them passing "
    "(its status records gone): held, its last good upstream kept; expired, the hold ran out "
    "(--hold-last-good) and the service is served as it is.",
    ["result"],
)
lb_reloads = Counter(
    "operator_lb_reloads_total",
    "NGINX config changes: ok (tested, installed, reloaded), failed (refused by nginx -t; the last "
    "good one serves) or error (installed, but the reload command failed; retried with back-off).",
    ["result"],
)
lb_upstream_servers = Gauge(
    "operator_lb_upstream_servers", "Passing servers in the service's NGINX upstream.", ["service"]
)
lb_rejected = Counter(
    "operator_lb_rejected_total",
    "Catalog data left out of the NGINX config, counted once per piece: bad_name, bad_address, "
    "bad_port (grammar), foreign_cluster, unknown_host, wrong_address, unreported (not made by "
    "this cluster's agents, see ownership.py).",
    ["reason"],
)
lb_quarantined = Gauge(
    "operator_lb_quarantined_services",
    "Services whose fresh upstream nginx -t refuses: held back at their last good upstream (or 503) "
    "while every other service is served fresh.",
)
lb_floating_address_held = Gauge(
    "operator_lb_floating_address_held",
    "1 while this load balancer's host holds the floating address (keepalived put it on one of "
    "its interfaces), 0 while another LB host does; exported with --floating-address only.",
    ["address"],
)
consul_requests = Counter(
    "operator_consul_requests_total", "Requests this process sent to Consul (blocking queries included)."
)
consul_errors = Counter("operator_consul_errors_total", "Consul requests that failed or were refused.")
http_dropped = Counter(
    "operator_http_dropped_connections",
    "Connections to /metrics, /healthz and the page closed unanswered: idle (nothing sent in time) "
    "or busy (every worker busy and the queue full).",
    ["reason"],
)
for _drop in DROP_REASONS:
    http_dropped.labels(_drop)
status_page_reads = Counter(
    "operator_status_page_reads_total",
    "Reads of Consul for the status page: at most one per refresh interval, whatever the request rate.",
)

LB_RELOAD_RESULTS = ("ok", "failed", "error")
LB_REJECT_REASONS = (
    "bad_name",
    "bad_address",
    "bad_port",
    "foreign_cluster",
    "unknown_host",
    "wrong_address",
    "unreported",
    "wrong_node",
    "wrong_port",
    "wrong_container",
    "wrong_spec",
)
EVENT_FLUSH_RESULTS = ("ok", "error")
events_recorded = Counter(
    "operator_events_recorded",
    "Events recorded by this daemon (placed, started, crashed...): see docs/status.md.",
    ["reason"],
)
events_dropped = Counter(
    "operator_events_dropped",
    "Events dropped unwritten: the oldest, when the in-memory buffer is full (Consul away).",
)
events_flushes = Counter(
    "operator_events_flushes",
    "Flushes of events to Consul KV: ok (records written), error (the flush failed, or one "
    "record was refused: its events are kept for the next flush, the others written).",
    ["result"],
)
for _result in EVENT_FLUSH_RESULTS:
    events_flushes.labels(_result)
for _reason in EVENT_REASONS:
    events_recorded.labels(_reason)

for _result in LB_RELOAD_RESULTS:
    lb_reloads.labels(_result)
for _result in LB_HOLD_RESULTS:
    lb_held_upstreams.labels(_result)
for _record in KV_RECORDS:
    for _reason in WRITE_FAILURE_REASONS:
        kv_write_failures.labels(_record, _reason)
for _reason in WRITE_FAILURE_REASONS:
    leader_write_failures.labels(_reason)
for _reason in LB_REJECT_REASONS:
    lb_rejected.labels(_reason)
for _loop in LOOPS:
    for _reason in ERROR_REASONS:
        reconcile_errors.labels(_loop, _reason)
for _action in ACTIONS:
    for _result in RESULTS:
        container_actions.labels(_action, _result)
for _result in PULL_RESULTS:
    image_pulls.labels(_result)


PageFn = Callable[[bool], str]
"""Renders the status page (`status_page`): the whole page, or (True) its main fragment."""


PAGE_CLOSED = (
    "the status page is served without a token only on a loopback address: "
    "give the daemon --page-token-file FILE (docs/deploy.md)\n"
)


ProblemsFn = Callable[[Collection[str]], list[str]]
"""What makes the daemon unhealthy, given the dependencies not to judge (`Health.problems`)."""


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry = REGISTRY
    problems: ProblemsFn = staticmethod(HEALTH.problems)
    page: PageFn | None = None
    # The page's bearer token (--page-token-file); None: the page is open on loopback only.
    page_token: str | None = None
    page_open: bool = True
    timeout = REQUEST_TIMEOUT  # every socket read and write of a request (StreamRequestHandler)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        page = type(self).page
        if path == "/" and page is not None:
            if not self._may_see_page():
                return
            try:
                html = page(query == "part=main").encode()
            except Exception as exc:  # a page that cannot be read says so; the daemon goes on
                self._send(503, f"status unavailable: {type(exc).__name__}\n".encode(), "text/plain")
                return
            self._send(200, html, "text/html; charset=utf-8")
        elif path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            # ?exclude=consul (repeatable): judge everything but those dependencies.
            excluded = frozenset(parse_qs(query).get("exclude", ()))
            found = type(self).problems(excluded)
            body = "".join(f"{line}\n" for line in ["unhealthy", *found]) if found else "ok\n"
            self._send(503 if found else 200, body.encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _may_see_page(self) -> bool:
        """Whether this request may see the page; else answered 401 or 403 here."""
        token = type(self).page_token
        if token is None:
            if type(self).page_open:
                return True
            self._send(403, PAGE_CLOSED.encode(), "text/plain; charset=utf-8")
            return False
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self._send(401, b"a bearer token is needed\n", "text/plain", {"WWW-Authenticate": "Bearer"})
        return False

    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


class _Server(PooledHTTPServer):
    """The metrics server: a client that fails the TLS handshake (plain HTTP to HTTPS) is its own problem."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


MAX_TOKEN_FILE = 4096
"""Bytes at most of a --page-token-file."""


def read_page_token(path: str) -> str:
    """The bearer token in ``path`` (its one line, surrounding white space left out).

    ValueError, naming the file, when it cannot be read, is empty, too long
    or holds more than a line of printable ASCII.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from exc
    token = data.decode("ascii", "replace").strip()
    if len(data) > MAX_TOKEN_FILE or not token or not all(33 <= ord(c) < 127 for c in token):
        raise ValueError(f"{path}: not one line of printable ASCII (at most {MAX_TOKEN_FILE} bytes)")
    return token


def count_drop(reason: str) -> None:
    """Count a connection the server closed unanswered (`http_pool.DROP_REASONS`)."""
    http_dropped.labels(reason).inc()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    address: str,
    problems: ProblemsFn = HEALTH.problems,
    page: PageFn | None = None,
    *,
    tls: tuple[str, str] | None = None,
    page_token: str | None = None,
) -> PooledHTTPServer:
    """Serve /metrics, /healthz and (given ``page``) the status page / on ``host:port`` from a daemon thread.

    ``host`` defaults to 127.0.0.1 (``:9810``). With ``tls`` (a certificate file
    and its key file, PEM) over HTTPS only. The page asks for ``page_token``
    as a bearer token when given; without one it is served on a loopback
    address only (403 elsewhere: it shows what the ACLs protect).

    ``/healthz`` answers 200 ``ok`` when ``problems()`` finds nothing, else 503
    with ``unhealthy`` and one line per failing loop or dependency;
    ``/healthz?exclude=consul`` leaves that dependency out.
    """
    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    members: dict[str, object] = {
        "problems": staticmethod(problems),
        "page_token": page_token,
        "page_open": is_loopback(host),
    }
    if page is not None:
        members["page"] = staticmethod(page)
    handler = type("Handler", (_Handler,), members)
    server = _Server((host, int(port)), handler, on_drop=count_drop)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*tls)
        # The handshake on the handler's thread, not in the accept loop: a slow client stalls no one.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
