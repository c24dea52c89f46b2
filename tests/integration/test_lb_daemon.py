"""`operator lb` as the daemon a user runs: a system NGINX, coalesced bursts, Consul failing, restarts.

Each test runs its own `operator lb` (`python -m consul_operator lb`) against
the staging environment's Consul, with its NGINX listening on the tests' own
address (.24 of the run's block, tests/support/places.py, apart from the
environment's NGINX), and looks at it the way a user would: requests through NGINX, the config file, /metrics.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import DEFAULT_TIMEOUT
from consul_operator.core.backoff import retry_delay
from tests.support.bounds import CONSUL_RETURN_S, LB_UPDATE_S, LOAD_S, PROCESS_S, REACT_S
from tests.support.cluster import Cluster, metric_at
from tests.support.load import Load
from tests.support.places import PLACE
from tests.support.served import get, served, serves
from tests.support.staging import ROOT, pid_alive, wait_until

# The LB tests' own address, as in test_lb_edges.py (ports 8080-8081 there): NGINX on 8091-8094
# here, /metrics 10000 above.
OWN_ADDRESS = PLACE.at(24)


@dataclass
class LbDaemon:
    """One `operator lb` of the test: NGINX on OWN_ADDRESS:``port``, /metrics on ``port`` + 10000."""

    cluster: Cluster
    port: int
    args: tuple[str, ...]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def metrics(self) -> str:
        return f"{OWN_ADDRESS}:{self.port + 10000}"

    def start(self) -> None:
        """Start it against host-3's Consul; return once it has finished a pass."""
        argv = [
            sys.executable,
            "-m",
            "consul_operator",
            "lb",
            "--consul",
            self.cluster.staging.consul_addr("host-3"),
            "--cluster",
            self.cluster.staging.name,
            "--listen",
            f"{OWN_ADDRESS}:{self.port}",
            "--metrics",
            self.metrics,
            "--log-json",
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        wait_until(
            lambda: self.metric("operator_last_successful_sync_timestamp_seconds", loop="lb") > 0,
            timeout=PROCESS_S,
            what=f"operator lb on :{self.port} to pass (log: {self.log})",
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` and wait until the process has gone."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        proc.wait(timeout=PROCESS_S)
        assert not pid_alive(proc.pid)

    def metric(self, name: str, **labels: str) -> float:
        return metric_at(self.metrics, name, **labels)

    def failed_passes(self) -> float:
        """Passes of its loop that failed, for any reason."""
        return sum(
            self.metric("operator_reconcile_errors_total", loop="lb", reason=r) for r in metrics.ERROR_REASONS
        )


StartLb = Callable[[int, tuple[str, ...]], LbDaemon]


@pytest.fixture
def start_lb(cluster: Cluster, tmp_path: Path) -> Iterator[StartLb]:
    """Starts an `operator lb` of the test (NGINX port, flags); stops every one still running afterwards."""
    made: list[LbDaemon] = []

    def start(port: int, args: tuple[str, ...]) -> LbDaemon:
        daemon = LbDaemon(cluster, port, args, tmp_path / f"lb-{port}.log")
        made.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in made:
        daemon.stop()


def replicas(cluster: Cluster, service: str) -> set[str]:
    """The container ids (12 characters) of ``service``'s running replicas."""
    return {c.id[:12] for c in cluster.containers(service)}


def system_mode(prefix: Path, command: list[str]) -> tuple[str, ...]:
    """The flags that make `operator lb` drive the NGINX of `system_nginx` through one file of its conf.d."""
    return (
        "--system-nginx-conf",
        str(prefix / "conf.d" / "operator.conf"),
        "--nginx-test-cmd",
        " ".join([*command, "-t", "-q"]),
        "--nginx-reload-cmd",
        " ".join([*command, "-s", "reload"]),
    )


# --- system mode: a config the whole NGINX refuses ------------------------------------------


def test_system_nginx_keeps_the_old_file_when_nginx_t_refuses(
    cluster: Cluster,
    service_name: str,
    other_service: str,
    system_nginx: tuple[Path, list[str]],
    start_lb: StartLb,
    tmp_path: Path,
) -> None:
    """System mode: a config `nginx -t` refuses is taken out again, the old file stays and keeps serving."""
    prefix, command = system_nginx
    port = 8091
    cluster.put(service_name, 1, placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    ids = replicas(cluster, service_name)
    lb = start_lb(port, (*system_mode(prefix, command), "--default-service", service_name))
    wait_until(
        lambda: serves(OWN_ADDRESS, service_name, ids, port=port), timeout=LB_UPDATE_S, what="NGINX to serve"
    )
    ours = prefix / "conf.d" / "operator.conf"
    good = ours.read_text()

    # Someone else's file in conf.d claims our listen address's default server:
    # every config we render now fails `nginx -t` (a duplicate default server).
    theirs = prefix / "conf.d" / "theirs.conf"
    theirs.write_text(f'server {{ listen {OWN_ADDRESS}:{port} default_server; return 418 "theirs\\n"; }}\n')
    refused = lb.metric("operator_lb_reloads_total", result="failed")
    cluster.put(other_service, 1, placement={"hosts": ["host-2"]})
    cluster.wait_converged(other_service, 1)
    wait_until(
        lambda: lb.metric("operator_lb_reloads_total", result="failed") > refused,
        timeout=REACT_S,
        what="a refused config",
    )
    # Once more, now that the new service passes: a pass that would serve it (a new drain
    # changes the manifest, not the containers, and wakes the load balancer).
    refused = lb.metric("operator_lb_reloads_total", result="failed")
    cluster.put(other_service, 1, placement={"hosts": ["host-2"]}, drain="600ms")
    wait_until(
        lambda: lb.metric("operator_lb_reloads_total", result="failed") > refused,
        timeout=REACT_S,
        what="the config serving the new service refused",
    )
    # The file is tested in place, so a pass has it in conf.d for a moment: look once the
    # load balancer has stopped (SIGTERM lets its pass finish).
    lb.stop()
    assert ours.read_text() == good, "the refused file was left in place"
    assert serves(OWN_ADDRESS, service_name, ids, port=port), "NGINX stopped serving the last good config"
    assert served(OWN_ADDRESS, other_service, 3, port=port) == ids, "the refused config was loaded"

    theirs.unlink()
    lb.start()
    wait_until(
        lambda: serves(OWN_ADDRESS, other_service, replicas(cluster, other_service), port=port),
        timeout=LB_UPDATE_S,
        what="the new service served once NGINX takes the config",
    )


# --- coalescing -------------------------------------------------------------------------------

COALESCE = 10.0  # seconds: the window; the burst below takes well under it
BURST = 6


def test_a_burst_of_changes_within_the_coalesce_window_is_one_reload(
    cluster: Cluster, start_lb: StartLb, tmp_path: Path
) -> None:
    """`--coalesce 10s`: six new services, each seen by a pass, reach NGINX in at most two reloads."""
    port = 8092
    lb = start_lb(port, ("--nginx-dir", str(tmp_path / "nginx"), "--coalesce", f"{COALESCE:g}s"))
    wait_until(lambda: get(OWN_ADDRESS, "nothing", port=port)[0] == 404, timeout=LB_UPDATE_S, what="NGINX")
    names = ["c" + uuid.uuid4().hex[:8] for _ in range(BURST)]
    reloads = lb.metric("operator_lb_reloads_total", result="ok")
    try:
        for name in names:
            passes = lb.metric("operator_reconcile_duration_seconds_count", loop="lb")
            cluster.put(name, 0)
            wait_until(
                lambda: lb.metric("operator_reconcile_duration_seconds_count", loop="lb") > passes,  # noqa: B023
                timeout=REACT_S,
                what=f"a pass that sees {name}",
            )
        for name in names:
            wait_until(
                lambda: get(OWN_ADDRESS, name, port=port) == (503, f"no healthy instance of {name}\n"),  # noqa: B023
                timeout=COALESCE + LB_UPDATE_S,
                what=f"NGINX to answer for {name}",
            )
        applied = lb.metric("operator_lb_reloads_total", result="ok") - reloads
    finally:
        for name in names:
            cluster.delete(name)
    # The first change at once, the rest together when the window ends.
    assert 1 <= applied <= 2, f"{applied:g} reloads for {BURST} changes"


# --- Consul failing ---------------------------------------------------------------------------

FAULTS = {
    # Connection refused: the load balancer's own Consul agent stopped.
    "consul-stopped": ("consul-host-3",),
    # Its agent answers, but the other two servers are gone: HTTP 500 at first, then requests
    # held until they time out.
    "no-leader": ("consul-host-1", "consul-host-2"),
}
FAILED_PASSES = 3


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_failed_consul_read_never_renders(
    cluster: Cluster, service_name: str, start_lb: StartLb, tmp_path: Path, fault: str
) -> None:
    """Consul away or failing: passes fail, the config file stays as it was, no request via NGINX fails."""
    port = 8093
    cluster.put(service_name, 1, placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    ids = replicas(cluster, service_name)
    nginx_dir = tmp_path / "nginx"
    # A pass every second even when nothing wakes it: passes run while Consul is failing.
    lb = start_lb(port, ("--nginx-dir", str(nginx_dir), "--resync", "1s"))
    wait_until(
        lambda: serves(OWN_ADDRESS, service_name, ids, port=port), timeout=LB_UPDATE_S, what="NGINX to serve"
    )
    conf = (nginx_dir / "nginx.conf").read_text()
    reloads = lb.metric("operator_lb_reloads_total", result="ok")
    failed = lb.failed_passes()
    with Load(OWN_ADDRESS, service_name, port=port) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=LOAD_S, what="load to start")
        try:
            for name in FAULTS[fault]:
                cluster.kill(name, signal.SIGTERM)
            wait_until(
                lambda: lb.failed_passes() >= failed + FAILED_PASSES,
                # Each failed pass: its retry's delay, and up to the client's timeout (a Consul
                # without a leader holds a request that long before it gives up).
                timeout=REACT_S + sum(retry_delay(n) + DEFAULT_TIMEOUT for n in range(1, FAILED_PASSES + 1)),
                what=f"{FAILED_PASSES} failed passes",
            )
            assert (nginx_dir / "nginx.conf").read_text() == conf, "a pass rendered from a failed read"
            assert lb.metric("operator_lb_reloads_total", result="ok") == reloads
            assert serves(OWN_ADDRESS, service_name, ids, port=port)
            while_failing = list(load.failures)
            requests_while_failing = len(load.outcomes)
        finally:
            cluster.staging.run("up")
        back = time.time()
        wait_until(
            lambda: lb.metric("operator_last_successful_sync_timestamp_seconds", loop="lb") > back,
            timeout=CONSUL_RETURN_S,
            what="the load balancer to pass again",
        )
        wait_until(
            lambda: serves(OWN_ADDRESS, service_name, ids, port=port),
            timeout=CONSUL_RETURN_S,
            what="NGINX to serve the replica after the heal",
        )
    assert requests_while_failing > 40
    assert while_failing == [], f"{len(while_failing)} of {requests_while_failing} failed while Consul failed"
    if fault == "consul-stopped":
        # The replica's own Consul agent never stopped: nothing may fail after the heal either.
        # (With no leader, host-1's agent restarts too, and Consul restores its checks as
        # critical until their first run: the replica is rightly out of NGINX for that moment.)
        failures = load.failures
        assert failures == [], f"{len(failures)} of {len(load.outcomes)} failed: {failures[:3]}"


# --- restarts -----------------------------------------------------------------------------------

# (mode, signal): `systemctl restart` (SIGTERM) or a crash (SIGKILL, then Restart=always) of a
# load balancer driving the system NGINX; a managed one killed with -9, whose own NGINX outlives
# it. (A managed `operator lb` stopped with SIGTERM stops its NGINX on the way out.)
RESTARTS = [
    pytest.param("system", signal.SIGTERM, id="system-sigterm"),
    pytest.param("system", signal.SIGKILL, id="system-sigkill"),
    pytest.param("managed", signal.SIGKILL, id="managed-sigkill"),
]


@pytest.mark.parametrize(("mode", "sig"), RESTARTS)
def test_nginx_serves_on_while_operator_lb_restarts(
    cluster: Cluster,
    service_name: str,
    start_lb: StartLb,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    mode: str,
    sig: signal.Signals,
) -> None:
    """`operator lb` stopped or killed and started again under load: no request fails; the new one follows."""
    port = 8094
    if mode == "system":
        prefix, command = request.getfixturevalue("system_nginx")
        flags = system_mode(prefix, command)
    else:
        flags = ("--nginx-dir", str(tmp_path / "nginx"))
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    lb = start_lb(port, (*flags, "--default-service", service_name))
    wait_until(
        lambda: serves(OWN_ADDRESS, service_name, replicas(cluster, service_name), port=port),
        timeout=LB_UPDATE_S,
        what="NGINX to serve both",
    )
    with Load(OWN_ADDRESS, service_name, port=port) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=LOAD_S, what="load to start")
        lb.stop(sig)
        away = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) > away + 20, timeout=LOAD_S, what="requests while it is away")
        lb.start()
        # The new process follows changes again.
        cluster.put(service_name, 3)
        cluster.wait_converged(service_name, 3)
        wait_until(
            lambda: serves(OWN_ADDRESS, service_name, replicas(cluster, service_name), port=port),
            timeout=LB_UPDATE_S,
            what="NGINX to serve the third replica",
        )
        settled = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) > settled + 20, timeout=LOAD_S, what="more requests")
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"
    if mode == "managed":
        master = int((tmp_path / "nginx" / "nginx.pid").read_text())
        lb.stop()
        assert not pid_alive(master), "the NGINX of the killed process outlived its successor"
