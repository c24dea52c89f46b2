"""Each host's work, as the leader writes it: ``operator/work/<host>/<shard>`` (issue 31).

Pure: no I/O. The leader derives every host's work from the placements it
decided (`host_work`), shards it under a byte bound (`work_records`) and
writes only the hosts whose work changed (`work_writes`), in the fenced
transactions of its pass. A host's agent can then block on its own prefix
``operator/work/<host>/`` instead of on every manifest and placement.

One entry per service placed on the host: the spec hash and count, during a
rollout the count per spec (each spec's manifest is its revision,
``operator/revisions/<name>/<spec>``, written before and never changed, so an
agent caches it by hash), the two timings of the manifest that the spec hash
leaves out (``drain``, ``stop_grace``), and for an invalid manifest its hold.

Every shard carries the leader's session and a digest of the host's whole
work: a reader takes a host's shards only when all of them are there and
agree (a torn set, or one written under an older leader session, means
"keep what runs"). A new leader rebuilds every host's work from one full
read before it writes any (`work_writes` with what it read as ``written``):
its session differs from every record's, so every host is written again.

The host side: `current_work` reads a host's shards back when they are
current (all there, one digest, the lock holder's session), `specs_wanted`
names the revisions they run, and `work_view` turns them into the
manifests and placements `host_plan.host_desires` takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consul_operator.core.desired_state import (
    DEFAULT_DRAIN,
    DEFAULT_STOP_GRACE,
    Manifest,
    ManifestError,
    Problem,
)
from consul_operator.core.keys import Layout
from consul_operator.core.records import MAX_WORK_BYTES, PlacementRecord, bounded_text

MAX_WORK_ERROR_BYTES = 256
"""An invalid manifest's first problem in a work entry, JSON-encoded (the status record says more)."""
WORK_FORMAT = 1
"""The version of the record's form; a reader refuses a form it does not know."""


@dataclass(frozen=True, slots=True)
class WorkEntry:
    """What one host runs of one service (see the module doc)."""

    spec: str
    count: int
    specs: Mapping[str, int] = field(default_factory=dict)
    """During a rollout: the count per spec hash (``count`` is their sum); empty otherwise."""
    drain: float = DEFAULT_DRAIN
    stop_grace: float = DEFAULT_STOP_GRACE
    """The manifest's, which its spec hash (and so its revision) leaves out; left out of the KV
    form when they are the defaults."""
    invalid: str = ""
    """The manifest's first problem when it is invalid: the host keeps what runs (a hold)."""

    def to_dict(self) -> dict[str, object]:
        """The entry's JSON form (sorted, defaults left out)."""
        body: dict[str, object] = {"spec": self.spec, "count": self.count}
        if self.specs:
            body["specs"] = dict(sorted(self.specs.items()))
        if self.drain != DEFAULT_DRAIN:
            body["drain"] = self.drain
        if self.stop_grace != DEFAULT_STOP_GRACE:
            body["stop_grace"] = self.stop_grace
        if self.invalid:
            body["invalid"] = self.invalid
        return body


HostWork = Mapping[str, WorkEntry]
"""One host's work: service -> entry."""


@dataclass(frozen=True, slots=True)
class WorkShard:
    """One ``operator/work/<host>/<shard>`` record."""

    host: str
    session: str
    digest: str
    """Of the host's whole work (every shard the same): a reader checks its shards agree."""
    shard: int
    shards: int
    services: Mapping[str, Mapping[str, object]]

    def to_json(self) -> bytes:
        """The KV form. (The leader writes the same bytes from encoded entries, `_shard_json`: a field
        added here goes there too; `test_work_records_are_the_plain_encoding_property` holds them equal.)"""
        body = {
            "format": WORK_FORMAT,
            "host": self.host,
            "session": self.session,
            "digest": self.digest,
            "shard": self.shard,
            "shards": self.shards,
            "services": self.services,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str, *, host: str) -> WorkShard:
        """Parse a shard stored under ``operator/work/<host>/``; ValueError when it is not one."""
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a work record: {exc}") from exc
        if not isinstance(body, dict) or body.get("format") != WORK_FORMAT:
            raise ValueError("not a work record of a known format")
        session, digest = body.get("session"), body.get("digest")
        shard, shards, services = body.get("shard"), body.get("shards"), body.get("services")
        if not (
            isinstance(session, str)
            and isinstance(digest, str)
            and isinstance(shard, int)
            and isinstance(shards, int)
            and 0 <= shard < shards
            and isinstance(services, dict)
            and body.get("host") == host
        ):
            raise ValueError("not a work record: fields missing or of the wrong type")
        return cls(host, session, digest, shard, shards, services)


