"""``operator agent``: one per app host. Wires presence, election, watches and the two loops.

Threads, all daemons, all stopped by one ``stop`` event:

* heartbeat   keeps the agent's TTL check passing (presence, and the leader session)
* election    campaigns for ``operator/leader`` and watches it
* watches     blocking queries on this host's work keys and this node's checks;
              while leading, also on manifests, the agents' health, all health,
              rollbacks and maintenance; Docker's event stream. They only fire
              triggers. (With --read-placements, for upgrades only: manifests and
              placements instead of the work keys, as before work keys.)
* status-check looks at this host's status records every 2 s: changed or
              deleted in KV, they wake the host loop, which writes them again
* host loop   reconciles this host's containers (every agent)
* schedule    places replicas (does work only while leading)

SIGTERM/SIGINT: stop the loops, give the lock up, leave every container running.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.actuators.catalog import CatalogActuator
from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.adapters.consul_client import ConsulClient, ConsulTLS, Indexed
from consul_operator.adapters.docker_client import connect, engine_resources
from consul_operator.adapters.host_reads import KVChanged
from consul_operator.adapters.kv_state import read_rendered, read_secrets, start_watch
from consul_operator.adapters.metrics import read_page_token
from consul_operator.adapters.presence import AGENT_SERVICE, Presence
from consul_operator.adapters.registry_auth import PullAuth
from consul_operator.adapters.rejoin import rejoin_failed
from consul_operator.adapters.runtime_files import DEFAULT_RUNTIME_DIR
from consul_operator.adapters.status_page import status_page
from consul_operator.adapters.timers import Timers
from consul_operator.core.backoff import retry_delay
from consul_operator.core.desired_state import Resources, host_capacity
from consul_operator.core.errors import ConsulError, DockerError, OperatorError
from consul_operator.core.keys import Layout
from consul_operator.core.spread import SpreadSettings
from consul_operator.daemons.executor import Executor
from consul_operator.daemons.host_agent import HostAgent, check_status
from consul_operator.daemons.leader import LeaderElection
from consul_operator.daemons.loop import Batched, Trigger, run_loop, stop_on_signals, wait_for_stop
from consul_operator.daemons.refresher import Refresher
from consul_operator.daemons.scheduler import Scheduler
from consul_operator.daemons.volume_janitor import run_volume_janitor

log = structlog.get_logger()

SHUTDOWN_WAIT = 10.0  # seconds the loops get to finish their pass after SIGTERM
BATCH_WINDOW = 0.1  # seconds over which bursts of check changes and finished actions make one pass
# The cyclic garbage collector's thresholds for the daemon's life (`tune_collector`): a young
# collection once 50,000 more objects live than after the last, not 700 (CPython's default).
COLLECTOR_THRESHOLD = (50_000, 10, 10)


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``operator agent`` is told on its command line."""

    host: str
    advertise: str
    consul_addr: str | None
    consul_token: str | None
    docker_host: str | None
    cluster: str
    layout: Layout
    labels: dict[str, str]
    capacity: tuple[int | None, int | None]  # --capacity: memory bytes, thousandths of CPUs; None: the host's
    metrics_addr: str | None
    ttl: float
    lock_delay: float
    lost_grace: float
    resync: float
    spread: SpreadSettings = field(default_factory=SpreadSettings)  # --no-rebalance, --rebalance-settle
    consul_tls: ConsulTLS | None = None  # None: the consul CLI's environment variables
    metrics_tls: tuple[str, str] | None = None  # --metrics-tls-cert, --metrics-tls-key
    allowed_caps: frozenset[str] = frozenset()  # --allow-cap: capabilities a manifest's cap_add may add
    allowed_host_paths: tuple[str, ...] = ()  # --allow-host-path: directories a manifest's volumes may mount
    page_token_file: str | None = None  # --page-token-file: the status page's bearer token
    runtime_dir: str | None = DEFAULT_RUNTIME_DIR  # --runtime-dir: a tmpfs for the replicas' secret files
    reads_work: bool = True  # False: --read-placements, the reader of agents before work keys (upgrades only)
    registry_auth: str | None = None  # --registry-auth: a Docker config.json with registry credentials


EngineFactory = Callable[[AgentConfig, PullAuth], DockerActuator]
"""Makes the agent's container engine from its configuration and whose credentials pull images
(`docker_engine`: the real one)."""


