"""`make demo`, the README's walkthrough, on an environment of its own."""

from __future__ import annotations

import re
import shutil
import subprocess

import docker

from consul_operator.core.model import LABEL_CLUSTER, LABEL_SERVICE
from tests.support.cluster import Cluster
from tests.support.places import PLACE
from tests.support.staging import ROOT, Staging, pid_alive

DEMO_ADDRS = PLACE.three(57)


def test_make_demo_goes_through_the_load_balancer(
    cluster: Cluster, docker_engine: docker.DockerClient
) -> None:
    """`make demo` on its own addresses: exit 0, NGINX answers from both replicas; others are left alone."""
    env = Staging(f"{cluster.staging.name}-demo", DEMO_ADDRS)
    environ = {k: v for k, v in env.env.items() if k != "CONSUL_HTTP_ADDR"}  # the demo derives it
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    mine = {"label": f"{LABEL_CLUSTER}={env.name}"}
    # A container of service `simple` in another cluster: the demo must neither kill nor remove it.
    bystander = docker_engine.containers.run(
        "hello:local",
        detach=True,
        labels={LABEL_SERVICE: "simple", LABEL_CLUSTER: f"{env.name}-bystander"},
    )
    env.run("down")  # a previous run that crashed may have left it behind
    try:
        demo = subprocess.run(
            [make, "-C", str(ROOT), "demo"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        # "  curl http://<host-3>/  ->  Hello World from <container>": answers through NGINX,
        # 2 with one replica, 6 with two, 4 after one of them was killed and replaced.
        lb = re.escape(f"curl http://{DEMO_ADDRS[2]}/")
        answers = re.findall(rf"^  {lb}  ->  Hello World from (\w+)$", demo.stdout, re.MULTILINE)
        assert len(answers) == 2 + 6 + 4, demo.stdout
        assert len(set(answers[2:8])) == 2, "round-robin over both replicas"
        running = {c.id[:12] for c in docker_engine.containers.list(filters=mine)}
        assert len(running) == 2
        assert set(answers[8:]) == running, "after the kill, NGINX serves the replacement"
        assert re.search(r"^simple\s+hello:local\s+2\s+2\s+2\s+0\s.*Converged$", demo.stdout, re.MULTILINE)
        bystander.reload()
        assert bystander.status == "running"
        pids = env.pids()
    finally:
        env.run("down")
        bystander.reload()
        spared = bystander.status == "running"
        bystander.remove(force=True)
    assert spared, "the demo's environment left a container of another cluster alone"
    assert not docker_engine.containers.list(all=True, filters=mine)
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
