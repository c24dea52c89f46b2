"""The load balancer's edges against real Consul, Docker and NGINX: hostile and foreign catalog
data, configs NGINX refuses, and a system NGINX whose reload fails."""

from __future__ import annotations

import itertools
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.actuators.nginx import ManagedNginx, SystemNginx, render
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.snapshot import read_snapshot
from consul_operator.core.backoff import RETRY_CAP, retry_delay
from consul_operator.core.keys import Layout
from consul_operator.core.model import LABEL_CLUSTER, LABEL_SERVICE
from consul_operator.core.status import build_status
from consul_operator.core.upstreams import LBView
from consul_operator.daemons.lb import LoadBalancer, RenderFn
from consul_operator.daemons.loop import Trigger, run_loop
from tests.support.bounds import CONVERGE_S, LB_UPDATE_S, PROCESS_S, REACT_S, REMOVAL_S
from tests.support.cluster import Cluster, manifest_yaml, operator
from tests.support.delays import assert_backs_off
from tests.support.places import PLACE
from tests.support.served import get, served, serves
from tests.support.staging import ROOT, wait_until

# The test's own NGINX (only this module, test_load_balancer.py and test_lb_daemon.py use it).
OWN_ADDRESS = PLACE.at(24)


def metric(name: str, **labels: str) -> float:
    """A sample of this process's own metrics (the in-process load balancers count here)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejected_total(cluster: Cluster) -> float:
    """operator_lb_rejected_total of the staging load balancer, over every reason."""
    return sum(
        cluster.metric("host-3", "operator_lb_rejected_total", reason=r) for r in metrics.LB_REJECT_REASONS
    )


@pytest.fixture
def forge(cluster: Cluster) -> Iterator[list[tuple[ConsulClient, str]]]:
    """Registrations a test forges, as (Consul agent, service id); all deregistered afterwards."""
    made: list[tuple[ConsulClient, str]] = []
    yield made
    for client, sid in made:
        client.deregister_service(sid)


def register_forged(
    forged: list[tuple[ConsulClient, str]], cluster: Cluster, host: str, definition: dict[str, object]
) -> None:
    """Register ``definition`` (no check: Consul shows it passing) on ``host``'s Consul agent."""
    client = ConsulClient(cluster.staging.consul_addr(host))
    client.register_service(definition)
    forged.append((client, str(definition["ID"])))


