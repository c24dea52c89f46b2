"""Leader election with a Consul session lock on ``operator/leader``.

The session is tied to two checks: the node's ``serfHealth`` (the host is
gone) and the agent's own TTL check from `presence.py` (the agent process is
gone or frozen). Either one going critical invalidates the session and
releases the lock; with a small lock-delay another agent takes over within
seconds, instead of Consul's default 15 s lock-delay plus up to 2x a session TTL.

A session must not outlive the process that made it unnoticed. Re-registering
the TTL check as passing (what a restarted agent does) restarts its timer, so
a process killed and restarted within the TTL (systemd's ``Restart=always``)
would keep its dead predecessor's session, and the lock it holds, valid for
good: nobody would lead again. Before it creates its own session an agent
therefore reaps every earlier session of its own (same node, same name, which
names the lock and the host): it releases the lock with it, which applies no
lock-delay, and destroys it.

Leadership is only a hint for *when* to schedule. Correctness comes from
fencing: every leader write is a transaction that first checks that this
session still holds the lock (`ConsulClient.fenced_write`), so an ex-leader
that was paused or cut off can never overwrite its successor's decisions.

**The lease.** A leader cut off from the Consul majority cannot learn that its
session ended: its reads hang (a minority server holds them up to Consul's
7 s RPC hold timeout, then fails them), and a blocking read of the lock
returns only after its wait. It went on saying it led (``operator_is_leader
1``) for 5-6 s after the majority's new leader took over (docs/chaos.md). So
a leader confirms the lock with a consistent read (which Consul answers only
with a quorum behind it) at least every quarter of its ``lease``, and counts
as leading only while its last confirmation is younger than the lease; a
watch (`watch_lease`) turns the gauge to 0 the moment it runs out. The lease
is shorter than the soonest a new leader can act: the majority declares the
cut host failed (gossip, about 2 s with deploy/consul's timers), its session
ends, and the lock-delay (1 s) runs before anyone else may take the lock. A
confirmation is dated from when its read was sent, never from its answer.

**The session's own TTL.** The two checks live on the agent's host: its
Consul agent runs them and tells the servers. A host that can still reach one
other node, but no server (a partial partition), stays alive in gossip, since
the node it reaches relays its probes, and its agent cannot tell the servers
that its checks failed; the session, and the lock with it, lived on, and no
one could lead until the cut healed (the node run's ``one_way``, while the
second LB host still heard the cut-off leader). So the session also has a TTL
of its own (`SESSION_TTL`, Consul's minimum), renewed on the servers every
third of it (`renew_session`): a leader that cannot reach them loses its
session within twice the TTL (Consul ends it that late), and another agent
leads. The lease has stopped it long before.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.interfaces import LeaderLock
from consul_operator.adapters.presence import ttl_check_id
from consul_operator.core.errors import ConsulError, NotLeader
from consul_operator.core.keys import Layout
from consul_operator.core.records import LeaderRecord

log = structlog.get_logger()

WATCH_WAIT = 10.0  # seconds a blocking read of the lock may be held (a follower's)
DEFAULT_LEASE = 2.0
"""Seconds a leader counts as leading after its last confirmation of the lock (--ttl less --lock-delay)."""
LEASE_CHECKS = 10
"""Looks of `watch_lease` per lease: the gauge drops within a tenth of the lease of its end."""
SESSION_TTL = 10.0
"""Seconds of the session's own TTL (Consul's minimum; it ends the session up to twice as late)."""
RENEWALS = 3
"""Renewals of the session per `SESSION_TTL`."""


class LeaderElection:
    """Takes part in the election; `is_leader` and `session` say where we stand."""

    def __init__(
        self,
        consul: LeaderLock,
        layout: Layout,
        *,
        host: str,
        node: str,
        lock_delay: float,
        lease: float = DEFAULT_LEASE,
        on_change: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.consul = consul
        self.lease = lease
        self._confirmed = -math.inf  # monotonic time the last confirming read was sent
        self.layout = layout
        self.host = host
        self.node = node
        self.lock_delay = lock_delay
        self.on_change = on_change
        self._session: str | None = None
        self._leader = False
        self._lock = threading.Lock()
        # Held around every acquire and by `resign`: once resigned, never acquire again.
        self._acquire_lock = threading.Lock()
        self._resigned = False
        metrics.is_leader.labels(host).set(0)

    @property
    def is_leader(self) -> bool:
        """Whether we hold the lock: seen held by our session, confirmed within the lease."""
        return self._leader and self._lease_valid()

    def _lease_valid(self) -> bool:
        return time.monotonic() - self._confirmed < self.lease

    def _confirm(self, asked: float) -> None:
        """The lock was seen held by our session in a read sent at monotonic ``asked``.

        A lease that ran out since the last confirmation was a step down even when
        `watch_lease` had not looked yet: `is_leader` said False meanwhile, and a pass
        that ran then did nothing and waits for a wake-up. So it is said and counted,
        and leading again wakes the scheduler (``on_change``), as after any step down.
        """
        self._step_down_if_lapsed()
        self._confirmed = max(self._confirmed, asked)
        self._set_leader(self._lease_valid())

    def watch_lease(self, stop: threading.Event) -> None:
        """Until ``stop``: step down (the gauge to 0) as soon as the lease ran out unconfirmed."""
        while not stop.wait(self.lease / LEASE_CHECKS):
            self._step_down_if_lapsed()

    def _step_down_if_lapsed(self) -> None:
        """A leader whose lease ran out unconfirmed steps down, and says why."""
        if self._leader and not self._lease_valid():
            log.warning(
                "leader lease ran out: not confirmed by Consul",
                host=self.host,
                lease=self.lease,
                since=round(time.monotonic() - self._confirmed, 2),
            )
            self._set_leader(False)

    def renew_session(self, stop: threading.Event, every: float = SESSION_TTL / RENEWALS) -> None:
        """Until ``stop``: renew our session on the servers ``every`` s (a `RENEWALS`-th of its TTL).

        A session Consul no longer knows is left to the election (`_campaign` makes a new
        one); a failed renewal is said once, and said again when one succeeds.
        """
        failing = False
        while not stop.wait(every):
            session = self._session
            if session is None:
                continue
            try:
                if not self.consul.session_renew(session):
                    log.info("session ended before its renewal", host=self.host, session=session)
            except ConsulError as exc:
                if not failing:
                    log.warning("session not renewed; trying again", host=self.host, error=str(exc)[:300])
                failing = True
                continue
            if failing:
                log.info("session renewed again", host=self.host)
            failing = False

    @property
    def session(self) -> str | None:
        """Our session id, for fenced writes."""
        return self._session

    def fenced_write(self, writes: dict[str, bytes | None], session: str | None = None) -> None:
        """Write keys only if ``session`` still holds the lock; on `NotLeader`, step down at once.

        ``session`` is the one the caller decided under (the scheduler takes it
        at the start of its pass): a pass decided under a session that has since
        been replaced must not be written with the new one. Without it, the
        session held now. A `NotLeader` of a session that is no longer ours
        says nothing about the current one, which keeps its leadership.
        """
        session = self._session if session is None else session
        if not self.is_leader or session is None:
            raise NotLeader(f"{self.host} is not the leader")
        try:
            self.consul.fenced_write(self.layout.leader_key, session, writes)
        except NotLeader:
            if session == self._session:
                self._set_leader(False)
            raise

    def run(self, stop: threading.Event) -> None:
        """Campaign and watch the lock until ``stop``; survives Consul outages."""
        while not stop.is_set() and not self._resigned:
            try:
                self._campaign(stop)
            except ConsulError as exc:
                # We cannot tell whether we still hold the lock; fencing keeps
                # writes safe, but stop scheduling until we know again.
                self._set_leader(False)
                log.warning("leader election: Consul error", host=self.host, error=str(exc))
                stop.wait(1.0)

    @property
    def session_name(self) -> str:
        """The name of our sessions: the lock and the host, so that a restart finds its predecessor's."""
        return f"operator leader election of {self.layout.leader_key} ({self.host})"

    def resign(self) -> None:
        """Give the lock up at once (on SIGTERM): release first, so no lock-delay applies.

        Under the acquire lock, and for good: the election thread may be just
        about to acquire again, and must not once we resigned.
        """
        with self._acquire_lock:
            self._resigned = True
            session = self._session
            self._session = None
        self._set_leader(False)
        if session is None:
            return
        try:
            self.consul.kv_release(self.layout.leader_key, session)
            self.consul.session_destroy(session)
        except ConsulError as exc:
            log.warning("could not resign cleanly", host=self.host, error=str(exc))

    # --- internals ---------------------------------------------------------------

    def _campaign(self, stop: threading.Event) -> None:
        session = self._ensure_session()
        if session is None:
            return
        index = 0
        holds = False  # our session held the lock at the last read
        while not stop.is_set() and not self._resigned:
            # While our session holds the lock, a read returns at least every quarter of the lease
            # to confirm it, also after a lapse (a slow Consul): it leads again at the next one.
            wait = self.lease / 4 if holds else WATCH_WAIT
            # The holder confirms its lease with consistent reads. A follower only waits for the
            # lock to come free, from any server's copy: a consistent read goes to Consul's Raft
            # leader, and when that leader is the host cut off (one way, its answers dropped), the
            # follower's read hung for its whole wait and the new leader came 16.7 s after the cut.
            consistent = holds
            asked = time.monotonic()
            result = self.consul.kv_get(
                self.layout.leader_key, index=index, wait=wait, consistent=consistent, stale=not consistent
            )
            index = result.index if result.index >= index else 0
            holder = result.value.session if result.value else None
            holds = holder == session
            if holds:
                if consistent:
                    self._confirm(asked)
                continue  # a stale copy says ours: the next read (consistent) confirms it or not
            self._set_leader(False)
            if holder is None:
                if self.consul.session_info(session) is None:
                    log.info("session invalidated", host=self.host)
                    self._session = None
                    return
                asked = time.monotonic()
                if self._acquire(session):
                    self._confirm(asked)
                    continue
                # Refused while the lock-delay of the previous holder runs: try again shortly.
                stop.wait(max(0.2, min(self.lock_delay, 1.0)))
                index = 0

    def _acquire(self, session: str) -> bool:
        """Try to take the lock with ``session``, unless we resigned meanwhile."""
        with self._acquire_lock:
            if self._resigned:
                return False
            value = LeaderRecord(self.host, time.time()).to_json()
            return self.consul.kv_acquire(self.layout.leader_key, value, session)

    def _ensure_session(self) -> str | None:
        """Our valid session: the current one, or a new one once every predecessor is reaped."""
        if self._session is not None and self.consul.session_info(self._session) is not None:
            return self._session
        self._reap_predecessors()
        with self._acquire_lock:
            if self._resigned:
                return None
            self._session = self.consul.session_create(
                self.session_name,
                checks=["serfHealth", ttl_check_id(self.host)],
                lock_delay=self.lock_delay,
                ttl=SESSION_TTL,
            )
        log.info("session created", host=self.host, session=self._session)
        return self._session

    def _reap_predecessors(self) -> None:
        """Release and destroy the sessions an earlier process of this agent left on our node.

        Only this agent makes sessions of this name on this node, and it makes
        them one at a time: any other one belongs to a process that is gone
        (or to our own invalidated session, which destroying changes nothing).
        """
        for info in self.consul.node_sessions(self.node):
            sid = str(info.get("ID", ""))
            if info.get("Name") != self.session_name or not sid:
                continue
            # Release first: a released lock is free at once, a destroyed
            # session's lock only after the lock-delay. A release by a session
            # that does not hold the lock changes nothing.
            released = self.consul.kv_release(self.layout.leader_key, sid)
            self.consul.session_destroy(sid)
            metrics.orphan_sessions_reaped.inc()
            log.warning(
                "reaped the session of an earlier run of this agent",
                host=self.host,
                session=sid,
                held_the_lock=released,
            )

    def _set_leader(self, leader: bool) -> None:
        with self._lock:
            if leader == self._leader:
                return
            self._leader = leader
        metrics.is_leader.labels(self.host).set(1 if leader else 0)
        metrics.leader_changes.inc()
        log.info("leadership changed", host=self.host, leader=leader)
        self.on_change(leader)
