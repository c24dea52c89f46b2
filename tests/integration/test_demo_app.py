"""The two-tier example (manifests/visits*.yaml, images/visits/): a Python web app counting visits in
Redis, its count on a named volume, the password a secret; and `make demo-app`, which runs it all."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import docker
import yaml

from consul_operator.core.model import LABEL_CLUSTER
from tests.support.bounds import CONVERGE_S, REACT_S
from tests.support.cluster import Cluster
from tests.support.places import PLACE
from tests.support.staging import HOST_1_ALLOWED_HOST_PATH, ROOT, Staging, pid_alive, wait_until

DEMO_APP_ADDRS = PLACE.three(64)  # tests/support/places.py


def example(path: str, name: str, **fields: Any) -> dict[str, Any]:
    """A manifest of manifests/ under another name, with ``fields`` set (None: left out)."""
    body = dict(yaml.safe_load((ROOT / "manifests" / path).read_text()))
    body.update(name=name, **fields)
    return {k: v for k, v in body.items() if v is not None}


def visit(cluster: Cluster, service: str) -> str:
    """GET / of the (one) passing replica of ``service``, at its registered address."""
    (instance,) = cluster.passing(service)
    with urllib.request.urlopen(f"http://{instance.address}:{instance.port}/", timeout=5) as answer:
        return str(answer.read().decode())


def test_the_app_counts_visits_in_redis_with_its_password_and_the_count_survives_a_kill(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """The example's images from `make image`: the app counts visits in Redis with the password of
    /run/secrets/redis_password (here a host directory of host-1, until the secrets feature), Redis
    keeps the count on its named volume through a `docker kill` of its replica, and the password is
    neither in the containers' inspect nor in the process listing."""
    redis, web = service_name, other_service
    share = Path(HOST_1_ALLOWED_HOST_PATH) / redis
    (share / "secrets").mkdir(parents=True, exist_ok=True)
    (share / "app").mkdir(exist_ok=True)
    password = "Planted-" + secrets.token_hex(12)
    secret = share / "secrets" / "redis_password"
    secret.write_text(password)
    secret.chmod(0o400)
    conf = share / "app" / "app.conf"
    mounts = {"host_path": str(share / "secrets"), "path": "/run/secrets", "read_only": True}
    host_1 = {"hosts": ["host-1"]}
    try:
        data = [{"name": "data", "path": "/var/lib/redis"}, mounts]
        cluster.put_raw(
            redis,
            yaml.safe_dump(example("visits-redis.yaml", redis, secrets=None, volumes=data, placement=host_1)),
        )
        cluster.wait_converged(redis, 1)

        def render() -> None:
            # What the template renders from the catalog, but at Redis's bridge address: this test
            # environment publishes ports on loopback addresses, which no container reaches.
            (container,) = cluster.containers(redis)
            conf.write_text(f"redis = {container.attrs['NetworkSettings']['IPAddress']}:6379\n")

        render()
        app_mounts = [mounts, {"host_path": str(share / "app"), "path": "/etc/app", "read_only": True}]
        manifest = example(
            "visits.yaml", web, secrets=None, templates=None, volumes=app_mounts, replicas=1, placement=host_1
        )
        cluster.put_raw(web, yaml.safe_dump(manifest))
        cluster.wait_converged(web, 1)
        assert visit(cluster, web).startswith("visits: 1 ")
        assert visit(cluster, web).startswith("visits: 2 ")

        (old,) = cluster.containers(redis)
        old.kill()
        wait_until(
            lambda: [c.id for c in cluster.containers(redis)] not in ([], [old.id]),
            timeout=CONVERGE_S,
            what="Redis's successor",
        )
        cluster.wait_converged(redis, 1)
        render()
        wait_until(
            lambda: visit(cluster, web).startswith("visits: 3 "), timeout=REACT_S, what="the count of 3"
        )

        inspected = repr([c.attrs for c in cluster.containers(redis) + cluster.containers(web)])
        processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert password not in inspected and password not in processes
    finally:
        shutil.rmtree(share, ignore_errors=True)


def test_make_demo_app_counts_through_a_kill_of_redis_and_shows_the_password_nowhere(
    docker_engine: docker.DockerClient,
) -> None:
    """What `make demo-app` runs (scripts/demo-app.sh; `make test` built the images), on its own
    addresses: the app answers through NGINX from the rendered template, the count goes on after the
    Redis replica is killed, Redis refuses a client without the password, and the password is in
    none of the places the script looks; everything it started goes with `down`."""
    env = Staging(f"{PLACE.name}-demo-app", DEMO_APP_ADDRS)
    mine = {"label": f"{LABEL_CLUSTER}={env.name}"}
    env.run("down")  # a previous run that crashed may have left it behind
    try:
        demo = subprocess.run(
            ["bash", str(ROOT / "scripts" / "demo-app.sh")],
            env={k: v for k, v in env.env.items() if k != "CONSUL_HTTP_ADDR"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        counts = [int(n) for n in re.findall(r"->  visits: (\d+) \(redis at ", demo.stdout)]
        assert counts == [1, 2, 3, 4], output  # three visits, the kill, the fourth
        assert re.search(r"^    redis = [\d.]+:\d+$", demo.stdout, re.MULTILINE), output  # the rendered file
        assert "NOAUTH" in demo.stdout, output
        assert "THE PASSWORD IS THERE" not in demo.stdout and demo.stdout.count(": not there") >= 10, output
        pids = env.pids()
    finally:
        env.run("down")
    assert not docker_engine.containers.list(all=True, filters=mine)
    assert not docker_engine.volumes.list(filters=mine)
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
