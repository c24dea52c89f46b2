"""Load-balancer latency on a staging environment of its own (127.0.0.51-53); reported, never asserted.

* pass -> served: from the moment a new replica's check passes in Consul until
  NGINX first answers from it;
* deregistered -> dropped: from the moment a draining replica leaves Consul's
  health results until NGINX's last answer from it.

Both are sampled by polling every 5 ms, so each figure carries about 5-10 ms
of measuring error.

usage: python -m bench.bench_lb [--reps 10] [--out bench/results/lb.md]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from consul_operator.consul_client import ConsulClient
from consul_operator.docker_client import connect
from tests.support.cluster import Cluster
from tests.support.staging import Staging, wait_until

BENCH_ADDRESSES = ("127.0.0.51", "127.0.0.52", "127.0.0.53")
POLL = 0.005


class Prober:
    """Requests through NGINX back to back, remembering (time, container) of every answer."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.answers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(BENCH_ADDRESSES[2], 80, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": self.service})
                body = conn.getresponse().read().decode()
                self.answers.append((time.time(), body.rsplit(" ", 1)[-1].strip()))
            except OSError:
                pass
            finally:
                conn.close()
            self._stop.wait(POLL)

    def first_from(self, container: str) -> float | None:
        return next((t for t, c in list(self.answers) if c == container), None)

    def last_from(self, container: str) -> float | None:
        return max((t for t, c in list(self.answers) if c == container), default=None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def passing_since(cluster: Cluster, service: str, known: set[str]) -> tuple[str, float]:
    """Poll Consul until an instance not in ``known`` passes; (its container id[:12], when)."""
    while True:
        for inst in cluster.passing(service):
            if inst.service_id not in known:
                return inst.meta["container"][:12], time.time()
        time.sleep(POLL)


def gone_since(cluster: Cluster, service: str, known: dict[str, str]) -> tuple[str, float]:
    """Poll Consul until one of ``known`` (service id -> container) leaves; (its container id[:12], when)."""
    while True:
        present = {i.service_id for i in cluster.registrations(service)}
        for service_id, container in known.items():
            if service_id not in present:
                return container[:12], time.time()
        time.sleep(POLL)


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms (n={len(ms)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default="bench/results/lb.md")
    args = parser.parse_args(argv)

    staging = Staging("benchlb", BENCH_ADDRESSES)
    staging.run("down")
    staging.run("up")
    cluster = Cluster(staging, ConsulClient(staging.consul_addr()), connect())
    name = "l" + uuid.uuid4().hex[:8]
    to_served: list[float] = []
    to_dropped: list[float] = []
    try:
        cluster.put(name, 1, drain="1s")
        cluster.wait_converged(name, 1)
        prober = Prober(name)
        for _ in range(args.reps):
            known = {i.service_id for i in cluster.registrations(name)}
            cluster.put(name, 2, drain="1s")
            container, passed = passing_since(cluster, name, known)
            first = wait_until(lambda: prober.first_from(container), timeout=30, what="NGINX to serve it")  # noqa: B023
            assert isinstance(first, float)
            to_served.append(max(0.0, first - passed))

            cluster.wait_converged(name, 2)
            registered = {i.service_id: i.meta["container"] for i in cluster.registrations(name)}
            cluster.put(name, 1, drain="1s")
            drained, dropped_from_consul = gone_since(cluster, name, registered)
            cluster.wait_converged(name, 1)
            last = prober.last_from(drained)
            if last is not None:
                to_dropped.append(max(0.0, last - dropped_from_consul))
        prober.stop()
    finally:
        cluster.delete(name)
        staging.run("down")
    rows = [
        f"| check passes -> NGINX serves it | {percentiles(to_served)} |",
        f"| deregistered -> NGINX stops sending to it | {percentiles(to_dropped)} |",
    ]
    for row in rows:
        print(row)
    report = [
        "# Load-balancer latency",
        "",
        f"{args.reps} repetitions, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
        " on the machine that ran `make bench`; sampled every 5 ms.",
        "",
        "| measure | latency |",
        "| --- | --- |",
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
