"""One new service's `kv put` until its container started, on staging with 1,000 services in KV (issue 31).

    python -m bench.staging_change [--addrs "127.0.43.41 127.0.43.42 127.0.43.43"] [--name h-bench]
                                   [--services 1000] [--runs 5]

Starts a staging environment of its own (scripts/staging.sh: three Consul
servers, the agents of host-1 and host-2 with the real Docker engine, the
load balancer), writes ``--services`` manifests of 0 replicas in
transactions of 64 (as a user's script would), waits until the leader has
placed every one, then ``--runs`` times writes a new service of 1 replica
and times its `kv put` until Docker reports its container started (a
Docker event, not polling), and the leading agent's CPU-seconds over the
same window (its /proc/<pid>/stat). Each run is split in three: `kv put` until
the leader's placement of it is committed (a blocking query on its
``operator/placement/`` key), until Docker reports the container created,
until started. Prints one JSON line with the figures
and their medians (with ``--record NAME``, also kept under NAME in
bench/results/staging_change.json, which `bench.scale --render` adds to
scale.md), then takes the environment down. Run from a checkout to measure
that checkout's code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import docker

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.keys import Layout
from consul_operator.core.txn import pack_writes
from tests.support.cluster import manifest_yaml
from tests.support.staging import Staging, wait_until

LAYOUT = Layout()
RESULTS = Path(__file__).resolve().parent / "results" / "staging_change.json"


def cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def leader_pid(env: Staging, consul: ConsulClient) -> int:
    """The pid of the agent that holds the leader lock."""
    entry = consul.kv_get(LAYOUT.leader_key, consistent=True).value
    assert entry is not None and entry.session
    return env.pids()[f"agent-{json.loads(entry.value)['host']}"]


def main() -> int:
    """Measure, print, tear down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addrs", default="127.0.43.41 127.0.43.42 127.0.43.43")
    parser.add_argument("--name", default="h-bench")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--record", default="", help="keep the figures under this name in the results")
    args = parser.parse_args()
    addrs = tuple(args.addrs.split())
    assert len(addrs) == 3
    env = Staging(args.name, (addrs[0], addrs[1], addrs[2]), extra_env=(("AGENT_ARGS", "--resync 600s"),))
    env.run("down")
    env.run("up")
    engine = docker.from_env()
    try:
        consul = ConsulClient(env.consul_addr())
        names = [f"idle{i:04d}" for i in range(args.services)]
        writes = {LAYOUT.service_key(n): manifest_yaml(n, 0).encode() for n in names}
        started = time.monotonic()
        for batch in pack_writes({n: {LAYOUT.service_key(n): writes[LAYOUT.service_key(n)]} for n in names}):
            consul.kv_txn(batch.writes)
        applied = time.monotonic() - started
        wait_until(
            lambda: len(consul.kv_keys(LAYOUT.placement_prefix).value) >= args.services,
            timeout=600,
            what="every idle service placed",
        )
        time.sleep(5)  # let the agents settle after the bulk
        seen: dict[str, float] = {}
        created: dict[str, float] = {}
        stop = threading.Event()

        def listen() -> None:
            label = f"consul-operator.cluster={env.name}"
            events = engine.events(
                decode=True, filters={"type": "container", "event": ["create", "start"], "label": label}
            )
            for event in events:
                at = time.monotonic()
                service = event.get("Actor", {}).get("Attributes", {}).get("consul-operator.service")
                kept = seen if event.get("status", event.get("Action")) == "start" else created
                if service and service not in kept:
                    kept[service] = at
                if stop.is_set():
                    return

        def placed_at(name: str, into: dict[str, float]) -> None:
            """When the leader's placement of ``name`` is committed: blocking queries on its key."""
            key = LAYOUT.placement_key(name)
            index = consul.kv_get(key).index
            while not stop.is_set():
                answer = consul.kv_get(key, index=index, wait=10, timeout=20)
                if answer.value is not None:
                    into[name] = time.monotonic()
                    return
                index = answer.index

        threading.Thread(target=listen, daemon=True).start()
        time.sleep(1)
        delays: list[float] = []
        cpus: list[float] = []
        phases: list[tuple[float, float, float]] = []
        placed: dict[str, float] = {}
        for i in range(args.runs):
            name = f"new{i}{int(time.time()) % 10000:04d}"
            pid = leader_pid(env, consul)
            watcher = threading.Thread(target=placed_at, args=(name, placed), daemon=True)
            watcher.start()
            time.sleep(0.2)  # the watch's first read is in (it blocks from the key's absence)
            cpu = cpu_seconds(pid)
            put = time.monotonic()
            consul.kv_put(LAYOUT.service_key(name), manifest_yaml(name, 1))
            wait_until(lambda: name in seen, timeout=120, what=f"{name}'s container started")  # noqa: B023
            watcher.join(timeout=30)
            delays.append(seen[name] - put)
            cpus.append(cpu_seconds(pid) - cpu)
            at_placed, at_created = placed.get(name, put), created.get(name, seen[name])
            phases.append((at_placed - put, at_created - at_placed, seen[name] - at_created))
            time.sleep(3)  # apart, so that each change is measured alone
        stop.set()
        figures = {
            "services": args.services,
            "apply_s": round(applied, 2),
            "put_to_start_s": [round(d, 3) for d in delays],
            "median_s": round(statistics.median(delays), 3),
            "leader_cpu_s": [round(c, 2) for c in cpus],
            "leader_cpu_median_s": round(statistics.median(cpus), 2),
            # Medians of each run's put -> placed (the leader), placed -> created (the host's agent),
            # created -> started (Docker).
            "phases_median_s": {
                what: round(statistics.median(p[i] for p in phases), 3)
                for i, what in enumerate(("placed", "created", "started"))
            },
            "load": os.getloadavg(),
        }
        print(json.dumps(figures))
        if args.record:
            kept = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            kept[args.record] = figures
            RESULTS.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    finally:
        env.run("down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
