"""The leader's writes: fenced, packed, isolated per service; and every host's work keys.

`FencedWriter` writes a pass's KV writes fenced with the session the pass
was decided under (`LeaderElection.fenced_write`), grouped per service and
packed into transactions within Consul's limits (`txn.pack_writes`); a
transaction Consul refuses is retried one service at a time, and a service
whose own writes are refused backs off alone (logged, counted in
``operator_leader_write_failures_total``): it never blocks the others.

`WorkKeys` keeps ``operator/work/<host>/`` (`core.work`) in step with the
placements written: what KV holds is read in full on the first pass of a
leader and every `WORK_RESYNC` seconds, and in between only the hosts whose
work changed are written, additions before removals, after the placements and
revisions of the pass (each in a transaction of its own only when they do not
fit the placements' last one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.interfaces import KVStore
from consul_operator.core.backoff import Backoff, backoff_after_failure
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.errors import (
    ConsulError,
    ConsulUnavailable,
    NotLeader,
    consul_trouble,
    refusal_reason,
)
from consul_operator.core.keys import Layout
from consul_operator.core.records import PlacementRecord, record_bound
from consul_operator.core.txn import Writes, pack_writes, send_groups
from consul_operator.core.work import EncodedWork, HostWork, WrittenWork, host_work, work_writes, written_work

log = structlog.get_logger()

WORK_RESYNC = 300.0
"""Seconds between two full reads of ``operator/work/`` by the leader (a safety net: a work key
deleted or changed by someone else is written again within this time)."""

# Sorts after every service name (DNS labels): the work keys go after the placements they follow.
_WORK_ADD, _WORK_REMOVE = "~work-1-additions", "~work-2-removals"
_REPORTS = "~reports"
"""Lost hosts' reports, deleted after their status records (sorted after every service's group)."""


class Fencing(Protocol):
    """What the writer needs of the election: a write fenced with a given session."""

    def fenced_write(self, writes: dict[str, bytes | None], session: str | None = None) -> None:
        """Write only while ``session`` holds the lock; `NotLeader` otherwise."""
        ...


class Election(Fencing, Protocol):
    """What the leader's pass needs of the election (`leader.LeaderElection`): where it stands."""

    @property
    def host(self) -> str:
        """This agent's host."""
        ...

    @property
    def is_leader(self) -> bool:
        """Whether we hold the lock, confirmed within the lease."""
        ...

    @property
    def session(self) -> str | None:
        """Our session id, for fenced writes."""
        ...


@dataclass(frozen=True, slots=True)
class Written:
    """What a write wrote: its keys, and the services Consul refused (each with its refusal)."""

    keys: tuple[str, ...] = ()
    refused: Mapping[str, ConsulError] = field(default_factory=dict)
    held: frozenset[str] = frozenset()
    """Services not sent: waiting for the back-off of an earlier refusal."""


@dataclass
class FencedWriter:
    """Fenced writes of the leader, per service, each refused service backing off alone."""

    election: Fencing
    layout: Layout
    # Per service whose writes Consul refused: the back-off before trying them again.
    backoffs: dict[str, Backoff] = field(default_factory=dict)

    def write(
        self,
        session: str,
        writes: Mapping[str, bytes | None],
        now: float,
        after: Writes | None = None,
        *,
        pass_writes: bool = True,
    ) -> Written:
        """Write ``writes`` fenced with ``session``; then ``after`` (the work keys: additions,
        then removals), packed behind them. Losing the lock or Consul ends the pass (raised).

        ``pass_writes``: ``writes`` are all of a pass's (a service without any has nothing
        left to back off); False for a write of work keys alone.
        """
        groups: dict[str, dict[str, bytes | None]] = {}
        for key, value in writes.items():
            group = _REPORTS if self.layout.report_of(key) is not None else self.layout.service_of(key) or ""
            groups.setdefault(group, {})[key] = value
        for service in [s for s in self.backoffs if pass_writes and s not in groups]:
            del self.backoffs[service]  # nothing left to write: nothing to back off
        for service in sorted(groups):
            backoff = self.backoffs.get(service)
            if backoff is not None and not backoff.ready(now):
                del groups[service]  # refused before: wait for its back-off
        groups.update(self._work_groups(after or {}))
        too_large = ConsulError(
            "too large (413): a record over its bound or Consul's limits, not sent", status=413
        )
        packing = pack_writes(groups, max_value=lambda key: record_bound(self.layout, key))
        sent = send_groups(packing, lambda w: self.transaction(session, w), too_large)
        for service in sent.groups:
            self.backoffs.pop(service, None)
        refused = {s: e for s, e in sent.refused.items() if s not in (_WORK_ADD, _WORK_REMOVE)}
        for service, exc in sorted(refused.items()):
            self._failed(service, exc, now)
        for group in (_WORK_ADD, _WORK_REMOVE):
            if group in sent.refused:
                log.warning("work keys not written", error=str(sent.refused[group])[:300])
        return Written(tuple(sent.keys), refused)

    def held(self, now: float) -> set[str]:
        """The services whose writes wait for their back-off now (not sent this pass)."""
        return {service for service, backoff in self.backoffs.items() if not backoff.ready(now)}

    def _work_groups(self, after: Writes) -> dict[str, dict[str, bytes | None]]:
        """The work keys as two groups that sort after every service: additions, then removals."""
        groups: dict[str, dict[str, bytes | None]] = {}
        for key, value in after.items():
            groups.setdefault(_WORK_ADD if value is not None else _WORK_REMOVE, {})[key] = value
        return groups

    def transaction(self, session: str, writes: Mapping[str, bytes | None]) -> ConsulError | None:
        """One fenced transaction: None once written, or the refusal of one service's writes."""
        try:
            self.election.fenced_write(dict(writes), session=session)
        except (NotLeader, ConsulUnavailable):
            raise
        except ConsulError as exc:
            if consul_trouble(exc):
                raise
            return exc
        return None

    def _failed(self, service: str, exc: ConsulError, now: float) -> None:
        """Count, log and back off a service whose writes Consul refused."""
        reason = refusal_reason(exc)
        error = str(exc)[:300]
        backoff = backoff_after_failure(self.backoffs.get(service, Backoff()), now, error)
        self.backoffs[service] = backoff
        metrics.leader_write_failures.labels(reason).inc()
        log.warning(
            "writes of one service refused; the others go on",
            service=service,
            reason=reason,
            status=exc.status,
            error=error,
            failures=backoff.failures,
            retry_in=round(backoff.retry_at - now, 3),
        )


