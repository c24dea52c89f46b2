"""Reading the shared state out of Consul KV, and watching it with blocking queries.

Reads never guess: a failed read raises (`ConsulError`), so that no loop
ever acts on missing data, and a manifest that does not validate comes back
as its `ManifestError` rather than disappearing. Manifests and placements are
read in Consul's ``consistent`` mode: right after a whole cluster restarts, a
default-mode read was seen to answer with an empty store, which looked like
"every service deleted" and drained everything (found by the outage test).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Generic, Protocol, TypeVar

import structlog

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import BlockingQuery, ConsulClient, Indexed, KVEntry
from consul_operator.adapters.interfaces import KVStore
from consul_operator.core.backoff import exponential
from consul_operator.core.desired_state import MAX_SECRET_BYTES, Manifest, ManifestError, parse_manifest
from consul_operator.core.errors import ConsulError, SecretMissing
from consul_operator.core.keys import Layout
from consul_operator.core.records import (
    HostRecord,
    LeaderRecord,
    PlacementRecord,
    RenderedRecord,
    RolloutRecord,
    StatusRecord,
)

log = structlog.get_logger()

R = TypeVar("R")


class Firable(Protocol):
    """What a watch wakes up: a loop's `loop.Trigger` (a watch knows nothing of loops)."""

    def fire(self) -> None:
        """Ask for a pass soon."""


ManifestResult = Manifest | ManifestError

# A watch that lost Consul retries at most this far apart: once Consul is back,
# the loops hear about it within this time. 1 s (it was 5 s): after a healed cut
# the load balancer's NGINX caught up 4.6-19.8 s late, and the goal is 2 s (issue
# 33); a Consul that is away gets one request a second per watch, a handful per daemon.
WATCH_RETRY_CAP = 1.0


def manifests_of(
    entries: Sequence[KVEntry], layout: Layout, *, by_index: bool = False
) -> dict[str, ManifestResult]:
    """The manifests among ``services/``'s entries, by name: parsed, or the reason it is invalid.

    ``entries`` is a whole listing of the prefix: the parse cache forgets the keys no longer in it.
    ``by_index``: the entries' modify indexes are Consul's (`TreeMirror`): an unchanged key is
    known by its index, without hashing its text.
    """
    result: dict[str, ManifestResult] = {}
    for entry in entries:
        name = layout.service_name(entry.key)
        if name is None:
            continue  # "services/" itself, or nested keys: not manifests
        index = entry.modify_index if by_index else None
        result[name] = PARSE_CACHE.parse(entry.key, entry.value, name, index=index)
    PARSE_CACHE.retain(layout.services_prefix, {entry.key for entry in entries})
    return result


PARSE_CACHE_KEYS = 8192
"""The most KV keys whose parse the cache holds (one result each), least recently used out."""


