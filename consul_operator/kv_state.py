"""Reading the shared state out of Consul KV, and watching it with blocking queries.

Reads never guess: a failed read raises (`ConsulError`), so that no loop
ever acts on missing data, and a manifest that does not validate comes back
as its `ManifestError` rather than disappearing. Manifests and placements are
read in Consul's ``consistent`` mode: right after a whole cluster restarts, a
default-mode read was seen to answer with an empty store, which looked like
"every service deleted" and drained everything (found by the outage test).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import structlog

from consul_operator.consul_client import BlockingQuery, ConsulClient, Indexed
from consul_operator.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.errors import ConsulError
from consul_operator.keys import Layout
from consul_operator.loop import Trigger
from consul_operator.model import PlacementRecord, RolloutRecord

log = structlog.get_logger()

R = TypeVar("R")

ManifestResult = Manifest | ManifestError

# A watch that lost Consul retries at most this far apart: once Consul is back,
# the loops hear about it within this time.
WATCH_RETRY_CAP = 5.0


def read_manifests(consul: ConsulClient, layout: Layout) -> dict[str, ManifestResult]:
    """Every manifest under ``services/``, by name: parsed, or the reason it is invalid."""
    entries = consul.kv_list(layout.services_prefix, consistent=True).value
    result: dict[str, ManifestResult] = {}
    for entry in entries:
        name = layout.service_name(entry.key)
        if name is None:
            continue  # "services/" itself, or nested keys: not manifests
        result[name] = _parse(entry.value, name)
    return result


@functools.lru_cache(maxsize=4096)
def _parse(value: bytes, name: str) -> ManifestResult:
    """Parse once per distinct manifest text: every pass re-reads KV, but YAML parsing
    of a hundred unchanged manifests would be most of an idle agent's CPU."""
    try:
        return parse_manifest(value, key_name=name)
    except ManifestError as exc:
        return exc


def _read_records(consul: ConsulClient, prefix: str, parse: Callable[[bytes], R], what: str) -> dict[str, R]:
    """Every JSON record under ``prefix``, by service; unreadable ones are skipped and logged."""
    records: dict[str, R] = {}
    for entry in consul.kv_list(prefix, consistent=True).value:
        try:
            records[entry.key[len(prefix) :]] = parse(entry.value)
        except ValueError as exc:
            log.warning(f"ignoring a {what} record", key=entry.key, error=str(exc))
    return records


def read_placements(consul: ConsulClient, layout: Layout) -> dict[str, PlacementRecord]:
    """The leader's current decisions, by service."""
    return _read_records(consul, layout.placement_prefix, PlacementRecord.from_json, "placement")


def read_revision(consul: ConsulClient, layout: Layout, name: str, spec: str) -> Manifest | None:
    """The manifest of spec ``spec`` of ``name`` kept by the leader; None when absent or not that spec."""
    entry = consul.kv_get(layout.revision_key(name, spec), consistent=True).value
    if entry is None:
        return None
    manifest = _parse(entry.value, name)
    return manifest if isinstance(manifest, Manifest) and manifest.spec_hash() == spec else None


def read_rollouts(consul: ConsulClient, layout: Layout) -> dict[str, RolloutRecord]:
    """The leader's rollouts, by service."""
    return _read_records(consul, layout.rollout_prefix, RolloutRecord.from_json, "rollout")


def watch(
    what: str,
    fetch: Callable[[int, float], Indexed[object]],
    triggers: list[Trigger],
    stop: threading.Event,
) -> None:
    """Fire ``triggers`` whenever a blocking query on ``fetch`` sees a change; until ``stop``.

    The data itself is dropped: the loops re-read what they need (level-triggered).
    """
    query: BlockingQuery[object] = BlockingQuery(fetch)
    failures = 0
    while not stop.is_set():
        try:
            changed, _ = query.next()
        except ConsulError as exc:
            failures += 1
            if failures == 1:
                log.warning("watch lost Consul", watch=what, error=str(exc))
            query.index = 0  # start afresh: the index may mean nothing to the next server
            stop.wait(min(0.5 * 2**failures, WATCH_RETRY_CAP))
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
    triggers: list[Trigger],
    stop: threading.Event,
) -> threading.Thread:
    """Run `watch` in a daemon thread."""
    thread = threading.Thread(
        target=watch, args=(what, fetch, triggers, stop), name=f"watch-{what}", daemon=True
    )
    thread.start()
    return thread
