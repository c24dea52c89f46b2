"""Chaos on the node environment (scripts/nodes.sh): partitions, systemd restarts and reboots.

The faults of `Chaos` need processes of this machine; these need hosts that
are hosts (each node its own network stack, systemd and engine):

  partition_leader    the leader's node cut off from both others (the Consul majority),
                      both ways: the old leader stops writing (fencing, checked by the
                      monitor, and its operator_is_leader drops to 0), its containers
                      keep running, a new leader places replacements after the
                      lost-host grace; healed once that converged
  partition_app_host  the same for the app host that does not lead
  partition_lb        the load balancer's node cut off from Consul's ports of both
                      others (its NGINX still reaches the replicas); meanwhile a
                      replica is killed and replaced: NGINX keeps the last good
                      config and serves, and catches up after the heal
  one_way             an app host's packets to both others dropped, theirs to it
                      delivered (an asymmetric cut)
  agent_crash         `systemctl kill -s KILL operator-agent` on the leader: systemd
                      restarts it (Restart=always, 2 s) within its TTL, and a service
                      put right after the kill is placed within 10 s
  node_reboot         `systemctl reboot` of an app host: the node goes down with its
                      engine and comes back (the container is started again, as a VM's
                      power comes back); its engine's containers are still there and
                      the cluster converges

After each fault the checks of `Chaos` apply: everything converged within the
bound, no more replicas than desired on the hosts the majority sees, placements
only written by the lock holder, failed requests within the budget; convergence
includes the spread coming back (issue 27), with the agents settling as the
loopback ones do (`AGENT_ARGS`). So a fault finds every replica on one host only
when the host is the last one standing, not because the previous fault piled
them there.
"""

from __future__ import annotations

import time
from pathlib import Path

from consul_operator.adapters.consul_client import ConsulClient
from tests.chaos.harness import CONVERGE_BOUND, LOG_DIR, REBALANCE_SETTLE, Chaos, FaultRecord, hold
from tests.support.cluster import Cluster
from tests.support.nodes import APP_HOSTS, NODE_HOSTS, Nodes
from tests.support.staging import wait_until

NODE_FAULTS = (
    "partition_leader",
    "partition_app_host",
    "partition_lb",
    "one_way",
    "agent_crash",
    "node_reboot",
)
# A leader must exist again this soon after its agent was killed and systemd restarted it.
AGENT_CRASH_BOUND = 10.0
# The node environment's agents settle as the loopback ones do (the default 30 s is longer than
# the harness lets a healed cluster rest, issue 27), set in their settings file.
AGENT_ARGS = f"--rebalance-settle {REBALANCE_SETTLE}"