class ParseCache:
    """Parsed manifests by KV key: a key's result is kept, and reused, while its text is unchanged.

    Every pass re-reads KV, and parsing is the costly part (the strict YAML
    loader: up to about 10 µs a byte, a quarter of a second and more for a
    manifest of 510 KB). Each key holds one entry, what identifies its text
    (its modify index and length when the reader vouches for the index, else
    its digest) and the result, so an unchanged manifest is parsed once
    however large it is and however many there are. (An LRU bounded by the bytes of the texts
    thrashed: 70 manifests of 510 KB over a 32 MiB budget missed 70 of 70 on
    every pass, and a pass took minutes.)

    Memory: the results (each at most about its text's size; an error may
    quote the text) and a 16-byte digest, not the texts; one per key that the
    last listing of its prefix still holds (`retain`): what a pass holds of
    KV anyway, at most ``max_keys`` of them (least recently used out). A text
    past `desired_state.MAX_MANIFEST_BYTES` is refused before it is parsed
    (`parse_manifest`). Shared by the host and schedule loops, so it takes a lock.
    """

    def __init__(self, max_keys: int = PARSE_CACHE_KEYS) -> None:
        self.max_keys = max_keys
        self._entries: OrderedDict[tuple[str, str], tuple[tuple[object, ...], ManifestResult]] = OrderedDict()
        self._lock = threading.Lock()
        self.parses = 0
        """Texts parsed so far (cache misses)."""

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, key: str, value: bytes, name: str, *, index: int | None = None) -> ManifestResult:
        """The parsed manifest, or the reason it is invalid, of ``value`` stored at KV ``key`` as ``name``.

        ``index``: the key's modify index in Consul, which changes with every write: then the text is
        known by it (and its length), not hashed (70 texts of 510 KB hash in a quarter of a second).
        """
        slot = (key, name)
        if index:
            seen: tuple[object, ...] = ("index", index, len(value))
        else:
            seen = ("digest", hashlib.blake2b(value, digest_size=16).digest())
        with self._lock:
            found = self._entries.get(slot)
            if found is not None and found[0] == seen:
                self._entries.move_to_end(slot)
                return found[1]
        result = _parse_uncached(value, name)
        with self._lock:
            self.parses += 1
            self._entries[slot] = (seen, result)
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        return result

    def retain(self, prefix: str, keys: Collection[str]) -> None:
        """Forget the keys under ``prefix`` that are not in ``keys`` (a whole listing of the prefix)."""
        with self._lock:
            for slot in [s for s in self._entries if s[0].startswith(prefix) and s[0] not in keys]:
                del self._entries[slot]


def _parse_uncached(value: bytes, name: str) -> ManifestResult:
    try:
        return parse_manifest(value, key_name=name)
    except ManifestError as exc:
        return exc


PARSE_CACHE = ParseCache()


def _parse(key: str, value: bytes, name: str) -> ManifestResult:
    """Parse once per KV key and text (see `ParseCache`), the text known by its digest."""
    return PARSE_CACHE.parse(key, value, name)


WHOLE_TREE_BYTES = 256 * 1024
"""A `TreeMirror` whose values came to at most this many bytes reads its tree whole when it moved."""


class TreeMirror:
    """One prefix's entries (``services/``), kept between passes and brought up to date by what changed.

    Every pass read every manifest's value: with 70 manifests of 510 KB, 35 MB
    per read, per loop, per agent, which took Consul 2.5 s and more per read on
    a loaded machine and timed its readers out (issue 26). `read` asks for the
    keys and the prefix's index (no values): an unchanged index is an unchanged
    tree. Otherwise the kept keys' modify indexes are checked (`ConsulClient.kv_stale`:
    no values either), and only new and changed keys are read. The index is the
    one of the key listing, taken before the checks: a write after it changes
    the index, and the next read looks again. One mirror per loop (not shared:
    each loop reads when it needs to).

    A tree whose values came to at most ``whole`` bytes at its last read is
    read whole instead, in one request: the checks take a request per 64 keys,
    16 at 1,000 manifests, about 40 ms of a change's pass on three Consul
    servers, to save reading a few hundred KB (docs/benchmarks.md, *The
    services mirror*).
    """

    def __init__(self, prefix: str, whole: int = WHOLE_TREE_BYTES) -> None:
        self.prefix = prefix
        self.whole = whole
        self.index = 0
        self.entries: dict[str, KVEntry] = {}
        self.size = 0  # the values' bytes at the last read

    def read(self, consul: KVStore, *, consistent: bool = True) -> list[KVEntry]:
        """Every entry under the prefix now, sorted by key, reading only what changed since the last read."""
        listing = consul.kv_keys(self.prefix, consistent=consistent)  # refuses an unreadable prefix
        if listing.index and listing.index == self.index:
            return sorted(self.entries.values(), key=lambda e: e.key)
        if self.entries and self.size <= self.whole:
            tree = consul.kv_list(self.prefix, consistent=consistent).value
            self.entries, self.index = {e.key: e for e in tree}, listing.index
            self.size = sum(len(e.value) for e in tree)
            return sorted(tree, key=lambda e: e.key)
        keys = set(listing.value)
        known = {key: entry.modify_index for key, entry in self.entries.items() if key in keys}
        stale = consul.kv_stale(known, consistent=consistent) if known else set()
        fetch = sorted((keys - set(known)) | stale)
        entries = {key: entry for key, entry in self.entries.items() if key in known and key not in stale}
        entries.update({entry.key: entry for entry in consul.kv_get_many(fetch, consistent=consistent)})
        self.entries, self.index = entries, listing.index
        self.size = sum(len(e.value) for e in entries.values())
        return sorted(entries.values(), key=lambda e: e.key)


