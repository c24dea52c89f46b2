"""The leader's copy of ``operator/status/``, brought up to date through the agents' reports (issue 31).

At 1,000 services on 10 hosts the status prefix is 10,000 records, 4 MB;
read whole whenever one record moved, it was most of the leader's pass
around each change (0.14 s on an idle machine, up to 0.4 s beside ten
agents: docs/benchmarks.md). Every agent that advertises it
(`presence.META_WRITES_REPORTS`) writes ``operator/reports/<host>`` after its
records (`core/reports.py`), so the leader reads the reports (small: a digest
per record) and then only the records whose digest moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import KVEntry
from consul_operator.adapters.interfaces import KVStore
from consul_operator.adapters.kv_state import MIRROR_RESYNC, TreeMirror
from consul_operator.core.keys import Layout
from consul_operator.core.reports import StatusReport, record_digest, records_to_read

READ_ONE_BY_ONE = 256
"""The most records a read fetches by key (four read-only transactions of 64); past it, the prefix
is read whole in one request. During a burst every agent moves hundreds of records between two
passes, and a hundred transactions one after the other took a converging pass from 3 to 6 s in the
scale cell (10 x 1,000 x 10), where one whole read takes 0.15-0.4 s."""


class StatusMirror:
    """``operator/status/``'s entries as of the last read, read again only where a report moved.

    A read lists the reports first (`kv_state.TreeMirror`: nothing more when
    none moved, else only the moved ones), then, for each host whose report moved since the last read,
    reads the records whose digest differs from the digest of the record
    held (`reports.records_to_read`). An agent writes its report after its
    records, so a record read after its report is at least as new as the
    report says; a record written later comes with a later report, which the
    next read applies. The leader deletes a lost host's records before its
    report (`leader_writes`).

    A host with records held and no readable report (an admin deleted it;
    the leader's clean-up of a lost host went part of the way) has its held
    records checked by modify index (`KVStore.kv_stale`) on every read: one
    request, and only while there is such a host (more than `READ_ONE_BY_ONE`
    such records: the prefix is read whole instead). What such a host writes
    under a new key is seen with its next report (its agent writes it again
    within `host_agent.REPORT_CHECK_EVERY` checks), or at the resync.

    Read whole: on the first read, every ``resync`` seconds (the safety net of
    every mirror here), when a host's report says it has too many records
    to list (`StatusReport.whole`), and when more than `READ_ONE_BY_ONE`
    records moved (a burst: one request instead of many). The caller uses the mirror only while
    every live agent writes reports (`presence.report_writers`), and calls
    `forget` otherwise: an agent from before reports writes records that no
    report names.
    """

    def __init__(
        self,
        layout: Layout,
        resync: float = MIRROR_RESYNC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = layout
        self.resync, self.clock = resync, clock
        # Never read whole once held: a report moves alone (its host's change), and at 1,000
        # services on 10 hosts the prefix is 230 KB, where checking ten modify indexes and reading
        # the moved report is two small requests.
        self.reports = TreeMirror(layout.reports_prefix, whole=0)
        self.entries: dict[str, KVEntry] = {}
        self.digests: dict[str, dict[str, str]] = {}  # host -> service -> digest of the entry held
        self.applied: dict[str, int] = {}  # host -> modify index of the report applied last
        self.listing: list[KVEntry] | None = None  # the entries, sorted; None: the next read is whole
        self._parsed: dict[str, tuple[int, StatusReport | None]] = {}  # each host's report as last read
        self.read_at = 0.0
        self.reads = {"whole": 0, "reported": 0, "unmoved": 0}  # for tests and the bench
        self.records_read = 0  # records read one by one since the mirror began (tests, the bench)

    def forget(self) -> None:
        """Drop what is held: the next read is whole."""
        self.listing = None

    def read(self, consul: KVStore, *, consistent: bool = True) -> list[KVEntry]:
        """Every entry under ``operator/status/`` now, sorted by key (the caller must not change it)."""
        reports = self._reports(consul, consistent)
        if self.listing is None or self.clock() - self.read_at >= self.resync:
            return self._whole(consul, reports, consistent)
        moved = {h: r for h, r in reports.items() if self.applied.get(h) != r[0]}
        if any(report is not None and report.whole for _, report in moved.values()):
            return self._whole(consul, reports, consistent)
        keys: set[str] = set()
        for host, (_, report) in moved.items():
            if report is not None:
                held = self.digests.get(host, {})
                keys.update(self.layout.status_key(s, host) for s in records_to_read(report.records, held))
        silent = {h for h in self.digests if reports.get(h, (0, None))[1] is None}
        if silent:
            known = {
                key: entry.modify_index
                for key, entry in self.entries.items()
                if (of := self.layout.status_of(key)) is not None and of[1] in silent
            }
            if len(known) > READ_ONE_BY_ONE:  # every report deleted, say: one read, not 150 checks
                return self._whole(consul, reports, consistent)
            keys.update(consul.kv_stale(known, consistent=consistent) if known else ())
        if len(keys) > READ_ONE_BY_ONE:
            return self._whole(consul, reports, consistent)
        if not keys:
            self.applied = {h: index for h, (index, _) in reports.items()}
            self.reads["unmoved"] += 1
            metrics.kv_prefix_reads.labels(self.layout.status_prefix, "unmoved").inc()
            return self.listing
        found = {e.key: e for e in consul.kv_get_many(sorted(keys), consistent=consistent)}
        self.records_read += len(keys)
        for key in keys:
            self._hold(key, found.get(key))
        # Only now: a read that failed above leaves these reports to the next read.
        self.applied = {h: index for h, (index, _) in reports.items()}
        self.listing = sorted(self.entries.values(), key=lambda e: e.key)
        self.reads["reported"] += 1
        metrics.kv_prefix_reads.labels(self.layout.status_prefix, "reported").inc()
        return self.listing

    def _reports(self, consul: KVStore, consistent: bool) -> dict[str, tuple[int, StatusReport | None]]:
        """Each host's report: its modify index and itself (None: unreadable)."""
        reports: dict[str, tuple[int, StatusReport | None]] = {}
        for entry in self.reports.read(consul, consistent=consistent):
            host = self.layout.report_of(entry.key)
            if host is None:
                continue
            kept = self._parsed.get(host)
            if kept is not None and kept[0] == entry.modify_index and entry.modify_index:
                reports[host] = kept  # parsed when it last moved (a thousand digests a host)
                continue
            try:
                reports[host] = (entry.modify_index, StatusReport.from_json(entry.value, host=host))
            except ValueError:
                reports[host] = (entry.modify_index, None)
        self._parsed = reports
        return reports

    def _whole(
        self, consul: KVStore, reports: Mapping[str, tuple[int, StatusReport | None]], consistent: bool
    ) -> list[KVEntry]:
        """Read every record (after the reports: each is at least as new as its report)."""
        tree = consul.kv_list(self.layout.status_prefix, consistent=consistent).value
        self.entries, self.digests = {}, {}
        for entry in tree:
            self._hold(entry.key, entry)
        self.applied = {h: index for h, (index, _) in reports.items()}
        self.listing = sorted(tree, key=lambda e: e.key)
        self.read_at = self.clock()
        self.reads["whole"] += 1
        metrics.kv_prefix_reads.labels(self.layout.status_prefix, "whole").inc()
        return self.listing

    def _hold(self, key: str, entry: KVEntry | None) -> None:
        """Keep ``entry`` as the record at ``key`` (None: there is none)."""
        of = self.layout.status_of(key)
        if entry is None:
            self.entries.pop(key, None)
            held = self.digests.get(of[1]) if of is not None else None
            if of is not None and held is not None:
                held.pop(of[0], None)
                if not held:
                    del self.digests[of[1]]
            return
        self.entries[key] = entry
        if of is not None:
            self.digests.setdefault(of[1], {})[of[0]] = record_digest(entry.value)
