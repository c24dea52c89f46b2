"""The host loop: read a `HostState` once, decide purely (`host_pass.decide_host`), act, write the status.

Every pass reads what it decides over: this host's work key and the
revisions it runs (again only after a watch on it fired: `host_reads.KVChanged`;
for upgrades only, every manifest and placement instead), the
containers with our labels, what the `Executor` has in flight and how the
actions it finished ended, our registrations, and this host's status records
as KV holds them. `decide_host` turns that and the agent's `HostMemory` into
a `HostPlan`; the pass logs and records its events, hands its actions to the
executor, writes its status changes, and exports its metrics. A pass that
cannot read Consul raises before it decides anything, so a Consul outage
never starts or stops a container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.adapters.host_reads import (
    HostKVReader,
    HostReader,
    KVChanged,
    OwnStatuses,
    WorkKVReader,
)
from consul_operator.adapters.interfaces import Catalog, Containers, KVStore
from consul_operator.core.errors import ConsulError, refusal_reason
from consul_operator.core.host_pass import (
    HostMemory,
    HostPlan,
    HostSettings,
    HostState,
    after_writes,
    decide_host,
    status_services,
    written_after,
)
from consul_operator.core.keys import Layout
from consul_operator.core.model import ContainerInfo, InFlight, Now, Outcome
from consul_operator.core.records import record_bound
from consul_operator.core.reports import MAX_REPORT_BYTES, DigestMemo, StatusReport
from consul_operator.daemons.executor import Executor
from consul_operator.daemons.loop import PassResult

log = structlog.get_logger()

STATUS_CHECK_EVERY = 2.0
"""Seconds between two looks at this host's status records in KV (`HostAgent.status_drifted`)."""
REPORT_CHECK_EVERY = 15
"""Looks at the status records between two looks at this host's report (30 s): a report deleted
alone is written again within it, where it waited for the next change of a record before."""


def check_status(agent: HostAgent, wake: Callable[[], None], stop: threading.Event) -> None:
    """Every `STATUS_CHECK_EVERY` seconds until ``stop``: wake a host pass when KV lost or changed
    this host's status records (`HostAgent.status_drifted`); a failed look is logged and retried."""
    failing = False
    while not stop.wait(STATUS_CHECK_EVERY):
        try:
            drifted = agent.status_drifted()
        except ConsulError as exc:
            if not failing:
                log.warning("cannot look at this host's status records", error=str(exc))
            failing = True
            continue
        except Exception:
            log.exception("looking at this host's status records crashed")
            continue
        failing = False
        if drifted:
            log.info("status records or report differ from what this host wrote; writing them again")
            wake()


_REPORT = "~report"
"""This host's report among the groups of a pass's writes: sorts after every service (DNS labels)."""