MIRROR_RESYNC = 300.0
"""Seconds between two reads of every mirrored prefix whole (`PrefixMirrors`), moved or not."""


class PrefixMirrors:
    """The large prefixes a reader reads whole on every pass, kept between passes and read again only
    when they moved (issue 31: a pass reads what changed, not the cluster).

    At 1,000 services x 10 hosts the leader's one read-only transaction
    carried 10,000 status records, 1,000 placements and every kept revision,
    about half of its pass (docs/benchmarks.md, *Issue 31*), on every pass:
    for a user's ``kv put`` under ``services/`` as much as after a burst.
    `read` lists each mirrored prefix one level deep first (no values: one
    name per service), which gives the index of everything under it (a
    write or a deletion moves it; `host_reads.OwnStatuses` relies on the
    same), and reads in the transaction only the prefixes whose index moved
    since the listing taken before their last read; the others are the
    entries that read found. A listing taken before the read is what makes a
    skip safe: a write after it moves the index, and the next read looks again.
    An empty prefix kept empty is unchanged whatever its index (Consul
    answers an empty prefix with the whole store's index: `nothing_there`).
    The view is the transaction's moment for what moved and the listing's for
    what did not: a write between them is read by the next pass (level-triggered;
    the leader's status watch wakes it, and placements and revisions are its own
    writes). Every ``resync`` seconds every prefix is read whole again, as a
    safety net (the index rule is Consul's, not ours).
    """

    def __init__(
        self,
        prefixes: Collection[str],
        resync: float = MIRROR_RESYNC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefixes = frozenset(prefixes)
        self.resync, self.clock = resync, clock
        self.kept: dict[str, tuple[int, list[KVEntry]]] = {}
        self.read_at = 0.0  # when every prefix was last read whole (monotonic)
        self.skipped = 0  # prefixes answered from the mirror (tests and the bench read it)

    def read(
        self, consul: KVStore, prefixes: Sequence[str], *, consistent: bool = True
    ) -> dict[str, list[KVEntry]]:
        """`KVStore.kv_trees` of ``prefixes``: those mirrored and unmoved from the mirror, the rest read."""
        if not self.kept or self.clock() - self.read_at >= self.resync:
            self.kept, self.read_at = {}, self.clock()
        listed: dict[str, int] = {}
        unmoved: dict[str, list[KVEntry]] = {}
        for prefix in prefixes:
            if prefix not in self.prefixes:
                continue
            listing = consul.kv_keys(prefix, separator="/", consistent=consistent)
            kept = self.kept.get(prefix)
            if kept is not None and _unmoved(kept, listing):
                unmoved[prefix] = kept[1]
            else:
                listed[prefix] = listing.index
        trees = (
            consul.kv_trees([p for p in prefixes if p not in unmoved], consistent=consistent)
            if len(unmoved) < len(prefixes)
            else {}
        )
        for prefix, index in listed.items():
            self.kept[prefix] = (index, trees[prefix])
        self.skipped += len(unmoved)
        for prefix in self.prefixes.intersection(prefixes):
            metrics.kv_prefix_reads.labels(prefix, "unmoved" if prefix in unmoved else "whole").inc()
        return {prefix: unmoved[prefix] if prefix in unmoved else trees[prefix] for prefix in prefixes}


def _unmoved(kept: tuple[int, list[KVEntry]], listing: Indexed[list[str]]) -> bool:
    """Whether a prefix kept at ``kept`` (the index listed before its read, its entries) is unchanged
    by ``listing``: the same index, or nothing there before and now."""
    index, entries = kept
    if not entries and not listing.value:
        return True
    return index > 0 and listing.index == index


class RecordCache(Generic[R]):
    """Records parsed by a reader's last listing of one prefix, by KV key, reused while the key's modify
    index (and length) is the same: a leader pass at 1,000 services parsed all 10,000 status records
    every time, a fifth of its time, and its 1,000 placement records (issue 31's profile). Only keys of
    the last listing are kept (the next listing forgets the rest). One per reader and prefix; the
    entries must be Consul's own, with their modify indexes."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int, R]] = {}
        # The listing last parsed, as the very object read (a `PrefixMirrors` answers an unmoved
        # prefix with the same list), with the options and the result: parsed again, it is the same.
        self.last: tuple[Sequence[KVEntry], object, object] | None = None

    def same_listing(self, entries: Sequence[KVEntry], options: object) -> object | None:
        """The result of parsing ``entries`` with ``options`` last time, if this is that very listing."""
        if self.last is not None and self.last[0] is entries and self.last[1] == options:
            return self.last[2]
        return None

    def known(self, entry: KVEntry) -> tuple[int, int, R] | None:
        """What ``entry``'s key was parsed to, if parsed at its modify index and length."""
        seen = self.entries.get(entry.key)
        if seen is not None and entry.modify_index and seen[:2] == (entry.modify_index, len(entry.value)):
            return seen
        return None


def _records_of(
    entries: Sequence[KVEntry],
    layout: Layout,
    prefix: str,
    parse: Callable[[bytes], R],
    what: str,
    cache: RecordCache[R] | None = None,
) -> dict[str, R]:
    """The JSON records among ``prefix``'s entries, by service; unreadable ones are skipped and logged
    (on every read: they are not kept in ``cache``)."""
    records: dict[str, R] = {}
    kept: dict[str, tuple[int, int, R]] = {}
    for entry in entries:
        service = layout.under(prefix, entry.key)
        if service is None:
            continue
        seen = cache.known(entry) if cache is not None else None
        if seen is not None:
            record = seen[2]
        else:
            try:
                record = parse(entry.value)
            except ValueError as exc:
                log.warning(f"ignoring a {what} record", key=entry.key, error=str(exc))
                continue
        kept[entry.key] = (entry.modify_index, len(entry.value), record)
        records[service] = record
    if cache is not None:
        cache.entries = kept
    return records


def placements_of(
    entries: Sequence[KVEntry], layout: Layout, cache: RecordCache[PlacementRecord] | None = None
) -> dict[str, PlacementRecord]:
    """The placement records among ``operator/placement/``'s entries, by service (``cache``: those
    parsed by the reader's last read, `RecordCache`)."""
    return _records_of(
        entries, layout, layout.placement_prefix, PlacementRecord.from_json, "placement", cache
    )


def read_revision(consul: KVStore, layout: Layout, name: str, spec: str) -> Manifest | None:
    """The manifest of spec ``spec`` of ``name`` kept by the leader; None when absent or not that spec."""
    entry = consul.kv_get(layout.revision_key(name, spec), consistent=True).value
    if entry is None:
        return None
    manifest = _parse(entry.key, entry.value, name)
    return manifest if isinstance(manifest, Manifest) and manifest.spec_hash() == spec else None


def rendered_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, RenderedRecord]:
    """The leader's rendered records among ``operator/rendered/``'s entries, by service; unreadable
    ones are skipped and logged (the leader writes them again)."""
    records: dict[str, RenderedRecord] = {}
    for entry in entries:
        service = layout.under(layout.rendered_prefix, entry.key)
        if service is None:
            continue
        try:
            records[service] = RenderedRecord.from_json(entry.value, service=service)
        except ValueError as exc:
            log.warning("ignoring a rendered record", key=entry.key, error=str(exc))
    return records


