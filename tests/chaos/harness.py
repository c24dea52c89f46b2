"""Chaos on a staging environment of its own (.61-63 of the run's block): seeded faults, checks, a report.

Faults (picked by a seeded `random.Random`, so a seed replays the same run):

  kill_replica      docker kill of one replica
  kill_many         docker kill of several replicas at once
  kill_leader       kill -9 of the leader agent, restarted a few seconds later
  kill_follower     kill -9 of a non-leader agent, restarted a few seconds later
  pause_leader      SIGSTOP of the leader until another agent leads, then SIGCONT (fencing)
  host_down         a whole app host down (its Consul, its agent, its containers), then back
  consul_down       one Consul server down for a few seconds
  docker_restart    the Docker engine restarted (every container dies)
  nginx_kill        kill -9 of NGINX under the load balancer
  scale_down        a planned scale-down and up again under load: no request may fail
  restart_within_ttl  kill -9 of the leader, restarted within its TTL (as systemd does): a
                    leader again, and a service put afterwards is placed
  host_lost         an app host down for good: its replicas move after the grace, its
                    status records stop counting; restored only once that converged
  clock_step        a rollout while the leader's wall clock is 1 h ahead and the other
                    agent's 1 h behind (tests/support/clockshim): it completes, nothing else moves
  big_manifest      the largest manifest the validator accepts, and one past it: other
                    services are still placed
  stuck_action      a replica that cannot be removed (an immutable file in its container's
                    layer): it is replaced, the agent does not hot-loop, and it goes once freed

Throughout, a bounded stream of requests goes through the load balancer, and
a monitor samples the containers (never more than desired) and every
placement written (only ever by the lock holder). After each fault the
system must converge within CONVERGE_BOUND: every service at its desired
count, every replica passing, no orphan container or registration, and NGINX's
upstreams exactly the passing instances, checked by requests through NGINX
that must reach exactly the running containers; the leader lock held by a
live session. The monitor counts its samples and errors: a run with too few
samples, or with monitor errors outside a fault that took Consul or Docker
away, fails.

Before each fault the run waits until Consul's autopilot reports three healthy
voters, as people would: a server that returns (host_down, consul_down) rejoins
as a non-voter for autopilot's server_stabilization_time (10 s), and losing a
second server in that window (host_lost) leaves no quorum, and nothing can
converge. A run that cannot go on (no quorum, a fault's own step failing) ends
with a verdict, ABORTED and why, never a traceback.

usage: python -m tests.chaos.harness [--seed N] [--duration SECONDS] [--faults a,b,...] [--skip a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.docker_client import connect
from consul_operator.core.desired_state import ManifestError, parse_manifest
from consul_operator.core.model import LABEL_CLUSTER, LABEL_HOST, LABEL_SERVICE, META_HOST
from tests.support.autopilot import three_healthy_voters
from tests.support.bounds import CHAOS_CONVERGE_S, LB_UPDATE_S, NEW_LEADER_S
from tests.support.cluster import Cluster, manifest_yaml
from tests.support.load import Load
from tests.support.places import PLACE
from tests.support.staging import (
    ROOT,
    SLOW_RESYNC,
    Staging,
    restart_docker_engine,
    wait_until,
)

CHAOS_ADDRESSES = PLACE.three(61)  # tests/support/places.py
SERVICES = {"simple": 2, "web": 3}  # simple is the LB's default service
CONVERGE_BOUND = CHAOS_CONVERGE_S  # seconds after a fault's end within which everything must converge
REBALANCE_SETTLE = "3s"
"""The agents' --rebalance-settle here: a returning host draws its replicas back within a fault's
convergence, so the next fault starts from an even spread (the default 30 s would overlap it)."""
APP_HOSTS = ("host-1", "host-2")
FAULTS = (
    "kill_replica",
    "kill_many",
    "kill_leader",
    "kill_follower",
    "pause_leader",
    "host_down",
    "consul_down",
    "docker_restart",
    "nginx_kill",
    "scale_down",
    "restart_within_ttl",
    "host_lost",
    "clock_step",
    "big_manifest",
    "stuck_action",
)
LOG_DIR = ROOT / ".run" / "chaos"
MONITOR_INTERVAL = 0.25  # seconds between two samples of the monitor
# A removal that keeps failing for STUCK_SECONDS must not make the host loop spin:
# with back-off a handful of passes, without it thousands.
STUCK_SECONDS = 6.0
HOT_LOOP_PASSES = 60
KV_VALUE_LIMIT = 512 * 1024  # Consul's kv_max_value_size


def hold(seconds: float) -> None:
    """Keep a fault in place for ``seconds``: the one deliberate wait of the harness."""
    threading.Event().wait(seconds)


@dataclass
class FaultRecord:
    """One injected fault and what followed."""

    name: str
    detail: str
    started: float
    ended: float = 0.0
    converged_after: float | None = None
    failed_requests: int = 0
    requests: int = 0
    # The fault took every replica of some service (or the load balancer) down at
    # once: requests fail until replacements pass, and are reported, not budgeted.
    total_loss: bool = False
    # Why it had not converged when the bound ran out (what the checks found first).
    not_converged: str = ""


@dataclass
class Violations:
    """What the monitor saw that must never happen."""

    extra_replicas: list[str] = field(default_factory=list)
    unfenced_writes: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    # Faults' own checks: a hot loop, containers touched by a clock step, a
    # service not placed while a big manifest or a restarted leader was around.
    fault_checks: list[str] = field(default_factory=list)


class Chaos:
    """One chaos run."""

    # Faults that take Consul or an engine away from the monitor for a moment.
    AWAY: tuple[str, ...] = ("consul_down", "docker_restart", "host_down", "host_lost")

    def __init__(self, cluster: Cluster, seed: int, log_path: Path) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seed = seed
        self.log_path = log_path
        self.faults: list[FaultRecord] = []
        self.violations = Violations()
        self.desired = dict(SERVICES)
        # What the monitor allows: during a planned scale-down the old count, until it has converged.
        self.ceiling = dict(SERVICES)
        self.lock_history: list[tuple[int, str | None]] = []  # (leader key's modify index, holder)
        # Hosts lost for good (host_lost): their containers and registrations do not count.
        self.lost: set[str] = set()
        # The image clock_step last rolled `simple` to (it toggles, so a fault can run twice).
        self.simple_image = "hello:local"
        # The monitor's own health: how many samples it took, and what failed.
        self.samples = 0
        self.monitor_errors: list[str] = []
        self.monitor_seconds = 0.0
        # Why the run stopped before its schedule's end (a verdict, not a traceback); None if it did not.
        self.aborted: str | None = None
        self._stop = threading.Event()
        self._log_lock = threading.Lock()
        self.loads = {
            name: Load(cluster.staging.addresses[2], name, interval=0.05, limit=24 * 3600)
            for name in SERVICES
        }

    # --- bookkeeping -------------------------------------------------------------------

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the run's log (kept for replaying a failing seed)."""
        with self._log_lock, open(self.log_path, "a") as handle:
            handle.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}) + "\n")

    def containers(self, service: str | None = None, host: str | None = None) -> list[Any]:
        # ignore_removed: docker-py inspects each container it listed; one removed in
        # between (a replica the agent just replaced) is gone, not an error.
        labels = [f"{LABEL_CLUSTER}={self.cluster.staging.name}"]
        if service:
            labels.append(f"{LABEL_SERVICE}={service}")
        if host:
            labels.append(f"{LABEL_HOST}={host}")
        return list(self.cluster.docker.containers.list(filters={"label": labels}, ignore_removed=True))

    # --- the checks ------------------------------------------------------------------------

    def nginx_servers(self, service: str) -> set[str]:
        """The servers of NGINX's upstream for ``service``, from the installed config."""
        text = self.cluster.staging.nginx_conf()
        block = re.search(rf"upstream svc_{service} {{(.*?)}}", text, re.S)
        return set(re.findall(r"server (\S+) ", block.group(1))) if block else set()

    def service_converged(self, service: str, replicas: int) -> bool:
        """Exactly ``replicas`` run on hosts not lost, and exactly those are registered and passing."""
        running = {c.name for c in self.containers(service) if c.labels.get(LABEL_HOST) not in self.lost}
        regs = [i for i in self.cluster.registrations(service) if i.meta.get(META_HOST) not in self.lost]
        registered = {i.service_id for i in regs}
        passing = {i.service_id for i in regs if i.status == "passing"}
        return len(running) == replicas and running == registered == passing

    def rebalancing(self, service: str) -> str:
        """Why the leader is spreading ``service`` back (its placement record's marker), or ""."""
        record = self.cluster.kv_json(f"operator/placement/{service}")
        return str(record.get("rebalancing", "")) if isinstance(record, dict) else ""

    def spread(self, service: str) -> str | None:
        """How ``service`` is not spread evenly over the app hosts not lost, or None when it is.

        After a host returns, the leader moves replicas back to it once it has
        settled (``REBALANCE_SETTLE``); until then a fault of the host holding
        them all would be a total loss.
        """
        hosts = [h for h in APP_HOSTS if h not in self.lost]
        counts = Counter({h: 0 for h in hosts})
        counts.update(
            c.labels.get(LABEL_HOST) for c in self.containers(service) if c.labels.get(LABEL_HOST) in hosts
        )
        if max(counts.values()) - min(counts.values()) > 1:
            return f"{service}: not spread over {', '.join(hosts)} ({dict(counts)})"
        if why := self.rebalancing(service):
            return f"{service}: being spread again ({why})"
        return None

    def leader_live(self) -> bool:
        """The leader lock is held, by a session that exists (not one of a dead process)."""
        consul = self._any_consul()
        if consul is None:
            return False
        entry = consul.kv_get("operator/leader", consistent=True).value
        return bool(entry and entry.session and consul.session_info(entry.session) is not None)

    def consul_healthy(self) -> bool:
        """Consul's autopilot says healthy, with all three servers voters again (`three_healthy_voters`)."""
        address = self.cluster.consul.address
        return three_healthy_voters(f"{address.host}:{address.port}")

    def converged(self) -> bool:
        """Every service at its count, all passing, nothing orphaned or dead, served through NGINX."""
        return self.unconverged() is None

    def unconverged(self) -> str | None:
        """What is not converged yet (the first thing found), or None when everything is."""
        for service, replicas in self.desired.items():
            if not self.service_converged(service, replicas):
                return f"{service}: not {replicas} running, registered and passing"
            if uneven := self.spread(service):
                return uneven
            passing = {f"{i.address}:{i.port}" for i in self.cluster.passing(service)}
            if self.nginx_servers(service) != passing:
                return f"{service}: NGINX's upstream is not the passing instances"
            # Requests through NGINX reach exactly the running containers.
            if not self.cluster.lb_serves(service, replicas):
                return f"{service}: NGINX does not reach exactly the running containers"
        ours = self.cluster.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_CLUSTER}={self.cluster.staging.name}"]}, ignore_removed=True
        )
        if {c.labels.get(LABEL_SERVICE) for c in ours if c.status == "running"} - set(self.desired):
            return "containers of a service nothing desires run"
        # Nothing dead left behind (a lost host's containers wait for its return).
        dead = [c.name for c in ours if c.status != "running" and c.labels.get(LABEL_HOST) not in self.lost]
        if dead:
            return f"dead containers left: {', '.join(dead)}"
        return None if self.leader_live() else "no live leader"

    def monitor(self) -> None:
        """Sample, until stopped: replicas never above desired, placements only written by the lock holder."""
        seen_placements: dict[str, int] = {}
        started = time.monotonic()
        while not self._stop.wait(MONITOR_INTERVAL):
            self.monitor_seconds = time.monotonic() - started
            try:
                for service, replicas in list(self.ceiling.items()):  # faults add probes
                    # A lost host's containers do not count: a partition leaves them running.
                    uncounted = self.uncounted_hosts()
                    # Spreading back moves one replica at a time, the replacement first (max_surge 1).
                    # Its marker is read before and after the listing: a move may start or end
                    # (the surplus stopped, its status written, the marker cleared) while a slow
                    # listing runs, and either way the listing may hold the surge replica.
                    moving = bool(self.rebalancing(service))
                    running = len(
                        [c for c in self.containers(service) if c.labels.get(LABEL_HOST) not in uncounted]
                    )
                    if running > replicas + 1 or (
                        running > replicas and not (moving or self.rebalancing(service))
                    ):
                        note = f"{time.time():.1f} {service}: {running} running > {replicas} desired"
                        self.violations.extra_replicas.append(note)
                        self.log("violation", kind="extra_replicas", note=note)
                self._check_fencing(seen_placements)
                self.samples += 1
            except Exception as exc:
                # A fault may take Consul or Docker away for a moment; counted, and
                # judged against the faults that can do that (see monitor_failed).
                fault = self.faults[-1].name if self.faults else "setup"
                self.monitor_errors.append(f"{fault}: {exc!r}"[:300])
                frames = traceback.extract_tb(exc.__traceback__)[-3:]  # where: for a later reader
                where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
                self.log("monitor_error", fault=fault, error=repr(exc), where=where)

    def uncounted_hosts(self) -> set[str]:
        """Hosts whose containers the monitor's ceiling leaves out: the lost ones."""
        return set(self.lost)

    def over_budget(self, per_fault: int, run_budget: float) -> list[str]:
        """The request budget broken: a fault that left a replica of every service alive failed more
        than ``per_fault`` requests, or the run failed more than ``run_budget`` of them (or sent too few)."""
        over = [
            f"{f.name}: {f.failed_requests} failed"
            for f in self.faults
            if not f.total_loss and f.failed_requests > per_fault
        ]
        requests = sum(len(load.outcomes) for load in self.loads.values())
        failed = sum(len(load.failures) for load in self.loads.values())
        if requests <= 100:
            over.append(f"only {requests} requests sent")
        if failed > run_budget * requests:
            over.append(f"{failed} of {requests} requests failed (budget {run_budget:.0%})")
        return over

    def monitor_failed(self) -> list[str]:
        """Why the monitor's checks cannot be trusted: too few samples, or errors no fault explains."""
        problems = []
        expected = self.monitor_seconds / MONITOR_INTERVAL
        # Each sample lists containers and reads Consul: on a loaded 2-core machine
        # a sample can take a second, at a load of 20-30 one in 5.1 ticks was sampled
        # (issue 29); fewer than a tenth of the ticks means it stalled. At least 10 samples
        # in a run of a minute or more; a run of seconds (a Docker restart converging in 1.3 s,
        # monitored for 4) needs a quarter of its ticks.
        if self.samples < max(min(10, expected / 4), expected / 10):
            problems.append(f"{self.samples} samples in {self.monitor_seconds:.0f}s")
        unexplained = [e for e in self.monitor_errors if not e.startswith(self.AWAY)]
        if unexplained:
            problems.append(f"{len(unexplained)} monitor errors, e.g. {unexplained[0]}")
        return problems

    def _check_fencing(self, seen: dict[str, int]) -> None:
        """Every placement write must come from the host that held the lock at the write's Consul index.

        Placements are read before the lock, so that a new leader's acquisition
        (an earlier index than its writes) is always in the history first.
        """
        consul = self._any_consul()
        if consul is None:
            return
        placements = consul.kv_list("operator/placement/").value
        entry = consul.kv_get("operator/leader", consistent=True).value
        if entry is not None and (not self.lock_history or self.lock_history[-1][0] != entry.modify_index):
            holder = json.loads(entry.value)["host"] if entry.session else None
            self.lock_history.append((entry.modify_index, holder))
        for placement in placements:
            if seen.get(placement.key) == placement.modify_index:
                continue
            seen[placement.key] = placement.modify_index
            writer = json.loads(placement.value).get("written_by")
            before = [host for index, host in self.lock_history if index <= placement.modify_index]
            if before and before[-1] != writer:
                note = (
                    f"{placement.key}@{placement.modify_index} written by {writer}, lock held by {before[-1]}"
                )
                self.violations.unfenced_writes.append(note)
                self.log("violation", kind="unfenced_write", note=note)

    def _any_consul(self) -> ConsulClient | None:
        for host in ("host-3", "host-1", "host-2"):
            if self.cluster.staging.consul_alive(host):
                return ConsulClient(self.cluster.staging.consul_addr(host), timeout=2)
        return None

    # --- the faults -----------------------------------------------------------------------

    def _leader_and_follower(self) -> tuple[str, str]:
        leader = str(wait_until(self.cluster.leader, timeout=NEW_LEADER_S, what="a leader"))
        return leader, "host-2" if leader == "host-1" else "host-1"

    def takes_every_replica(self, ids: set[str]) -> bool:
        """Whether losing the containers ``ids`` leaves some service with no replica at all.

        Each fault's convergence includes the spread coming back (`spread`), so
        this is a total loss only where the fault itself takes every host a
        service runs on (docker_restart) or every one of its replicas (kill_many);
        only the run's budget bounds its failed requests.
        """
        by_service: dict[str, set[str]] = {}
        for c in self.containers():
            by_service.setdefault(c.labels[LABEL_SERVICE], set()).add(c.id)
        return any(replicas <= ids for s, replicas in by_service.items() if s in self.desired)

    def kill_replica(self) -> str:
        victim = self.rng.choice(sorted(self.containers(), key=lambda c: c.name))
        victim.kill()
        return str(victim.name)

    def kill_many(self) -> str:
        everything = sorted(self.containers(), key=lambda c: c.name)
        victims = self.rng.sample(everything, k=self.rng.randint(2, len(everything)))
        self.faults[-1].total_loss = self.takes_every_replica({v.id for v in victims})
        threads = [threading.Thread(target=v.kill) for v in victims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ",".join(v.name for v in victims)

    def _kill_agent(self, host: str) -> str:
        self.cluster.kill(f"agent-{host}", signal.SIGKILL)
        down = self.rng.uniform(1.0, 4.0)
        hold(down)  # the fault's length: how long the agent stays dead
        self.cluster.staging.run("up")
        return f"agent-{host} dead for {down:.1f}s"

    def kill_leader(self) -> str:
        return self._kill_agent(self._leader_and_follower()[0])

    def kill_follower(self) -> str:
        return self._kill_agent(self._leader_and_follower()[1])

    def pause_leader(self) -> str:
        leader, follower = self._leader_and_follower()
        pid = self.cluster.staging.pids()[f"agent-{leader}"]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: self.cluster.leader() == follower, timeout=NEW_LEADER_S, what=f"{follower} to lead"
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"agent-{leader} paused until {follower} led"

    def host_down(self) -> str:
        host = self.rng.choice(["host-1", "host-2"])
        self.faults[-1].total_loss = self.takes_every_replica({c.id for c in self.containers(host=host)})
        for name in (f"agent-{host}", f"consul-{host}"):
            self.cluster.kill(name, signal.SIGKILL)
        for container in self.containers(host=host):
            container.kill()
        # Past the 10 s lost-host grace: the replicas move, and the returning
        # host must drop its stale ones (host_lost covers a host that never returns).
        down = self.rng.uniform(11.0, 15.0)
        hold(down)  # the fault's length: the host stays down this long
        self.cluster.staging.run("up")
        return f"{host} down for {down:.1f}s"

    def consul_down(self) -> str:
        host = self.rng.choice(["host-1", "host-2", "host-3"])
        # Its node's checks, and so every replica on it, are critical while its Consul is
        # away: a total loss if that host ran every replica of a service, as for host_down.
        self.faults[-1].total_loss = self.takes_every_replica({c.id for c in self.containers(host=host)})
        self.cluster.kill(f"consul-{host}", signal.SIGTERM)
        down = self.rng.uniform(2.0, 6.0)
        hold(down)  # the fault's length
        self.cluster.staging.run("up")
        return f"consul-{host} down for {down:.1f}s"

    def docker_restart(self) -> str:
        self.faults[-1].total_loss = True
        restart_docker_engine()
        return "dockerd restarted"

    def nginx_kill(self) -> str:
        pid = int((self.cluster.staging.run_dir / "nginx" / "nginx.pid").read_text())
        self.faults[-1].total_loss = True
        os.kill(pid, signal.SIGKILL)
        return f"nginx master {pid} killed"

    def scale_down(self) -> str:
        """Planned: scale web down by one and back, under load; no request may fail meanwhile."""
        load = self.loads["web"]
        before = len(load.failures)
        self.desired["web"] = SERVICES["web"] - 1
        self.cluster.put("web", self.desired["web"], drain="2s")
        self.cluster.wait_converged("web", self.desired["web"], timeout=CONVERGE_BOUND)
        wait_until(
            lambda: len(self.nginx_servers("web")) == self.desired["web"], timeout=LB_UPDATE_S, what="NGINX"
        )
        self.ceiling["web"] = self.desired["web"]
        failed = len(load.failures) - before
        self.desired["web"] = self.ceiling["web"] = SERVICES["web"]
        self.cluster.put("web", self.desired["web"], drain="2s")
        if failed:
            self.log("violation", kind="failed_during_scale_down", failed=failed)
        assert failed == 0, f"{failed} requests failed during a planned scale-down"
        return "web 3 -> 2 -> 3"

    def restart_within_ttl(self) -> str:
        """kill -9 of the leader and a restart within its TTL, as systemd's Restart=always does."""
        leader, _ = self._leader_and_follower()
        self.cluster.kill(f"agent-{leader}", signal.SIGKILL)
        down = self.rng.uniform(0.2, 2.9)
        hold(down)  # the fault's length: the supervisor's restart delay
        self.cluster.staging.run("up")
        restarted = time.monotonic()
        placed = self._probe_placed("probe-restart")
        took = placed - restarted
        return f"agent-{leader} restarted {down:.1f}s after kill -9; a probe placed {took:.1f}s later"

    def _probe_placed(self, name: str) -> float:
        """Put a one-replica service and wait until a live leader placed it; returns when (monotonic)."""
        self.desired[name] = self.ceiling[name] = 1
        self.cluster.put(name, 1, drain="500ms")
        try:
            wait_until(
                lambda: self.cluster.kv_json(f"operator/placement/{name}") and self.leader_live(),
                timeout=CONVERGE_BOUND,
                what=f"{name} placed",
            )
        except AssertionError as exc:
            self.violations.fault_checks.append(f"{self.faults[-1].name}: {exc}")
        placed = time.monotonic()
        self.cluster.delete(name)
        del self.desired[name], self.ceiling[name]
        return placed

    def host_lost(self) -> str:
        """An app host gone for good (Consul, agent, containers); restored only after convergence."""
        host = self.rng.choice(["host-1", "host-2"])
        self.faults[-1].total_loss = self.takes_every_replica({c.id for c in self.containers(host=host)})
        for name in (f"agent-{host}", f"consul-{host}"):
            self.cluster.kill(name, signal.SIGKILL)
        for container in self.containers(host=host):
            container.kill()
        self.lost.add(host)
        return f"{host} lost"

    def _lost_status_records(self) -> list[str]:
        """Status records of lost hosts the leader should have removed after the grace."""
        consul = self._any_consul()
        if consul is None:
            return ["no Consul"]
        records = consul.kv_list("operator/status/").value
        return [e.key for e in records if e.key.rsplit("/", 1)[1] in self.lost]

    def after_host_lost(self) -> None:
        """Check the lost host's status records are gone, then bring the host back for the next fault."""
        stale = self._lost_status_records()
        if stale:
            self.violations.fault_checks.append(f"host_lost: status records left: {stale}")
        self.lost.clear()
        self.cluster.staging.run("up")
        wait_until(self.converged, timeout=CONVERGE_BOUND, what="convergence after the host returned")

    def clock_step(self) -> str:
        """During a rollout, the leader's wall clock steps an hour forward and the other agent's an hour back.

        What a wall-clock duration would get wrong: the leader would see the
        rollout past its deadline at once and roll it back; the other agent's
        back-offs and the lost-host grace would stretch by an hour. The rollout
        must complete, and nothing else may move.
        """
        leader, follower = self._leader_and_follower()
        image = "hello:v2" if self.simple_image == "hello:local" else "hello:local"
        others = {c.id for c in self.containers("web")}
        fields = {"drain": "2s", "image": image, "update": {"min_healthy": "1s", "deadline": "2m"}}
        target = parse_manifest(manifest_yaml("simple", SERVICES["simple"], **fields).encode()).spec_hash()
        # max_surge 1: one replica above the count while the rollout runs.
        self.ceiling["simple"] = SERVICES["simple"] + 1
        self.cluster.put("simple", SERVICES["simple"], **fields)
        try:
            # Step once the rollout runs: a deadline timed on the wall clock from
            # before the step would then see it an hour old.
            wait_until(
                lambda: (self.cluster.kv_json("operator/rollout/simple") or {}).get("to") == target,
                timeout=CONVERGE_BOUND,
                what="the rollout to start",
            )
            (clock_dir(self.cluster.staging.name) / leader).write_text("3600\n")
            (clock_dir(self.cluster.staging.name) / follower).write_text("-3600\n")
            record = wait_until(
                lambda: self._rollout_ended("simple", target), timeout=CONVERGE_BOUND, what="the rollout"
            )
            if record != "complete":
                self.violations.fault_checks.append(f"clock_step: the rollout ended {record}")
            if {c.id for c in self.containers("web")} != others:
                self.violations.fault_checks.append("clock_step: web's containers changed")
            if not self.leader_live():
                self.violations.fault_checks.append("clock_step: no live leader during the step")
        except AssertionError as exc:
            self.violations.fault_checks.append(f"clock_step: {exc}")
        finally:
            for host in (leader, follower):
                (clock_dir(self.cluster.staging.name) / host).write_text("0\n")
            self.ceiling["simple"] = SERVICES["simple"]
        self.simple_image = image
        return f"simple -> {image} with {leader} +1h, {follower} -1h"

    def _rollout_ended(self, service: str, spec: str) -> str | None:
        """How the rollout to ``spec`` ended ("complete", "failed", "rolled_back"), or None while it runs.

        A record of an earlier rollout (one *from* ``spec`` that completed) is not this one.
        """
        record = self.cluster.kv_json(f"operator/rollout/{service}") or {}
        state = record.get("state")
        if record.get("to") == spec and state in ("complete", "failed"):
            return str(state)
        if record.get("from") == spec and state == "rolled_back":
            return str(state)
        return None

    def big_manifest(self) -> str:
        """The largest manifest the validator accepts and one just past it, while another service changes."""
        accepted, refused = self._biggest_valid("big")
        self.desired["big"] = self.ceiling["big"] = 1
        self.cluster.put_raw("big", accepted)
        # One value more, refused by the validator; written only where Consul's
        # own KV limit (512 KiB) lets it be stored at all.
        stored_refused = len(refused) < KV_VALUE_LIMIT
        if stored_refused:
            self.cluster.put_raw("big-refused", refused)
        self._probe_placed("probe-big")
        try:
            wait_until(
                lambda: self.service_converged("big", 1), timeout=CONVERGE_BOUND, what="the big manifest runs"
            )
        except AssertionError as exc:
            self.violations.fault_checks.append(f"big_manifest: {exc}")
        self.cluster.delete("big")
        self.cluster.delete("big-refused")
        del self.desired["big"], self.ceiling["big"]
        past = f"{len(refused) // 1024} KiB refused" if stored_refused else "one more past KV's limit"
        return f"{len(accepted) // 1024} KiB accepted, {past}"

    @staticmethod
    def _biggest_valid(name: str) -> tuple[str, str]:
        """Manifests of 30 KiB env values: the most the validator accepts, and one value more."""
        env: dict[str, str] = {}
        text = manifest_yaml(name, 1, drain="500ms")
        while True:
            candidate_env = {**env, f"V{len(env)}": "x" * 30 * 1024}
            candidate = manifest_yaml(name, 1, drain="500ms", env=candidate_env)
            try:
                parse_manifest(candidate.encode(), key_name=name)
            except ManifestError:
                return text, candidate.replace(f"name: {name}", f"name: {name}-refused", 1)
            env, text = candidate_env, candidate

    def _host_passes(self, host: str) -> float:
        """How many host-loop passes the agent of ``host`` has run."""
        return self.cluster.metric(host, "operator_reconcile_duration_seconds_count", loop="host")

    def stuck_action(self) -> str:
        """A replica whose container cannot be removed: replaced, no hot loop, removed once freed."""
        victim = self.rng.choice(sorted(self.containers("web"), key=lambda c: c.name))
        host = victim.labels[LABEL_HOST]
        immutable = Path(victim.attrs["GraphDriver"]["Data"]["UpperDir"]) / ".chaos-immutable"
        immutable.touch()
        subprocess.run(["chattr", "+i", str(immutable)], check=True)
        try:
            passes = self._host_passes(host)
            victim.kill()
            hold(STUCK_SECONDS)  # the fault's length: the removal keeps failing meanwhile
            passes = self._host_passes(host) - passes
            if passes > HOT_LOOP_PASSES:
                self.violations.fault_checks.append(
                    f"stuck_action: {passes:.0f} host passes in {STUCK_SECONDS:.0f}s (a hot loop)"
                )
        finally:
            subprocess.run(["chattr", "-i", str(immutable)], check=True)
        return f"{victim.name} unremovable for {STUCK_SECONDS:.0f}s: {passes:.0f} host passes"

    # --- the run ---------------------------------------------------------------------------

    def setup(self) -> None:
        for service, replicas in SERVICES.items():
            self.cluster.put(service, replicas, drain="2s")
        wait_until(self.converged, timeout=CONVERGE_BOUND, what="the initial convergence")

    def inject(self, name: str) -> FaultRecord:
        """Run one fault, then wait for convergence; record how long it took and what failed."""
        action: Callable[[], str] = getattr(self, name)
        wait_until(
            self.consul_healthy,
            timeout=CONVERGE_BOUND,
            what=f"three healthy Consul voters (autopilot) before {name}",
            interval=0.5,
        )
        before = {s: (len(load.outcomes), len(load.failures)) for s, load in self.loads.items()}
        record = FaultRecord(name, "", time.time())
        self.faults.append(record)
        self.log("fault", name=name)
        record.detail = action()
        record.ended = time.time()
        try:
            wait_until(self.converged, timeout=CONVERGE_BOUND, what=f"convergence after {name}", interval=0.2)
            record.converged_after = time.time() - record.ended
        except AssertionError:
            record.converged_after = None
            try:
                why = self.unconverged()
            except Exception as exc:  # the reason is for the log; Consul or Docker may be away
                why = repr(exc)
            record.not_converged = why or "converged just after the bound"
        restore: Callable[[], None] | None = getattr(self, f"after_{name}", None)
        if restore is not None:
            restore()
        record.requests = sum(len(load.outcomes) - before[s][0] for s, load in self.loads.items())
        record.failed_requests = sum(len(load.failures) - before[s][1] for s, load in self.loads.items())
        self.log("fault_done", **asdict(record))
        return record

    def run(self, schedule: list[str]) -> None:
        monitor = threading.Thread(target=self.monitor, name="chaos-monitor", daemon=True)
        self.log("run", seed=self.seed, schedule=schedule)
        for load in self.loads.values():
            load.__enter__()
        monitor.start()
        try:
            for name in schedule:
                try:
                    self.inject(name)
                except Exception as exc:  # the verdict of a run that cannot go on, not a traceback
                    self.aborted = f"{name}: {type(exc).__name__}: {exc}"[:500]
                    self.log("aborted", fault=name, error=repr(exc))
                    break
        finally:
            self._stop.set()
            monitor.join(timeout=10)
            for load in self.loads.values():
                load.__exit__(None, None, None)
        if self.aborted is None:
            self.violations.orphans = self.orphans()

    def orphans(self) -> list[str]:
        """Containers or registrations of ours that nothing desires."""
        found = [
            f"container {c.name}"
            for c in self.containers()
            if c.labels.get(LABEL_SERVICE) not in self.desired
        ]
        for service in self.desired:
            running = {c.name for c in self.containers(service)}
            found += [
                f"registration {i.service_id}"
                for i in self.cluster.registrations(service)
                if i.service_id not in running
            ]
        return found

    def report(self) -> str:
        converged = [f.converged_after for f in self.faults if f.converged_after is not None]
        requests = sum(len(load.outcomes) for load in self.loads.values())
        failed = sum(len(load.failures) for load in self.loads.values())
        lines = [
            f"chaos run, seed {self.seed}: {len(self.faults)} faults, log {self.log_path}",
            *([f"ABORTED: the run could not go on after {self.aborted}"] if self.aborted else []),
            "",
            f"{'fault':<19} {'converged after':>16} {'failed/requests':>16}  detail",
        ]
        for f in self.faults:
            after = f"{f.converged_after:.1f}s" if f.converged_after is not None else "NEVER"
            loss = " (every replica down at once)" if f.total_loss else ""
            counts = f"{f.failed_requests}/{f.requests}"
            still = f"; still: {f.not_converged}" if f.not_converged else ""
            lines.append(f"{f.name:<19} {after:>16} {counts:>16}  {f.detail}{loss}{still}")
        if converged:
            ordered = sorted(converged)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            p50 = statistics.median(ordered)
            lines.append(f"\ntime to converge: p50 {p50:.1f}s, p95 {p95:.1f}s, max {ordered[-1]:.1f}s")
        lines.append(f"failed requests: {failed} of {requests} ({100 * failed / max(requests, 1):.2f}%)")
        lines.append(
            f"violations: {len(self.violations.extra_replicas)} extra-replica samples, "
            f"{len(self.violations.unfenced_writes)} unfenced writes, "
            f"{len(self.violations.orphans)} orphans, "
            f"{len(self.violations.fault_checks)} failed fault checks {self.violations.fault_checks}"
        )
        lines.append(
            f"monitor: {self.samples} samples in {self.monitor_seconds:.0f}s, "
            f"{len(self.monitor_errors)} errors; problems: {self.monitor_failed() or 'none'}"
        )
        return "\n".join(lines)


def clock_dir(name: str) -> Path:
    """Where the environment ``name``'s agents read their clock offsets (tests/support/clockshim)."""
    return LOG_DIR / "clock" / name


def start_environment(name: str = "chaos") -> Cluster:
    """The chaos environment, fresh, under ``name`` (its containers' label, its run directory)."""
    clocks = clock_dir(name)
    clocks.mkdir(parents=True, exist_ok=True)
    for clock in clocks.iterdir():
        clock.write_text("0\n")
    clock_env = ("CLOCK_OFFSET_DIR", str(clocks))
    agent_args = f"{dict(SLOW_RESYNC)['AGENT_ARGS']} --rebalance-settle {REBALANCE_SETTLE}"
    env = (*SLOW_RESYNC, ("AGENT_ARGS", agent_args), clock_env)
    staging = Staging(name, CHAOS_ADDRESSES, extra_env=env)
    staging.run("down")
    staging.run("up")
    # host-3's Consul: host faults (host_down, host_lost) take host-1's or host-2's away.
    return Cluster(staging, ConsulClient(staging.consul_addr("host-3")), connect())


def schedule_for(seed: int, duration: float | None, faults: list[str]) -> list[str]:
    """Each named fault once in a seeded order, or seeded random picks filling ``duration`` (~20 s each)."""
    rng = random.Random(seed)
    if duration is None:
        order = list(faults)
        rng.shuffle(order)
        return order
    return [rng.choice(faults) for _ in range(max(1, int(duration // 20)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of random faults (default: each once)"
    )
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument(
        "--skip",
        default="",
        help="faults left out of the seed's schedule, which keeps its order (e.g. docker_restart)",
    )
    args = parser.parse_args(argv)
    skip = {name for name in args.skip.split(",") if name}
    unknown = sorted((skip | set(args.faults.split(","))) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults: {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"chaos-seed-{args.seed}.log"
    log_path.unlink(missing_ok=True)
    cluster = start_environment()
    chaos = Chaos(cluster, args.seed, log_path)
    ok = False
    try:
        chaos.setup()
        schedule = schedule_for(args.seed, args.duration, args.faults.split(","))
        chaos.run([name for name in schedule if name not in skip])
        v = chaos.violations
        ok = all(f.converged_after is not None for f in chaos.faults) and not (
            chaos.aborted
            or v.extra_replicas
            or v.unfenced_writes
            or v.orphans
            or v.fault_checks
            or chaos.monitor_failed()
        )
    finally:
        print(chaos.report())
        cluster.staging.run("down")
    if ok:
        log_path.unlink(missing_ok=True)
    else:
        print(f"FAILED: replay with `make chaos SEED={args.seed}`; log kept in {log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