@dataclass
class WorkKeys:
    """Every host's work key as KV holds it, kept by the leader between passes (`core.work`)."""

    layout: Layout
    written: dict[str, WrittenWork] | None = None
    """What KV holds, host -> session, digest, keys; None: read it in full first."""
    decided: dict[str, HostWork] = field(default_factory=dict)
    """Every host's work as last written: what an addition is measured against."""
    read_at: float = 0.0
    encoded: dict[str, EncodedWork] = field(default_factory=dict)
    """Per host, its entries as last encoded, each with its member: reused where equal (`work._encoded`)."""

    def writes(
        self,
        consul: KVStore,
        session: str,
        state: ClusterState,
        placements: Mapping[str, PlacementRecord],
        now: float,
    ) -> tuple[dict[str, bytes | None], Mapping[str, HostWork], dict[str, WrittenWork]]:
        """The work-key writes for ``placements`` (additions first), the work they write, and what
        KV holds once they are written; reads KV's work keys in full when due."""
        if self.written is None or now - self.read_at >= WORK_RESYNC:
            entries = consul.kv_list(self.layout.work_prefix, consistent=True).value
            self.written = written_work(self.layout, {e.key: e.value for e in entries})
            self.decided = {}  # compared by digest with what was read, not with what we last wrote
            self.read_at = now
        desired = host_work(placements, state.manifests, state.hosts)
        planned = work_writes(
            self.layout, desired, self.written, session, self.decided or None, state.hosts, self.encoded
        )
        # Kept whatever is written: each member carries the entry it encodes, and is only ever
        # reused for an equal one.
        self.encoded.update(planned.encoded)
        for host in [h for h in self.encoded if h not in desired]:
            del self.encoded[host]
        return {**planned.additions, **planned.removals}, desired, dict(planned.written)

    def wrote(self, desired: Mapping[str, HostWork], after: dict[str, WrittenWork], keys: set[str]) -> None:
        """The work keys written: remember them; a host not wholly written is read again next pass."""
        assert self.written is not None
        for host, work in after.items():
            if work.keys <= keys or self.written.get(host) == work:
                self.written[host], self.decided[host] = work, desired.get(host, {})
            else:
                self.written = None  # something not written: read KV in full next time
                return
        for host in [h for h in self.written if h not in after]:
            if not self.written[host].keys <= keys:
                self.written = None
                return
            del self.written[host]
            self.decided.pop(host, None)

    def held(self) -> bool:
        """Whether KV's work keys are known (not to be read in full first)."""
        return self.written is not None

    def forget(self) -> None:
        """No longer the leader: the next leadership starts with a full read."""
        self.written, self.decided, self.read_at = None, {}, 0.0
        self.encoded.clear()


def effective(
    decided: Mapping[str, PlacementRecord], before: Mapping[str, PlacementRecord], unwritten: set[str]
) -> dict[str, PlacementRecord]:
    """The placements KV holds after a pass: ``decided``, but ``before``'s for the services whose
    writes were not made (``unwritten``: refused, or waiting for their back-off)."""
    placements = {n: r for n, r in decided.items() if n not in unwritten}
    placements.update({n: before[n] for n in unwritten if n in before})
    return placements


def write_pass(
    writer: FencedWriter,
    work: WorkKeys,
    consul: KVStore,
    session: str,
    state: ClusterState,
    decided: Mapping[str, PlacementRecord],
    writes: Mapping[str, bytes | None],
    now: float,
) -> Written:
    """A pass's writes, fenced with ``session``, and the work keys that follow from them.

    The work keys go behind the placements, revisions and rollouts (in their
    last transaction when they fit), derived from the placements as they will
    be once written. Should Consul refuse a service's writes, the work keys
    are written again at once from what it holds (read in full: the rare path).
    """
    held = writer.held(now)
    placements = effective(decided, state.placements, held)
    after, desired, planned = work.writes(consul, session, state, placements, now)
    written = writer.write(session, writes, now, after=after)
    work.wrote(desired, planned, set(written.keys))
    if not written.refused:
        return Written(written.keys, written.refused, frozenset(held))
    work.written = None  # what was refused: read KV's work keys again, and write them right
    placements = effective(decided, state.placements, held | set(written.refused))
    after, desired, planned = work.writes(consul, session, state, placements, now)
    again = writer.write(session, {}, now, after=after, pass_writes=False)
    work.wrote(desired, planned, set(again.keys))
    return Written((*written.keys, *again.keys), written.refused, frozenset(held))
