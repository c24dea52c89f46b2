"""`make bench`: every benchmark, on a staging environment of its own (127.0.0.41-43), against the goals.

Measures (medians of --reps repetitions), next to two references on the same engine:
the same N raw `docker run -d` in parallel (the physical limit) and Docker Swarm
(`docker service create --replicas N`, until N/N run):

1. convergence of N = 1, 10, 30 replicas: kv put -> N running / N passing in Consul / NGINX serving all N;
2. recovery after `docker kill` of one replica: until the replacement runs, passes, is served by NGINX;
   Swarm's time until its replacement task runs;
3. leader fail-over after kill -9 of the leader: until the other agent leads, and writes a placement;
4. load balancer: a check passing -> NGINX serves it; deregistered -> NGINX stops sending to it;
5. scale: the pure scheduler and host plan at 1,000 services x 10 replicas x 100 hosts; an agent with
   100 services running at steady state: its CPU use and its Consul request rate.

Writes bench/results/report.md and bench/results/convergence.png. Goals are reported, never asserted.

usage: python -m bench.suite [--reps 3] [--sizes 1,10,30,100] [--parts convergence,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.timeline import STAGES, Timeline, consul_stages, docker_starts, service_label
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.docker_client import connect
from consul_operator.core.desired_state import Manifest
from consul_operator.core.model import (
    ContainerInfo,
    HostInfo,
    InFlight,
    Registration,
    ServiceDesire,
)
from consul_operator.core.reconcile import plan_host, schedule
from tests.support.cluster import Cluster
from tests.support.served import get, replica, serves
from tests.support.staging import Staging, wait_until

ADDRESSES = ("127.0.0.41", "127.0.0.42", "127.0.0.43")
RESULTS = Path("bench/results")
PARTS = ("convergence", "recovery", "lb", "idle", "scale", "swarm")  # recovery includes the fail-over
POLL = 0.01


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Results:
    """Every figure, in seconds unless named otherwise."""

    convergence: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    timelines: dict[int, list[dict[str, float]]] = field(default_factory=dict)  # per N, one per run
    recovery: dict[str, list[float]] = field(default_factory=dict)
    failover: dict[str, list[float]] = field(default_factory=dict)
    lb: dict[str, list[float]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    def add(self, table: dict[str, list[float]], key: str, value: float) -> None:
        table.setdefault(key, []).append(value)


# --- helpers on the cluster -------------------------------------------------------------


def lb_get(service: str) -> str | None:
    """The container id (12 chars) that answered through NGINX, or None."""
    try:
        status, body = get(ADDRESSES[2], service)
    except OSError:
        return None
    return replica(body) if status == 200 else None


def cleanup(cluster: Cluster, name: str) -> None:
    cluster.delete(name)
    wait_until(lambda: not cluster.containers(name, all_states=True), timeout=180, what="cleanup")


# --- 1. convergence ---------------------------------------------------------------------


def ours(cluster: Cluster, n: int, results: Results) -> None:
    """kv put -> placement written, started, registered, passing, served by NGINX (`timeline`)."""
    name = "c" + uuid.uuid4().hex[:8]
    table = results.convergence.setdefault(n, {})
    line = Timeline(began=0.0)
    with (
        docker_starts(cluster.engine, service_label(name), line.starts),
        consul_stages(cluster.consul, cluster.layout.placement_key(name), name, line),
    ):
        line.began = time.time()
        cluster.put(name, n, health={"http": "/health", "interval": "500ms", "timeout": "400ms"})
        wait_until(lambda: len(line.passing) >= n, timeout=300, what="passing", interval=POLL)
        # The burst is over; ask NGINX for exactly the containers that started.
        ids = {cid[:12] for cid in line.starts}
        wait_until(lambda: serves(ADDRESSES[2], name, ids), timeout=300, what="served", interval=POLL)
        line.served = time.time()
    stages = line.stages()
    results.timelines.setdefault(n, []).append(stages)
    results.add(table, "ours: running", stages["last start"])
    results.add(table, "ours: passing in Consul", stages["last passing"])
    results.add(table, "ours: served by NGINX", stages["served"])
    cleanup(cluster, name)


def raw_docker_run(cluster: Cluster, n: int, results: Results) -> None:
    """N `docker run -d` in parallel (8 at a time, like our executor): the physical limit.

    Timed like ours: to the engine's time of the last ``start`` event.
    """
    batch = "raw" + uuid.uuid4().hex[:8]
    labels = {"consul-operator.cluster": cluster.staging.name, "bench": batch}

    def run_one(_: int) -> str:
        c = cluster.engine.containers.run(
            "hello:local", detach=True, labels=labels, ports={"5000/tcp": (ADDRESSES[0], None)}
        )
        return str(c.id)

    starts: dict[str, float] = {}
    with docker_starts(cluster.engine, f"bench={batch}", starts):
        began = time.time()
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(run_one, range(n)))
        wait_until(lambda: len(starts) >= n, timeout=60, what="raw start events", interval=POLL)
    table = results.convergence.setdefault(n, {})
    results.add(table, "raw parallel docker run", max(starts.values()) - began)
    for cid in ids:
        cluster.engine.api.remove_container(cid, force=True)


class Swarm:
    """Docker Swarm on loopback, on the same engine; left again (and its bridge removed) afterwards."""

    def __init__(self) -> None:
        self.had_gwbridge = self._has_gwbridge()

    @staticmethod
    def _docker(*args: str) -> str:
        return subprocess.run(
            ["docker", *args], check=True, capture_output=True, text=True, timeout=120
        ).stdout

    def _has_gwbridge(self) -> bool:
        return "docker_gwbridge" in self._docker("network", "ls", "--format", "{{.Name}}").split()

    def __enter__(self) -> Swarm:
        self._docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, check=False)
        if not self.had_gwbridge and self._has_gwbridge():
            subprocess.run(["docker", "network", "rm", "docker_gwbridge"], capture_output=True, check=False)

    def running(self, name: str) -> str:
        return self._docker("service", "ls", "--filter", f"name={name}", "--format", "{{.Replicas}}").strip()

    def create(self, name: str, n: int) -> float:
        """Seconds from `docker service create` until N/N run (--no-resolve-image: no registry)."""
        started = time.monotonic()
        self._docker(
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--replicas",
            str(n),
            "--name",
            name,
            "hello:local",
        )
        wait_until(
            lambda: self.running(name) == f"{n}/{n}", timeout=300, what="swarm replicas", interval=POLL
        )
        return time.monotonic() - started

    def remove(self, name: str) -> None:
        self._docker("service", "rm", name)

    def replacement(self, name: str, client_kill: Callable[[str], None]) -> float:
        """Seconds from killing one task's container until Swarm runs a replacement."""
        ids = self._docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}").split()
        started = time.monotonic()
        client_kill(ids[0])
        wait_until(
            lambda: (
                len(
                    set(
                        self._docker(
                            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}"
                        ).split()
                    )
                    - {ids[0]}
                )
                == len(ids)
            ),
            timeout=120,
            what="swarm replacement",
            interval=POLL,
        )
        return time.monotonic() - started


