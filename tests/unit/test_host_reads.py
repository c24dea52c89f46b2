"""Consul traffic at scale: KV read again only after a change, fewer status writes, leader-only watches."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import Indexed, KVEntry
from consul_operator.adapters.event_log import EventRecorder
from consul_operator.adapters.host_reads import KV_MAX_AGE, KVChanged
from consul_operator.adapters.kv_state import WHILE_IDLE, watch
from consul_operator.core.desired_state import Manifest
from consul_operator.core.events import STARTED
from consul_operator.core.keys import Layout
from consul_operator.core.records import Hold, PlacementRecord, StatusRecord, frozen_map
from consul_operator.core.reports import report_of
from consul_operator.daemons.executor import Executor
from consul_operator.daemons.host_agent import REPORT_CHECK_EVERY, HostAgent
from tests.unit.test_executor import HOST, FakeCatalog, FakeConsul, FakeDocker, running


@dataclass
class CountingConsul(FakeConsul):
    """`FakeConsul` that counts prefix reads and transactions."""

    lists: list[str] = field(default_factory=list)
    txns: list[int] = field(default_factory=list)

    def kv_list(self, prefix: str, **kw: object) -> Indexed[list[KVEntry]]:
        self.lists.append(prefix)
        return super().kv_list(prefix, **kw)

    def kv_keys(self, prefix: str, *, separator: str | None = None, **kw: object) -> Indexed[list[str]]:
        self.lists.append(prefix)  # the manifests are read through their keys (`TreeMirror`)
        return super().kv_keys(prefix, separator=separator, **kw)

    def kv_txn(self, writes: Mapping[str, bytes | None]) -> None:
        self.txns.append(len(writes))
        super().kv_txn(writes)


def kv_with(services: int) -> CountingConsul:
    """``services`` manifests, each with one replica placed on this host."""
    layout, consul = Layout(), CountingConsul()
    for i in range(services):
        name = f"s{i:03d}"
        manifest = Manifest(name=name, image="hello:local", replicas=1)
        consul.kv[layout.service_key(name)] = f"name: {name}\nimage: hello:local\nreplicas: 1\n".encode()
        record = PlacementRecord(name, manifest.spec_hash(), frozen_map({HOST: 1}))
        consul.kv[layout.placement_key(name)] = record.to_json()
    return consul


def host_agent(
    consul: CountingConsul, docker: FakeDocker, clock: list[float], kv_changed: KVChanged | None
) -> HostAgent:
    catalog = FakeCatalog()
    executor = Executor(docker, catalog, on_done=lambda: None)
    # The reader of agents before work keys (--read-placements): what these tests count is its reads.
    return HostAgent(
        consul,
        Layout(),
        HOST,
        docker,
        catalog,
        executor,
        mono=lambda: clock[0],
        kv_changed=kv_changed,
        reads_work=False,
    )


def manifest_reads(consul: CountingConsul) -> int:
    return consul.lists.count(Layout().services_prefix)


@pytest.mark.parametrize(
    ("fired", "aged", "reads"),
    [
        pytest.param(False, 0.0, 1, id="nothing-changed-reuses-the-read"),
        pytest.param(True, 0.0, 2, id="a-watch-fired-reads-again"),
        pytest.param(False, KV_MAX_AGE, 2, id="an-old-read-is-read-again"),
    ],
)
def test_a_pass_reads_kv_again_only_after_a_change(fired: bool, aged: float, reads: int) -> None:
    """A pass woken by its own actions reuses its last read of KV; a watch's change or its age reads anew."""
    consul, clock, changed = kv_with(3), [100.0], KVChanged()
    agent = host_agent(consul, FakeDocker(), clock, changed)
    agent.reconcile()
    if fired:
        changed.fire()
    clock[0] += aged
    agent.reconcile()
    assert manifest_reads(consul) == reads


def test_without_a_change_signal_every_pass_reads_kv() -> None:
    """An agent not wired with `KVChanged` (the tests' loops) reads KV on every pass, as before."""
    consul = kv_with(1)
    agent = host_agent(consul, FakeDocker(), [0.0], None)
    agent.reconcile()
    agent.reconcile()
    assert manifest_reads(consul) == 2


