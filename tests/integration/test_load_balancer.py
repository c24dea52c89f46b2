"""The load balancer through the real NGINX of the staging environment (host-3)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from consul_operator.adapters.actuators.nginx import ManagedNginx, render
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.model import ServiceInstance
from consul_operator.core.upstreams import build_view
from tests.support.bounds import LB_UPDATE_S, LOAD_S, REACT_S, REPLACEMENT_S
from tests.support.cluster import Cluster
from tests.support.load import Load
from tests.support.places import PLACE
from tests.support.served import get, replica
from tests.support.staging import wait_until

# The load balancer tests' own NGINX address (tests/support/places.py), as in test_lb_edges.py.
OWN_ADDRESS = PLACE.at(24)

# Failed requests allowed when a container is killed outright (not drained): the
# proxy retries connection errors on the next server, so we expect none, but a
# request already sent to the dying process can fail.
KILL_FAILURE_BUDGET = 3


def alternates(cluster: Cluster, service: str, containers: set[str]) -> bool:
    """Ten requests through NGINX are answered by the containers in strict turn."""
    bodies = [get(cluster.lb_address, service) for _ in range(10)]
    answered = [replica(body) for status, body in bodies if status == 200]
    return (
        len(answered) == 10
        and set(answered) == containers
        and all(a != b for a, b in itertools.pairwise(answered))
    )


def test_round_robin_across_both_app_hosts(cluster: Cluster, service_name: str) -> None:
    """Two replicas, one per app host: answers through NGINX alternate between the two containers."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    assert cluster.per_host(service_name) == {"host-1": 1, "host-2": 1}
    ids = {c.id[:12] for c in cluster.containers(service_name)}
    # Right after a reload, NGINX's old worker may still take a few requests with
    # the previous upstream list; round-robin is a steady-state property.
    wait_until(lambda: alternates(cluster, service_name, ids), timeout=LB_UPDATE_S, what="strict round-robin")


def test_service_without_passing_instance_answers_503(cluster: Cluster, service_name: str) -> None:
    """A service with a manifest but no passing instance answers 503, and other services keep working."""
    cluster.put(service_name, 0)
    # One condition, status and body together: right after a reload an old NGINX
    # worker may still answer a request or two from the previous config.
    wait_until(
        lambda: get(cluster.lb_address, service_name) == (503, f"no healthy instance of {service_name}\n"),
        timeout=LB_UPDATE_S,
        what="a 503 saying there is no healthy instance",
    )


def test_scale_down_under_load_fails_no_request(cluster: Cluster, service_name: str) -> None:
    """Scaling 3 -> 1 under a steady trickle of requests fails none of them: drain comes before stop."""
    cluster.put(service_name, 3, drain="2s")
    cluster.wait_converged(service_name, 3)
    wait_until(
        lambda: cluster.lb_serves(service_name, 3), timeout=LB_UPDATE_S, what="NGINX to serve 3 replicas"
    )
    with Load(cluster.lb_address, service_name) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=LOAD_S, what="load to start")
        cluster.put(service_name, 1, drain="2s")
        cluster.wait_converged(service_name, 1)
        wait_until(
            lambda: cluster.lb_serves(service_name, 1), timeout=LB_UPDATE_S, what="NGINX to serve 1 replica"
        )
        settled = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) > settled + 20, timeout=LOAD_S, what="more requests")
    assert len(load.outcomes) > 50
    assert load.failures == [], f"{len(load.failures)} of {len(load.outcomes)} failed: {load.failures[:3]}"