@dataclass
class HostAgent:
    """One host's reconcile pass: read -> `decide_host` -> act, write, record, export.

    ``kv_changed``: when given, KV is read again only after it fired (or
    `host_reads.KV_MAX_AGE`); None reads it on every pass. ``reads_work``: read
    this host's work keys (`host_reads.WorkKVReader`); False, every manifest and
    placement as agents before work keys did (for rolling upgrades only).
    """

    consul: KVStore
    layout: Layout
    host: str
    docker: Containers
    catalog: Catalog
    executor: Executor
    # Two clocks: ``wall`` (Unix seconds) only to compare with Docker's times and
    # to stamp status records; ``mono`` for every deadline this process sets.
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    kv_changed: KVChanged | None = None
    allowed_caps: frozenset[str] = frozenset()  # --allow-cap: what a manifest's cap_add may name here
    allowed_host_paths: tuple[str, ...] = ()  # --allow-host-path: what a manifest's volumes may mount here
    # The Consul node our replicas are registered on (the local agent's), named
    # in every status record so that a registration elsewhere is not ours (ownership.py).
    node: str = ""
    memory: HostMemory = field(default_factory=HostMemory)  # read by `status_drifted` too: replaced whole
    reads_work: bool = True
    writes_reports: bool = True  # False: as agents before reports (`--read-placements` says both)

    def __post_init__(self) -> None:
        reader = WorkKVReader if self.reads_work else HostKVReader
        self._kv: HostReader = reader(self.consul, self.layout, self.host, self.kv_changed, self.mono)
        # This host's status records as KV holds them, read again only when the prefix moved: one
        # for the pass, one for the check thread (`status_drifted`).
        self._statuses = OwnStatuses(self.consul, self.layout, self.host)
        self._checked = OwnStatuses(self.consul, self.layout, self.host)
        self._outcomes: list[Outcome] = []  # taken from the executor, not yet decided on
        self._restored = False  # whether a pass has read what an earlier run left in KV
        self._digests = DigestMemo()  # this host's records' digests, for its report
        self._reported: StatusReport | None = None  # the report last written (None: none yet)
        # Set by the status check when KV may no longer hold that report: the next pass writes it.
        self._doubted = threading.Event()
        self._checks = 0  # looks by the status check, every REPORT_CHECK_EVERY-th at the report too

    @property
    def settings(self) -> HostSettings:
        """What `decide_host` is told about this host."""
        return HostSettings(self.host, self.node, self.allowed_caps, self.allowed_host_paths)

    def reconcile(self) -> PassResult:
        """One pass: read, decide, act, report."""
        if self._doubted.is_set():  # before the read: a check after it is for the next pass
            self._doubted.clear()
            self._reported = None
        state = self._read()
        now = Now(self.mono(), self.wall())
        plan = decide_host(state, self.memory, now, self.settings)
        self.memory = plan.memory
        self._outcomes.clear()
        for line in plan.logs:
            getattr(log, line.level)(line.message, **line.fields)
        for event in plan.events:
            event_log.record(event.service, event.reason, event.message)
        for action in plan.actions:
            self.executor.submit(action)
        refused = self._write(plan)
        self.memory, wake_at = after_writes(plan, refused, now.mono)
        if self.writes_reports:
            self._report()
        self._export(plan)
        return PassResult(requeue_after=None if wake_at is None else max(0.0, wake_at - now.mono))

    def _read(self) -> HostState:
        """Everything the pass decides over, read once (a failed read raises: nothing is decided)."""
        manifests, placements, revisions = self._kv.read()
        containers, inflight = self._observe()
        self._kv.settle({c.service for c in containers})
        registrations = self.catalog.registrations()  # after the snapshot, as `_observe` says
        services = status_services(self.settings, manifests, placements, containers, self.memory)
        # On the first pass, all of them: what an earlier run of this agent left there.
        wanted = services if self._restored else None
        statuses = self._statuses.read(wanted)
        self._restored = True
        return HostState(
            manifests,
            placements,
            revisions,
            tuple(containers),
            tuple(registrations),
            inflight,
            tuple(self._outcomes),
            statuses,
        )

    def _observe(self) -> tuple[list[ContainerInfo], InFlight]:
        """What is in flight and how finished actions ended, then our containers: each replica counted once.

        The snapshot comes first, under the executor's lock, with the outcomes
        of the actions no longer in it; everything else is read after it,
        without the lock (a listing takes tens of milliseconds, and longer
        while the engine is busy with a burst; every finishing action needs the
        lock). An action in flight at the snapshot stays busy for this pass
        even if it finished since: a start's container, if already listed, is
        counted as the pending start it was (matched by its name, chosen
        before the start); a drained, removed or registered thing is left
        alone, as it was being handled. Only the pass itself submits actions,
        so nothing new starts meanwhile. The one miss, a start that failed
        since, is made up by the pass its end wakes. Outcomes are kept until a
        pass has decided on them (a read that fails after this loses none).
        """
        with self.executor.lock:
            inflight = self.executor.snapshot()
            starting = self.executor.starting_names()
            self._outcomes.extend(self.executor.take_outcomes())
        containers = self.docker.list_containers(starting)
        started = frozenset(c.id for c in containers if c.name in starting)
        return containers, dataclasses.replace(inflight, busy_containers=inflight.busy_containers | started)

    def _write(self, plan: HostPlan) -> set[str]:
        """Write the plan's status changes; the services whose record Consul refused.

        Every change of a pass goes in as few transactions as fit Consul's
        limits (`txn.pack_writes`), not one write each: an agent starting its
        share of 1,000 services had written a hundred keys one by one, a Raft
        commit each (docs/benchmarks.md, *Scale*). Each transaction goes on its
        own (`KVStore.write_records`): a record Consul refuses (413, an ACL) is
        logged, counted in ``operator_kv_write_failures_total`` and tried again
        soon (`after_writes`), and every other is written.

        This host's report, as it will be once every write lands, goes with them, in the last
        transaction (its group sorts after every service): one Raft commit, and a reader sees the
        records and their report at once. Where a write is refused, `_report` writes the report
        again as it really is.
        """
        groups: dict[str, dict[str, bytes | None]] = {
            service: {self.layout.status_key(service, self.host): None if r is None else r.to_json()}
            for service, r in plan.status_writes.items()
        }
        if not groups:
            return set()
        hoped: StatusReport | None = None
        if self.writes_reports:
            hoped = self._digests.report(self.host, written_after(plan))
            if hoped != self._reported:
                groups[_REPORT] = {self.layout.report_key(self.host): hoped.to_json()}
        sent = self.consul.write_records(groups, max_value=lambda key: record_bound(self.layout, key))
        if _REPORT in groups:
            self._reported = None if _REPORT in sent.refused else hoped
        for service, exc in sorted(sent.refused.items()):
            if service == _REPORT:
                continue  # `_report` writes it again after this pass's writes
            reason = refusal_reason(exc)
            metrics.kv_write_failures.labels("status", reason).inc()
            log.warning(
                "status record not written; the others were",
                service=service,
                reason=reason,
                status=exc.status,
                error=str(exc)[:300],
            )
        return set(sent.refused) - {_REPORT}

    def _report(self) -> None:
        """Write this host's report (`core/reports.py`) when its records' digests moved and the
        report that went with them (`_write`) is not theirs: after the records, so that a reader
        that sees the report reads records at least as new.

        Compared with the report last written, not with KV: a report deleted or lost is written
        again once the status check finds it so (every `REPORT_CHECK_EVERY`-th look, or when it
        finds the records changed by someone else), or with the next change of a record; meanwhile
        the leader checks this host's records by their modify indexes (`status_mirror.StatusMirror`).
        A refusal (an ACL without ``operator/reports/``) is logged and counted, and the next pass
        tries again: the host goes on (the leader then sees this host's new records at its resync only).
        """
        report = self._digests.report(self.host, self.memory.written)
        if report == self._reported:
            return
        key = self.layout.report_key(self.host)
        sent = self.consul.write_records({_REPORT: {key: report.to_json()}}, max_value=MAX_REPORT_BYTES)
        exc = sent.refused.get(_REPORT)
        if exc is None:
            self._reported = report
            return
        self._reported = None
        reason = refusal_reason(exc)
        metrics.kv_write_failures.labels("report", reason).inc()
        log.warning("this host's report not written", reason=reason, status=exc.status, error=str(exc)[:300])

    def _export(self, plan: HostPlan) -> None:
        """The plan's figures of each service on this host; the gauges of services gone from it go."""
        for service, figures in plan.gauges.items():
            metrics.running_replicas.labels(service, self.host).set(figures.running)
            metrics.host_healthy_replicas.labels(service, self.host).set(figures.healthy)
            metrics.consecutive_failures.labels(service, self.host).set(figures.failures)
        for service in plan.dropped_gauges:
            for gauge in metrics.HOST_SERVICE_GAUGES:
                with contextlib.suppress(KeyError):  # never set
                    gauge.remove(service, self.host)

    def status_drifted(self) -> bool:
        """Whether KV holds other status records of this host than the last pass left there.

        Read by a background check (`STATUS_CHECK_EVERY`), which wakes a pass when
        it is so: a deletion of ``operator/status/`` changes no container, and no
        other watch of an agent would see it.
        """
        remembered = dict(self.memory.written)
        self._checks += 1
        if self.writes_reports and self._checks % REPORT_CHECK_EVERY == 0 and self._report_drifted():
            self._doubted.set()  # the next pass writes the report whatever it remembers writing
            return True
        if not remembered:
            return False
        # Read only when the status prefix moved since the last look (`OwnStatuses`): reading the
        # records is one transaction per 64, at 1,000 services 16 requests every check, every host.
        held = self._checked.read(set(remembered))
        drifted = any(not record.same_report(held.get(s)) for s, record in remembered.items())
        if drifted:
            # Someone else wrote or deleted our records (`kv delete -recurse operator/`, a restore):
            # the report may have gone with them.
            self._doubted.set()
        return drifted

    def _report_drifted(self) -> bool:
        """Whether KV's report of this host is not the one this agent last wrote."""
        reported = self._reported
        if reported is None:
            return False  # the next pass writes it anyway
        entry = self.consul.kv_get(self.layout.report_key(self.host)).value
        return entry is None or entry.value != reported.to_json()
