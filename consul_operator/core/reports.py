"""Each agent's report: a digest of every status record it keeps in KV (issue 31).

Consul cannot say which keys under a prefix changed, only that one did. The
leader read all of ``operator/status/`` (10,000 records, 4 MB at 1,000
services on 10 hosts) whenever any agent wrote one record, twice per change.
So each agent also keeps ``operator/reports/<host>``: its records' digests by
service, written after the records themselves. A reader that holds the
records as of an earlier read compares a moved report's digests with the
digests of the records it holds, and reads only the records that differ
(`records_to_read`): changed, new, or gone.

Pure: no I/O. The agent writes the report (`daemons/host_agent.py`), the
leader reads through it (`adapters/status_mirror.py`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

MAX_REPORT_BYTES = 256 * 1024
"""A report's KV form. About 6,000 services of one host with names of ten characters fit; a host
with more writes a report that says only "read my records whole" (`StatusReport.whole`)."""

DIGEST_BYTES = 6
"""48 bits: two different records of one service on one host with the same digest are a chance of
one in 2^48 per write, and the leader reads every record whole again at its resync anyway."""


def record_digest(value: bytes) -> str:
    """The digest of one status record's KV bytes, as its host's report gives it."""
    return hashlib.blake2b(value, digest_size=DIGEST_BYTES).hexdigest()


@dataclass(frozen=True, slots=True)
class StatusReport:
    """``operator/reports/<host>``: the digest of each of ``host``'s status records, by service.

    ``whole``: the host has too many records to list within `MAX_REPORT_BYTES`;
    a reader reads every record again when this report moves.
    """

    host: str
    records: Mapping[str, str] = field(default_factory=dict)
    whole: bool = False

    def to_json(self) -> bytes:
        """The KV form (sorted keys, no spaces: an equal report gives equal bytes)."""
        body = (
            {"host": self.host, "whole": True} if self.whole else {"host": self.host, "records": self.records}
        )
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, *, host: str) -> StatusReport:
        """Parse a report of ``host``; ValueError when it is not one (another host's included)."""
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("host") != host:
            raise ValueError("not a report of this host")
        if body.get("whole") is True:
            return cls(host, whole=True)
        records = body.get("records")
        if not isinstance(records, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in records.items()
        ):
            raise ValueError("records: not a map of service to digest")
        return cls(host, records)


def report_of(host: str, records: Mapping[str, bytes]) -> StatusReport:
    """The report of ``host`` holding ``records`` (service -> KV bytes), within `MAX_REPORT_BYTES`."""
    return bounded(StatusReport(host, {s: record_digest(v) for s, v in records.items()}))


def bounded(report: StatusReport) -> StatusReport:
    """``report``, or one that says "read my records whole" where it would pass `MAX_REPORT_BYTES`."""
    if report.whole or len(report.to_json()) <= MAX_REPORT_BYTES:
        return report
    return StatusReport(report.host, whole=True)


def records_to_read(claimed: Mapping[str, str], held: Mapping[str, str]) -> frozenset[str]:
    """The services of one host whose record a reader must read: where the report (``claimed``,
    service -> digest) and the records it holds (``held``, the digests of their bytes) differ.

    A record the report names with another digest changed, one it names and the reader lacks is new,
    one the reader holds and the report leaves out is gone (or was written without a report: read,
    it is kept if it is still there).
    """
    moved = {service for service, digest in claimed.items() if held.get(service) != digest}
    return frozenset(moved | (held.keys() - claimed.keys()))


class Encodable(Protocol):
    """A record with its KV form (`records.StatusRecord`)."""

    def to_json(self) -> bytes: ...


class DigestMemo:
    """The agent's digests of its records by service, kept while a record is the same: a pass at
    1,000 services would otherwise encode and hash every record again to build a report."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Encodable, str]] = {}

    def report(self, host: str, records: Mapping[str, Encodable]) -> StatusReport:
        """The report of ``host``'s ``records`` (service -> record)."""
        digests: dict[str, str] = {}
        kept: dict[str, tuple[Encodable, str]] = {}
        for service, record in records.items():
            seen = self._kept.get(service)
            if seen is not None and (seen[0] is record or seen[0] == record):
                digest = seen[1]
            else:
                digest = record_digest(record.to_json())
            digests[service] = digest
            kept[service] = (record, digest)
        self._kept = kept
        return bounded(StatusReport(host, digests))
