"""Every number read from a KV record has a bound: a record out of bounds is refused like junk."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.records import (
    MAX_RECORD_COUNT,
    MAX_RECORD_ENTRIES,
    MAX_RECORD_SECONDS,
    MAX_TIMESTAMP,
    HostRecord,
    LeaderRecord,
    PlacementRecord,
    RolloutRecord,
    StatusRecord,
)

HUGE = 10**12

PLACEMENT = {"service": "web", "spec_hash": "abc", "hosts": {"host-1": 2}, "unplaced": 0}
ROLLOUT = {
    "service": "web",
    "from": "a",
    "to": "b",
    "state": "progressing",
    "started": 1.7e9,
    "updated": 1,
    "total": 2,
    "elapsed": 3.0,
}


def _placement(**fields: object) -> bytes:
    return json.dumps({**PLACEMENT, **fields}).encode()


def _rollout(**fields: object) -> bytes:
    return json.dumps({**ROLLOUT, **fields}).encode()


def _status(**fields: object) -> bytes:  # also a host or a leader record
    return json.dumps(fields).encode()


def _hosts(n: int) -> dict[str, int]:
    return {f"h{i}": 1 for i in range(n)}


Parse = Callable[[bytes], object]
PARSERS: dict[str, Parse] = {
    "placement": PlacementRecord.from_json,
    "rollout": RolloutRecord.from_json,
    "status": lambda data: StatusRecord.from_json(data, service="web", host="host-1"),
    "host": lambda data: HostRecord.from_json(data, host="host-1"),
    "leader": LeaderRecord.from_json,
}


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        pytest.param("placement", _placement(hosts={"host-1": HUGE}), id="placement-huge-count-on-a-host"),
        pytest.param("placement", _placement(hosts={"host-1": -1}), id="placement-negative-count"),
        pytest.param(
            "placement", _placement(hosts=_hosts(MAX_RECORD_ENTRIES + 1)), id="placement-too-many-hosts"
        ),
        pytest.param(
            "placement",
            _placement(hosts={f"h{i}": 600 for i in range(2)}),
            id="placement-total-over-the-bound",
        ),
        pytest.param("placement", _placement(unplaced=HUGE), id="placement-huge-unplaced"),
        pytest.param("placement", _placement(unplaced=-3), id="placement-negative-unplaced"),
        pytest.param(
            "placement", _placement(specs={"host-1": {"abc": HUGE}}), id="placement-huge-count-per-spec"
        ),
        pytest.param("placement", _placement(hosts={"host-1": 1e300}), id="placement-count-not-an-integer"),
        pytest.param("rollout", _rollout(total=HUGE), id="rollout-huge-total"),
        pytest.param("rollout", _rollout(updated=-1), id="rollout-negative-updated"),
        pytest.param("rollout", _rollout(elapsed=1e300), id="rollout-elapsed-past-ten-years"),
        pytest.param("rollout", _rollout(elapsed=float("nan")), id="rollout-elapsed-nan"),
        pytest.param("rollout", _rollout(started=float("inf")), id="rollout-started-infinite"),
        pytest.param("rollout", _rollout(started=-5.0), id="rollout-started-before-1970"),
        pytest.param("status", _status(running=HUGE), id="status-huge-running"),
        pytest.param("status", _status(desired=MAX_RECORD_COUNT + 1), id="status-desired-over-the-bound"),
        pytest.param("status", _status(specs={"abc": HUGE}), id="status-huge-count-per-spec"),
        pytest.param("status", _status(specs={"abc": -4}), id="status-negative-count-per-spec"),
        pytest.param(
            "status", _status(instances=["x"] * (MAX_RECORD_ENTRIES + 1)), id="status-too-many-instances"
        ),
        pytest.param("status", _status(since=MAX_TIMESTAMP * 2), id="status-since-far-in-the-future"),
        pytest.param("host", _status(draining=True, deadline=1e300), id="host-huge-deadline"),
        pytest.param("host", _status(started=-1.0), id="host-started-before-1970"),
        pytest.param("leader", _status(host="h", since=1e300), id="leader-since-far-future"),
        pytest.param("status", b"[" * 100_000, id="status-nested-past-the-recursion-limit"),
    ],
)
def test_out_of_bound_numbers_refuse_the_record(kind: str, data: bytes) -> None:
    """A number past its bound makes the record unreadable (ValueError), as junk does."""
    with pytest.raises(ValueError, match=f"not a {kind} record"):
        PARSERS[kind](data)


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        pytest.param("placement", _placement(hosts={"h": MAX_RECORD_COUNT}), id="placement-at-the-bound"),
        pytest.param(
            "placement", _placement(hosts=_hosts(MAX_RECORD_COUNT)), id="placement-total-at-the-bound"
        ),
        pytest.param("rollout", _rollout(elapsed=MAX_RECORD_SECONDS), id="rollout-elapsed-at-the-bound"),
        pytest.param("status", _status(running=MAX_RECORD_COUNT), id="status-running-at-the-bound"),
        pytest.param("host", _status(draining=True, deadline=604800), id="host-week-deadline"),
    ],
)
def test_numbers_at_their_bound_are_read(kind: str, data: bytes) -> None:
    """The bounds leave room for every record the operator itself writes."""
    PARSERS[kind](data)


def _numbers(record: object) -> list[float]:
    """Every number a parsed record holds, nested maps included."""
    found: list[float] = []
    for name in getattr(record, "__slots__", ()):
        value = getattr(record, name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            found.append(value)
        elif hasattr(value, "items"):
            for inner in value.values():
                found.extend(inner.values() if hasattr(inner, "values") else [inner])
    return found


EDGES = st.sampled_from([-1, 0, 1, 1001, 10**12, 2**63, 1e300, -0.5, float("inf"), float("nan")])
"""The numbers at and past every bound."""
JSON = st.recursive(
    st.none() | st.booleans() | EDGES | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
COUNTS = st.dictionaries(st.text(max_size=3), EDGES | JSON, max_size=3)
"""A map of counts, as ``hosts`` or ``specs`` hold (nested one more level for a placement's specs)."""
VALUES = EDGES | JSON | COUNTS | st.dictionaries(st.text(max_size=3), COUNTS, max_size=2)
BASES: dict[str, dict[str, object]] = {
    "placement": {**PLACEMENT, "specs": {"host-1": {"abc": 2}}},
    "rollout": ROLLOUT,
    "status": {
        "desired": 1,
        "running": 1,
        "healthy": 1,
        "specs": {"abc": 1},
        "instances": ["a"],
        "since": 1.7e9,
    },
    "host": {"draining": True, "deadline": 300, "started": 1.7e9},
    "leader": {"host": "host-1", "since": 1.7e9},
}
"""A readable record of each kind, one or two of whose fields each example replaces."""
FIELDS = sorted({name for body in BASES.values() for name in body} | {"healthy", "unplaced"})


@given(
    kind=st.sampled_from(sorted(PARSERS)),
    changes=st.dictionaries(
        st.sampled_from(sorted({f for b in BASES.values() for f in b})), VALUES, max_size=2
    ),
    raw=st.binary(max_size=32),
    use_raw=st.booleans(),
)
def test_property_any_json_parses_to_bounded_numbers_or_a_value_error(
    kind: str, changes: dict[str, object], raw: bytes, use_raw: bool
) -> None:
    """For any JSON (or any bytes), a parser returns a record whose every number is within its bound,
    or raises ValueError (the records' own error): never another exception, never a huge number."""
    data = raw if use_raw else json.dumps({**BASES[kind], **changes}).encode()
    try:
        record = PARSERS[kind](data)
    except ValueError:
        return
    for number in _numbers(record):
        assert math.isfinite(number)
        assert 0 <= number <= max(MAX_TIMESTAMP, MAX_RECORD_SECONDS)
    for name in ("unplaced", "updated", "total", "desired", "running", "healthy"):
        assert 0 <= getattr(record, name, 0) <= MAX_RECORD_COUNT
    for name in ("elapsed", "deadline"):
        assert 0 <= (getattr(record, name, 0) or 0) <= MAX_RECORD_SECONDS
    if isinstance(record, PlacementRecord):
        assert record.total <= MAX_RECORD_COUNT
        assert all(0 < n <= MAX_RECORD_COUNT for c in record.specs.values() for n in c.values())
    if isinstance(record, StatusRecord):
        assert all(0 <= n <= MAX_RECORD_COUNT for n in record.specs.values())
        assert len(record.instances) <= MAX_RECORD_ENTRIES