class NodeChaos(Chaos):
    """`Chaos` with the faults only nodes can have; figures per fault in ``figures``."""

    # A reboot takes an engine away; a cut of the node of Consul's Raft leader leaves
    # Consul without a leader until the majority elects one (a read then times out).
    AWAY = ("node_reboot", "partition_leader", "partition_app_host", "partition_lb", "one_way")

    def __init__(self, cluster: Cluster, seed: int, log_path: Path) -> None:
        super().__init__(cluster, seed, log_path)
        self.figures: dict[str, dict[str, float]] = {}
        # Hosts back from a cut whose stale containers their agents are still removing:
        # left out of the monitor's ceiling until the fault's convergence, counted by it.
        self.returning: set[str] = set()

    def uncounted_hosts(self) -> set[str]:
        return self.lost | self.returning

    def _any_consul(self) -> ConsulClient | None:
        """The Consul the faults chose: one that the cut in place leaves in the majority."""
        return self.cluster.consul

    def unconverged(self) -> str | None:
        found = super().unconverged()
        if found is None and not self.consul_healthy():
            return "Consul's autopilot: not three healthy voters"
        return found

    def inject(self, name: str) -> FaultRecord:
        record = super().inject(name)  # waits for convergence, the spread back included
        self.returning.clear()
        self._keep_journals(record.started)
        return record

    def _keep_journals(self, since: float) -> None:
        """Append what each node's daemons logged since ``since`` to the run's journals (kept per fault:
        a node environment lost later, to an engine restart, keeps what came before)."""
        for host in NODE_HOSTS:
            try:
                text = self.nodes.journal(host, since=since)
            except Exception as exc:  # a node that is down has no journal to give
                text = f"-- journal of {host} unreadable: {exc!r}\n"
            with open(self.log_path.with_name(f"{self.log_path.stem}-{host}.journal"), "a") as handle:
                handle.write(f"-- fault {self.faults[-1].name}\n{text}")

    @property
    def nodes(self) -> Nodes:
        staging = self.cluster.staging
        assert isinstance(staging, Nodes), f"not a node environment: {staging!r}"
        return staging

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.fault_checks.append(f"{self.faults[-1].name}: {what}")
            self.log("violation", kind="fault_check", note=what)

    def _read_through(self, host: str) -> None:
        """Read Consul through ``host``'s agent (one the coming cut leaves in the majority).

        Waits for two monitor samples, so that none still reads through the previous one when the cut comes.
        """
        self.cluster.consul = ConsulClient(self.nodes.consul_addr(host), timeout=5)
        samples = self.samples
        wait_until(lambda: self.samples >= samples + 2, timeout=30, what="the monitor to sample")

    def _figure(self, **values: float) -> None:
        self.figures.setdefault(self.faults[-1].name, {}).update(values)

    # --- partitions of an app host ----------------------------------------------------------

    def _cut_off_app_host(self, host: str, cut: str) -> str:
        """Cut ``host`` off as ``cut`` says; what must hold while the majority has lost it."""
        others = [h for h in APP_HOSTS if h != host]
        was_leader = self.cluster.leader() == host
        self._read_through("host-3")
        kept = {c.id for c in self.containers(host=host)}
        # Spread again before each fault (`inject`): a total loss only if the host is the last one standing.
        self.faults[-1].total_loss = self.takes_every_replica(kept)
        started = time.monotonic()
        if cut == "isolate":
            self.nodes.isolate(host)
        else:  # one way: what host sends to every other node is dropped, what they send arrives
            self.nodes.cut_off(host)
        self.lost.add(host)
        try:
            # The majority's gossip must declare the host failed: that ends its session, and so its
            # lock. A cut that leaves it one node to talk to (host-4, before) never does (`Nodes.cut_off`).
            wait_until(
                lambda: self._declared_failed(host),
                timeout=CONVERGE_BOUND,
                what=f"the majority's gossip to declare {host} failed",
            )
            self._figure(declared_failed=time.monotonic() - started)
            stepped_down: list[float] = []  # when the cut-off leader's own gauge first read 0

            def majority_leads() -> bool:
                gauge = "operator_is_leader"
                if was_leader and not stepped_down and self.cluster.metric(host, gauge, host=host) == 0:
                    stepped_down.append(time.monotonic() - started)
                return self.cluster.leader() in others and self.leader_live()

            wait_until(majority_leads, timeout=CONVERGE_BOUND, what="a leader in the majority")
            new_leader = time.monotonic() - started
            # The old leader's own view: it gave up (its lease ran out), so it writes nothing more.
            if was_leader:
                wait_until(
                    lambda: self.cluster.metric(host, "operator_is_leader", host=host) == 0,
                    timeout=CONVERGE_BOUND,
                    what=f"{host} to stop leading",
                )
                self._figure(old_leader_stepped_down=(stepped_down or [time.monotonic() - started])[0])
            wait_until(
                lambda: all(self.service_converged(s, n) for s, n in self.desired.items()),
                timeout=CONVERGE_BOUND,
                what="replacements on the majority's side",
            )
            replaced = time.monotonic() - started
            # Static stability: nothing the cut-off host ran was stopped by the cut.
            still = {c.id for c in self.containers(host=host)}
            self._check(kept <= still, f"{len(kept - still)} of {host}'s containers stopped while cut off")
            self._figure(new_leader=new_leader if was_leader else 0.0, replaced=replaced)
            detail = (
                f"{host} ({'leader' if was_leader else 'not leading'}) {cut}: "
                f"{f'new leader {self.cluster.leader()} after {new_leader:.1f}s, ' if was_leader else ''}"
                f"replacements after {replaced:.1f}s, its {len(kept)} containers kept running"
            )
        except AssertionError as exc:
            self._check(False, str(exc))
            detail = f"{host} {cut}: {exc}"
        finally:
            self.nodes.heal()
            self.lost.discard(host)
            self.returning.add(host)
        return detail

    def _declared_failed(self, host: str) -> bool:
        """The node's serfHealth is critical in the catalog, as the majority's servers hold it."""
        return "serfHealth=critical" in self.cluster.consul.health_node(host).value

    def partition_leader(self) -> str:
        leader, _ = self._leader_and_follower()
        return self._cut_off_app_host(leader, "isolate")

    def partition_app_host(self) -> str:
        _, follower = self._leader_and_follower()
        return self._cut_off_app_host(follower, "isolate")

    def one_way(self) -> str:
        return self._cut_off_app_host(self._busiest_app_host(), "one way")

    def _busiest_app_host(self) -> str:
        """The app host that runs the most: a fault on an empty one would prove little."""
        return max(APP_HOSTS, key=lambda h: (len(self.containers(host=h)), self.rng.random()))

    # --- the load balancer ----------------------------------------------------------------------

    def partition_lb(self) -> str:
        """The LB's node loses Consul (its server in the minority); NGINX keeps the last good config."""
        self._read_through("host-1")
        before = self.nginx_servers("web")
        failures = len(self.loads["web"].failures)
        self.nodes.isolate("host-3", consul_only=True)
        try:
            # Let the LB's Consul notice it lost the majority, then change what runs:
            # a replica killed and replaced on its host (a new port), which the LB cannot see.
            wait_until(
                lambda: self._lb_consul_lost(),
                timeout=CONVERGE_BOUND,
                what="host-3's Consul to lose the leader",
            )
            victim = self.rng.choice(sorted(self.containers("web"), key=lambda c: c.name))
            victim.kill()
            wait_until(
                lambda: self.service_converged("web", self.desired["web"]),
                timeout=CONVERGE_BOUND,
                what="web's replacement, behind the LB's back",
            )
            hold(3.0)  # the fault's length beyond the replacement: NGINX serves through it
            self._check(self.nginx_servers("web") == before, "NGINX's config changed without Consul")
            served = [o for o in self.loads["web"].outcomes[-40:] if o.status == 200]
            self._check(len(served) > 0, "NGINX served nothing while its Consul was cut off")
        finally:
            self.nodes.heal()
        healed = time.monotonic()
        wait_until(
            lambda: (
                self.nginx_servers("web") == {f"{i.address}:{i.port}" for i in self.cluster.passing("web")}
            ),
            timeout=CONVERGE_BOUND,
            what="NGINX to catch up",
        )
        self._figure(caught_up=time.monotonic() - healed)
        failed = len(self.loads["web"].failures) - failures
        return f"host-3 cut from Consul; {victim.name} replaced meanwhile; {failed} web requests failed"

    def _lb_consul_lost(self) -> bool:
        try:
            ConsulClient(self.nodes.consul_addr("host-3"), timeout=2).kv_get(
                "operator/leader", consistent=True
            )
        except Exception:  # no leader on the minority's side: the read fails
            return True
        return False

    # --- systemd ---------------------------------------------------------------------------------

    def agent_crash(self) -> str:
        """kill -9 of the leader agent through systemd; systemd restarts it; a leader acts within 10 s."""
        leader, _ = self._leader_and_follower()
        self._read_through("host-3")
        restarts = int(
            self.nodes.exec(leader, "systemctl", "show", "-p", "NRestarts", "--value", "operator-agent")
        )
        self.nodes.exec(leader, "systemctl", "kill", "-s", "KILL", "operator-agent")
        killed = time.monotonic()
        placed = self._probe_placed("probe-crash")
        took = placed - killed
        self._figure(leader_acts=took)
        self._check(
            took <= AGENT_CRASH_BOUND,
            f"a probe placed {took:.1f}s after the kill (> {AGENT_CRASH_BOUND:.0f}s)",
        )
        after = int(
            self.nodes.exec(leader, "systemctl", "show", "-p", "NRestarts", "--value", "operator-agent")
        )
        self._check(
            after == restarts + 1, f"systemd restarted operator-agent {after - restarts} times, not once"
        )
        return f"operator-agent of {leader} killed, restarted by systemd; a probe placed {took:.1f}s later"

    def node_reboot(self) -> str:
        """`systemctl reboot` of an app host; the node comes back with its engine's containers."""
        host = self._busiest_app_host()
        self._read_through("host-3")
        kept = {c.id for c in self.containers(host=host)}
        self.faults[-1].total_loss = self.takes_every_replica(kept)
        self.lost.add(host)
        self.nodes.exec(host, "systemctl", "reboot", check=False)
        rebooted = time.monotonic()
        try:
            present: set[str] = set()

            def on_disk() -> None:
                # The engine's state on its volume as the engine finds it at boot (read at
                # once: the agent replaces the exited containers soon after).
                present.update(self.nodes.exec(host, "ls", "/var/lib/docker/containers").split())

            self.nodes.power_on(host, after_start=on_disk)
            booted = time.monotonic() - rebooted
            self._check(kept <= present, f"{len(kept - present)} containers gone after the reboot")
        finally:
            self.lost.discard(host)
            self.returning.add(host)
        self._figure(booted=booted)
        return f"{host} rebooted, back after {booted:.1f}s with its {len(kept)} containers"


def start_node_environment(name: str, subnet: str) -> Cluster:
    """The node environment, fresh; Consul read through the LB's node until a fault says otherwise."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    nodes = Nodes(name, subnet)
    nodes.run("down")
    nodes.run("up")
    nodes.set_agent_args(AGENT_ARGS)
    return Cluster(nodes, ConsulClient(nodes.consul_addr("host-3")), nodes.engines())