def read_rendered(consul: KVStore, layout: Layout, name: str) -> RenderedRecord | None:
    """The text of ``name``'s signal templates as the leader last rendered it (None: not written, or
    unreadable)."""
    entry = consul.kv_get(layout.rendered_key(name), consistent=True).value
    if entry is None:
        return None
    try:
        return RenderedRecord.from_json(entry.value, service=name)
    except ValueError:
        return None


def read_revisions(
    consul: KVStore, layout: Layout, wanted: Collection[tuple[str, str]]
) -> dict[tuple[str, str], Manifest]:
    """The kept manifests of ``wanted`` (service, spec), read together; those absent, unreadable or not
    of their spec are left out. Not through the parse cache: the caller keeps what it reads."""
    keys = {layout.revision_key(name, spec): (name, spec) for name, spec in wanted}
    found: dict[tuple[str, str], Manifest] = {}
    for entry in consul.kv_get_many(sorted(keys), consistent=True):
        if entry.key not in keys:
            continue
        name, spec = keys[entry.key]
        manifest = _parse_uncached(entry.value, name)
        if isinstance(manifest, Manifest) and manifest.spec_hash() == spec:
            found[name, spec] = manifest
    return found


def rollouts_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, RolloutRecord]:
    """The rollout records among ``operator/rollout/``'s entries, by service."""
    return _records_of(entries, layout, layout.rollout_prefix, RolloutRecord.from_json, "rollout")


