"""Time the leader's pure decision alone at full size, without Consul (issue 31).

    python -m bench.leader_decision [--services 1000] [--hosts 100] [--passes 7] [--collector agent]

Builds in memory the state `bench.leader_profile` reads back from Consul
(``--services`` services of 10 replicas placed by the real decision on
``--hosts`` live hosts with capacities, every replica running and reported
in a status record) and times idle passes of what the leader computes from
it: `leader_plan.paced_services` (the read's question) and
`leader_plan.decide_leader`, in CPU seconds, with the cyclic garbage
collector on and off (what it adds is the collector walking every object the
process holds), on as ``operator agent`` sets it (`agent.tune_collector`, the
default) or CPython's default thresholds (``--collector default``). No I/O:
the figures are the pure decision's own, less noisy than a whole pass on a
shared machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from bench.scale import manifest, service_names
from consul_operator.core.cluster_state import ClusterState, KnownHosts
from consul_operator.core.desired_state import Manifest, Resources, parse_manifest
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader, paced_services
from consul_operator.core.records import StatusRecord, frozen_map
from consul_operator.daemons.agent import tune_collector

REPLICAS = 10


def idle_state(services: int, hosts: int) -> tuple[ClusterState, LeaderMemory, LeaderSettings]:
    """Every service placed by the real decision and running as placed; the leader's memory after."""
    known: KnownHosts = {f"host-{i}": (True, {}) for i in range(1, hosts + 1)}
    capacities = {h: Resources(64 * 1024**3, 64_000) for h in known}
    manifests: dict[str, Manifest] = {
        n: parse_manifest(manifest(n, REPLICAS), key_name=n) for n in service_names(services)
    }
    settings = LeaderSettings("host-1", Layout(), 10.0)
    first = decide_leader(
        ClusterState(manifests=manifests, hosts=known, capacities=capacities),
        LeaderMemory(),
        Now(1.0, 1.7e9),
        settings,
    )
    statuses = {
        n: {
            h: StatusRecord(n, h, r.spec_hash, c, c, c, specs=frozen_map({r.spec_hash: c}))
            for h, c in r.hosts.items()
        }
        for n, r in first.placements.items()
    }
    state = ClusterState(
        manifests=manifests,
        hosts=known,
        capacities=capacities,
        placements=first.placements,
        statuses=statuses,
        revisions=frozenset((n, m.spec_hash()) for n, m in manifests.items()),
    )
    return state, first.memory, settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.leader_decision", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--collector", choices=("default", "agent"), default="agent")
    args = parser.parse_args(argv)
    if args.collector == "agent":
        tune_collector()  # as run_agent does: after the imports, before the state is built
    state, memory, settings = idle_state(args.services, args.hosts)
    # The memory of a leader that has run a while: one idle pass settles every service in it
    # (its `placement.ScheduleMemo`), which the timed passes then start from.
    memory = decide_leader(state, memory, Now(1.5, 1.7e9), settings).memory

    def one_pass() -> int:
        paced_services(state)
        return len(decide_leader(state, memory, Now(2.0, 1.7e9), settings).writes)

    assert one_pass() == 0, "an idle pass writes nothing"
    for label, collect in (("on", True), ("off", False)):
        if not collect:
            gc.disable()
        cpu = []
        for _ in range(args.passes):
            c0 = time.process_time()
            one_pass()
            cpu.append(time.process_time() - c0)
        gc.enable()
        print(
            f"idle decision (paced_services + decide_leader), garbage collector {label}"
            f" (thresholds {gc.get_threshold()}, {gc.get_freeze_count()} frozen): "
            f"CPU {min(cpu):.3f}-{max(cpu):.3f} s, median {statistics.median(cpu):.3f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