@dataclass(frozen=True, slots=True)
class WrittenWork:
    """What KV holds (or the leader last wrote) of one host's work: its session, digest and shard keys."""

    session: str
    digest: str
    keys: frozenset[str]


def host_work(
    placements: Mapping[str, PlacementRecord],
    manifests: Mapping[str, Manifest | ManifestError],
    hosts: Iterable[str] = (),
) -> dict[str, dict[str, WorkEntry]]:
    """Every host's work from the placements: host -> service -> entry (hosts with replicas, and
    ``hosts`` with an invalid manifest's entry).

    A service without a manifest has no work anywhere (its replicas drain);
    an invalid manifest's entry carries its first problem (the host holds),
    on every one of ``hosts`` (the registered agents) too, with a count of
    0 where nothing of it is placed: every host reports an invalid manifest,
    as every host did when each read every manifest.
    """
    work: dict[str, dict[str, WorkEntry]] = {}
    for name, invalid in manifests.items():
        if isinstance(invalid, ManifestError):
            first = str(invalid.problems[0]) if invalid.problems else "invalid"
            problem = bounded_text(first, MAX_WORK_ERROR_BYTES)
            placed = placements.get(name)
            spec = placed.spec_hash if placed is not None else ""
            for host in hosts:
                work.setdefault(host, {})[name] = WorkEntry(spec, 0, invalid=problem)
    for name, record in placements.items():
        manifest = manifests.get(name)
        if manifest is None:
            continue
        if isinstance(manifest, Manifest):
            drain, stop_grace, problem = manifest.drain, manifest.stop_grace, ""
        else:
            first = str(manifest.problems[0]) if manifest.problems else "invalid"
            drain, stop_grace = DEFAULT_DRAIN, DEFAULT_STOP_GRACE
            problem = bounded_text(first, MAX_WORK_ERROR_BYTES)
        for host, count in record.hosts.items():
            # Outside a rollout (most services, every pass) an entry is its count alone: a
            # service's counts per spec built for each of its hosts were a third of this walk.
            specs = record.spec_counts(host) if record.specs else {}
            if count <= 0 and not any(specs.values()):
                continue
            entry = WorkEntry(record.spec_hash, count, specs, drain, stop_grace, problem)
            work.setdefault(host, {})[name] = entry
    return work


def _compact(value: object) -> str:
    """The stable JSON text of ``value``: sorted keys, no spaces (every work record's form)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


EncodedWork = Mapping[str, tuple["WorkEntry", str]]
"""One host's entries with their members as `_encoded` gave them: service -> (entry, member)."""


def _encoded(work: HostWork, known: EncodedWork | None = None) -> dict[str, str]:
    """Each entry as a JSON object's member, ``"name":{...}``, by service, in name order: encoded
    once for the digest, the shards' sizes and their bodies. Three encodings of every entry of every
    host whose work changed were the largest part of a leader pass that places one service at 1,000
    services (issue 31).

    ``known``: members encoded before, each with the entry it encodes; an entry equal to that one
    takes its member as it is. A new service placed on every host changes every host's work, and
    encoding each host's thousand unchanged entries again was a quarter of such a pass.
    """
    members: dict[str, str] = {}
    for name in sorted(work):
        entry = work[name]
        before = known.get(name) if known is not None else None
        if before is not None and before[0] == entry:
            members[name] = before[1]
        else:
            members[name] = f"{json.dumps(name)}:{_compact(entry.to_dict())}"
    return members