def docker_engine(config: AgentConfig, pull_auth: PullAuth) -> DockerActuator:
    """The Docker engine of ``config.docker_host`` (or ``DOCKER_HOST``, or the local socket)."""
    return DockerActuator(
        connect(config.docker_host),
        cluster=config.cluster,
        host=config.host,
        advertise=config.advertise,
        allowed_host_paths=config.allowed_host_paths,
        runtime_dir=config.runtime_dir,
        pull_auth=pull_auth,
    )


def tune_collector() -> None:
    """Set the garbage collector for the daemon's life: freeze what start-up built, raise its thresholds.

    Measured (issue 31, docs/benchmarks.md; `bench.leader_profile --collector`, 1,000
    services x 10 replicas on 100 hosts): with CPython's defaults, (700, 10, 10), an idle
    leader pass made ~180 young and one or two full collections, 0.06-0.23 s of its
    0.29-0.53 CPU-s, the full ones walking every object the process holds (~140,000,
    about 50,000 of them start-up's modules, classes and functions). Frozen, those are
    never walked again; at 50,000 a pass's own objects are gone before a young
    collection would see them (no collection at all in an idle pass), so none survive
    into the old generation and no full collection follows. Garbage in cycles is still
    collected, once 50,000 objects more are alive than after the last collection.
    Called once, at start-up: a freeze per pass would keep every dropped cache entry
    for good.
    """
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLD)