def host_records_of(entries: Sequence[KVEntry], layout: Layout) -> dict[str, HostRecord]:
    """The hosts in maintenance among ``operator/hosts/``'s entries, by host; unreadable ones skipped, logged.

    An unreadable record is left out: its host is not cordoned until someone writes it again.
    """
    prefix = layout.hosts_prefix
    records: dict[str, HostRecord] = {}
    for entry in entries:
        host = layout.record_of(prefix, entry.key)
        if host is None:
            continue
        try:
            records[host] = HostRecord.from_json(entry.value, host=host)
        except ValueError as exc:
            log.warning("ignoring a host record", key=entry.key, error=str(exc))
    return records


StatusRecords = dict[str, dict[str, StatusRecord]]
"""``operator/status/`` records by service, then host."""


def read_statuses(
    consul: KVStore, layout: Layout, *, consistent: bool = False, keep_unreadable: bool = False
) -> StatusRecords:
    """``operator/status/<service>/<host>`` records: service -> host -> record.

    An unreadable record is left out, or with ``keep_unreadable`` kept as an
    empty record (the leader still sees that its host has a record, and can remove it).
    """
    entries = consul.kv_list(layout.status_prefix, consistent=consistent).value
    return statuses_of(entries, layout, keep_unreadable=keep_unreadable)


StatusCache = RecordCache[tuple[str, str, StatusRecord | None]]
"""`statuses_of`'s cache: each key's service, host and record (None: unreadable), as its last read
found them (its key is not split again either: 10,000 keys a leader pass at 1,000 services)."""


