"""Agents' reports: a digest per status record, and what a reader reads again (`core/reports.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.records import StatusRecord
from consul_operator.core.reports import (
    MAX_REPORT_BYTES,
    DigestMemo,
    StatusReport,
    bounded,
    record_digest,
    records_to_read,
    report_of,
)


def test_a_report_reads_back_as_written() -> None:
    """A report's KV form parses back into the same report."""
    report = report_of("host-1", {"web": b'{"a":1}', "api": b'{"b":2}'})
    assert StatusReport.from_json(report.to_json(), host="host-1") == report
    assert report.records["web"] == record_digest(b'{"a":1}')


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"host":"host-2","records":{}}', id="another-host"),
        pytest.param(b'{"host":"host-1","records":{"web":1}}', id="digest-not-a-string"),
        pytest.param(b'{"host":"host-1","records":[]}', id="records-not-a-map"),
    ],
)
def test_a_report_that_is_not_one_is_refused(data: bytes) -> None:
    """Garbage, or another host's report under this host's key, is not taken as this host's report."""
    with pytest.raises(ValueError):
        StatusReport.from_json(data, host="host-1")


def test_a_report_past_its_bound_says_read_my_records_whole() -> None:
    """A host with too many records to list within the bound reports `whole`, within the bound."""
    many = {f"service-{i:05d}-{'x' * 40}": b"{}" for i in range(MAX_REPORT_BYTES // 50)}
    report = report_of("host-1", many)
    assert report.whole and not report.records
    assert len(report.to_json()) <= MAX_REPORT_BYTES
    assert StatusReport.from_json(report.to_json(), host="host-1") == report
    assert bounded(report_of("host-1", {"web": b"{}"})).records  # a small one lists its records


@dataclass(frozen=True)
class Row:
    """What the report claims, what the reader holds, and the services it must read again."""

    claimed: dict[str, str]
    held: dict[str, str]
    read: set[str]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(Row({"web": "a"}, {"web": "a"}, set()), id="unchanged-nothing-read"),
        pytest.param(Row({"web": "b"}, {"web": "a"}, {"web"}), id="changed-read"),
        pytest.param(Row({"web": "a", "api": "c"}, {"web": "a"}, {"api"}), id="new-read"),
        pytest.param(Row({"web": "a"}, {"web": "a", "api": "c"}, {"api"}), id="gone-read-to-confirm"),
        pytest.param(Row({}, {}, set()), id="empty"),
    ],
)
def test_records_to_read(row: Row) -> None:
    """A reader reads exactly the records whose digest differs from the report's, and those it left out."""
    assert records_to_read(row.claimed, row.held) == row.read


digests = st.dictionaries(st.sampled_from(["web", "api", "db", "cache", "queue"]), st.sampled_from("abc"))


@given(truth=digests, held=digests)
def test_reading_what_the_report_names_brings_the_reader_up_to_date(
    truth: dict[str, str], held: dict[str, str]
) -> None:
    """Whatever the reader held, reading the records `records_to_read` names (and keeping the rest)
    leaves it holding exactly the host's records, when the report is the host's truth."""
    after = dict(held)
    for service in records_to_read(truth, held):
        if service in truth:
            after[service] = truth[service]
        else:
            after.pop(service, None)
    assert after == truth


def test_the_agents_memo_gives_the_digest_of_each_records_bytes() -> None:
    """The agent's memoised digests are the digests of its records' KV bytes, new and changed alike."""
    memo = DigestMemo()
    web = StatusRecord("web", "host-1", desired=2, running=1)
    first = memo.report("host-1", {"web": web})
    assert first == report_of("host-1", {"web": web.to_json()})
    moved = StatusRecord("web", "host-1", desired=2, running=2)
    second = memo.report("host-1", {"web": moved, "api": StatusRecord("api", "host-1")})
    assert second == report_of(
        "host-1", {"web": moved.to_json(), "api": StatusRecord("api", "host-1").to_json()}
    )
    assert memo.report("host-1", {}) == StatusReport("host-1", {})


@given(records=st.dictionaries(st.text(min_size=1, max_size=300), st.binary(max_size=64), max_size=2000))
def test_a_report_is_within_its_bound_whatever_the_services_are_named(records: dict[str, bytes]) -> None:
    """Any names, hostile ones included, give a report within `MAX_REPORT_BYTES` that reads back."""
    report = report_of("host-1", records)
    data = report.to_json()
    assert len(data) <= MAX_REPORT_BYTES
    assert StatusReport.from_json(data, host="host-1") == report