def test_a_failed_read_is_tried_again_on_the_next_pass() -> None:
    """A pass whose read failed leaves the change pending: the next pass reads, not the stale copy."""

    class Failing(CountingConsul):
        fail = False

        def kv_list(self, prefix: str, **kw: object) -> Indexed[list[KVEntry]]:
            if self.fail:
                raise RuntimeError("Consul away")
            return super().kv_list(prefix, **kw)

    consul, changed = Failing(), KVChanged()
    consul.kv.update(kv_with(1).kv)
    agent = host_agent(consul, FakeDocker(), [0.0], changed)
    agent.reconcile()
    changed.fire()
    consul.fail = True
    with pytest.raises(RuntimeError):
        agent.reconcile()
    consul.fail = False
    agent.reconcile()
    assert manifest_reads(consul) == 2


@pytest.mark.parametrize(
    ("services", "transactions"),
    [
        pytest.param(1, [2], id="one-change-and-the-report-one-transaction"),
        pytest.param(63, [63, 1], id="63-changes-one-transaction-the-report-after"),
        pytest.param(100, [63, 38], id="100-changes-two-transactions-the-report-in-the-last"),
    ],
)
def test_status_changes_of_a_pass_are_batched(services: int, transactions: list[int]) -> None:
    """A pass writes its status changes in transactions of up to 63 keys, not one write per service,
    and this host's report after them, in the last one where it fits."""
    consul = kv_with(services)
    docker = FakeDocker(
        [
            running(
                f"c{i:03d}",
                f"s{i:03d}",
                Manifest(name=f"s{i:03d}", image="hello:local", replicas=1).spec_hash(),
            )
            for i in range(services)
        ]
    )
    host_agent(consul, docker, [0.0], None).reconcile()
    assert consul.txns == transactions
    assert sum(1 for k in consul.kv if k.startswith(Layout().status_prefix)) == services


@pytest.mark.parametrize(
    ("record", "says_nothing"),
    [
        pytest.param(StatusRecord("web", HOST), True, id="nothing-placed-nothing-runs"),
        pytest.param(StatusRecord("web", HOST, desired=1), False, id="placed-here"),
        pytest.param(StatusRecord("web", HOST, running=1, specs=frozen_map({"a": 1})), False, id="runs-here"),
        pytest.param(StatusRecord("web", HOST, specs=frozen_map({"a": 1})), False, id="draining-here"),
        pytest.param(StatusRecord("web", HOST, error="start failed"), False, id="a-failure-here"),
        pytest.param(
            StatusRecord("web", HOST, error="Pending: not placed yet", hold=Hold.UNPLACED),
            True,
            id="not-placed-yet-nothing-here",
        ),
        pytest.param(
            StatusRecord("web", HOST, error="Invalid: replicas", hold=Hold.INVALID),
            False,
            id="invalid-nothing-here-still-says-so",
        ),
        pytest.param(
            StatusRecord("web", HOST, running=1, error="Invalid: replicas", hold=Hold.INVALID),
            False,
            id="invalid-still-running-here",
        ),
    ],
)
def test_which_status_records_say_nothing(record: StatusRecord, says_nothing: bool) -> None:
    """A record with nothing placed, running or failing on its host is not needed: absent says the same."""
    assert record.says_nothing is says_nothing


def test_a_host_reports_only_the_services_it_has_to_do_with() -> None:
    """Of 3 services, one placed here: one status record, not three; it goes once nothing of it is here."""
    layout, consul = Layout(), kv_with(3)
    for name in ("s001", "s002"):
        other = PlacementRecord(
            name, Manifest(name=name, image="hello:local", replicas=1).spec_hash(), frozen_map({"host-2": 1})
        )
        consul.kv[layout.placement_key(name)] = other.to_json()
    docker = FakeDocker()
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    assert [k for k in consul.kv if k.startswith(layout.status_prefix)] == [layout.status_key("s000", HOST)]
    del consul.kv[layout.service_key("s000")], consul.kv[layout.placement_key("s000")]
    agent.reconcile()
    assert [k for k in consul.kv if k.startswith(layout.status_prefix)] == []


def test_an_inactive_watch_sends_no_query_until_it_is_active() -> None:
    """A leader's watch on a follower queries Consul not at all; once leading, its first answer fires."""
    leading, queries, fired = threading.Event(), [], threading.Event()
    stop = threading.Event()

    class Fire:
        def fire(self) -> None:
            fired.set()

    def fetch(index: int, wait: float) -> Indexed[object]:
        queries.append(index)
        stop.wait(0.05)
        return Indexed(7, None)

    thread = threading.Thread(target=watch, args=("t", fetch, [Fire()], stop, leading.is_set), daemon=True)
    thread.start()
    try:
        assert not fired.wait(3 * WHILE_IDLE)
        assert queries == []
        leading.set()
        assert fired.wait(10)
        assert queries[0] == 0
    finally:
        stop.set()
        thread.join(10)


