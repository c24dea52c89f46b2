"""Profile the leader's idle pass at full size against a real Consul (issue 31).

    python -m bench.leader_profile [--services 1000] [--hosts 100] [--replicas 10] [--addr 127.0.0.84]
                                   [--passes 5] [--registered] [--no-reports]

Starts one Consul agent in dev mode on ``--addr``, registers ``--hosts``
agents on it (their TTL checks passing, their node claims written), lets the
real `Scheduler` place ``--services`` services of 10 replicas, writes every
host's status records as agents that run them would (with ``--registered``, every
replica in the catalog too, with a passing check, as replicas that publish a
port are), and then times idle passes
(nothing changed), passes that place one new service each, and passes after one status
record moved with its host's report (``--no-reports``: agents from before
reports, whose records the leader reads whole when one moved) (wall time and
the process's CPU time, for each; the garbage collector's collections and
time in the idle passes, the process's RSS after), and profiles idle passes
and passes that each place one new service under cProfile: the pass times and
the top functions by cumulative and own time. Nothing is simulated but the
agents' processes: the scheduler, its reads, its decisions and its fenced
writes are the real ones, on one Consul server.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.scale import consul_binary, manifest, service_names
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.presence import (
    AGENT_SERVICE,
    META_READS_WORK,
    META_WRITES_REPORTS,
    agent_service_id,
    capacity_meta,
    ttl_check_id,
)
from consul_operator.core.desired_state import Resources
from consul_operator.core.keys import Layout
from consul_operator.core.model import META_CLUSTER, META_HOST
from consul_operator.core.records import AgentRecord, PlacementRecord, StatusRecord, frozen_map
from consul_operator.core.reports import report_of
from consul_operator.core.txn import pack_writes
from consul_operator.daemons.agent import tune_collector
from consul_operator.daemons.scheduler import Scheduler
from tests.support.staging import wait_until

GcInfo = dict[str, int]


class CollectorTimes:
    """The cyclic garbage collector's collections per generation and their wall time (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: GcInfo) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.counts[info["generation"]] += 1

    def reset(self) -> None:
        self.counts, self.seconds = [0, 0, 0], 0.0

    def text(self) -> str:
        return f"{self.seconds:.3f}s/{'+'.join(map(str, self.counts))}"


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


CLUSTER = "profile"
LAYOUT = Layout()
REPLICAS = 10