def statuses_of(
    entries: Sequence[KVEntry],
    layout: Layout,
    *,
    keep_unreadable: bool = False,
    cache: StatusCache | None = None,
) -> StatusRecords:
    """The status records among ``operator/status/``'s entries (`read_statuses`).

    ``cache``: records parsed by an earlier read, reused while their key's modify index (and length) is
    the same; the entries must then be Consul's own, with their modify indexes.
    """
    if cache is not None:
        same = cache.same_listing(entries, keep_unreadable)
        if isinstance(same, dict):  # the very listing parsed last pass: a copy of its result
            return {service: dict(per_host) for service, per_host in same.items()}
    statuses: StatusRecords = {}
    kept: dict[str, tuple[int, int, tuple[str, str, StatusRecord | None]]] = {}
    for entry in entries:
        seen = cache.known(entry) if cache is not None else None
        if seen is not None:
            service, host, parsed = seen[2]
        else:
            of = layout.status_of(entry.key)
            if of is None:
                continue
            service, host = of
            try:
                parsed = StatusRecord.from_json(entry.value, service=service, host=host)
            except ValueError:
                parsed = None
        kept[entry.key] = (entry.modify_index, len(entry.value), (service, host, parsed))
        if parsed is None:
            if not keep_unreadable:
                continue
            parsed = StatusRecord(service, host)
        statuses.setdefault(service, {})[host] = parsed
    if cache is not None:
        cache.entries = kept
        cache.last = (
            entries,
            keep_unreadable,
            {service: dict(per_host) for service, per_host in statuses.items()},
        )
    return statuses


def read_leader(consul: ConsulClient, layout: Layout) -> LeaderRecord | None:
    """Who holds the leader lock, and since when; None when nobody does."""
    entry = consul.kv_get(layout.leader_key, consistent=True).value
    if entry is None or not entry.session:
        return None
    try:
        return LeaderRecord.from_json(entry.value)
    except ValueError:
        return None


WHILE_IDLE = 0.5
"""Seconds a watch that is not `active` waits between looks at whether it has become so (no request)."""


def watch(
    what: str,
    fetch: Callable[[int, float], Indexed[object]],
    triggers: Sequence[Firable],
    stop: threading.Event,
    active: Callable[[], bool] | None = None,
) -> None:
    """Fire ``triggers`` whenever a blocking query on ``fetch`` sees a change; until ``stop``.

    The data itself is dropped: the loops re-read what they need (level-triggered).
    ``active``: the watch queries Consul only while it says so (the leader's
    watches); when it becomes active again, its first query fires the triggers.
    """
    query: BlockingQuery[object] = BlockingQuery(fetch)
    failures = 0
    while not stop.is_set():
        if active is not None and not active():
            query = BlockingQuery(fetch)  # afresh: the next query returns at once and fires
            stop.wait(WHILE_IDLE)
            continue
        try:
            changed, _ = query.next()
        except ConsulError as exc:
            failures += 1
            if failures == 1:
                log.warning("watch lost Consul", watch=what, error=str(exc))
            query.index = 0  # start afresh: the index may mean nothing to the next server
            stop.wait(exponential(failures, 0.5, WATCH_RETRY_CAP))  # 0.5 s, then 1 s
            continue
        if failures:
            log.info("watch reconnected", watch=what)
            failures = 0
            changed = True
        if changed:
            for trigger in triggers:
                trigger.fire()


def start_watch(
    what: str,
    fetch: Callable[[int, float], Indexed[object]],
    triggers: Sequence[Firable],
    stop: threading.Event,
    active: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Run `watch` in a daemon thread."""
    thread = threading.Thread(
        target=watch, args=(what, fetch, triggers, stop, active), name=f"watch-{what}", daemon=True
    )
    thread.start()
    return thread


def read_secrets(consul: KVStore, layout: Layout, manifest: Manifest) -> dict[str, bytes]:
    """The values of ``manifest``'s secrets, by name, read just before a start (`secrets/<service>/<name>`).

    Raises `SecretMissing` naming a secret that is not in KV or is larger than `MAX_SECRET_BYTES`;
    no message ever holds a value.
    """
    keys = {layout.secret_key(manifest.name, s.name): s.name for s in manifest.secrets}
    found = {keys[e.key]: e.value for e in consul.kv_get_many(list(keys), consistent=True) if e.key in keys}
    for key, name in keys.items():
        if name not in found:
            raise SecretMissing(f"secret {name} missing: write it to {key}")
        if len(found[name]) > MAX_SECRET_BYTES:
            raise SecretMissing(f"secret {name} is larger than {MAX_SECRET_BYTES} bytes ({key})")
    return found
