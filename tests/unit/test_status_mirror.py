"""The leader's status records, brought up to date through the agents' reports (`status_mirror.py`),
on an in-memory KV (a unit test of our wrapper; tests/integration/test_consul_reads.py runs it on Consul)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from consul_operator.adapters.status_mirror import READ_ONE_BY_ONE, StatusMirror
from consul_operator.core.keys import Layout
from consul_operator.core.reports import report_of
from tests.unit.test_executor import FakeConsul

LAYOUT = Layout()
HOSTS = ("host-1", "host-2", "host-3")
SERVICES = ("web", "api", "db")


class Agents:
    """KV as the agents write it: each host's records, then its report (`HostAgent._report`)."""

    def __init__(self) -> None:
        self.kv = FakeConsul()
        self.records: dict[str, dict[str, bytes]] = {h: {} for h in HOSTS}  # what each agent wrote

    def write(self, host: str, service: str, value: bytes | None, *, report: bool = True) -> None:
        """``host``'s agent writes (or deletes) one record, then its report unless told not yet."""
        key = LAYOUT.status_key(service, host)
        if value is None:
            self.kv.kv.pop(key, None)
            self.records[host].pop(service, None)
        else:
            self.kv.kv[key] = value
            self.records[host][service] = value
        if report:
            self.report(host)

    def report(self, host: str) -> None:
        """``host``'s agent writes its report of the records it wrote."""
        self.kv.kv[LAYOUT.report_key(host)] = report_of(host, self.records[host]).to_json()

    def status(self) -> dict[str, bytes]:
        """What KV holds under ``operator/status/``."""
        return {e.key: e.value for e in self.kv.kv_list(LAYOUT.status_prefix).value}


def held(mirror: StatusMirror, agents: Agents) -> dict[str, bytes]:
    """What the mirror reads now."""
    return {e.key: e.value for e in mirror.read(agents.kv)}


def test_a_record_moved_is_read_alone() -> None:
    """After the first (whole) read, a record changed with its report is the only record read again."""
    agents = Agents()
    for host in HOSTS:
        for service in SERVICES:
            agents.write(host, service, f"{service}@{host}:1".encode())
    mirror = StatusMirror(LAYOUT)
    assert held(mirror, agents) == agents.status()
    agents.write("host-2", "api", b"api@host-2:2")
    assert held(mirror, agents) == agents.status()
    assert mirror.reads == {"whole": 1, "reported": 1, "unmoved": 0}
    assert mirror.records_read == 1
    assert held(mirror, agents) == agents.status()
    assert mirror.reads["unmoved"] == 1 and mirror.records_read == 1


def test_a_record_written_before_its_report_is_read_with_the_report() -> None:
    """A read between a record's write and its report's keeps the record held; the report's read gets it."""
    agents = Agents()
    agents.write("host-1", "web", b"1")
    mirror = StatusMirror(LAYOUT)
    held(mirror, agents)
    agents.write("host-1", "web", b"2", report=False)
    assert held(mirror, agents)[LAYOUT.status_key("web", "host-1")] == b"1"
    agents.report("host-1")
    assert held(mirror, agents) == agents.status()


def test_a_lost_hosts_records_deleted_before_its_report_are_gone_from_the_mirror() -> None:
    """The leader's clean-up of a lost host (records, then the report) empties it from the mirror,
    whether a read comes between the two deletions or not."""
    agents = Agents()
    for service in SERVICES:
        agents.write("host-1", service, b"x")
        agents.write("host-2", service, b"y")
    mirror = StatusMirror(LAYOUT)
    held(mirror, agents)
    for service in SERVICES:
        agents.kv.kv.pop(LAYOUT.status_key(service, "host-1"))
    held(mirror, agents)  # the report is still there: nothing named moved
    agents.kv.kv.pop(LAYOUT.report_key("host-1"))
    assert held(mirror, agents) == agents.status()
    assert all(LAYOUT.status_of(k)[1] == "host-2" for k in agents.status())  # type: ignore[index]


def test_a_host_without_its_report_has_its_records_checked_by_index() -> None:
    """A report deleted (an admin): the host's held records are checked by modify index on each read,
    so a record changed or deleted meanwhile is still seen."""
    agents = Agents()
    agents.write("host-1", "web", b"1")
    agents.write("host-1", "api", b"1")
    mirror = StatusMirror(LAYOUT)
    held(mirror, agents)
    agents.kv.kv.pop(LAYOUT.report_key("host-1"))
    agents.kv.kv[LAYOUT.status_key("web", "host-1")] = b"changed"
    agents.kv.kv.pop(LAYOUT.status_key("api", "host-1"))
    assert held(mirror, agents) == agents.status()


