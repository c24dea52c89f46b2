"""The operator's records in Consul KV, typed: one class per kind of key, with its JSON form.

| key | class | written by |
| --- | --- | --- |
| ``operator/leader`` | `LeaderRecord` | the leader (`leader.py`) |
| ``operator/placement/<name>`` | `PlacementRecord` | the leader, fenced |
| ``operator/rollout/<name>`` | `RolloutRecord` | the leader, fenced |
| ``operator/status/<name>/<host>`` | `StatusRecord` | the agent of ``host`` |
| ``operator/rollback/<name>`` | `RollbackRequest` | ``operator rollback`` |
| ``operator/hosts/<host>`` | `HostRecord` | ``operator cordon`` / ``drain`` (the admin role) |
| ``operator/agents/<host>`` | `AgentRecord` | the agent of ``host`` (its Consul node) |

(``services/<name>`` and ``operator/revisions/<name>/<spec>`` hold manifests:
`desired_state.Manifest`.) Every record is parsed here and only here:
``from_json`` raises ValueError for a value that is not such a record at all
(not JSON, not an object, a required field missing); within a readable record,
a field of the wrong type reads as its empty value, as the status view always
did. Pure: no I/O, no clock.

Bounds: a record in KV is data anyone with write on ``operator/`` (or a bug,
or a restore) may have put there, and a count drives loops and allocations
(a placement of 10**12 replicas hung the leader). Every number read has a
bound, checked here at parse time: counts within `MAX_RECORD_COUNT`, maps and
lists within `MAX_RECORD_ENTRIES` entries, durations within
`MAX_RECORD_SECONDS`, wall-clock stamps within [0, `MAX_TIMESTAMP`]. A record
out of bounds raises ValueError, like an unreadable one, and its reader treats
it so (skips it, or keeps it empty: `kv_state`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from consul_operator.core.keys import Layout
from consul_operator.core.reports import MAX_REPORT_BYTES
from consul_operator.core.txn import CONSUL_MAX_VALUE_BYTES

MAX_RECORD_COUNT = 1_000
"""The largest count a record may hold: replicas per host, in total, unplaced, running, updated...
Ten times `desired_state.MAX_REPLICAS`: room for a surge, draining containers and crash loops."""
MAX_RECORD_ENTRIES = 1_024
"""The most entries of any map or list in a record (hosts, specs per host, instances)."""
MAX_RECORD_SECONDS = 10 * 366 * 86400.0
"""The longest duration a record may hold (a rollout's ``elapsed``, a drain's ``deadline``): ten years."""
MAX_TIMESTAMP = 1e10
"""The latest wall-clock stamp a record may hold (Unix seconds, the year 2286)."""


class RecordBoundError(ValueError):
    """A number or a size in a record is out of its bound: the record counts as unreadable."""


def _bounded(value: int, what: str, high: int = MAX_RECORD_COUNT) -> int:
    """``value`` when it is within [0, ``high``]; RecordBoundError otherwise."""
    if not 0 <= value <= high:
        raise RecordBoundError(f"{what} {value} is out of bounds (0 to {high})")
    return value


def _entries(items: Mapping[str, object] | list[object], what: str) -> None:
    """RecordBoundError when ``items`` has more than `MAX_RECORD_ENTRIES` entries."""
    if len(items) > MAX_RECORD_ENTRIES:
        raise RecordBoundError(f"{what} has {len(items)} entries, more than {MAX_RECORD_ENTRIES}")


def _map(value: object, what: str) -> dict[str, object]:
    """A JSON object of at most `MAX_RECORD_ENTRIES` entries; ValueError otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    _entries(value, what)
    return value


def _seconds(value: float, what: str) -> float:
    """A duration within [0, `MAX_RECORD_SECONDS`]; RecordBoundError otherwise (NaN included)."""
    if not 0.0 <= value <= MAX_RECORD_SECONDS:
        raise RecordBoundError(f"{what} {value} is out of bounds (0 to {MAX_RECORD_SECONDS:g}s)")
    return value


def _stamp(value: float, what: str) -> float:
    """A wall-clock stamp within [0, `MAX_TIMESTAMP`]; RecordBoundError otherwise (NaN included)."""
    if not 0.0 <= value <= MAX_TIMESTAMP:
        raise RecordBoundError(f"{what} {value} is out of bounds (0 to {MAX_TIMESTAMP:g})")
    return value