def test_killed_container_under_load_stays_within_budget(cluster: Cluster, service_name: str) -> None:
    """`docker kill` of a replica under load: failed requests stay within the budget, and are counted."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="NGINX to serve both")
    with Load(cluster.lb_address, service_name) as load:
        wait_until(lambda: len(load.outcomes) > 20, timeout=LOAD_S, what="load to start")
        victim = cluster.containers(service_name)[0]
        victim.kill()
        wait_until(
            lambda: (
                victim.id not in {c.id for c in cluster.containers(service_name)}
                and cluster.converged(service_name, 2)
            ),
            timeout=REPLACEMENT_S,
            what="the replacement",
        )
        wait_until(
            lambda: cluster.lb_serves(service_name, 2),
            timeout=LB_UPDATE_S,
            what="NGINX to serve the replacement",
        )
    failed = len(load.failures)
    print(f"kill under load: {failed} of {len(load.outcomes)} requests failed")
    assert failed <= KILL_FAILURE_BUDGET, f"{failed} failures: {load.failures[:5]}"


def test_hostile_registration_never_reaches_nginx(cluster: Cluster, service_name: str) -> None:
    """An instance registered by hand with a non-IP address is skipped and counted; NGINX keeps serving.

    Without our cluster's meta it is refused as foreign before its address is
    even looked at (ownership comes first; the grammar guards what our agents made).
    """
    cluster.put(service_name, 1, placement={"hosts": ["host-1"]})
    cluster.wait_converged(service_name, 1)
    wait_until(lambda: cluster.lb_serves(service_name, 1), timeout=LB_UPDATE_S, what="NGINX to serve")
    rejected_before = cluster.metric("host-3", "operator_lb_rejected_total", reason="foreign_cluster")
    host3 = ConsulClient(cluster.staging.consul_addr("host-3"))
    evil_id = f"evil-{uuid.uuid4().hex[:6]}"
    host3.register_service(
        {"ID": evil_id, "Name": service_name, "Address": "127.0.0.1; include /etc/shadow", "Port": 80}
    )
    try:
        wait_until(
            lambda: (
                cluster.metric("host-3", "operator_lb_rejected_total", reason="foreign_cluster")
                > rejected_before
            ),
            timeout=REACT_S,
            what="the rejection to be counted",
        )
        conf = (cluster.staging.run_dir / "nginx" / "nginx.conf").read_text()
        assert "/etc/shadow" not in conf
        assert cluster.lb_serves(service_name, 1)
    finally:
        host3.deregister_service(evil_id)


@pytest.fixture
def own_nginx(tmp_path: Path, nginx_binary: str) -> Iterator[ManagedNginx]:
    """An NGINX of the test's own, in a temp prefix; stopped afterwards."""
    nginx = ManagedNginx(tmp_path / "nginx", binary=nginx_binary)
    yield nginx
    nginx.stop()


def static_conf(prefix: Path, body: str) -> str:
    """A whole managed config answering ``body`` on OWN_ADDRESS:8080."""
    return (
        f"pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/tmp/cb; proxy_temp_path {prefix}/tmp/p;\n"
        f"fastcgi_temp_path {prefix}/tmp/f; uwsgi_temp_path {prefix}/tmp/u; scgi_temp_path {prefix}/tmp/s;\n"
        f'server {{ listen {OWN_ADDRESS}:8080; location / {{ return 200 "{body}"; }} }} }}\n'
    )


def test_config_failing_nginx_t_leaves_the_old_one_serving(own_nginx: ManagedNginx) -> None:
    """A config that fails `nginx -t` is not installed: the running NGINX keeps serving the last good one."""
    first = own_nginx.apply(static_conf(own_nginx.prefix, "one"))
    assert first.ok and first.changed
    wait_until(
        lambda: get(OWN_ADDRESS, "x", port=8080) == (200, "one"), timeout=LB_UPDATE_S, what="NGINX to serve"
    )
    good_text = own_nginx.current()

    broken = own_nginx.apply(static_conf(own_nginx.prefix, "two").replace("listen", "lisen"))
    assert not broken.ok and not broken.changed
    assert "nginx -t failed" in broken.error
    assert own_nginx.current() == good_text
    assert get(OWN_ADDRESS, "x", port=8080) == (200, "one")

    second = own_nginx.apply(static_conf(own_nginx.prefix, "two"))
    assert second.ok
    wait_until(
        lambda: get(OWN_ADDRESS, "x", port=8080) == (200, "two"), timeout=LB_UPDATE_S, what="the reload"
    )


@pytest.mark.parametrize(
    "instances",
    [
        pytest.param({}, id="no-service"),
        pytest.param({"simple": []}, id="no-instance"),
        pytest.param({"simple": [("127.0.0.11", 5000)]}, id="one"),
        pytest.param(
            {"simple": [("127.0.0.11", p) for p in range(5000, 5030)], "web": []}, id="many-and-several"
        ),
        pytest.param({"a" * 63: [("::1", 80)]}, id="longest-name-ipv6"),
    ],
)
def test_rendered_configs_pass_nginx_t(
    tmp_path: Path, nginx_binary: str, instances: dict[str, list[tuple[str, int]]]
) -> None:
    """Every shape of rendered config passes the real `nginx -t`."""
    nginx = ManagedNginx(tmp_path / "nginx", binary=nginx_binary)
    catalog = {
        name: [
            ServiceInstance("n", "127.0.0.1", f"i{k}", name, a, p, {}, "passing")
            for k, (a, p) in enumerate(items)
        ]
        for name, items in instances.items()
    }
    text = render(
        build_view(catalog.keys(), catalog, "simple"),
        listen=f"{OWN_ADDRESS}:8081",
        managed=True,
        prefix=str(nginx.prefix),
    )
    path = nginx.prefix / "candidate.conf"
    path.write_text(text)
    ok, output = nginx.test(path)
    assert ok, output
