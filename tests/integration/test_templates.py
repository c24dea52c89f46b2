"""Templates against real Docker and Consul: a file rendered on the leader from KV keys and another
service's passing instances, mounted read-only in each replica; a changed key rolls the service; a
template that does not render holds that service only."""

from __future__ import annotations

from typing import Any

from consul_operator.core.model import LABEL_SPEC
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster, operator
from tests.support.execs import output_of
from tests.support.staging import wait_until

CONF = "/etc/app/app.conf"


def _only(cluster: Cluster, service: str) -> Any:
    (container,) = cluster.containers(service)
    return container


def _read(container: Any, path: str) -> str:
    return output_of(container, "cat", path)


def test_a_template_renders_keys_and_instances_and_a_changed_key_rolls_the_service(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """``templates: [{path: /etc/app/app.conf, source: ...}]`` with ``service('<db>')`` and
    ``key('.../greeting')``: the replica reads the database's registered address and port and the key's
    value, read-only; writing the key again replaces the replica with one that reads the new value."""
    db = other_service
    cluster.put(db, 1)
    cluster.wait_converged(db, 1)
    greeting = f"{service_name}/greeting"
    assert cluster.consul.kv_put(cluster.layout.config_key(greeting), b"hello")
    source = (
        f"host={{{{ service('{db}')[0].address }}}} port={{{{ service('{db}')[0].port }}}}"
        f" greeting={{{{ key('{greeting}') }}}}\n"
    )
    cluster.put(service_name, 1, templates=[{"path": CONF, "source": source}])
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    (instance,) = cluster.passing(db)
    assert _read(first, CONF) == f"host={instance.address} port={instance.port} greeting=hello\n"
    assert first.exec_run(["sh", "-c", f"echo x > {CONF}"]).exit_code != 0, "the rendered file is read-only"

    assert cluster.consul.kv_put(cluster.layout.config_key(greeting), b"bonjour")
    wait_until(
        lambda: [c.id for c in cluster.containers(service_name)] not in ([], [first.id]),
        timeout=CONVERGE_S,
        what="the replica replaced",
    )
    cluster.wait_converged(service_name, 1)
    second = _only(cluster, service_name)
    assert second.labels[LABEL_SPEC] != first.labels[LABEL_SPEC]
    assert _read(second, CONF) == f"host={instance.address} port={instance.port} greeting=bonjour\n"


def test_a_template_that_does_not_render_holds_its_service_only(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """A template reading a key that is not in KV: status and describe say it does not render and
    which key is missing, nothing of it starts, and another service converges meanwhile."""
    missing = f"{service_name}/absent"
    cluster.put(service_name, 1, templates=[{"path": CONF, "source": f"x={{{{ key('{missing}') }}}}"}])
    cluster.put(other_service, 1)
    cluster.wait_converged(other_service, 1)

    def says_why() -> bool:
        done = operator(cluster, "describe", service_name)
        return f"key {cluster.layout.config_key(missing)} missing" in done.stdout

    wait_until(
        says_why, timeout=REACT_S + CONVERGE_S, what="describe to say why the template does not render"
    )
    assert "does not render" in operator(cluster, "status").stdout
    assert cluster.containers(service_name) == []


def test_a_signal_template_is_rewritten_in_place_and_the_replica_signalled(
    cluster: Cluster, service_name: str
) -> None:
    """``change_mode: signal``: a new key value reaches the running replica's file in place and the
    replica gets SIGHUP (its trap copies the file it then reads); the same container runs on, with
    the same spec, and a TemplateRefreshed event says so."""
    live = "/etc/app/live.conf"
    key = f"{service_name}/level"
    assert cluster.consul.kv_put(cluster.layout.config_key(key), b"one")
    command = [
        "sh",
        "-c",
        f"trap 'cp {live} /tmp/seen' HUP; trap 'kill $c; exit 0' TERM; /bin/sh /start.sh & c=$!; "
        "while kill -0 $c 2>/dev/null; do wait $c; done",
    ]
    template = {"path": live, "source": f"level={{{{ key('{key}') }}}}", "change_mode": "signal"}
    cluster.put(service_name, 1, templates=[template], command=command)
    cluster.wait_converged(service_name, 1)
    first = _only(cluster, service_name)
    assert _read(first, live) == "level=one"

    assert cluster.consul.kv_put(cluster.layout.config_key(key), b"two")

    def signalled() -> bool:
        code, seen = first.exec_run(["cat", "/tmp/seen"])
        return bool(code == 0 and seen.decode() == "level=two")

    wait_until(signalled, timeout=REACT_S + CONVERGE_S, what="the replica signalled with the new text")
    assert _read(first, live) == "level=two"
    (now,) = cluster.containers(service_name)
    assert now.id == first.id and now.labels[LABEL_SPEC] == first.labels[LABEL_SPEC]

    def refreshed_event() -> bool:
        # Events are buffered and flushed in the background, and recorded after the signal.
        return "TemplateRefreshed" in operator(cluster, "describe", service_name).stdout

    wait_until(refreshed_event, timeout=REACT_S + CONVERGE_S, what="a TemplateRefreshed event in describe")
