"""Several named ports (``ports:``) against real Docker, Consul and NGINX: each is published and
registered under the service's name, tagged with its name; the load balancer serves only ``http``
(or ``lb_port``), and a TCP service is registered with a TCP check and served by no upstream."""

from __future__ import annotations

import json
import re
from typing import Any

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.model import LABEL_HOST, LABEL_SERVICE, META_CLUSTER
from tests.support.bounds import CONVERGE_S, LB_UPDATE_S
from tests.support.cluster import Cluster, operator
from tests.support.served import get
from tests.support.staging import wait_until

# The hello image serves :5000; a second httpd serves "metrics" on :9100.
TWO_PORTS = [
    "sh",
    "-c",
    "mkdir -p /m && echo metrics > /m/index.html && httpd -p 9100 -h /m && exec sh /start.sh",
]


def _published(container: Any, port: int) -> int:
    """The host port Docker published ``port`` of ``container`` at."""
    container.reload()
    (binding,) = container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"]
    return int(binding["HostPort"])


def _agent(cluster: Cluster, container: Any) -> ConsulClient:
    """The Consul agent of the host ``container`` runs on (where it is registered)."""
    return ConsulClient(cluster.staging.consul_addr(container.labels[LABEL_HOST]))


def _mine(cluster: Cluster, service: str) -> list[Any]:
    """The passing catalog instances of ``service`` in this environment."""
    return [i for i in cluster.passing(service) if i.meta.get(META_CLUSTER) == cluster.staging.name]


def _ports_registered(cluster: Cluster, service: str, replicas: int, names: set[str]) -> bool:
    """Every running replica has one passing registration per port name in ``names``."""
    containers = cluster.containers(service)
    tags = {(i.meta.get("container", "")[:12], i.meta.get("port")) for i in _mine(cluster, service)}
    want = {(c.id[:12], n) for c in containers for n in names}
    return len(containers) == replicas and tags == want


def test_each_named_port_is_published_registered_and_only_http_is_load_balanced(
    cluster: Cluster, service_name: str
) -> None:
    """``ports: {http: 5000, metrics: 9100}``: both are published on the host's address and
    registered, tagged ``http`` and ``metrics``, at those host ports (each answers there); NGINX
    serves the ``http`` port of both replicas and has none of the metrics ports in its config."""
    cluster.put(service_name, 2, port=None, ports={"http": 5000, "metrics": 9100}, command=TWO_PORTS)
    wait_until(
        lambda: _ports_registered(cluster, service_name, 2, {"http", "metrics"}),
        timeout=CONVERGE_S,
        what="both ports of both replicas registered and passing",
    )
    by_id = {c.id[:12]: c for c in cluster.containers(service_name)}
    for inst in _mine(cluster, service_name):
        container = by_id[inst.meta["container"][:12]]
        assert container.labels[LABEL_SERVICE] == service_name
        name = inst.meta["port"]
        assert inst.port == _published(container, {"http": 5000, "metrics": 9100}[name])
        services = _agent(cluster, container).agent_services()
        assert services[inst.service_id]["Tags"] == [name], services[inst.service_id]
        status, body = get(inst.address, service_name, port=inst.port)
        assert status == 200, (name, status, body)
        assert ("metrics" in body) == (name == "metrics"), (name, body)
    catalog = cluster.consul.health_service(service_name).value
    assert {i.service_id for i in catalog if i.meta.get("port") == "metrics"} == {
        f"{c.name}-metrics" for c in by_id.values()
    }
    wait_until(lambda: cluster.lb_serves(service_name, 2), timeout=LB_UPDATE_S, what="http served")
    # The leader counts replicas, not registrations: 2 healthy, not 4 (the metrics ports pass too).
    wait_until(
        lambda: (
            cluster.scrape(str(cluster.leader())).get("operator_healthy_replicas", service=service_name) == 2
        ),
        timeout=CONVERGE_S,
        what="the leader's healthy_replicas = 2",
    )
    shown_status = operator(cluster, "status", service_name, "--json")
    (shown,) = json.loads(shown_status.stdout)["services"]
    assert shown["healthy"] == 2, shown
    # This service's upstream holds exactly the http ports (other services' ports may be reused numbers).
    block = cluster.staging.nginx_conf().split(f"upstream svc_{service_name} {{", 1)[1].split("}", 1)[0]
    servers = set(re.findall(r"server [0-9.]+:(\d+) ", block))
    assert servers == {str(_published(c, 5000)) for c in by_id.values()}, block


def test_a_tcp_service_has_a_tcp_check_and_no_upstream(cluster: Cluster, service_name: str) -> None:
    """``ports: {redis: 5000}`` without ``http`` or ``lb_port``: the replica is registered tagged
    ``redis`` with a TCP check that passes; NGINX has no upstream for it and answers 503."""
    cluster.put(
        service_name, 1, port=None, ports={"redis": 5000}, health={"interval": "1s", "timeout": "500ms"}
    )
    wait_until(
        lambda: _ports_registered(cluster, service_name, 1, {"redis"}),
        timeout=CONVERGE_S,
        what="the TCP replica registered and passing",
    )
    (container,) = cluster.containers(service_name)
    checks = _agent(cluster, container).agent_checks()
    check = checks[f"{container.name}-check"]
    assert check["Name"].startswith("TCP ") and check["Status"] == "passing", check
    (inst,) = _mine(cluster, service_name)
    assert inst.meta["lb"] == "no"
    wait_until(
        lambda: get(cluster.lb_address, service_name)[0] == 503, timeout=LB_UPDATE_S, what="NGINX answers 503"
    )
    assert f"svc_{service_name}" not in cluster.staging.nginx_conf()