def test_scoped_address_does_not_freeze_other_services(
    cluster: Cluster, service_name: str, other_service: str, forge: list[tuple[ConsulClient, str]]
) -> None:
    """A registration at `::1%x` under a served name is left out; a service put afterwards is served."""
    cluster.put(service_name, 1, placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    wait_until(lambda: cluster.lb_serves(service_name, 1), timeout=LB_UPDATE_S, what="NGINX to serve")
    before = rejected_total(cluster)
    for host, cluster_meta in (("host-3", "elsewhere"), ("host-1", cluster.staging.name)):
        register_forged(
            forge,
            cluster,
            host,
            {
                "ID": f"{service_name}-{host}-scoped",
                "Name": service_name,
                "Address": "::1%x",
                "Port": 80,
                "Meta": {"cluster": cluster_meta, "host": "host-1"},
            },
        )
    wait_until(lambda: rejected_total(cluster) >= before + 2, timeout=REACT_S, what="both to be rejected")

    cluster.put(other_service, 1, placement={"hosts": ["host-2"]})
    cluster.wait_converged(other_service, 1)
    wait_until(
        lambda: cluster.lb_serves(other_service, 1), timeout=LB_UPDATE_S, what="the later service served"
    )
    assert cluster.lb_serves(service_name, 1)
    assert "%" not in (cluster.staging.run_dir / "nginx" / "nginx.conf").read_text()


def consul_answered(status: int, body: str) -> bool:
    """Whether an answer came from Consul's HTTP API (agent/self is JSON with a Config and a Member)."""
    return status == 200 and '"Config"' in body and '"Member"' in body


def test_forged_registrations_are_never_proxied(
    cluster: Cluster, service_name: str, forge: list[tuple[ConsulClient, str]]
) -> None:
    """Passing registrations at an agent host's Consul port, foreign or with our meta, never get traffic."""
    name = cluster.staging.name
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="NGINX to serve both")
    host1, host2 = cluster.staging.addresses[0], cluster.staging.addresses[1]
    forged = [
        # The issue's reproduction: another cluster's meta, host-2's Consul HTTP port.
        ("host-2", {"cluster": "prod", "host": "host-2"}, host2, "foreign_cluster"),
        # Our own cluster's meta, at an agent host's address: no agent reports it.
        ("host-2", {"cluster": name, "host": "host-2", "managed-by": "consul-operator"}, host2, "unreported"),
        ("host-1", {"cluster": name, "host": "host-1"}, host1, "unreported"),
        # Our meta, registered on the load balancer's own Consul agent.
        ("host-3", {"cluster": name, "host": "host-2"}, host2, "unreported"),
    ]
    before = {
        reason: cluster.metric("host-3", "operator_lb_rejected_total", reason=reason)
        for reason in ("foreign_cluster", "unreported")
    }
    for k, (host, meta, address, _) in enumerate(forged):
        register_forged(
            forge,
            cluster,
            host,
            {
                "ID": f"{service_name}-{meta['host']}-forged{k}",
                "Name": service_name,
                "Address": address,
                "Port": 8500,
                "Meta": meta,
            },
        )
    # Consul shows them passing: the catalog alone would serve them.
    wait_until(
        lambda: len(cluster.passing(service_name)) == 2 + len(forged), timeout=REACT_S, what="forgeries"
    )
    wait_until(
        lambda: all(
            cluster.metric("host-3", "operator_lb_rejected_total", reason=reason)
            >= before[reason] + sum(1 for f in forged if f[3] == reason)
            for reason in before
        ),
        timeout=REACT_S,
        what="the load balancer to reject every forgery",
    )

    answers = [get(cluster.lb_address, service_name, path="/v1/agent/self") for _ in range(40)]
    assert not [a for a in answers if consul_answered(*a)], "a request reached Consul's API"
    assert ":8500" not in (cluster.staging.run_dir / "nginx" / "nginx.conf").read_text()
    assert cluster.lb_serves(service_name, 2)

    # status and wait count the two real replicas, not the forgeries.
    view = build_status(read_snapshot(cluster.consul, Layout(), name, time.time()))
    service = next(s for s in view.services if s.name == service_name)
    assert (service.healthy, service.state) == (2, "Converged")
    wait = operator(cluster, "wait", service_name, "--timeout", f"{CONVERGE_S:g}s", "--cluster", name)
    assert wait.returncode == 0, wait.stdout + wait.stderr


