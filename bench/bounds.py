"""The figures behind the tests' bounds (tests/support/bounds.py), measured the way the tests act.

On a test-shaped environment of its own (the tests' manifests, the 600 s
resync), each repetition times what the integration tests wait for:

* deploy: kv put of 2 replicas -> running and passing; -> NGINX serves both (LB update: passing -> served);
* replacement: `docker kill` of one -> a new one running and passing; -> NGINX serves it;
* scale: 2 -> 4 converged; 4 -> 1 converged (drain 500 ms, stop grace 2 s);
* rollout: hello:local -> hello:v2, 2 replicas, max_surge 1, min_healthy 2 s -> complete;
* status: an invalid manifest -> the error in both agents' status records;
* removal: kv delete -> every container gone;
* new leader: kill -9 of the leader -> the other agent leads; then `staging.sh up` restarts it.

usage: python -m bench.bounds [--reps 5] [--addrs "127.0.0.81 127.0.0.82 127.0.0.83"] [--name bounds]
Appends a run to bench/results/bounds.md. The figures are reported there; the tests assert only the bounds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.docker_client import connect
from tests.support.cluster import Cluster
from tests.support.staging import SLOW_RESYNC, Staging, wait_until

RESULTS = Path("bench/results")
POLL = 0.05
LIMIT = 300.0  # a stage that takes this long is a failure, not a figure
UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "2s", "deadline": "2m"}

Figures = dict[str, list[float]]


def timed(figures: Figures, stage: str, started: float, condition: Callable[[], object]) -> float:
    """Wait for ``condition``; record the seconds since ``started`` under ``stage``; return now."""
    wait_until(condition, timeout=LIMIT, what=stage, interval=POLL)
    now = time.monotonic()
    figures.setdefault(stage, []).append(now - started)
    return now


def one_round(cluster: Cluster, figures: Figures) -> None:
    """Every measured stage once, on a fresh service."""
    name = "b" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    cluster.put(name, 2)
    passing = timed(
        figures, "deploy: 2 replicas running and passing", started, lambda: cluster.converged(name, 2)
    )
    timed(figures, "LB update: passing -> NGINX serves both", passing, lambda: cluster.lb_serves(name, 2))

    victim = cluster.containers(name)[0]
    started = time.monotonic()
    victim.kill()
    passing = timed(
        figures,
        "replacement: killed -> a new one running and passing",
        started,
        lambda: victim.id not in {c.id for c in cluster.containers(name)} and cluster.converged(name, 2),
    )
    timed(figures, "LB update: replacement passing -> served", passing, lambda: cluster.lb_serves(name, 2))

    started = time.monotonic()
    cluster.put(name, 4)
    timed(figures, "scale up: 2 -> 4 converged", started, lambda: cluster.converged(name, 4))
    started = time.monotonic()
    cluster.put(name, 1)
    timed(figures, "scale down: 4 -> 1 converged (drain 0.5 s)", started, lambda: cluster.converged(name, 1))
    cluster.put(name, 2, update=UPDATE)
    cluster.wait_converged(name, 2)

    started = time.monotonic()
    cluster.put(name, 2, image="hello:v2", update=UPDATE)
    timed(
        figures,
        "rollout: 2 replicas to v2 complete (min_healthy 2 s)",
        started,
        lambda: (cluster.kv_json(f"operator/rollout/{name}") or {}).get("state") == "complete",
    )
    cluster.wait_converged(name, 2)

    started = time.monotonic()
    cluster.put_raw(name, "name: [unclosed\n")
    timed(
        figures,
        "status: invalid manifest -> error in both status records",
        started,
        lambda: all(cluster.status_error(name, h).startswith("Invalid: ") for h in ("host-1", "host-2")),
    )

    started = time.monotonic()
    cluster.delete(name)
    timed(
        figures,
        "removal: kv delete -> every container gone",
        started,
        lambda: not cluster.containers(name, all_states=True),
    )

    old = str(wait_until(cluster.leader, timeout=LIMIT, what="a leader"))
    new = "host-2" if old == "host-1" else "host-1"
    started = time.monotonic()
    cluster.kill(f"agent-{old}", signal.SIGKILL)
    timed(
        figures,
        "new leader: kill -9 of the leader -> the other leads",
        started,
        lambda: cluster.leader() == new,
    )
    started = time.monotonic()
    cluster.staging.run("up")
    figures.setdefault("agent restart: staging.sh up after a kill -9", []).append(time.monotonic() - started)


HEADER = """# Figures behind the tests' bounds

`python -m bench.bounds` appends a run here; tests/support/bounds.py sets each bound
from the worst figures with a safety factor. Figures are reported, never asserted.
"""


def report(figures: Figures, reps: int, load: str) -> str:
    """One run's section: min, median and max of each stage."""
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} cores, "
        f"{reps} repetitions, load average before: {load}",
        "",
        "| stage | min (s) | median (s) | max (s) |",
        "| --- | --- | --- | --- |",
    ]
    for stage, values in figures.items():
        lines.append(f"| {stage} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")
    return "\n".join(["", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--addrs", default="127.0.0.81 127.0.0.82 127.0.0.83")
    parser.add_argument("--name", default="bounds")
    args = parser.parse_args(argv)
    a, b, c = args.addrs.split()
    staging = Staging(args.name, (a, b, c), extra_env=SLOW_RESYNC)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    staging.run("down")
    staging.run("up")
    cluster = Cluster(staging, ConsulClient(staging.consul_addr()), connect())
    figures: Figures = {}
    try:
        for rep in range(args.reps):
            one_round(cluster, figures)
            print(
                f"round {rep + 1}: "
                + ", ".join(f"{k.split(':')[0]} {v[-1]:.2f}" for k, v in figures.items()),
                flush=True,
            )
    finally:
        staging.run("down")
    text = report(figures, args.reps, load)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bounds.md"
    path.write_text((path.read_text() if path.exists() else HEADER) + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
