"""The leader's reads that skip what did not move, against a real Consul: `ConsulClient.kv_trees` (the
one-transaction read of several prefixes), `PrefixMirrors`, and `PassingCounts` (the checks)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from consul_operator.adapters.check_counts import PassingCounts
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.kv_state import PrefixMirrors
from consul_operator.adapters.status_mirror import StatusMirror
from consul_operator.core.keys import Layout
from consul_operator.core.reports import report_of
from tests.support.staging import wait_until


@pytest.fixture
def root(consul: ConsulClient) -> Iterator[str]:
    """A KV folder of this test's own, deleted afterwards."""
    prefix = f"test-trees-{uuid.uuid4().hex[:8]}/"
    yield prefix
    for entry in consul.kv_list(prefix).value:
        consul.kv_delete(entry.key)


def test_kv_trees_reads_what_kv_list_reads(consul: ConsulClient, root: str) -> None:
    """Each prefix's keys and values (text and bytes) come back as `kv_list` lists them."""
    consul.kv_put(f"{root}a/one", "1")
    consul.kv_put(f"{root}a/two", b"\x00\xffbinary")
    consul.kv_put(f"{root}b/three", "drei: \u00fc")
    trees = consul.kv_trees([f"{root}a/", f"{root}b/"], consistent=True)
    for prefix in (f"{root}a/", f"{root}b/"):
        listed = consul.kv_list(prefix, consistent=True).value
        assert [(e.key, e.value, e.modify_index) for e in trees[prefix]] == [
            (e.key, e.value, e.modify_index) for e in listed
        ]
    assert [e.value for e in trees[f"{root}a/"]] == [b"1", b"\x00\xffbinary"]


def test_kv_trees_keeps_nested_prefixes_apart_and_answers_empty_ones(consul: ConsulClient, root: str) -> None:
    """A prefix inside another lists its keys in both, once each; an empty prefix is an empty list."""
    consul.kv_put(f"{root}x", "outer")
    consul.kv_put(f"{root}in/y", "inner")
    trees = consul.kv_trees([root, f"{root}in/", f"{root}none/"])
    assert [e.key for e in trees[root]] == [f"{root}in/y", f"{root}x"]
    assert [e.key for e in trees[f"{root}in/"]] == [f"{root}in/y"]
    assert trees[f"{root}none/"] == []


def test_a_mirrored_prefix_is_read_again_only_when_something_under_it_moved(
    consul: ConsulClient, root: str
) -> None:
    """`PrefixMirrors` answers an unmoved prefix from what it read, and reads it again after a write
    two levels down, a deletion, or its emptying: Consul's index of a one-level listing moves with all."""
    big, small = f"{root}status/", f"{root}small/"
    consul.kv_put(f"{big}web/host-1", "a")
    consul.kv_put(f"{big}web/host-2", "b")
    consul.kv_put(f"{small}k", "s")
    mirrors = PrefixMirrors([big])

    def read() -> dict[str, list[tuple[str, bytes]]]:
        trees = mirrors.read(consul, [big, small])
        return {p: [(e.key, e.value) for e in entries] for p, entries in trees.items()}

    def truth() -> dict[str, list[tuple[str, bytes]]]:
        return {p: [(e.key, e.value) for e in consul.kv_list(p, consistent=True).value] for p in (big, small)}

    assert read() == truth()
    assert mirrors.skipped == 0
    consul.kv_put(f"{small}k", "changed")  # another prefix moved: the mirrored one is kept
    assert read() == truth()
    assert mirrors.skipped == 1
    consul.kv_put(f"{big}web/host-2", "b2")  # two levels down: seen
    assert read() == truth()
    assert mirrors.skipped == 1
    consul.kv_delete(f"{big}web/host-1")  # a deletion: seen
    assert read() == truth()
    assert mirrors.skipped == 1
    assert read() == truth()
    assert mirrors.skipped == 2
    consul.kv_delete(f"{big}web/host-2")  # emptied: seen, and an empty prefix stays read as empty
    assert read() == truth() == {big: [], small: [(f"{small}k", b"changed")]}
    consul.kv_put(f"{small}k", "again")  # moves the store's index, which an empty listing answers with
    assert read() == truth()
    assert mirrors.skipped == 3
    consul.kv_put(f"{big}new/host-3", "c")  # filled again: seen
    assert read() == truth()
    assert mirrors.skipped == 3
    counted = {
        r: REGISTRY.get_sample_value("operator_kv_prefix_reads_total", {"prefix": big, "read": r})
        for r in ("whole", "unmoved")
    }
    assert counted == {"whole": 5.0, "unmoved": 3.0}