@pytest.fixture
def other_cluster(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A second operator cluster on the same Consul: its own agent, prefixes and name; (cluster, prefix)."""
    other = "other" + uuid.uuid4().hex[:6]
    prefix = f"{other}/"
    consul_addr = cluster.staging.consul_addr("host-1")
    log = open(cluster.staging.run_dir / f"agent-{other}.log", "ab")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consul_operator",
            "agent",
            "--host",
            "host-9",
            "--advertise",
            cluster.staging.addresses[0],
            "--consul",
            consul_addr,
            "--cluster",
            other,
            "--services-prefix",
            f"{prefix}services/",
            "--operator-prefix",
            f"{prefix}operator/",
            "--log-json",
        ],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    try:
        yield other, prefix
    finally:
        cluster.consul.kv_delete(f"{prefix}services/", recurse=True)
        labels = [f"{LABEL_CLUSTER}={other}"]
        try:
            wait_until(
                lambda: not cluster.docker.containers.list(all=True, filters={"label": labels}),
                timeout=REMOVAL_S,
                what="the other cluster's containers to go",
            )
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=PROCESS_S)
            log.close()
            ConsulClient(consul_addr).deregister_service("operator-agent-host-9")
            cluster.consul.kv_delete(prefix, recurse=True)


def test_two_clusters_on_one_consul_never_mix(
    cluster: Cluster, service_name: str, other_cluster: tuple[str, str]
) -> None:
    """Another cluster's replica of the same service name is never proxied nor counted by ours."""
    other, prefix = other_cluster
    cluster.put(service_name, 1, placement={"hosts": ["host-2"]})
    cluster.consul.kv_put(f"{prefix}services/{service_name}", manifest_yaml(service_name, 1))

    def theirs() -> list[object]:
        labels = [f"{LABEL_CLUSTER}={other}", f"{LABEL_SERVICE}={service_name}"]
        return list(cluster.docker.containers.list(filters={"label": labels}))

    def ours_converged() -> bool:
        running = {c.name for c in cluster.containers(service_name)}
        mine = [i for i in cluster.passing(service_name) if i.meta.get("cluster") == cluster.staging.name]
        return len(running) == 1 and running == {i.service_id for i in mine}

    wait_until(ours_converged, timeout=CONVERGE_S, what="our replica")
    # The other cluster's agent starts with the test: its start-up is in this wait too.
    wait_until(lambda: len(theirs()) == 1, timeout=PROCESS_S + CONVERGE_S, what="the other cluster's replica")
    wait_until(
        lambda: (
            sorted(i.meta.get("cluster") for i in cluster.passing(service_name))
            == sorted([other, cluster.staging.name])
        ),
        timeout=CONVERGE_S,
        what="both clusters' replicas passing in one catalog",
    )
    ours = {c.id[:12] for c in cluster.containers(service_name)}
    wait_until(lambda: cluster.lb_serves(service_name, 1), timeout=LB_UPDATE_S, what="NGINX to serve ours")
    answered = served(cluster.lb_address, service_name, 20)
    assert answered == ours

    view = build_status(read_snapshot(cluster.consul, Layout(), cluster.staging.name, time.time()))
    service = next(s for s in view.services if s.name == service_name)
    assert (service.healthy, service.state) == (1, "Converged")
    their_view = build_status(
        read_snapshot(cluster.consul, Layout(f"{prefix}services/", f"{prefix}operator/"), other, time.time())
    )
    assert next(s for s in their_view.services if s.name == service_name).healthy == 1


# --- a config NGINX refuses for a reason no whitelist knows -------------------------------


def poisoning(poisoned: set[str]) -> RenderFn:
    """The real template, with an NGINX Plus-only parameter on each poisoned ``address:port`` server.

    Every value passes our whitelist; open-source NGINX refuses `slow_start` ("invalid
    parameter"): the kind of refusal a template change or an NGINX upgrade brings
    that no whitelist can foresee, here for one new server of one service.
    """

    def template(view: LBView, *, listen: str, managed: bool, prefix: str = "") -> str:
        text = render(view, listen=listen, managed=managed, prefix=prefix)
        for server in poisoned:
            text = text.replace(f"server {server} max_fails", f"server {server} slow_start=10s max_fails")
        return text

    return template


def test_service_nginx_refuses_never_freezes_the_others(
    cluster: Cluster, service_name: str, other_service: str, tmp_path: Path, nginx_binary: str
) -> None:
    """When nginx -t refuses one service's upstream, the others keep getting fresh upstreams; the refusal
    is a ReloadRefused event of that service."""
    bad, good = service_name, other_service
    for name in (bad, good):
        cluster.put(name, 1, placement={"hosts": ["host-1"]})
    for name in (bad, good):
        cluster.wait_converged(name, 1)
    poisoned: set[str] = set()
    event_log.RECORDER.host = "lb-test"  # what start_flusher names a real LB's events after
    nginx = ManagedNginx(tmp_path / "nginx", binary=nginx_binary)
    lb = LoadBalancer(
        ConsulClient(cluster.staging.consul_addr("host-3")),
        Layout(),
        nginx,
        f"{OWN_ADDRESS}:8081",
        None,
        coalesce=0.0,
        cluster=cluster.staging.name,
        template=poisoning(poisoned),
    )
    try:

        def fresh(name: str, n: int) -> bool:
            """One pass of the in-process load balancer, then: NGINX serves ``name``'s ``n`` replicas."""
            lb.reconcile()
            ids = {c.id[:12] for c in cluster.containers(name)}
            return len(ids) == n and serves(OWN_ADDRESS, name, ids, port=8081)

        wait_until(lambda: fresh(bad, 1) and fresh(good, 1), timeout=LB_UPDATE_S, what="both served")
        first_containers = cluster.containers(bad)
        first_bad = {c.id[:12] for c in first_containers}
        failed_before = metric("operator_lb_reloads_total", result="failed")

        def reported(name: str, n: int) -> bool:
            """``n`` replicas pass, and each is listed in its host's status record (ownership.py)."""
            passing = {i.service_id for i in cluster.passing(name)}
            listed = {
                sid
                for host in ("host-1", "host-2")
                for sid in (cluster.status(name, host) or {}).get("instances", [])
            }
            return len(passing) == n and passing <= listed

        for name in (bad, good):
            cluster.put(name, 2)
        for name in (bad, good):
            cluster.wait_converged(name, 2)
            # The load balancer counts a replica once its agent reports it (ownership.py);
            # a replica now passes from its registration on, which can be before that report.
            wait_until(
                lambda: reported(name, 2),  # noqa: B023
                timeout=REACT_S,
                what=f"the agents to report both replicas of {name}",
            )
        # No pass has run since: the bad service's new server is refused from its first sight.
        new = [i for i in cluster.passing(bad) if i.service_id not in {c.name for c in first_containers}]
        poisoned.update(f"{i.address}:{i.port}" for i in new)
        wait_until(lambda: fresh(good, 2), timeout=LB_UPDATE_S, what="the good service's fresh upstream")
        assert metric("operator_lb_reloads_total", result="failed") > failed_before
        assert metric("operator_lb_quarantined_services") == 1
        kept = served(OWN_ADDRESS, bad, 6, port=8081)
        assert kept == first_bad, "the refused service keeps its last good upstream"
        assert "slow_start" not in (nginx.current() or "")
        # The in-process LB records into this process's recorder: flushed here as its flusher would.
        event_log.RECORDER.flush(cluster.consul, cluster.layout)
        refused = [
            e for e in event_log.read_events(cluster.consul, cluster.layout, bad) if e.host == "lb-test"
        ]
        assert [e.reason for e in refused] == ["ReloadRefused"], refused
        assert "nginx -t refuses its upstream" in refused[0].message

        poisoned.clear()
        wait_until(
            lambda: fresh(bad, 2), timeout=LB_UPDATE_S, what="the service served fresh once NGINX takes it"
        )
        assert metric("operator_lb_quarantined_services") == 0
    finally:
        nginx.stop()


# --- a system NGINX whose reload fails ---------------------------------------------------


# Reloads refused before one works: retried after 0.5, 1, 2, 4, 8 s and then the 10 s cap.
REFUSED_RELOADS = 6
# The attempts are stamped by the reload command itself: a retry's pass reads Consul and
# renders before it runs the command again (measured 0.01-0.05 s late), never early.
RELOAD_LATE = 2.0
RELOAD_EARLY = 0.05


def test_failed_system_reload_is_retried_until_it_succeeds(
    cluster: Cluster, service_name: str, system_nginx: tuple[Path, list[str]]
) -> None:
    """A reload failing 6 times is retried after 0.5, 1, 2, 4, 8 and 10 s (the cap), counted, then serves."""
    prefix, command = system_nginx
    attempts = prefix / "attempts"
    script = prefix / "reload.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"date +%s.%N >> {attempts}\n"
        f'[ "$(wc -l < {attempts})" -gt {REFUSED_RELOADS} ] || {{ echo "reload refused" >&2; exit 1; }}\n'
        f"exec {' '.join(command)} -s reload\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cluster.put(service_name, 1, placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    ids = {c.id[:12] for c in cluster.containers(service_name)}
    errors_before = metric("operator_lb_reloads_total", result="error")
    wanted = [retry_delay(n) for n in range(1, REFUSED_RELOADS + 1)]

    nginx = SystemNginx(
        prefix / "conf.d" / "lb.conf", test_cmd=" ".join([*command, "-t", "-q"]), reload_cmd=str(script)
    )
    lb = LoadBalancer(
        ConsulClient(cluster.staging.consul_addr("host-3")),
        Layout(),
        nginx,
        f"{OWN_ADDRESS}:8080",
        service_name,
        coalesce=0.0,
        cluster=cluster.staging.name,
    )
    stop, trigger = threading.Event(), Trigger()
    loop = threading.Thread(
        target=run_loop, args=("lb", lb.reconcile, trigger, stop), kwargs={"resync": 600.0}
    )
    loop.start()
    try:
        wait_until(
            lambda: served(OWN_ADDRESS, "anything", 1, port=8080) <= ids,
            timeout=sum(wanted) + REFUSED_RELOADS * RELOAD_LATE + LB_UPDATE_S,
            what="the system NGINX to serve after the reload finally worked",
        )
    finally:
        stop.set()
        trigger.fire()
        loop.join(timeout=PROCESS_S)
    times = [float(line) for line in attempts.read_text().split()]
    assert len(times) == REFUSED_RELOADS + 1, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert_backs_off(gaps, wanted, early=RELOAD_EARLY, late=RELOAD_LATE)
    assert wanted[-1] == RETRY_CAP < 2 * wanted[-2], "the last retry is at the cap"
    assert metric("operator_lb_reloads_total", result="error") - errors_before == REFUSED_RELOADS