def _members(encoded: Mapping[str, str]) -> str:
    """The members of a JSON object of ``encoded``'s entries (in its order), without the braces."""
    return ",".join(encoded.values())


def work_digest(work: HostWork, encoded: Mapping[str, str] | None = None) -> str:
    """A digest of one host's whole work (equal work, equal digest): of its sorted, compact JSON
    form. ``encoded``: its entries as `_encoded` gives them, when already at hand."""
    members = _members(encoded if encoded is not None else _encoded(work))
    return hashlib.sha256(f"{{{members}}}".encode()).hexdigest()[:16]


def work_records(
    layout: Layout,
    host: str,
    work: HostWork,
    session: str,
    max_bytes: int = MAX_WORK_BYTES,
    *,
    encoded: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """``host``'s work as shard records, key -> KV form, each within ``max_bytes``.

    Services are taken in name order and a shard is closed when the next entry
    would pass the bound (measured on the encoded form, with room for the
    record's own fields). A host without work has one empty shard: present
    and current, it says "run nothing here". ``encoded``: the entries as
    `_encoded` gives them, when already at hand.
    """
    encoded = encoded if encoded is not None else _encoded(work)
    digest = work_digest(work, encoded)
    overhead = len(WorkShard(host, session, digest, 999_999, 999_999, {}).to_json())
    shards: list[dict[str, str]] = [{}]
    size = overhead
    for name, member in encoded.items():
        entry_bytes = len(member) + 1  # `"name":{...},`
        if shards[-1] and size + entry_bytes > max_bytes:
            shards.append({})
            size = overhead
        shards[-1][name] = member
        size += entry_bytes
    return {
        layout.work_key(host, i): _shard_json(host, session, digest, i, len(shards), services)
        for i, services in enumerate(shards)
    }


def _shard_json(
    host: str, session: str, digest: str, shard: int, shards: int, services: Mapping[str, str]
) -> bytes:
    """`WorkShard.to_json` of a shard whose services are already encoded (``services``: name -> its
    member, as `_encoded` gives it, in name order): the same bytes, the members put in as they are.
    The record's own fields sort around ``services``: digest, format, host before; session, shard(s)
    after."""
    before = _compact({"digest": digest, "format": WORK_FORMAT, "host": host})[:-1]
    after = _compact({"session": session, "shard": shard, "shards": shards})[1:]
    return f'{before},"services":{{{_members(services)}}},{after}'.encode()


@dataclass(frozen=True, slots=True)
class WorkWrites:
    """The work-key writes of a pass, in the order they must land: additions first (hosts gaining a
    service or replicas), then the rest and the deletions; and what KV holds once they are written."""

    additions: Mapping[str, bytes | None]
    removals: Mapping[str, bytes | None]
    written: Mapping[str, WrittenWork]
    encoded: Mapping[str, EncodedWork] = field(default_factory=dict)
    """The hosts whose work this pass encoded, each entry with its member (the next pass's ``known``)."""

    def __bool__(self) -> bool:
        return bool(self.additions or self.removals)


def work_writes(
    layout: Layout,
    desired: Mapping[str, HostWork],
    written: Mapping[str, WrittenWork],
    session: str,
    previous: Mapping[str, HostWork] | None = None,
    hosts: Mapping[str, object] | None = None,
    known: Mapping[str, EncodedWork] | None = None,
) -> WorkWrites:
    """The writes that bring KV's work keys from ``written`` to ``desired``, under ``session``.

    A host whose digest and session are unchanged is not written. A host
    with no work left gets an empty shard while it is a known host
    (``hosts``: registered agents), and loses its keys otherwise. A host
    counts as an *addition* when some service's count there grows (by
    ``previous``, what the leader last decided: unknown counts as growing);
    those are written before the others, so that a replica moving between
    hosts starts on its new host before it is drained from the old one.
    ``known``: per host, entries encoded by an earlier pass (`WorkWrites.encoded`), reused where
    equal (`_encoded`).
    """
    additions: dict[str, bytes | None] = {}
    removals: dict[str, bytes | None] = {}
    after = dict(written)
    encodings: dict[str, EncodedWork] = {}
    listed = set(desired) | set(hosts or {})
    for host in sorted(listed | set(written)):
        work = desired.get(host, {})
        before = written.get(host)
        if host not in listed:
            if before is not None:
                removals.update(dict.fromkeys(sorted(before.keys)))
                del after[host]
            continue
        unchanged = previous is not None and host in previous and previous[host] == work
        if before is not None and before.session == session and unchanged:
            continue  # as last written: no digest to work out (most hosts, most passes)
        encoded = _encoded(work, (known or {}).get(host))
        encodings[host] = {name: (work[name], member) for name, member in encoded.items()}
        digest = work_digest(work, encoded)
        if before is not None and before.session == session and before.digest == digest:
            continue
        records = work_records(layout, host, work, session, encoded=encoded)
        stale = dict.fromkeys(sorted(before.keys - set(records))) if before is not None else {}
        grows = previous is None or _grows(work, previous.get(host, {}))
        (additions if grows else removals).update({**records, **stale})
        after[host] = WrittenWork(session, digest, frozenset(records))
    return WorkWrites(additions, removals, after, encodings)


def _grows(work: HostWork, before: HostWork) -> bool:
    """Whether some service's count in ``work`` is above its count in ``before``."""
    return any(entry.count > (before[n].count if n in before else 0) for n, entry in work.items())


def written_work(layout: Layout, entries: Mapping[str, bytes]) -> dict[str, WrittenWork]:
    """What KV holds of every host's work (``operator/work/``'s entries: key -> value), as
    `work_writes` compares it. A host whose shards disagree, or one of them unreadable, is held
    under an empty session, so that it is written again."""
    shards: dict[str, list[WorkShard | None]] = {}
    keys: dict[str, set[str]] = {}
    for key, value in entries.items():
        parsed = layout.work_host(key)
        if parsed is None:
            continue
        host, _ = parsed
        keys.setdefault(host, set()).add(key)
        try:
            shards.setdefault(host, []).append(WorkShard.from_json(value, host=host))
        except ValueError:
            shards.setdefault(host, []).append(None)
    result: dict[str, WrittenWork] = {}
    for host, found in shards.items():
        first = found[0]
        whole = (
            first is not None
            and all(s is not None and (s.session, s.digest) == (first.session, first.digest) for s in found)
            and len(found) == first.shards
        )
        if whole and first is not None:
            result[host] = WrittenWork(first.session, first.digest, frozenset(keys[host]))
        else:
            result[host] = WrittenWork("", "", frozenset(keys[host]))
    return result


# --- the host side: reading its own work ---------------------------------------------------


def entry_of(body: object) -> WorkEntry:
    """A work entry from its JSON form (`WorkEntry.to_dict`); ValueError when it is not one."""
    if not isinstance(body, dict):
        raise ValueError("a work entry must be an object")
    spec, count, specs = body.get("spec"), body.get("count"), body.get("specs", {})
    drain, stop_grace = body.get("drain", DEFAULT_DRAIN), body.get("stop_grace", DEFAULT_STOP_GRACE)
    invalid = body.get("invalid", "")
    if not (
        isinstance(spec, str)
        and isinstance(count, int)
        and count >= 0
        and isinstance(specs, dict)
        and all(isinstance(s, str) and isinstance(n, int) and n >= 0 for s, n in specs.items())
        and isinstance(drain, int | float)
        and isinstance(stop_grace, int | float)
        and isinstance(invalid, str)
    ):
        raise ValueError("a work entry's fields are missing or of the wrong type")
    return WorkEntry(spec, count, dict(specs), float(drain), float(stop_grace), invalid)


def current_work(host: str, values: Sequence[bytes], session: str | None) -> dict[str, WorkEntry] | None:
    """``host``'s work from the values of its ``operator/work/<host>/`` keys, when they are current:
    every shard there, readable, of one digest, and written under ``session`` (the leader lock's
    holder now). None otherwise: a missing key, a torn set, or one written under an older leader's
    session, which all mean "keep what runs" (the agent does not act on it)."""
    if not values or session is None:
        return None
    try:
        shards = [WorkShard.from_json(value, host=host) for value in values]
    except ValueError:
        return None
    first = shards[0]
    if len(shards) != first.shards or any(
        (s.session, s.digest, s.shards) != (first.session, first.digest, first.shards) for s in shards
    ):
        return None
    if first.session != session or sorted(s.shard for s in shards) != list(range(first.shards)):
        return None
    work: dict[str, WorkEntry] = {}
    try:
        for shard in shards:
            work.update({name: entry_of(body) for name, body in shard.services.items()})
    except ValueError:
        return None
    return work


def specs_wanted(work: HostWork) -> set[tuple[str, str]]:
    """(service, spec) of every revision ``work`` runs: each valid entry's spec and rollout specs."""
    return {(name, s) for name, e in work.items() if not e.invalid for s in {e.spec, *e.specs}}


WorkView = tuple[
    dict[str, Manifest | ManifestError], dict[str, PlacementRecord], dict[tuple[str, str], Manifest]
]
"""What a host pass decides over, as `host_plan.host_desires` takes it: manifests, placements
(this host's count only) and the revisions of the other specs it runs."""


def work_view(
    host: str,
    work: HostWork,
    kept: Mapping[tuple[str, str], Manifest],
    gone: Mapping[str, Manifest] | None = None,
) -> WorkView:
    """``host``'s work as manifests, placements and revisions (`host_plan.host_desires`'s input).

    Each entry's manifest is the revision of its spec (``kept``), with the
    entry's ``drain`` and ``stop_grace`` (which the spec hash leaves out). An
    entry whose manifest is invalid, or whose spec's revision is not kept,
    is a hold: what runs of it keeps running. ``gone``: services the last
    current work had and this one leaves out, with their last manifest;
    they get a count of 0 here, so their containers drain with the
    manifest's timings (one this agent never had drains with what each
    replica was started with: `model.LABEL_DRAIN`).
    """
    manifests: dict[str, Manifest | ManifestError] = {}
    placements: dict[str, PlacementRecord] = {}
    revisions: dict[tuple[str, str], Manifest] = {}
    for name, manifest in (gone or {}).items():
        if name not in work:
            manifests[name] = manifest
            placements[name] = PlacementRecord(name, manifest.spec_hash(), {host: 0})
    for name, entry in work.items():
        specs = {host: dict(entry.specs)} if entry.specs else {}
        placements[name] = PlacementRecord(name, entry.spec, {host: entry.count}, specs=specs)
        kept_spec = kept.get((name, entry.spec))
        if entry.invalid:
            manifests[name] = ManifestError([Problem("", entry.invalid)])
        elif kept_spec is None:
            missing = f"the revision of spec {entry.spec} is not in KV yet: keeping what runs"
            manifests[name] = ManifestError([Problem("", missing)])
        else:
            timings = (entry.drain, entry.stop_grace)
            # The revision itself when its timings are the entry's (most): a copy is hashed again.
            same = (kept_spec.drain, kept_spec.stop_grace) == timings
            manifests[name] = (
                kept_spec if same else dataclasses.replace(kept_spec, drain=timings[0], stop_grace=timings[1])
            )
            revisions.update(
                {(name, s): kept[name, s] for s in entry.specs if s != entry.spec and (name, s) in kept}
            )
    return manifests, placements, revisions