def served_host(services: int) -> tuple[CountingConsul, FakeDocker]:
    """KV with ``services`` services placed here, and their containers running."""
    consul = kv_with(services)
    docker = FakeDocker(
        [
            running(
                f"c{i:03d}",
                f"s{i:03d}",
                Manifest(name=f"s{i:03d}", image="hello:local", replicas=1).spec_hash(),
            )
            for i in range(services)
        ]
    )
    return consul, docker


def test_a_refused_status_record_fails_alone_logged_and_counted() -> None:
    """One status record refused (an ACL): every other is written; it is counted and tried again."""
    layout = Layout()
    consul, docker = served_host(3)
    consul.refuse = {layout.status_key("s001", HOST)}
    counter = metrics.kv_write_failures.labels("status", "permission_denied")
    before = counter._value.get()
    agent = host_agent(consul, docker, [0.0], None)
    result = agent.reconcile()
    assert result.requeue_after is not None and result.requeue_after <= 1.0, "tried again soon"
    statuses = sorted(k for k in consul.kv if k.startswith(layout.status_prefix))
    assert statuses == [layout.status_key("s000", HOST), layout.status_key("s002", HOST)]
    assert counter._value.get() == before + 1
    consul.refuse = set()
    agent.reconcile()
    assert layout.status_key("s001", HOST) in consul.kv, "tried again on the next pass"


def own_report(consul: FakeConsul, layout: Layout) -> tuple[bytes | None, bytes]:
    """This host's report as KV holds it, and the report of the records KV holds of this host."""
    records = {
        of[0]: value
        for key, value in consul.kv.items()
        if (of := layout.status_of(key)) is not None and of[1] == HOST
    }
    return consul.kv.get(layout.report_key(HOST)), report_of(HOST, records).to_json()


def test_the_report_names_every_record_as_kv_holds_it_a_refused_one_left_out() -> None:
    """The report goes with the records, in their last transaction; a record Consul refused is not in
    it (the report that hoped for it is written again), and is once it is written."""
    layout = Layout()
    consul, docker = served_host(3)
    consul.refuse = {layout.status_key("s001", HOST)}
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    held, truth = own_report(consul, layout)
    assert held == truth and b"s001" not in truth
    consul.refuse = set()
    sent = len(consul.txns)
    agent.reconcile()
    held, truth = own_report(consul, layout)
    assert held == truth and b"s001" in truth
    assert consul.txns[sent:] == [2], "the record and its report in one transaction"


def test_a_refused_report_is_counted_and_the_host_goes_on() -> None:
    """An ACL that refuses this host's report: the records are written, the pass succeeds, the refusal
    is counted, and the report is written once it is allowed."""
    layout = Layout()
    consul, docker = served_host(2)
    consul.refuse = {layout.report_key(HOST)}
    counter = metrics.kv_write_failures.labels("report", "permission_denied")
    before = counter._value.get()
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    assert len([k for k in consul.kv if k.startswith(layout.status_prefix)]) == 2
    assert layout.report_key(HOST) not in consul.kv
    assert counter._value.get() >= before + 1
    consul.refuse = set()
    agent.reconcile()
    held, truth = own_report(consul, layout)
    assert held == truth


def test_a_report_deleted_alone_is_written_again_by_the_status_check() -> None:
    """Only the report deleted (no record changed): every `REPORT_CHECK_EVERY`-th look of the status
    check reads it, and the pass it wakes writes it again."""
    layout = Layout()
    consul, docker = served_host(2)
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    del consul.kv[layout.report_key(HOST)]
    looks = [agent.status_drifted() for _ in range(REPORT_CHECK_EVERY)]
    assert looks[-1] and not any(looks[:-1])
    agent.reconcile()
    held, truth = own_report(consul, layout)
    assert held == truth


def test_records_and_report_deleted_together_are_both_written_again() -> None:
    """`kv delete -recurse operator/` (records and reports): the pass the status check wakes writes
    the records and the report, though the report is the one the agent last wrote."""
    layout = Layout()
    consul, docker = served_host(2)
    agent = host_agent(consul, docker, [0.0], None)
    agent.wall = lambda: 1_000.0  # the records written again are byte for byte the ones deleted
    agent.reconcile()
    for key in [k for k in consul.kv if k.startswith(layout.operator_prefix)]:
        if layout.status_of(key) is not None or layout.report_of(key) is not None:
            del consul.kv[key]
    assert agent.status_drifted()
    agent.reconcile()
    held, truth = own_report(consul, layout)
    assert held == truth and held is not None and b"s000" in held