# --- 2. recovery, 3. fail-over ----------------------------------------------------------


def recovery(cluster: Cluster, results: Results) -> None:
    name = "r" + uuid.uuid4().hex[:8]
    cluster.put(name, 2, health={"http": "/health", "interval": "500ms", "timeout": "400ms"})
    cluster.wait_converged(name, 2)
    wait_until(lambda: cluster.lb_serves(name, 2), timeout=60, what="served")
    victim = cluster.containers(name)[0]
    started = time.monotonic()
    victim.kill()
    wait_until(
        lambda: len(ids := {c.id for c in cluster.containers(name)}) == 2 and victim.id not in ids,
        timeout=60,
        what="replacement",
        interval=POLL,
    )
    results.add(results.recovery, "ours: replacement runs", time.monotonic() - started)
    wait_until(lambda: cluster.converged(name, 2), timeout=60, what="passing", interval=POLL)
    results.add(results.recovery, "ours: replacement passes", time.monotonic() - started)
    new = ({c.id[:12] for c in cluster.containers(name)} - {victim.id[:12]}).pop()
    wait_until(lambda: lb_get(name) == new, timeout=60, what="served", interval=POLL)
    results.add(results.recovery, "ours: NGINX serves it", time.monotonic() - started)
    cleanup(cluster, name)