def test_passing_counts_are_read_again_only_when_a_check_moved(consul: ConsulClient) -> None:
    """`checks_index` answers no check, with the index of them all; `PassingCounts` reads every
    check again when one turned passing and when one went, and answers from memory when none moved."""
    name = f"test-checks-{uuid.uuid4().hex[:8]}"
    check = f"{name}-ttl"
    probe = consul.checks_index(consistent=True)
    assert probe.value == 0 and probe.index > 0  # the filter matches no check: only the index comes
    counts = PassingCounts()

    def whole_reads() -> float:
        return REGISTRY.get_sample_value("operator_check_reads_total", {"read": "whole"}) or 0.0

    consul.register_service(
        {
            "ID": name,
            "Name": name,
            "Port": 1,
            "Check": {"CheckID": check, "TTL": "600s", "Status": "critical"},
        }
    )
    try:
        assert counts.read(consul).get(name, 0) == 0  # registered, its check critical
        before = whole_reads()
        consul.check_pass(check)
        assert consul.checks_index(consistent=True).index > probe.index
        assert counts.read(consul).get(name) == 1  # the index moved: read again, passing now
        assert whole_reads() == before + 1

        def read_twice() -> bool:
            """Whether the second of two reads in a row took every count from memory."""
            counts.read(consul)
            before = whole_reads()
            counts.read(consul)
            return whole_reads() == before

        # The environment's own agents may move a check now and then (a read again, as it must):
        # some pair of reads in a row finds none moved.
        wait_until(read_twice, timeout=30, what="a read with no check moved")
        assert counts.read(consul).get(name) == 1
    finally:
        consul.deregister_service(name)
    assert name not in counts.read(consul)  # gone: read again


def test_the_status_mirror_reads_only_what_a_report_names_and_holds_what_consul_holds(
    consul: ConsulClient, root: str
) -> None:
    """`StatusMirror` on Consul: after its whole first read, an agent's change (records, then its
    report) is read alone, a deletion with its report goes, a lost host's clean-up (records, then
    report) empties it, and every read equals a whole listing of the prefix."""
    layout = Layout(operator_prefix=f"{root}operator/")
    written: dict[str, dict[str, bytes]] = {"host-1": {}, "host-2": {}}

    def agent(host: str, service: str, value: bytes | None) -> None:
        key = layout.status_key(service, host)
        if value is None:
            consul.kv_delete(key)
            written[host].pop(service, None)
        else:
            consul.kv_put(key, value)
            written[host][service] = value
        consul.kv_put(layout.report_key(host), report_of(host, written[host]).to_json())

    def truth() -> list[tuple[str, bytes]]:
        return [(e.key, e.value) for e in consul.kv_list(layout.status_prefix, consistent=True).value]

    for host in written:
        for n in range(20):
            agent(host, f"svc-{n:02d}", f'{{"running":{n}}}'.encode())
    mirror = StatusMirror(layout)

    def read() -> list[tuple[str, bytes]]:
        return [(e.key, e.value) for e in mirror.read(consul)]

    assert read() == truth()
    assert (mirror.reads["whole"], mirror.records_read) == (1, 0)
    assert read() == truth()
    assert mirror.reads["unmoved"] == 1
    agent("host-2", "svc-07", b'{"running":70}')
    assert read() == truth()
    assert (mirror.reads["reported"], mirror.records_read) == (1, 1)
    agent("host-1", "svc-03", None)
    agent("host-1", "svc-99", b'{"running":1}')
    assert read() == truth()
    assert (mirror.reads["reported"], mirror.records_read) == (2, 3)
    for service in list(written["host-2"]):  # the leader's clean-up of a lost host: records, then report
        consul.kv_delete(layout.status_key(service, "host-2"))
    consul.kv_delete(layout.report_key("host-2"))
    assert read() == truth()
    assert all(key.endswith("/host-1") for key, _ in truth())
    assert mirror.reads["whole"] == 1