def run_agent(config: AgentConfig, engine: EngineFactory = docker_engine) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    ``engine``: the container engine; `operator agent` always runs Docker's.
    """
    # First, after the imports: an idle leader pass at 1,000 services x 10 on 100 hosts spent
    # 0.06-0.23 s in the collector, none after; its CPU 0.355 -> 0.250 s (medians), RSS alike.
    tune_collector()
    stop = stop_on_signals()

    consul = ConsulClient(config.consul_addr, config.consul_token, tls=config.consul_tls)
    # Pull secrets from KV, else the --registry-auth file (read again when it changes).
    docker_actuator = engine(config, PullAuth(consul, config.layout, config.registry_auth))
    try:
        docker_actuator.sweep_files()  # secrets' directories of containers removed while we were away
    except OperatorError as exc:
        log.warning("secret files not swept", error=str(exc))
    catalog = CatalogActuator(consul, cluster=config.cluster, host=config.host, advertise=config.advertise)
    if config.metrics_addr:
        metrics.serve(
            config.metrics_addr,
            page=status_page(consul, config.layout, config.cluster, f"agent {config.host}"),
            tls=config.metrics_tls,
            page_token=None if config.page_token_file is None else read_page_token(config.page_token_file),
        )
    event_log.start_flusher(consul, config.layout, config.host, stop)

    host_trigger, schedule_trigger, refresh_trigger = Trigger(), Trigger(), Trigger()
    node = _node_name(consul, stop)  # claimed for our host before we register (`presence`)
    presence = Presence(
        consul,
        layout=config.layout,
        node=node,
        host=config.host,
        cluster=config.cluster,
        advertise=config.advertise,
        labels=config.labels,
        ttl=config.ttl,
        capacity=_capacity(config.capacity, lambda: engine_resources(docker_actuator.client), stop),
        # Consul back (restarted): a host pass at once re-registers the replicas it restored critical.
        on_return=host_trigger.fire,
        reads_work=config.reads_work,
    )
    log.info("capacity", host=config.host, capacity=presence.capacity.text() if presence.capacity else None)
    _register_until_done(presence, stop)
    election = LeaderElection(
        consul,
        config.layout,
        host=config.host,
        node=node,
        lock_delay=config.lock_delay,
        # Shorter than the soonest a successor can act (`leader.py`, the lease).
        lease=max(1.0, config.ttl - config.lock_delay),
        on_change=lambda _: schedule_trigger.fire(),
    )
    # Bursts (a deploy's checks turning passing, its actions finishing) wake a
    # loop at most once per window; manifests and placements wake it at once.
    batches = Timers("batched-wakeups")
    host_batched = Batched(host_trigger, BATCH_WINDOW, batches)
    schedule_batched = Batched(schedule_trigger, BATCH_WINDOW, batches)
    executor = Executor(
        docker_actuator,
        catalog,
        on_done=host_batched.fire,
        secrets=lambda manifest: read_secrets(consul, config.layout, manifest),
        rendered=lambda name: read_rendered(consul, config.layout, name),
        after_live_start=refresh_trigger.fire,
    )
    refresher = Refresher(consul, config.layout, docker_actuator)
    kv_changed = KVChanged()  # what the host pass reads from KV changed: it reads it again
    host_agent = HostAgent(
        consul,
        config.layout,
        config.host,
        docker_actuator,
        catalog,
        executor,
        kv_changed=kv_changed,
        allowed_caps=config.allowed_caps,
        allowed_host_paths=config.allowed_host_paths,
        node=node,
        reads_work=config.reads_work,
        writes_reports=config.reads_work,  # an agent from before work keys wrote no report either
    )
    scheduler = Scheduler(
        consul, config.layout, election, config.cluster, config.lost_grace, spread=config.spread
    )

    layout = config.layout
    threads = [
        threading.Thread(target=presence.heartbeat, args=(stop,), name="heartbeat", daemon=True),
        # A healed partition: Consul members declared failed joined again in seconds (`rejoin`).
        threading.Thread(target=rejoin_failed, args=(consul, stop), name="rejoin", daemon=True),
        threading.Thread(target=election.run, args=(stop,), name="election", daemon=True),
        threading.Thread(target=election.watch_lease, args=(stop,), name="lease", daemon=True),
        threading.Thread(target=election.renew_session, args=(stop,), name="session-renew", daemon=True),
        # Status records deleted or changed by anyone are written again (`check_status`).
        threading.Thread(
            target=check_status, args=(host_agent, host_trigger.fire, stop), name="status-check", daemon=True
        ),
        threading.Thread(
            target=run_volume_janitor,
            args=(consul, config.layout, docker_actuator, stop),
            name="volume-removals",
            daemon=True,
        ),
        threading.Thread(
            target=docker_actuator.watch_events,
            args=(host_trigger.fire, stop),
            name="docker-events",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    # The leader's watches query Consul only while this agent leads: a hundred
    # followers each holding a query on every check in the cluster made every
    # health change a hundred answers (docs/benchmarks.md, *Scale*). A new
    # leader's schedule pass reads everything anyway (`on_change` fires it).
    leading = lambda: election.is_leader  # noqa: E731
    if config.reads_work:
        # What this host runs: its own work keys (issue 31), which the leader writes behind the
        # placements and revisions of each pass. Manifests wake the leader only.
        start_watch(
            "work",
            lambda i, w: consul.kv_keys(layout.host_work_prefix(config.host), index=i, wait=w),
            [kv_changed, host_trigger],
            stop,
        )
        start_watch(
            "services",
            # Keys only: the watch drops the data, and manifests are up to 512 KiB each.
            lambda i, w: consul.kv_keys(layout.services_prefix, index=i, wait=w),
            [schedule_trigger],
            stop,
            leading,
        )
    else:
        # For upgrades only (--read-placements): every manifest and placement, as before work keys.
        start_watch(
            "services",
            lambda i, w: consul.kv_keys(layout.services_prefix, index=i, wait=w),
            [kv_changed, host_trigger, schedule_trigger],
            stop,
        )
        start_watch(
            "placements",
            lambda i, w: consul.kv_list(layout.placement_prefix, index=i, wait=w),
            [kv_changed, host_trigger],
            stop,
        )
    start_watch("node-checks", lambda i, w: consul.health_node(node, index=i, wait=w), [host_batched], stop)
    start_watch(
        "agents",
        lambda i, w: consul.health_service(AGENT_SERVICE, index=i, wait=w),
        [schedule_trigger],
        stop,
        leading,
    )
    # `operator rollback NAME` writes a request the leader acts on.
    start_watch(
        "rollbacks",
        lambda i, w: consul.kv_list(layout.rollback_prefix, index=i, wait=w),
        [schedule_trigger],
        stop,
        leading,
    )
    # `operator cordon|drain|uncordon HOST` writes operator/hosts/<host>, which the leader acts on.
    start_watch(
        "maintenance",
        lambda i, w: consul.kv_list(layout.hosts_prefix, index=i, wait=w),
        [schedule_trigger],
        stop,
        leading,
    )
    # A secret written (its version is in its service's spec) or a config key a template reads:
    # the leader resolves the manifests again (`resolve.py`). Keys only: values stay in KV.
    for name, prefix in (("secrets", layout.secrets_prefix), ("config", layout.config_prefix)):
        start_watch(name, partial(_keys_of, consul, prefix), [schedule_trigger], stop, leading)
    # A signal template's new text: every agent writes it into its replicas (`refresher.py`).
    start_watch(
        "rendered",
        lambda i, w: consul.kv_keys(layout.rendered_prefix, index=i, wait=w),
        [refresh_trigger],
        stop,
    )
    # Health anywhere changes the leader's healthy and drift figures.
    start_watch(
        "health", lambda i, w: consul.checks_index(index=i, wait=w), [schedule_batched], stop, leading
    )
    # The agents' status records: what runs where, which the leader's convergence, rollouts, drains
    # and spreads wait on. One level deep: a name per service, and the index of every record under it.
    # (These writes woke the leader only by accident before: through its watches of empty prefixes,
    # which Consul answered on every write under operator/; `BlockingQuery` no longer counts those.)
    start_watch(
        "statuses",
        lambda i, w: consul.kv_keys(layout.status_prefix, index=i, wait=w, separator="/"),
        [schedule_batched],
        stop,
        leading,
    )
    # Their reports (`core/reports.py`), written after the records: the pass that reads a moved
    # report reads the records it names. Keys only: a key per host.
    start_watch(
        "reports",
        lambda i, w: consul.kv_keys(layout.reports_prefix, index=i, wait=w),
        [schedule_batched],
        stop,
        leading,
    )
    loops = [
        threading.Thread(
            target=run_loop,
            args=("host", host_agent.reconcile, host_trigger, stop),
            kwargs={"resync": config.resync},
            name="host-loop",
        ),
        threading.Thread(
            target=run_loop,
            args=("schedule", scheduler.reconcile, schedule_trigger, stop),
            kwargs={"resync": config.resync},
            name="schedule-loop",
        ),
        # Signal templates' new text into running replicas (`refresher.py`).
        threading.Thread(
            target=run_loop,
            args=("refresh", refresher.reconcile, refresh_trigger, stop),
            kwargs={"resync": config.resync},
            name="refresh-loop",
        ),
    ]
    for thread in loops:
        thread.start()
    log.info("agent started", host=config.host, advertise=config.advertise, cluster=config.cluster)

    wait_for_stop(stop)
    # The lock first: another agent can lead at once, whatever the loops are doing.
    election.resign()
    host_trigger.fire()
    schedule_trigger.fire()
    refresh_trigger.fire()
    deadline = time.monotonic() + SHUTDOWN_WAIT
    for thread in loops:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    # Actions still running are left to finish or die with the process; a
    # half-created container is removed by the next agent's first pass.
    executor.shutdown(wait=False)
    batches.close()
    log.info("agent stopped; containers left running", host=config.host)
    return 0


def _keys_of(consul: ConsulClient, prefix: str, index: int, wait: float) -> Indexed[list[str]]:
    """The keys under ``prefix``, blocking from ``index`` (a watch's query: no values)."""
    return consul.kv_keys(prefix, index=index, wait=wait)


def _capacity(
    flag: tuple[int | None, int | None], read_engine: Callable[[], tuple[int, int]], stop: threading.Event
) -> Resources | None:
    """The capacity to advertise: ``--capacity``, and for what it leaves out the engine's less a reserve.

    Reading the engine is retried while it is away: a host without Docker
    runs nothing anyway. None only when stopped before it answered.
    """
    memory, millicpus = flag
    failures = 0
    while memory is None or millicpus is None:
        try:
            default = host_capacity(*read_engine())
        except DockerError as exc:
            failures += 1
            delay = retry_delay(failures)
            log.warning("cannot read the Docker engine's memory and CPUs yet", error=str(exc), retry_in=delay)
            if stop.wait(delay):
                return None
            continue
        memory = default.memory if memory is None else memory
        millicpus = default.millicpus if millicpus is None else millicpus
    return Resources(memory, millicpus)


def _register_until_done(presence: Presence, stop: threading.Event) -> None:
    """Register the agent, retrying while Consul is away (an agent may start before Consul)."""
    failures = 0
    while not stop.is_set():
        try:
            presence.register()
            return
        except ConsulError as exc:
            failures += 1
            delay = retry_delay(failures)
            log.warning("cannot register with Consul yet", error=str(exc), retry_in=delay)
            stop.wait(delay)


def _node_name(consul: ConsulClient, stop: threading.Event) -> str:
    """The Consul node name of our local agent, whose checks we watch."""
    while True:
        try:
            return consul.agent_node_name()
        except ConsulError as exc:
            log.warning("cannot read the Consul node name yet", error=str(exc))
            if stop.wait(1.0):
                return ""