def failover(cluster: Cluster, results: Results) -> None:
    old = str(wait_until(cluster.leader, timeout=60, what="a leader"))
    new = "host-2" if old == "host-1" else "host-1"
    name = "f" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    cluster.kill(f"agent-{old}", signal.SIGKILL)
    wait_until(lambda: cluster.leader() == new, timeout=60, what="a new leader", interval=POLL)
    results.add(results.failover, "new leader", time.monotonic() - started)
    cluster.put(name, 1, placement={"hosts": [new]})
    wait_until(
        lambda: cluster.kv_json(f"operator/placement/{name}") is not None,
        timeout=60,
        what="placement",
        interval=POLL,
    )
    results.add(results.failover, "first placement written", time.monotonic() - started)
    cluster.staging.run("up")
    cleanup(cluster, name)


# --- 4. load balancer -------------------------------------------------------------------


class Prober:
    """Requests through NGINX back to back, remembering (time, container) of every answer."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.answers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            got = lb_get(self.service)
            if got:
                self.answers.append((time.time(), got))

    def first_from(self, container: str) -> float | None:
        return next((t for t, c in list(self.answers) if c == container), None)

    def last_from(self, container: str) -> float | None:
        return max((t for t, c in list(self.answers) if c == container), default=None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def lb_latency(cluster: Cluster, reps: int, results: Results) -> None:
    name = "l" + uuid.uuid4().hex[:8]
    cluster.put(name, 1, drain="1s")
    cluster.wait_converged(name, 1)
    prober = Prober(name)
    try:
        for _ in range(reps):
            known = {i.service_id for i in cluster.registrations(name)}
            cluster.put(name, 2, drain="1s")
            container, passed = "", 0.0
            while not container:
                for inst in cluster.passing(name):
                    if inst.service_id not in known:
                        container, passed = inst.meta["container"][:12], time.time()
                time.sleep(0.005)
            first = wait_until(lambda: prober.first_from(container), timeout=30, what="served")  # noqa: B023
            results.add(results.lb, "check passes -> NGINX serves it", max(0.0, float(str(first)) - passed))
            cluster.wait_converged(name, 2)
            registered = {i.service_id: i.meta["container"][:12] for i in cluster.registrations(name)}
            cluster.put(name, 1, drain="1s")
            gone, at = "", 0.0
            while not gone:
                present = {i.service_id for i in cluster.registrations(name)}
                for sid, cid in registered.items():
                    if sid not in present:
                        gone, at = cid, time.time()
                time.sleep(0.005)
            cluster.wait_converged(name, 1)
            last = prober.last_from(gone)
            results.add(results.lb, "deregistered -> NGINX stops sending", max(0.0, (last or at) - at))
    finally:
        prober.stop()
        cleanup(cluster, name)


# --- 5. scale ---------------------------------------------------------------------------


def scheduler_scale(results: Results) -> None:
    hosts = [HostInfo(f"h{i:03d}", {}, True, None) for i in range(100)]
    manifests = {
        f"s{i:04d}": Manifest(name=f"s{i:04d}", image="hello:local", replicas=10, port=5000)
        for i in range(1000)
    }
    first_times, steady_times, plan_times = [], [], []
    for _ in range(5):
        started = time.perf_counter()
        first = schedule(manifests, hosts, {}, 0.0, 10.0)
        first_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        schedule(manifests, hosts, first, 0.0, 10.0)
        steady_times.append(time.perf_counter() - started)
    host = "h000"
    desires = {n: ServiceDesire(n, m, first[n].hosts.get(host, 0)) for n, m in manifests.items()}
    containers, regs = [], []
    for n, m in manifests.items():
        for k in range(first[n].hosts.get(host, 0)):
            c = ContainerInfo(
                id=f"{n}{k}",
                name=f"{n}-{host}-{k}",
                service=n,
                spec_hash=m.spec_hash(),
                state="running",
                host_port=30000 + k,
                created_at=0,
                started_at=0,
            )
            containers.append(c)
            regs.append(Registration(c.name, n, c.id, c.spec_hash, "127.0.0.1", 30000 + k, True))
    for _ in range(5):
        started = time.perf_counter()
        plan_host(desires, containers, regs, InFlight(), {}, 100.0, mono=100.0)
        plan_times.append(time.perf_counter() - started)
    results.scale["scheduler pass, first placement (s)"] = median(first_times)
    results.scale["scheduler pass, steady state (s)"] = median(steady_times)
    results.scale["host plan, 100 containers of 1,000 services (s)"] = median(plan_times)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_agent(cluster: Cluster, results: Results, services: int, window: float) -> None:
    """An agent with ``services`` services running: CPU and Consul requests over ``window`` idle seconds."""
    names = [f"i{k:03d}" + uuid.uuid4().hex[:4] for k in range(services)]
    for name in names:
        cluster.put(name, 1, placement={"hosts": ["host-1"]})
    wait_until(
        lambda: all(cluster.converged(n, 1) for n in names), timeout=600, what="idle services", interval=1
    )
    time.sleep(20)  # let the last status writes and health changes settle before measuring
    pid = cluster.agent_pid("host-1")
    requests_before = cluster.metric("host-1", "operator_consul_requests_total")
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # the measuring window itself
    elapsed = time.monotonic() - started
    results.scale[f"idle agent with {services} services: CPU (%)"] = (
        100 * (cpu_seconds(pid) - cpu_before) / elapsed
    )
    requests = cluster.metric("host-1", "operator_consul_requests_total") - requests_before
    results.scale[f"idle agent with {services} services: Consul requests/s"] = requests / elapsed
    for name in names:
        cluster.delete(name)
    wait_until(
        lambda: not any(cluster.containers(n, all_states=True) for n in names), timeout=600, what="cleanup"
    )


# --- the report -------------------------------------------------------------------------

GOALS = [
    ("convergence", "<= 1.15x the raw parallel docker run, and faster than Swarm"),
    ("replacement after a kill", "<= 1 s until it runs, <= 2 s until NGINX serves it"),
    ("fail-over", "<= 5 s"),
    ("LB update", "<= 300 ms p50"),
    ("a scheduler pass at 1,000 x 10 x 100", "<= 100 ms"),
    ("an idle agent", "<= 1 % CPU"),
]


def write_report(results: Results, reps: int) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"`make bench`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} cores; "
        f"medians of {reps} repetitions unless noted. Goals are reported, not asserted.",
        "",
        "## Convergence: kv put of N replicas",
        "",
        "| N | stage | median (s) | vs raw docker run | vs Swarm |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, table in sorted(results.convergence.items()):
        raw = median(table["raw parallel docker run"])
        swarm = median(table["Swarm: N/N running"]) if "Swarm: N/N running" in table else float("nan")
        for stage, values in table.items():
            m = median(values)
            lines.append(f"| {n} | {stage} | {m:.2f} | {m / raw:.2f}x | {m / swarm:.2f}x |")
    lines += [
        "",
        "## Where the time goes: one convergence, stage by stage",
        "",
        "Medians over the runs, seconds after the `kv put` (`bench/timeline.py`: Docker's event stream",
        "and Consul blocking queries, no polling of the engine); in brackets, the ratio to the raw",
        "parallel `docker run` of the same N in the same run.",
        "",
        "| N | " + " | ".join(STAGES) + " |",
        "| --- |" + " --- |" * len(STAGES),
    ]
    for n, runs in sorted(results.timelines.items()):
        raw = median(results.convergence[n]["raw parallel docker run"])
        cells = []
        for stage in STAGES:
            values = [run[stage] for run in runs if stage in run]
            cells.append(f"{median(values):.2f} ({median(values) / raw:.2f}x)" if values else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Recovery after `docker kill` of one replica",
        "",
        "| stage | median (s) |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {median(v):.2f} |" for k, v in results.recovery.items()]
    lines += ["", "## Leader fail-over after kill -9", "", "| stage | median (s) |", "| --- | --- |"]
    lines += [f"| {k} | {median(v):.2f} |" for k, v in results.failover.items()]
    lines += [
        "",
        "## Load balancer",
        "",
        "| measure | p50 (ms) | p95 (ms) | n |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {k} | {1000 * median(v):.0f} | {1000 * p95(v):.0f} | {len(v)} |" for k, v in results.lb.items()
    ]
    lines += ["", "## Scale", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results.scale.items()]
    lines += ["", "## Goals", "", "| measure | goal |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in GOALS]
    lines += ["", "![convergence](convergence.png)", "", "![timeline](timeline.png)", ""]
    return "\n".join(lines)


def plot(results: Results, path: Path) -> None:
    """Each stage as a ratio to the raw parallel `docker run` of the same N, with the 1.15x goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results.convergence)
    stages = [s for s in results.convergence[sizes[0]] if s != "raw parallel docker run"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        ratios = [
            median(results.convergence[n].get(stage, [float("nan")]))
            / median(results.convergence[n]["raw parallel docker run"])
            for n in sizes
        ]
        ax.bar([k + i * width for k in range(len(sizes))], ratios, width, label=stage)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.15, color="red", linestyle="--", linewidth=0.8, label="goal for running: 1.15x")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(sizes))], [f"N={n}" for n in sizes])
    ax.set_ylabel("x raw parallel docker run (median)")
    ax.set_title("Convergence after kv put of N replicas, against raw docker run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(results: Results, path: Path) -> None:
    """One bar per N: the median time of each stage, from the kv put, with raw docker run marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results.timelines)
    fig, axes = plt.subplots(len(sizes), 1, figsize=(8, 1.2 + 1.1 * len(sizes)), squeeze=False)
    for ax, n in zip(axes[:, 0], sizes, strict=True):
        runs = results.timelines[n]
        previous = 0.0
        for stage in STAGES:
            values = [run[stage] for run in runs if stage in run]
            if not values:
                continue
            at = max(previous, median(values))
            ax.barh(0, at - previous, left=previous, label=stage)
            previous = at
        raw = median(results.convergence[n]["raw parallel docker run"])
        ax.axvline(raw, color="black", linestyle="--", linewidth=1, label="raw docker run")
        ax.set_yticks([0], [f"N={n}"])
        ax.set_xlim(0, previous * 1.05)
    axes[0, 0].set_title("Where the time goes (medians, seconds after the kv put)")
    axes[-1, 0].set_xlabel("seconds")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=4, loc="lower center")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="1,10,30,100")
    parser.add_argument("--idle-services", type=int, default=100)
    parser.add_argument("--idle-window", type=float, default=60.0)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of {','.join(PARTS)} (default: all); a partial run writes to --out",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results = Results()
    if "scale" in parts:
        scheduler_scale(results)
    # Nominal capacity for 100 replicas of 256Mi / 0.25 CPU on either host (the hosts share
    # this machine; the default 8Gi / 8 CPUs holds 32 per host).
    staging = Staging("bench", ADDRESSES, extra_env=(("STAGING_CAPACITY", "memory=64Gi,cpus=64"),))
    staging.run("down")
    staging.run("up")
    cluster = Cluster(staging, ConsulClient(staging.consul_addr()), connect())
    try:
        for n in sizes if "convergence" in parts else []:
            for _ in range(args.reps):
                ours(cluster, n, results)
                raw_docker_run(cluster, n, results)
            print(
                f"N={n}: { ({k: round(median(v), 2) for k, v in results.convergence[n].items()}) }",
                flush=True,
            )
        for _ in range(args.reps if "recovery" in parts else 0):
            recovery(cluster, results)
            failover(cluster, results)
        if "lb" in parts:
            lb_latency(cluster, max(args.reps, 10), results)
        if "idle" in parts:
            idle_agent(cluster, results, args.idle_services, args.idle_window)
    finally:
        staging.run("down")
    with Swarm() as swarm:
        for n in sizes if {"swarm", "convergence"} <= parts else []:
            for _ in range(args.reps):
                name = "sw" + uuid.uuid4().hex[:6]
                results.add(results.convergence[n], "Swarm: N/N running", swarm.create(name, n))
                swarm.remove(name)
        for _ in range(args.reps if {"swarm", "recovery"} <= parts else 0):
            name = "sw" + uuid.uuid4().hex[:6]
            swarm.create(name, 2)
            results.add(
                results.recovery,
                "Swarm: replacement runs",
                swarm.replacement(name, lambda cid: cluster.engine.api.kill(cid)),
            )
            swarm.remove(name)
    args.out.mkdir(parents=True, exist_ok=True)
    report = write_report(results, args.reps)
    (args.out / "report.md").write_text(report)
    if results.convergence:
        plot(results, args.out / "convergence.png")
        plot_timeline(results, args.out / "timeline.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
