"""Profile one host's pass at full size against a real Consul (issue 31: the host's part of a change).

    python -m bench.host_profile [--services 1000] [--hosts 10] [--replicas 10] [--addr 127.0.0.85]
                                 [--passes 5]

Starts one Consul agent in dev mode on ``--addr`` and, as `bench.leader_profile`
does, lets the real `Scheduler` place ``--services`` services of ``--replicas``
over ``--hosts`` registered hosts and write every host's work key. Then one
real `HostAgent` of host-1, with its real `Executor`, catalog and KV reads and
the SIMULATED engine of `bench.sim_engine` (containers in memory, started at
once), starts its share and reports it. It times idle host passes (nothing
changed; what the 60 s resync and every unrelated wake-up cost), and passes that
take one change: a new service placed on host-1 only, the leader's pass, then
the host's passes until its replica runs and its status record is written
(wall time and the process's CPU), and profiles idle passes under cProfile.
Nothing but the engine is simulated; no test of the real loop uses this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.leader_profile import (
    CLUSTER,
    LAYOUT,
    REPLICAS,
    leading,
    profile_passes,
    start_consul,
    stop_consul,
)
from bench.scale import manifest
from bench.sim_engine import SimulatedDockerActuator
from consul_operator.adapters.actuators.catalog import CatalogActuator
from consul_operator.adapters.host_reads import KVChanged
from consul_operator.daemons.agent import tune_collector
from consul_operator.daemons.executor import Executor
from consul_operator.daemons.host_agent import HostAgent
from tests.support.staging import wait_until

HOST = "host-1"


def settle(agent: HostAgent, executor: Executor, kv: KVChanged, most: int = 200) -> int:
    """Host passes until one has nothing to start, stop or write and nothing is in flight; how many."""
    for n in range(1, most + 1):
        kv.fire()
        agent.reconcile()
        wait_until(lambda: not executor.snapshot().pending_starts, timeout=60, what="starts", interval=0.01)
        with executor.lock:
            busy = executor.snapshot()
        if not busy.pending_starts and not busy.busy_containers and agent.memory.written and n > 1:
            before = dict(agent.memory.written)
            agent.reconcile()
            if dict(agent.memory.written) == before:
                return n + 1
    raise RuntimeError(f"host-1 did not settle in {most} passes")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.host_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=REPLICAS)
    parser.add_argument("--addr", default="127.0.0.85")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    tune_collector()
    data = Path(tempfile.mkdtemp(prefix="host-profile-"))
    proc, http = start_consul(args.addr, data)
    executor: Executor | None = None
    try:
        consul, scheduler = leading(http, args.hosts, args.services, args.replicas)
        node = consul.agent_node_name()
        scheduler.reconcile()

        docker = SimulatedDockerActuator(cluster=CLUSTER, host=HOST, advertise="127.0.0.1")
        catalog = CatalogActuator(consul, cluster=CLUSTER, host=HOST, advertise="127.0.0.1")
        executor = Executor(docker, catalog, on_done=lambda: None)
        kv = KVChanged()
        agent = HostAgent(consul, LAYOUT, HOST, docker, catalog, executor, kv_changed=kv, node=node)
        t0 = time.perf_counter()
        passes = settle(agent, executor, kv)
        running = len(docker.list_containers())
        print(
            f"host-1 started and reported {running} replicas in {passes} passes,"
            f" {time.perf_counter() - t0:.2f}s"
        )

        for label, fire in (
            ("idle passes, work key unchanged", False),
            ("idle passes, work key read again", True),
        ):
            wall, cpu = [], []
            for _ in range(args.passes):
                if fire:
                    kv.fire()
                t0, c0 = time.perf_counter(), time.process_time()
                agent.reconcile()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            print(
                f"{label} (s):",
                " ".join(f"{t:.3f}" for t in wall),
                "| CPU:",
                " ".join(f"{t:.3f}" for t in cpu),
            )

        leader, first, to_status, cpu_all = [], [], [], []
        for k in range(args.passes):
            name = f"new{k:03d}"
            text = yaml.safe_load(manifest(name, 1))
            text["placement"] = {"hosts": [HOST]}
            consul.kv_put(LAYOUT.service_key(name), yaml.safe_dump(text).encode())
            t0 = time.perf_counter()
            scheduler.reconcile()
            t1, c0 = time.perf_counter(), time.process_time()
            kv.fire()
            agent.reconcile()  # reads the work key, starts the replica
            first.append(time.perf_counter() - t1)
            wait_until(
                lambda: not executor.snapshot().pending_starts, timeout=60, what="start", interval=0.005
            )
            agent.reconcile()  # sees it running, writes its status record
            assert consul.kv_get(LAYOUT.status_key(name, HOST)).value is not None, "not reported"
            to_status.append(time.perf_counter() - t0)
            leader.append(t1 - t0)
            cpu_all.append(time.process_time() - c0)
        print("one new service: the leader's pass (s):", " ".join(f"{t:.3f}" for t in leader))
        print("one new service: the host's pass that starts it (s):", " ".join(f"{t:.3f}" for t in first))
        print("one new service: the host's CPU, both passes (s):", " ".join(f"{t:.3f}" for t in cpu_all))
        print("one new service: kv put -> its status record (s):", " ".join(f"{t:.3f}" for t in to_status))

        def read_again() -> None:
            kv.fire()
            agent.reconcile()

        profile_passes(read_again, args.passes, args.top, "idle passes, work key read again, profiled")
    finally:
        if executor is not None:
            executor.shutdown(wait=False)
        stop_consul(proc, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