@dataclass
class Election:
    """A leader that always leads, writing fenced with a real session on a real lock."""

    consul: ConsulClient
    host: str
    session: str | None = None
    is_leader: bool = True

    def fenced_write(self, writes: dict[str, bytes | None], session: str | None = None) -> None:
        """The real fenced write (`ConsulClient.fenced_write`)."""
        assert self.session is not None
        self.consul.fenced_write(LAYOUT.leader_key, session or self.session, writes)


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def start_consul(addr: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port(addr)
    cmd = [
        consul_binary(),
        "agent",
        "-dev",
        f"-bind={addr}",
        f"-client={addr}",
        f"-http-port={port}",
        "-dns-port=-1",
        f"-serf-lan-port={free_port(addr)}",
        f"-server-port={free_port(addr)}",
        "-grpc-port=-1",
        "-node=profile-node",
        f"-data-dir={data}",
        "-hcl=disable_update_check = true",
    ]
    proc = subprocess.Popen(
        cmd, stdout=(data / "consul.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, f"{addr}:{port}"


def register_agents(consul: ConsulClient, hosts: int, node: str, *, reports: bool = True) -> None:
    """``hosts`` agents registered as `presence.Presence` registers them (``reports``: advertising that
    they write reports, as agents of this release do)."""
    capacity = capacity_meta(Resources(64 * 1024**3, 64_000))
    advertised = {META_READS_WORK: "1", META_WRITES_REPORTS: "1"} if reports else {}
    for i in range(1, hosts + 1):
        host = f"host-{i}"
        consul.kv_put(LAYOUT.agent_key(host), AgentRecord(host, node).to_json())
        consul.register_service(
            {
                "ID": agent_service_id(host),
                "Name": AGENT_SERVICE,
                "Address": "127.0.0.1",
                "Meta": {META_HOST: host, META_CLUSTER: CLUSTER, **capacity, **advertised},
                "Check": {
                    "CheckID": ttl_check_id(host),
                    "Name": "alive",
                    "TTL": "3600s",
                    "Status": "passing",
                },
            }
        )


def write_statuses(consul: ConsulClient) -> int:
    """Every host's status records and reports, as agents running their placements would write them."""
    groups: dict[str, dict[str, bytes | None]] = {}
    written: dict[str, dict[str, bytes]] = {}
    for entry in consul.kv_list(LAYOUT.placement_prefix).value:
        record = PlacementRecord.from_json(entry.value)
        for host, count in record.hosts.items():
            status = StatusRecord(
                service=record.service,
                host=host,
                spec_hash=record.spec_hash,
                desired=count,
                running=count,
                healthy=count,
                specs=frozen_map({record.spec_hash: count}),
                since=time.time(),
                node="profile-node",
            )
            groups[f"{record.service}/{host}"] = {LAYOUT.status_key(record.service, host): status.to_json()}
            written.setdefault(host, {})[record.service] = status.to_json()
    for batch in pack_writes(groups):
        consul.kv_txn(batch.writes)
    for host, records in written.items():  # each agent's report, after its records
        consul.kv_put(LAYOUT.report_key(host), report_of(host, records).to_json())
    return len(groups)


def move_one_record(consul: ConsulClient, service: str, host: str, stamp: float) -> None:
    """What an agent writes when one replica's state moves: the record and its host's report, in one
    transaction (`HostAgent._write`)."""
    key = LAYOUT.status_key(service, host)
    entry = consul.kv_get(key).value
    assert entry is not None, key
    record = dataclasses.replace(StatusRecord.from_json(entry.value, service=service, host=host), since=stamp)
    records = {
        of[0]: e.value
        for e in consul.kv_list(LAYOUT.status_prefix).value
        if (of := LAYOUT.status_of(e.key)) is not None and of[1] == host
    }
    records[service] = record.to_json()
    consul.kv_txn({key: record.to_json(), LAYOUT.report_key(host): report_of(host, records).to_json()})


def register_replicas(consul: ConsulClient, http: str) -> int:
    """Every placed replica in Consul's catalog with a passing check, as agents whose replicas publish
    a port would have registered them (on a node per host): what the leader's check reads cost."""
    bodies = []
    for entry in consul.kv_list(LAYOUT.placement_prefix).value:
        record = PlacementRecord.from_json(entry.value)
        for host, count in record.hosts.items():
            for i in range(count):
                sid = f"{record.service}-{record.spec_hash[:6]}-{host}-{i}"
                bodies.append(
                    {
                        "Node": f"node-{host}",
                        "Address": "127.0.0.1",
                        "Service": {"ID": sid, "Service": record.service, "Port": 20000 + i},
                        "Check": {"Node": f"node-{host}", "CheckID": f"service:{sid}", "Name": "http",
                                  "Status": "passing", "ServiceID": sid},
                    }
                )  # fmt: skip

    def put(body: dict[str, object]) -> None:
        request = urllib.request.Request(
            f"http://{http}/v1/catalog/register", data=json.dumps(body).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, bodies))
    return len(bodies)


def profile_passes(run: Callable[[], object], passes: int, top: int, label: str) -> None:
    """Run ``passes`` passes under cProfile; print their wall times (``label``), then their profile by
    cumulative and own time (``top`` functions each)."""
    times = []
    profile = cProfile.Profile()
    for _ in range(passes):
        t0 = time.perf_counter()
        profile.enable()
        run()
        profile.disable()
        times.append(time.perf_counter() - t0)
    print(f"{label} (s):", " ".join(f"{t:.3f}" for t in times))
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(top)
        print(out.getvalue())


def stop_consul(proc: subprocess.Popen[bytes], data: Path) -> None:
    """Stop the dev-mode Consul `start_consul` started and remove its data."""
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)


def leading(
    http: str, hosts: int, services: int, replicas: int, *, reports: bool = True
) -> tuple[ConsulClient, Scheduler]:
    """The dev-mode Consul at ``http`` with ``hosts`` agents registered, ``services`` manifests of
    ``replicas`` written, and a real `Scheduler` of host-1 holding the leader lock (no pass run yet)."""
    consul = ConsulClient(http, timeout=60)
    wait_until(lambda: consul.kv_put("ready", b"1"), timeout=60, what="Consul writable", interval=0.2)
    register_agents(consul, hosts, consul.agent_node_name(), reports=reports)
    groups = {n: {LAYOUT.service_key(n): manifest(n, replicas)} for n in service_names(services)}
    for batch in pack_writes(groups):
        consul.kv_txn(batch.writes)
    election = Election(consul, "host-1")
    election.session = consul.session_create("leader", checks=[], lock_delay=0)
    consul.kv_acquire(LAYOUT.leader_key, b'{"host": "host-1"}', election.session)
    return consul, Scheduler(consul, LAYOUT, election, CLUSTER, 10.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.leader_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--addr", default="127.0.0.84")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument(
        "--replicas", type=int, default=REPLICAS, help="of each service (0: staging_change's idle services)"
    )
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument(
        "--registered",
        action="store_true",
        help="register every replica in the catalog with a passing check (replicas that publish a port)",
    )
    parser.add_argument(
        "--no-reports",
        action="store_true",
        help="agents registered as from before reports: the leader reads every status record when one moved",
    )
    parser.add_argument(
        "--collector",
        choices=("default", "agent"),
        default="agent",
        help="the garbage collector as `operator agent` sets it (tune_collector), or CPython's default",
    )
    args = parser.parse_args(argv)
    if args.collector == "agent":
        tune_collector()  # as run_agent does: after the imports, before the leader builds anything
    data = Path(tempfile.mkdtemp(prefix="leader-profile-"))
    proc, http = start_consul(args.addr, data)
    try:
        reports = not args.no_reports
        consul, scheduler = leading(http, args.hosts, args.services, args.replicas, reports=reports)
        t0 = time.perf_counter()
        scheduler.reconcile()
        print(f"first pass (placing {args.services} services): {time.perf_counter() - t0:.3f}s")
        print(f"status records written: {write_statuses(consul)}")
        if args.registered:
            t0 = time.perf_counter()
            print(f"replicas registered with a check: {register_replicas(consul, http)}"
                  f" ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
        scheduler.reconcile()
        plain, idle_cpu, collector = [], [], []
        times_gc = CollectorTimes()
        gc.callbacks.append(times_gc)
        for _ in range(args.passes):
            times_gc.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            scheduler.reconcile()
            plain.append(time.perf_counter() - t0)
            idle_cpu.append(time.process_time() - c0)
            collector.append(times_gc.text())
        gc.callbacks.remove(times_gc)
        print("idle passes, not profiled (s):", " ".join(f"{t:.3f}" for t in plain))
        print("idle passes, the leader's CPU (s):", " ".join(f"{t:.3f}" for t in idle_cpu))
        print("idle passes, the collector (wall s/collections of generations 0+1+2):", " ".join(collector))
        print(
            f"after the idle passes: RSS {rss_mib():.1f} MiB, {len(gc.get_objects())} objects tracked,"
            f" {gc.get_freeze_count()} frozen, thresholds {gc.get_threshold()}"
        )
        changes, cpu = [], []
        for k in range(args.passes):
            name = f"new{k:03d}"
            consul.kv_put(LAYOUT.service_key(name), manifest(name, max(args.replicas, 1)))
            t0, c0 = time.perf_counter(), time.process_time()
            scheduler.reconcile()
            changes.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert consul.kv_get(LAYOUT.placement_key(name)).value is not None, "not placed"
        print("one new service, its pass (s):", " ".join(f"{t:.3f}" for t in changes))
        print("one new service, the leader's CPU (s):", " ".join(f"{t:.3f}" for t in cpu))
        scheduler.reconcile()  # the new services' own writes read back
        moved, moved_cpu = [], []
        for k in range(args.passes):
            move_one_record(consul, "s0000", "host-1", float(k))
            t0, c0 = time.perf_counter(), time.process_time()
            scheduler.reconcile()
            moved.append(time.perf_counter() - t0)
            moved_cpu.append(time.process_time() - c0)
        print("one status record moved (and its report), its pass (s):", " ".join(f"{t:.3f}" for t in moved))
        print("the same, the leader's CPU (s):", " ".join(f"{t:.3f}" for t in moved_cpu))
        print(f"after the new services' passes: RSS {rss_mib():.1f} MiB")
        profile_passes(scheduler.reconcile, args.passes, args.top, "idle passes, profiled")
        added = iter(range(args.passes))

        def one_new_service() -> None:
            name = f"profiled{next(added):03d}"
            consul.kv_put(LAYOUT.service_key(name), manifest(name, max(args.replicas, 1)))
            scheduler.reconcile()

        # The put is in the profile too: a few ms next to the pass, and it shows as `kv_put`.
        profile_passes(one_new_service, args.passes, args.top, "one new service a pass, profiled")
        scheduler.reconcile()
        stamps = iter(range(100, 100 + args.passes))

        def one_record_moved() -> None:
            move_one_record(consul, "s0001", "host-2", float(next(stamps)))
            scheduler.reconcile()

        profile_passes(one_record_moved, args.passes, args.top, "one status record moved a pass, profiled")
    finally:
        stop_consul(proc, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
