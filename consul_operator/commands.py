"""The commands a person runs: status, wait, apply, plan, delete.

Exit codes: 0 done / converged, 1 not (invalid file, not converged, timed
out, no such service), 2 usage error or Consul unreachable.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from consul_operator.consul_client import BlockingQuery, ConsulClient
from consul_operator.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.errors import ConsulError, ConsulPermissionDenied
from consul_operator.keys import Layout
from consul_operator.model import HostInfo
from consul_operator.reconcile import schedule
from consul_operator.snapshot import read_snapshot
from consul_operator.status import (
    StatusView,
    build_status,
    converged,
    render_table,
    rollout_ended_badly,
    shortfalls,
    to_json,
)

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_UNREACHABLE = 2


@dataclass(frozen=True)
class Target:
    """Where the commands find the cluster."""

    consul: ConsulClient
    layout: Layout
    cluster: str | None


def _view(target: Target) -> StatusView:
    return build_status(read_snapshot(target.consul, target.layout, target.cluster, time.time()))


def _only(view: StatusView, names: Sequence[str]) -> StatusView:
    if not names:
        return view
    services = tuple(s for s in view.services if s.name in names)
    return StatusView(view.now, view.leader, view.leader_since, view.hosts, services)


def _unreachable(exc: ConsulError) -> int:
    if isinstance(exc, ConsulPermissionDenied):
        print(f"error: {exc} (check the ACL token: --token or CONSUL_HTTP_TOKEN)", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"error: cannot read Consul: {exc}", file=sys.stderr)
    return EXIT_UNREACHABLE


def status(target: Target, names: Sequence[str], *, as_json: bool, watch: bool, color: bool) -> int:
    """Print the status once, or on every change with ``watch``; exit 0 when all shown is converged."""
    query = BlockingQuery(
        lambda i, w: target.consul.kv_list(target.layout.operator_prefix, index=i, wait=w), wait=5
    )
    while True:
        try:
            view = _only(_view(target), names)
        except ConsulError as exc:
            return _unreachable(exc)
        if as_json:
            print(json.dumps(to_json(view), indent=2, sort_keys=True))
        else:
            if watch:
                print("\x1b[H\x1b[2J" if color else "", end="")
            print(render_table(view, color=color), end="")
        missing = [n for n in names if n not in {s.name for s in view.services}]
        for name in missing:
            print(f"{name}: no such service", file=sys.stderr)
        if not watch:
            return EXIT_OK if converged(view, list(names) or None) else EXIT_NOT_OK
        try:
            query.next()  # operator/ changes: placements, statuses, the leader
        except ConsulError as exc:
            return _unreachable(exc)


def wait(
    target: Target, names: Sequence[str], *, timeout: float, clock: Callable[[], float] = time.monotonic
) -> int:
    """Block until every named service is converged (0), or say what is missing at the timeout (1)."""
    deadline = clock() + timeout
    # Statuses change whenever a host's running or healthy count does; that is the wake-up.
    query = BlockingQuery(
        lambda i, w: target.consul.kv_list(target.layout.status_prefix, index=i, wait=w), wait=1
    )
    while True:
        try:
            view = _view(target)
        except ConsulError as exc:
            return _unreachable(exc)
        if converged(view, list(names)):
            print(f"{', '.join(names)}: converged")
            return EXIT_OK
        failed = [s for s in view.services if s.name in names and rollout_ended_badly(s)]
        if failed:
            for service in failed:
                print(f"{service.name}: {service.state}", file=sys.stderr)
            return EXIT_NOT_OK
        if clock() >= deadline:
            print(f"timed out after {timeout:g}s:", file=sys.stderr)
            for line in shortfalls(view, list(names)):
                print(f"  {line}", file=sys.stderr)
            return EXIT_NOT_OK
        try:
            query.next()
        except ConsulError:
            time.sleep(min(1.0, max(0.0, deadline - clock())))


def _load(files: Sequence[str]) -> tuple[list[tuple[str, bytes, Manifest]], bool]:
    """Read and validate every file; print every problem. Returns (good ones, all good)."""
    good: list[tuple[str, bytes, Manifest]] = []
    ok = True
    for name in files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
            manifest = parse_manifest(data)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            ok = False
            continue
        except ManifestError as exc:
            for problem in exc.problems:
                print(f"{name}: {problem}", file=sys.stderr)
            ok = False
            continue
        good.append((name, data, manifest))
    return good, ok


def apply(target: Target, files: Sequence[str]) -> int:
    """Validate every file first; if all are valid, show each diff against KV and write it."""
    loaded, ok = _load(files)
    if not ok:
        print("nothing written: fix the problems above", file=sys.stderr)
        return EXIT_NOT_OK
    try:
        for name, data, manifest in loaded:
            key = target.layout.service_key(manifest.name)
            current = target.consul.kv_get(key).value
            old = current.value.decode(errors="replace") if current else ""
            new = data.decode()
            if old == new:
                print(f"{manifest.name}: unchanged")
                continue
            diff = difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"{key} (in Consul)", name
            )
            sys.stdout.writelines(diff)
            target.consul.kv_put(key, data)
            print(f"{manifest.name}: {'configured' if current else 'created'}")
    except ConsulError as exc:
        return _unreachable(exc)
    return EXIT_OK


def plan(target: Target, files: Sequence[str]) -> int:
    """Show what applying the files would change, per host, without writing anything."""
    loaded, ok = _load(files)
    if not ok:
        return EXIT_NOT_OK
    try:
        snapshot = read_snapshot(target.consul, target.layout, target.cluster, time.time())
    except ConsulError as exc:
        return _unreachable(exc)
    manifests = {n: (m if isinstance(m, Manifest) else None) for n, m in snapshot.manifests.items()}
    for _, _, manifest in loaded:
        manifests[manifest.name] = manifest
    hosts = [
        HostInfo(h.name, dict(h.labels), h.live, None if h.live else snapshot.now) for h in snapshot.hosts
    ]
    # A lost host is treated as past its grace: the plan shows where replicas end up.
    after = schedule(manifests, hosts, snapshot.placements, snapshot.now, lost_grace=0.0)
    for _, _, manifest in loaded:
        name = manifest.name
        before = snapshot.placements.get(name)
        old_manifest = snapshot.manifests.get(name)
        record = after[name]
        print(f"{name}:")
        if not isinstance(old_manifest, Manifest):
            print("  new service" if old_manifest is None else "  replaces an invalid manifest")
        else:
            if old_manifest.replicas != manifest.replicas:
                print(f"  replicas: {old_manifest.replicas} -> {manifest.replicas}")
            if old_manifest.spec_hash() != manifest.spec_hash():
                print("  spec changed: every replica is replaced")
        for host in sorted(set(record.hosts) | set(before.hosts if before else {})):
            was = before.hosts.get(host, 0) if before else 0
            will = record.hosts.get(host, 0)
            print(f"  {host}: {was} -> {will}" if was != will else f"  {host}: {will} (unchanged)")
        if record.unplaced:
            print(f"  unplaced: {record.unplaced} (no host can take them)")
    return EXIT_OK


def rollback(target: Target, name: str) -> int:
    """Ask the leader to return ``name`` to its previous spec (``operator/rollback/<name>``)."""
    try:
        if target.consul.kv_get(target.layout.rollout_key(name)).value is None:
            print(f"{name}: no rollout to roll back (no previous spec kept)", file=sys.stderr)
            return EXIT_NOT_OK
        target.consul.kv_put(target.layout.rollback_key(name), json.dumps({"requested": time.time()}))
    except ConsulError as exc:
        return _unreachable(exc)
    print(f"{name}: rollback requested; `operator wait {name}` follows it")
    return EXIT_OK


def delete(target: Target, names: Sequence[str]) -> int:
    """Delete manifests: the agents drain and remove every replica."""
    code = EXIT_OK
    try:
        for name in names:
            key = target.layout.service_key(name)
            if target.consul.kv_get(key).value is None:
                print(f"{name}: no such service", file=sys.stderr)
                code = EXIT_NOT_OK
                continue
            target.consul.kv_delete(key)
            print(f"{name}: deleted")
    except ConsulError as exc:
        return _unreachable(exc)
    return code