def test_status_records_deleted_from_kv_are_seen_and_written_again() -> None:
    """Status records deleted by anyone: the check sees it, a pass writes them again, no container touched."""
    layout = Layout()
    consul, docker = served_host(2)
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    written = {k: v for k, v in consul.kv.items() if k.startswith(layout.status_prefix)}
    assert len(written) == 2 and not agent.status_drifted()
    for key in written:
        del consul.kv[key]
    assert agent.status_drifted()
    containers = list(docker.containers)
    agent.reconcile()
    assert {k for k in consul.kv if k.startswith(layout.status_prefix)} == set(written)
    assert docker.containers == containers and not agent.status_drifted()


@dataclass
class RecordReadsConsul(CountingConsul):
    """`CountingConsul` that counts reads of status records by key (`read_own_statuses`)."""

    record_reads: int = 0

    def kv_get_keys(self, keys: list[str], **kw: object) -> dict[str, KVEntry]:
        self.record_reads += 1
        return super().kv_get_keys(keys, **kw)


def three_running() -> tuple[RecordReadsConsul, FakeDocker]:
    """KV with three services placed on this host, and their three containers running."""
    consul = RecordReadsConsul(kv=kv_with(3).kv)
    specs = [Manifest(name=f"s{i:03d}", image="hello:local", replicas=1).spec_hash() for i in range(3)]
    return consul, FakeDocker([running(f"c{i:03d}", f"s{i:03d}", spec) for i, spec in enumerate(specs)])


def test_an_idle_status_check_lists_the_prefix_and_reads_no_record() -> None:
    """The check reads this host's records only when the status prefix moved since they matched."""
    layout = Layout()
    consul, docker = three_running()
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()
    assert not agent.status_drifted() and consul.record_reads == 1
    assert not agent.status_drifted() and not agent.status_drifted()
    assert consul.record_reads == 1, "nothing moved: the listing alone"
    other = StatusRecord("s000", "host-9", desired=1, running=1)
    consul.kv[layout.status_key("s000", "host-9")] = other.to_json()  # another host's record
    assert not agent.status_drifted() and consul.record_reads == 2, "the prefix moved: read, still ours"
    del consul.kv[layout.status_key("s001", HOST)]
    assert agent.status_drifted(), "a deletion moves the prefix too"


def test_a_refused_event_record_keeps_its_events_and_the_others_are_written() -> None:
    """One service's event record refused: every other is written; its events wait for the next flush."""
    layout, consul = Layout(), CountingConsul()
    consul.refuse = {layout.events_key("bad", HOST)}
    recorder = EventRecorder(clock=lambda: 100.0)
    recorder.host = HOST
    counter = metrics.kv_write_failures.labels("events", "permission_denied")
    before = counter._value.get()
    for service in ("a", "bad", "c"):
        recorder.record(service, STARTED, f"started {service}")
    recorder.flush(consul, layout)
    assert sorted(k for k in consul.kv if k.startswith(layout.events_prefix)) == [
        layout.events_key("a", HOST),
        layout.events_key("c", HOST),
    ]
    assert recorder.pending() == 1 and counter._value.get() == before + 1
    consul.refuse = set()
    recorder.flush(consul, layout)
    assert layout.events_key("bad", HOST) in consul.kv and recorder.pending() == 0


def test_a_pass_reads_its_status_records_again_only_when_the_prefix_moved() -> None:
    """Host passes with nothing moved under operator/status/ read no record (a listing tells); another
    host's write, a deletion, or the pass's own write read them again, and a deleted one is written again."""
    layout = Layout()
    consul, docker = three_running()
    agent = host_agent(consul, docker, [0.0], None)
    agent.reconcile()  # the first pass reads every record of the host, then writes its three
    agent.reconcile()  # its own writes moved the prefix: read
    reads = consul.record_reads
    agent.reconcile()
    agent.reconcile()
    assert consul.record_reads == reads, "nothing moved: no record read"
    other = StatusRecord("s000", "host-9", desired=1, running=1)
    consul.kv[layout.status_key("s000", "host-9")] = other.to_json()  # another host's record
    agent.reconcile()
    assert consul.record_reads == reads + 1
    del consul.kv[layout.status_key("s001", HOST)]
    agent.reconcile()
    assert consul.record_reads == reads + 2, "a deletion moves the prefix"
    assert layout.status_key("s001", HOST) in consul.kv, "and the pass wrote it again"