def test_everything_is_read_whole_again_at_the_resync() -> None:
    """Past the resync a read is whole: a record written with no report at all is seen then."""
    now = [0.0]
    agents = Agents()
    agents.write("host-1", "web", b"1")
    mirror = StatusMirror(LAYOUT, resync=300, clock=lambda: now[0])
    held(mirror, agents)
    agents.kv.kv[LAYOUT.status_key("api", "host-1")] = b"no report names me"
    assert LAYOUT.status_key("api", "host-1") not in held(mirror, agents)
    now[0] = 300.0
    assert held(mirror, agents) == agents.status()
    assert mirror.reads["whole"] == 2


class MirrorMachine(RuleBasedStateMachine):
    """Agents writing records and reports in any order a crash or a slow write allows, the leader
    cleaning up lost hosts, an admin deleting reports: a read always holds every host's records
    exactly, except a host whose report is still to come (it is read when the report is)."""

    def __init__(self) -> None:
        super().__init__()
        self.agents = Agents()
        self.pending: set[str] = set()  # hosts with records written and their report not yet
        self.mirror = StatusMirror(LAYOUT)
        self.version = 0

    @rule(
        host=st.sampled_from(HOSTS),
        service=st.sampled_from(SERVICES),
        delete=st.booleans(),
        now=st.booleans(),
    )
    def agent_writes(self, host: str, service: str, delete: bool, now: bool) -> None:
        """An agent writes or deletes a record; its report now or later."""
        self.version += 1
        self.agents.write(host, service, None if delete else f"v{self.version}".encode(), report=now)
        if now:
            self.pending.discard(host)
        else:
            self.pending.add(host)

    @rule(host=st.sampled_from(HOSTS))
    def agent_reports(self, host: str) -> None:
        """A report that was still to come is written."""
        self.agents.report(host)
        self.pending.discard(host)

    @rule(host=st.sampled_from(HOSTS), between=st.booleans())
    def leader_cleans_up(self, host: str, between: bool) -> None:
        """The leader deletes a lost host's records, then its report (maybe with a read between)."""
        for service in SERVICES:
            self.agents.kv.kv.pop(LAYOUT.status_key(service, host), None)
        self.agents.records[host] = {}
        if between:
            self.mirror.read(self.agents.kv)
        self.agents.kv.kv.pop(LAYOUT.report_key(host), None)
        self.pending.discard(host)

    @rule(host=st.sampled_from(HOSTS))
    def admin_deletes_a_report(self, host: str) -> None:
        """Someone deletes a report: the agent writes it again with its next change only."""
        self.agents.kv.kv.pop(LAYOUT.report_key(host), None)

    @invariant()
    def a_read_holds_every_reported_hosts_records(self) -> None:
        """The mirror's read equals KV for every host whose report is not still to come."""
        got = held(self.mirror, self.agents)

        def settled(view: dict[str, bytes]) -> dict[str, bytes]:
            return {k: v for k, v in view.items() if LAYOUT.status_of(k)[1] not in self.pending}  # type: ignore[index]

        assert settled(got) == settled(self.agents.status())


TestMirrorMachine = MirrorMachine.TestCase
TestMirrorMachine.settings = settings(stateful_step_count=30)


def test_a_burst_of_moved_records_is_read_whole_in_one_request() -> None:
    """More moved records than `READ_ONE_BY_ONE` (a burst of starts) are read whole, not by key."""
    agents = Agents()
    mirror = StatusMirror(LAYOUT)
    held(mirror, agents)
    for n in range(READ_ONE_BY_ONE + 1):
        agents.write("host-1", f"svc-{n}", b"1", report=False)
    agents.report("host-1")
    assert held(mirror, agents) == agents.status()
    assert (mirror.reads["whole"], mirror.records_read) == (2, 0)


def test_many_records_of_hosts_without_reports_are_read_whole() -> None:
    """Every report deleted with more held records than `READ_ONE_BY_ONE`: one whole read, not a
    check of each record's index, and the records are as KV holds them."""
    agents = Agents()
    for n in range(READ_ONE_BY_ONE + 1):
        agents.write("host-1", f"svc-{n}", b"1", report=False)
    agents.report("host-1")
    mirror = StatusMirror(LAYOUT)
    held(mirror, agents)
    del agents.kv.kv[LAYOUT.report_key("host-1")]
    agents.kv.kv[LAYOUT.status_key("svc-0", "host-1")] = b"changed"
    assert held(mirror, agents) == agents.status()
    assert mirror.reads["whole"] == 2
