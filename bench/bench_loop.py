"""Benchmarks of the operator loop on a staging environment of its own (127.0.0.41-43).

Measures, and reports (never asserts):

* convergence: `kv put` of N replicas until all N pass in Consul, next to the
  same N raw `docker run -d` in parallel on the same engine (the physical limit);
* replacement: `docker kill` of a replica until its replacement runs, and passes;
* fail-over: kill -9 of the leader agent until the other agent holds the lock,
  and until it has written a placement.

usage: python -m bench.bench_loop [--reps 3] [--sizes 1,10,30] [--out bench/results/loop.md]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from consul_operator.consul_client import ConsulClient
from consul_operator.docker_client import connect
from tests.support.cluster import Cluster
from tests.support.staging import Staging, wait_until

BENCH_ADDRESSES = ("127.0.0.41", "127.0.0.42", "127.0.0.43")


def timed(action: Callable[[], object], until: Callable[[], object], timeout: float = 180) -> float:
    """Seconds from the start of ``action`` until ``until`` holds (polled every 20 ms)."""
    started = time.monotonic()
    action()
    wait_until(until, timeout=timeout, what="the benchmark condition", interval=0.02)
    return time.monotonic() - started


def raw_docker_run(cluster: Cluster, n: int) -> float:
    """N `docker run -d` of the same image and ports, in parallel: the physical limit."""
    client = cluster.docker
    label = {"consul-operator.cluster": cluster.staging.name, "bench": "raw"}

    def run_one(_: int) -> str:
        c = client.containers.run(
            "hello:local", detach=True, labels=label, ports={"5000/tcp": (BENCH_ADDRESSES[0], None)}
        )
        return str(c.id)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(run_one, range(n)))
    elapsed = time.monotonic() - started
    for cid in ids:
        client.containers.get(cid).remove(force=True)
    return elapsed


def convergence(cluster: Cluster, n: int) -> float:
    """`kv put` of N replicas until N instances pass in Consul."""
    name = "b" + uuid.uuid4().hex[:8]
    elapsed = timed(lambda: cluster.put(name, n), lambda: len(cluster.passing(name)) == n)
    cluster.delete(name)
    wait_until(lambda: not cluster.containers(name, all_states=True), timeout=120, what="cleanup")
    return elapsed


def replacement(cluster: Cluster) -> tuple[float, float]:
    """`docker kill` of one replica: seconds until a replacement runs, and until it passes."""
    name = "r" + uuid.uuid4().hex[:8]
    cluster.put(name, 2)
    cluster.wait_converged(name, 2)
    # Replicas younger than the crash threshold count as crashes (back-off): let them age.
    time.sleep(11)
    victim = cluster.containers(name)[0]
    started = time.monotonic()
    victim.kill()
    wait_until(
        lambda: len(ids := {c.id for c in cluster.containers(name)}) == 2 and victim.id not in ids,
        timeout=60,
        what="a replacement",
        interval=0.01,
    )
    runs = time.monotonic() - started
    wait_until(lambda: cluster.converged(name, 2), timeout=60, what="passing", interval=0.02)
    passes = time.monotonic() - started
    cluster.delete(name)
    wait_until(lambda: not cluster.containers(name, all_states=True), timeout=120, what="cleanup")
    return runs, passes


def failover(cluster: Cluster) -> tuple[float, float]:
    """kill -9 of the leader: seconds until the other agent leads, and until it places a service."""
    wait_until(cluster.leader, timeout=60, what="a leader")
    old = cluster.leader()
    new = "host-2" if old == "host-1" else "host-1"
    name = "f" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    cluster.kill(f"agent-{old}", signal.SIGKILL)
    wait_until(lambda: cluster.leader() == new, timeout=60, what="a new leader", interval=0.02)
    leads = time.monotonic() - started
    cluster.put(name, 1, placement={"hosts": [new]})
    wait_until(
        lambda: cluster.kv_json(f"operator/placement/{name}") is not None,
        timeout=60,
        what="placement",
        interval=0.02,
    )
    writes = time.monotonic() - started
    cluster.staging.run("up")
    cluster.delete(name)
    wait_until(lambda: not cluster.containers(name, all_states=True), timeout=120, what="cleanup")
    return leads, writes


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="1,10,30")
    parser.add_argument("--out", default="bench/results/loop.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    staging = Staging("bench", BENCH_ADDRESSES)
    staging.run("down")
    staging.run("up")
    cluster = Cluster(staging, ConsulClient(staging.consul_addr()), connect())
    rows = []
    try:
        for n in sizes:
            ours = [convergence(cluster, n) for _ in range(args.reps)]
            raw = [raw_docker_run(cluster, n) for _ in range(args.reps)]
            ratio = statistics.median(ours) / statistics.median(raw)
            rows.append(
                f"| converge N={n} | {median(ours)} s | raw parallel docker run:"
                f" {median(raw)} s | {ratio:.2f}x |"
            )
            print(rows[-1], flush=True)
        reps = [replacement(cluster) for _ in range(args.reps)]
        rows.append(
            f"| replace after docker kill | runs {median([r for r, _ in reps])} s"
            f" | passes {median([p for _, p in reps])} s | |"
        )
        print(rows[-1], flush=True)
        fails = [failover(cluster) for _ in range(args.reps)]
        rows.append(
            f"| leader fail-over (kill -9) | new leader {median([a for a, _ in fails])} s"
            f" | first placement written {median([b for _, b in fails])} s | |"
        )
        print(rows[-1], flush=True)
    finally:
        staging.run("down")
    report = [
        "# Operator loop benchmarks",
        "",
        f"Medians of {args.reps} repetitions, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
        " on the machine that ran `make bench`.",
        "",
        "| measure | ours | reference | ratio |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report))
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