def _integer(value: object, what: str, high: int = MAX_RECORD_COUNT) -> int:
    """A count the leader wrote: an integer (not a boolean) within [0, ``high``]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is not an integer: {value!r:.40}")
    return _bounded(value, what, high)


def _number(value: object, what: str) -> float:
    """A JSON number as a float; ValueError for anything else (a boolean, text, a number too large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number: {value!r:.40}")
    try:
        return float(value)
    except OverflowError as exc:
        raise RecordBoundError(f"{what} is out of bounds: {exc}") from exc


def frozen_map(data: Mapping[str, int] | None = None) -> Mapping[str, int]:
    """A read-only copy, so that frozen dataclasses stay frozen all the way down."""
    return MappingProxyType(dict(data or {}))


CUT_MARKER = "… [{} bytes cut]"
"""What ends a text cut to its bound (`bounded_text`), saying how much was left out."""
MAX_ERROR_BYTES = 1024
"""A status record's ``error``, JSON-encoded: an invalid manifest's first problem may quote
the whole manifest (a 450 KB YAML tag made every agent's status transaction 600 KB)."""
MAX_REASON_BYTES = 8192
"""A placement's or a rollout's ``reason``, JSON-encoded (a placement's names every host)."""
MAX_STATUS_BYTES = 128 * 1024
"""A status record's KV form: 200 instances of the longest names, each with its mark
(port, container, spec) and a node name of 255 characters, take 60 KB."""
MAX_PLACEMENT_BYTES = 64 * 1024
"""A placement record's KV form: 100 hosts of 63 characters with 3 specs each take 30 KB."""
MAX_ROLLOUT_BYTES = 16 * 1024
"""A rollout record's KV form."""
MAX_EVENT_RECORD_BYTES = 64 * 1024
"""An ``operator/events/<service>/<host>`` record's KV form (`events.record_json` trims to it)."""
MAX_WORK_BYTES = 96 * 1024
"""A shard of a host's work, ``operator/work/<host>/<shard>`` (`work.work_records` splits to it):
well inside Consul's 512 KiB value, and five shards fit one transaction. About 1,500 services of
one host fit a shard."""


def record_bound(layout: Layout, key: str) -> int:
    """The most bytes the record at ``key`` may hold: checked before every write (`txn.pack_writes`).

    A record over its bound is never written (its writer logs and counts it);
    the bounds hold for every input, hostile text included (the properties in
    tests/unit/test_bounded_properties.py). Manifests kept as revisions are
    bounded by the validator (`desired_state.MAX_REVISION_BYTES`), anything
    else by Consul's own value limit.
    """
    for prefix, bound in (
        (layout.status_prefix, MAX_STATUS_BYTES),
        (layout.placement_prefix, MAX_PLACEMENT_BYTES),
        (layout.rollout_prefix, MAX_ROLLOUT_BYTES),
        (layout.events_prefix, MAX_EVENT_RECORD_BYTES),
        (layout.work_prefix, MAX_WORK_BYTES),
        (layout.reports_prefix, MAX_REPORT_BYTES),
        (layout.rendered_prefix, MAX_RENDERED_BYTES),
    ):
        if key.startswith(prefix):
            return bound
    return CONSUL_MAX_VALUE_BYTES


def encoded_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string in our records (ASCII-escaped, quotes included)."""
    return len(json.dumps(text))


def bounded_text(text: str, max_bytes: int) -> str:
    """``text`` whose JSON form (`encoded_size`) is at most ``max_bytes``: cut at a character
    with `CUT_MARKER` saying how many bytes (UTF-8) were left out. Tenant text (manifests,
    Docker's and Consul's errors) may be huge, multi-byte, or all control characters, each
    of which the JSON form writes as 6 or 12 bytes."""
    if encoded_size(text) <= max_bytes:
        return text
    total = len(text.encode("utf-8", "surrogatepass"))
    low, high = 0, min(len(text), max_bytes)
    while low < high:  # the longest prefix that fits with its marker
        middle = (low + high + 1) // 2
        kept = text[:middle]
        marker = CUT_MARKER.format(total - len(kept.encode("utf-8", "surrogatepass")))
        if encoded_size(kept + marker) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    kept = text[:low]
    marked = kept + CUT_MARKER.format(total - len(kept.encode("utf-8", "surrogatepass")))
    return marked if encoded_size(marked) <= max_bytes else ""


def _dumps(body: Mapping[str, object]) -> bytes:
    """The stable KV form: sorted keys, no spaces, so that an equal record gives equal bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _object(data: bytes | str, what: str) -> dict[str, object]:
    """``data`` as a JSON object; ValueError when it is not one."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise ValueError(f"not a {what} record: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"not a {what} record: not a JSON object")
    return body


def _count(value: object, what: str) -> int:
    """A count out of a JSON record; anything but an integer counts as 0, a negative one too;
    RecordBoundError above `MAX_RECORD_COUNT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return _bounded(max(0, value), what)


def _timestamp(value: object, what: str = "time") -> float | None:
    """A Unix time out of a JSON record, None when it is not a finite number;
    RecordBoundError outside [0, `MAX_TIMESTAMP`]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        stamp = float(value)
    except OverflowError:
        return None
    return _stamp(stamp, what) if math.isfinite(stamp) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# --- operator/placement/<name> ---------------------------------------------------------


class UnplacedCause(StrEnum):
    """What kept replicas from every host (the ``cause`` label of ``operator_unplaced_replicas``).

    When hosts were refused for several causes, the one nearest to placing
    names it: a resource of a host that matches everything else first.
    """

    NONE = "none"
    """Every replica is placed."""
    MEMORY = "memory"
    """A live host that matches the manifest's rules has too little memory free."""
    CPUS = "cpus"
    """A live host that matches the manifest's rules has too few CPUs free."""
    MAX_PER_HOST = "max_per_host"
    """Every live host that matches holds ``placement.max_per_host`` replicas already."""
    LABELS = "labels"
    """Live hosts exist, but none has the labels ``placement.labels`` asks for."""
    NO_HOSTS = "no_hosts"
    """No live host is allowed (``placement.hosts``, lost hosts, no agents)."""


UNPLACED_CAUSES = tuple(UnplacedCause)
"""Every value of the ``cause`` label."""


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """The leader's decision for one service: replicas per host.

    Stored as JSON in ``operator/placement/<service>``. ``unplaced`` counts
    replicas that no host could take (placement rules, capacity, too few
    hosts); ``cause`` and ``reason`` say why (``reason``: for people, naming
    each host's free resources or why it does not match).
    ``written_by`` names the leader that wrote it (for people and the chaos
    test's fencing check); it is not part of the decision.
    """

    service: str
    spec_hash: str
    hosts: Mapping[str, int]
    unplaced: int = 0
    written_by: str = ""
    # During a rollout: replicas per host per spec hash (``hosts`` holds the
    # totals, so readers that ignore specs still see the counts). Empty: every
    # replica is of ``spec_hash``.
    specs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    cause: UnplacedCause = UnplacedCause.NONE
    reason: str = ""
    stuck: Mapping[str, int] = field(default_factory=frozen_map)
    """Replicas held on a draining host because no other host takes them (counted in ``unplaced``
    too, and in ``hosts``): a drain stops them only when forced (`maintenance.keep_stuck`)."""
    # While the leader spreads the service again (`spread.py`): why, for people
    # (``operator status`` shows ``Rebalancing``). Empty otherwise.
    rebalancing: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", bounded_text(self.reason, MAX_REASON_BYTES))

    @property
    def total(self) -> int:
        """Replicas placed on some host."""
        return sum(self.hosts.values())

    def spec_counts(self, host: str) -> dict[str, int]:
        """Replicas of each spec placed on ``host``."""
        if self.specs:
            return {s: n for s, n in self.specs.get(host, {}).items() if n > 0}
        count = self.hosts.get(host, 0)
        return {self.spec_hash: count} if count > 0 else {}

    def _decision(self) -> dict[str, object]:
        body: dict[str, object] = {
            "service": self.service,
            "spec_hash": self.spec_hash,
            "hosts": {h: n for h, n in sorted(self.hosts.items()) if n > 0},
            "unplaced": self.unplaced,
        }
        specs = {h: {s: n for s, n in sorted(c.items()) if n > 0} for h, c in sorted(self.specs.items())}
        specs = {h: c for h, c in specs.items() if c}
        if specs:  # absent outside a rollout: the form of records written before rollouts
            body["specs"] = specs
        if self.unplaced:  # absent when all is placed: the form of records written before causes
            body["cause"] = self.cause.value
            body["reason"] = self.reason
        if self.rebalancing:  # absent when not rebalancing: the form of records written before
            body["rebalancing"] = self.rebalancing
        stuck = {h: n for h, n in sorted(self.stuck.items()) if n > 0}
        if stuck:  # absent unless a drain holds replicas: the form of records written before
            body["stuck"] = stuck
        return body

    def to_json(self) -> bytes:
        """The KV form; stable, so that an unchanged decision gives the same bytes."""
        return _dumps({**self._decision(), "written_by": self.written_by})

    @classmethod
    def from_json(cls, data: bytes) -> PlacementRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        body = _object(data, "placement")
        try:
            cause = _text(body.get("cause", "none"))
            raw_hosts = _map(body["hosts"], "hosts")
            _entries(raw_hosts, "hosts")
            hosts = {str(h): _integer(n, f"replicas on {h}") for h, n in raw_hosts.items()}
            _bounded(sum(hosts.values()), "replicas placed")
            raw_specs = _map(body.get("specs") or {}, "specs")
            specs: dict[str, Mapping[str, int]] = {}
            for h, c in raw_specs.items():
                per_spec = _map(c, f"specs on {h}")
                counts = {str(s): _integer(n, f"replicas of {s} on {h}") for s, n in per_spec.items()}
                specs[str(h)] = MappingProxyType({s: n for s, n in counts.items() if n > 0})
            raw_stuck = _map(body.get("stuck") or {}, "stuck")
            stuck = {str(h): _integer(n, f"stuck on {h}") for h, n in raw_stuck.items()}
            return cls(
                service=str(body["service"]),
                spec_hash=str(body["spec_hash"]),
                hosts=frozen_map({h: n for h, n in hosts.items() if n > 0}),
                unplaced=_integer(body.get("unplaced", 0), "unplaced"),
                written_by=str(body.get("written_by", "")),
                specs=MappingProxyType({h: c for h, c in specs.items() if c}),
                cause=UnplacedCause(cause) if cause in UNPLACED_CAUSES else UnplacedCause.NONE,
                reason=_text(body.get("reason")),
                rebalancing=_text(body.get("rebalancing")),
                stuck=frozen_map({h: n for h, n in stuck.items() if n > 0}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a placement record: {exc}") from exc

    def same_decision(self, other: PlacementRecord | None) -> bool:
        """Whether writing ``self`` over ``other`` would change no decision (the writer may differ)."""
        if other is None:
            return False
        # Equal fields are an equal decision: most services, most passes, asked of every service
        # twice a leader pass, without building the two normal forms (issue 31's profile).
        if (
            self.hosts == other.hosts
            and self.service == other.service
            and self.spec_hash == other.spec_hash
            and self.unplaced == other.unplaced
            and self.specs == other.specs
            and self.cause == other.cause
            and self.reason == other.reason
            and self.rebalancing == other.rebalancing
            and self.stuck == other.stuck
        ):
            return True
        return self._decision() == other._decision()


# --- operator/rollout/<name> -----------------------------------------------------------


class RolloutState(StrEnum):
    """Where a rollout is; ``progressing``, ``held`` and ``rolling_back`` are the active states.

    ``held``: a forward rollout that wants new replicas where none fits (the
    capacity filter); the old replicas keep running, the record's ``reason``
    says why, and it goes on (``progressing``) once one fits, or fails at its
    deadline like any other.
    """

    PROGRESSING = "progressing"
    HELD = "held"
    COMPLETE = "complete"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Whether the leader is still moving replicas."""
        return self in (RolloutState.PROGRESSING, RolloutState.HELD, RolloutState.ROLLING_BACK)


ROLLOUT_STATES = tuple(RolloutState)
"""Every state of a rollout, in the order of the enum."""


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """The leader's rollout of one service from one spec hash to another.

    Stored as JSON in ``operator/rollout/<service>``. ``from_spec`` is the last
    fully converged spec (the one a rollback returns to), ``to_spec`` the one
    being rolled out; while rolling back, ``to_spec`` is that previous spec.
    ``updated`` counts replicas of ``to_spec`` that passed for min_healthy,
    out of ``total``.

    ``started`` is a wall-clock stamp, for people only. The deadline is
    measured by ``elapsed``: seconds the rollout has been in its state, as
    leaders measured them with their own monotonic clocks (`time_rollout`).
    Hosts' clocks may disagree, or one may step (NTP); a duration each
    leader measures itself and hands on in the record does not care. A new
    leader resumes from the last ``elapsed`` written, so a leader change can
    only lengthen a deadline (by at most ``ROLLOUT_ELAPSED_EVERY``), never
    shorten it.
    """

    service: str
    from_spec: str
    to_spec: str
    state: RolloutState
    started: float
    reason: str = ""
    updated: int = 0
    total: int = 0
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", bounded_text(self.reason, MAX_REASON_BYTES))

    @property
    def active(self) -> bool:
        """Whether the leader is still moving replicas."""
        return self.state.active

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "service": self.service,
                "from": self.from_spec,
                "to": self.to_spec,
                "state": self.state.value,
                "started": self.started,
                "reason": self.reason,
                "updated": self.updated,
                "total": self.total,
                "elapsed": round(self.elapsed, 3),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> RolloutRecord:
        """Parse the KV form; raises ValueError when it is not ours."""
        body = _object(data, "rollout")
        try:
            state = str(body["state"])
            if state not in RolloutState.__members__.values():
                raise ValueError(f"unknown state {state!r}")
            elapsed = _number(body.get("elapsed", 0.0), "elapsed")
            return cls(
                service=str(body["service"]),
                from_spec=str(body["from"]),
                to_spec=str(body["to"]),
                state=RolloutState(state),
                started=_stamp(_number(body["started"], "started"), "started"),
                reason=str(body.get("reason", "")),
                updated=_integer(body.get("updated", 0), "updated"),
                total=_integer(body.get("total", 0), "total"),
                elapsed=_seconds(elapsed if math.isnan(elapsed) else max(0.0, elapsed), "elapsed"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a rollout record: {exc}") from exc


# --- operator/status/<name>/<host> -------------------------------------------------------


class Hold(StrEnum):
    """Why an agent leaves a service's containers and registrations exactly as they are."""

    INVALID = "invalid"
    """The manifest in KV does not validate (the error names the first problem)."""
    UNPLACED = "unplaced"
    """The leader has not placed the service yet."""


@dataclass(frozen=True, slots=True)
class ReplicaMark:
    """What an agent vouches for about one replica it runs: its host port, container and spec.

    ``container`` is the container id's first `CONTAINER_ID_CHARS` characters
    (Docker's short id): enough to tell two containers apart, and a third of
    the full id's bytes in a record that lists every replica (`ownership.owned`
    compares it with the registration's ``container`` meta).
    """

    port: int  # 0: the replica publishes no port (a worker: nothing registered in Consul)
    container: str
    spec: str

    def to_json(self) -> list[object]:
        """The compact KV form: ``[port, container, spec]``."""
        return [self.port, self.container, self.spec]

    @classmethod
    def from_json(cls, value: object) -> ReplicaMark | None:
        """Parse ``[port, container, spec]``; None for anything else.

        Port 0 reads back as written: dropping it made a portless service's record
        differ from what its agent wrote, and every status check (2 s) rewrote it.
        """
        if not isinstance(value, list) or len(value) != 3:
            return None
        port, container, spec = value
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            return None
        if not isinstance(container, str) or not isinstance(spec, str):
            return None
        return cls(port, container, spec)


CONTAINER_ID_CHARS = 12
"""Characters of a container id that a status record keeps (`ReplicaMark.container`)."""


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """What the agent of ``host`` runs of ``service``: ``operator/status/<service>/<host>``.

    ``desired``, ``running`` and ``healthy`` count containers; ``specs`` the
    running ones per spec hash, draining ones included (the leader's surge
    limit); ``instances`` the running containers' names, i.e. the Consul
    service ids this agent vouches for (`ownership.owned`). ``error`` is for
    people; ``hold`` says, when set, that the agent leaves the service alone
    and why, so that a hands-off service's error is not taken for a failure of
    the host. ``since`` is the wall-clock time of the last change (None when
    unknown).
    """

    service: str
    host: str
    spec_hash: str = ""
    desired: int = 0
    running: int = 0
    healthy: int = 0
    error: str = ""
    hold: Hold | None = None
    specs: Mapping[str, int] = field(default_factory=frozen_map)
    instances: tuple[str, ...] = ()
    since: float | None = None
    node: str = ""
    replicas: Mapping[str, ReplicaMark] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "error", bounded_text(self.error, MAX_ERROR_BYTES))

    @property
    def says_nothing(self) -> bool:
        """Nothing of the service is placed, runs or fails on the host: no record says the same.

        Agents write no such record (and delete theirs once it says nothing):
        every host reporting every service made 100 hosts x 1,000 services
        100,000 records, 99,000 of them empty (docs/benchmarks.md, *Scale*).
        "Not placed yet" with nothing here says nothing about the host either
        (every host would write it for every new service of a bulk apply). An
        invalid manifest's record stays: each host says it holds, and why.
        """
        return (
            self.desired == 0
            and self.running == 0
            and self.healthy == 0
            and not self.specs
            and not self.instances
            and (not self.error or self.hold == Hold.UNPLACED)
        )

    def same_report(self, other: StatusRecord | None) -> bool:
        """Whether ``other`` says the same as ``self`` but for ``since`` (then nothing is rewritten)."""
        return other is not None and replace(other, since=self.since) == self

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "host": self.host,
                "service": self.service,
                "spec_hash": self.spec_hash,
                "desired": self.desired,
                "running": self.running,
                "healthy": self.healthy,
                "error": self.error,
                "hold": None if self.hold is None else self.hold.value,
                "specs": dict(sorted(self.specs.items())),
                "instances": list(self.instances),
                "since": self.since,
                "node": self.node,
                "replicas": {name: mark.to_json() for name, mark in sorted(self.replicas.items())},
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, service: str, host: str) -> StatusRecord:
        """Parse the record stored under ``operator/status/<service>/<host>`` (the key names both).

        ValueError when it is not a JSON object; a field of the wrong type reads as empty.
        """
        body = _object(data, "status")
        try:
            raw_specs = body.get("specs")
            specs: dict[str, int] = {}
            if isinstance(raw_specs, dict):
                _entries(raw_specs, "specs")
                try:
                    specs = {str(spec): _integer(n, f"running of {spec}") for spec, n in raw_specs.items()}
                except RecordBoundError:
                    raise
                except ValueError:
                    specs = {}  # junk counts: count nothing
            raw_instances = body.get("instances")
            listed = raw_instances if isinstance(raw_instances, list) else []
            _entries(listed, "instances")
            hold = _text(body.get("hold"))
            raw_replicas = body.get("replicas")
            replicas = raw_replicas if isinstance(raw_replicas, dict) else {}
            _entries(replicas, "replicas")
            marks = {
                str(name): mark
                for name, value in replicas.items()
                if (mark := ReplicaMark.from_json(value)) is not None
            }
            return cls(
                service=service,
                host=host,
                spec_hash=_text(body.get("spec_hash")),
                desired=_count(body.get("desired"), "desired"),
                running=_count(body.get("running"), "running"),
                healthy=_count(body.get("healthy"), "healthy"),
                error=_text(body.get("error")),
                hold=Hold(hold) if hold in Hold.__members__.values() else None,
                specs=frozen_map(specs),
                instances=tuple(item for item in listed if isinstance(item, str)),
                since=_timestamp(body.get("since"), "since"),
                node=_text(body.get("node")),
                replicas=MappingProxyType(marks),
            )
        except RecordBoundError as exc:
            raise ValueError(f"not a status record: {exc}") from exc


# --- operator/leader, operator/rollback/<name> --------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """The value of the leader lock ``operator/leader``: who leads, since when (wall clock)."""

    host: str
    since: float

    def to_json(self) -> bytes:
        """The KV form."""
        return json.dumps({"host": self.host, "since": self.since}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> LeaderRecord:
        """Parse the lock's value; raises ValueError when it is not ours."""
        body = _object(data, "leader")
        try:
            host, since = body.get("host"), _timestamp(body.get("since"), "since")
        except RecordBoundError as exc:
            raise ValueError(f"not a leader record: {exc}") from exc
        if host is None or since is None:
            raise ValueError("not a leader record: no host or no time")
        return cls(host=str(host), since=since)


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    """``operator rollback NAME``'s request to the leader; ``requested`` is a wall-clock stamp for people."""

    requested: float

    def to_json(self) -> bytes:
        """The KV form."""
        return json.dumps({"requested": self.requested}).encode()


# --- operator/hosts/<host> -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A host in maintenance: ``operator/hosts/<host>``, written by ``operator cordon`` / ``drain``.

    A record means the host is *cordoned*: it gets no new replicas.
    ``draining`` asks the leader to move every replica elsewhere, each
    replacement passing before the replica it replaces is drained, within
    ``deadline`` seconds; what is left then is moved at once. ``started``
    is a wall-clock stamp, for people only: the leader times the deadline on
    its own monotonic clock from when it first sees the drain (`maintenance.time_drains`).
    ``force`` (``operator drain --force``): past the deadline, replicas that no other
    host takes are stopped too; without it they stay, shown as stuck (`maintenance.keep_stuck`).
    ``operator uncordon`` deletes the record.
    """

    host: str
    draining: bool = False
    deadline: float | None = None
    started: float | None = None
    force: bool = False

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps(
            {
                "host": self.host,
                "cordoned": True,
                "draining": self.draining,
                "deadline": self.deadline,
                "started": self.started,
                "force": self.force,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, host: str) -> HostRecord:
        """Parse the record stored under ``operator/hosts/<host>`` (the key names the host).

        ValueError when it is not a JSON object; a field of the wrong type reads as
        empty (a drain without a readable deadline has none: it waits for its replacements).
        """
        body = _object(data, "host")
        try:
            raw = body.get("deadline")
            deadline = None if isinstance(raw, bool) or not isinstance(raw, int | float) else float(raw)
            if deadline is not None and (not math.isfinite(deadline) or deadline < 0):
                deadline = None  # no readable deadline: the drain waits for its replacements
            return cls(
                host=host,
                draining=body.get("draining") is True,
                deadline=None if deadline is None else _seconds(deadline, "deadline"),
                started=_timestamp(body.get("started"), "started"),
                force=body.get("force") is True,
            )
        except (RecordBoundError, OverflowError) as exc:
            raise ValueError(f"not a host record: {exc}") from exc


# --- operator/agents/<host> ----------------------------------------------------------------

MAX_NODE_NAME = 256
"""The longest Consul node name an agent record may hold."""


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """Which Consul node the agent of ``host`` runs on: ``operator/agents/<host>``, written by that agent.

    An ``operator-agent`` registration counts for ``host`` only on this node
    (`presence.is_agent_registration`): anyone who may register services can
    put a look-alike in the catalog, on a node of theirs, but only an agent
    (write on ``operator/``) can write this record.
    """

    host: str
    node: str

    def to_json(self) -> bytes:
        """The KV form."""
        return _dumps({"host": self.host, "node": self.node})

    @classmethod
    def from_json(cls, data: bytes | str, *, host: str) -> AgentRecord:
        """Parse the record stored under ``operator/agents/<host>``; ValueError when it is not one."""
        body = _object(data, "agent")
        node = body.get("node")
        if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_NAME:
            raise ValueError("not an agent record: no node name (or one too long)")
        return cls(host=host, node=node)


MAX_RENDERED_BYTES = 160 * 1024
"""An ``operator/rendered/<service>`` record's KV form (`resolve.resolve` refuses a larger one)."""


@dataclass(frozen=True, slots=True)
class RenderedRecord:
    """The text of a service's ``change_mode: signal`` templates, ``operator/rendered/<service>``,
    written by the leader (fenced) when it changes. Not part of the spec: the agents write a new text
    into their running replicas' files in place and send each template's signal (`refresh.py`)."""

    service: str
    files: tuple[tuple[str, str, str], ...]  # (path, text, signal), sorted by path

    def to_json(self) -> bytes:
        """The KV form."""
        files = {path: {"text": text, "signal": signal} for path, text, signal in self.files}
        return _dumps({"service": self.service, "files": files})

    @classmethod
    def from_json(cls, data: bytes | str, *, service: str) -> RenderedRecord:
        """Parse the record of ``service``; ValueError when it is not one."""
        body = _object(data, "rendered")
        files = body.get("files")
        if not isinstance(files, dict):
            raise ValueError("not a rendered record: no files")
        parsed: list[tuple[str, str, str]] = []
        for path, item in files.items():
            text = item.get("text") if isinstance(item, dict) else None
            signal = item.get("signal") if isinstance(item, dict) else None
            if not isinstance(text, str) or not isinstance(signal, str):
                raise ValueError(f"not a rendered record: {path!r} has no text or signal")
            parsed.append((str(path), text, signal))
        return cls(service, tuple(sorted(parsed)))
