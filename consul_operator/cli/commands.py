"""The commands a person runs: validate, status, describe, events, wait, apply, plan, rollback, delete,
cordon, drain, uncordon.

Exit codes: 0 done / converged, 1 not (invalid file, not converged, timed
out, no such service), 2 usage error or Consul unreachable.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from consul_operator.adapters.consul_client import BlockingQuery, ConsulClient
from consul_operator.adapters.event_log import read_events
from consul_operator.adapters.kv_state import read_statuses
from consul_operator.adapters.presence import agent_registrations, hosts_of
from consul_operator.adapters.snapshot import read_snapshot
from consul_operator.core.describe import build_description, description_json, event_line, render_description
from consul_operator.core.desired_state import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    is_dns_label,
    parse_manifest,
)
from consul_operator.core.durations import format_duration
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied
from consul_operator.core.keys import Layout
from consul_operator.core.maintenance import drain_remains, only_stuck_left
from consul_operator.core.model import HostInfo, is_extra_port
from consul_operator.core.reconcile import schedule
from consul_operator.core.records import HostRecord, RollbackRequest, RolloutRecord, RolloutState
from consul_operator.core.status import (
    StatusView,
    build_status,
    converged,
    render_table,
    rollout_ended_badly,
    shortfalls,
    to_json,
)
from consul_operator.core.terminal import clean_lines
from consul_operator.core.txn import fits_one_transaction, pack_writes, txn_operation
from consul_operator.core.volumes import RemovalRequest

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_UNREACHABLE = 2


def _say(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """Print human-facing text, every line cleaned (`terminal.clean_lines`): names, manifests,
    diffs, Consul's errors and reasons come from KV and the catalog and never reach a terminal raw.

    The one way the commands print text; only JSON (escaped by ``json.dumps``) and the
    status table (cleaned before it is coloured, `status.render_table`) are printed as they are.
    """
    stream = sys.stderr if err else sys.stdout
    stream.write(clean_lines(text) + end)


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
    return StatusView(view.now, view.leader, view.leader_since, view.hosts, services, view.load_balancers)


def _unreachable(exc: ConsulError) -> int:
    if isinstance(exc, ConsulPermissionDenied):
        _say(f"error: {exc} (check the ACL token: --token or CONSUL_HTTP_TOKEN)", err=True)
        return EXIT_UNREACHABLE
    _say(f"error: cannot read Consul: {exc}", err=True)
    return EXIT_UNREACHABLE


Output = Callable[[], AbstractContextManager[object]]
"""One whole output of a command that runs until stopped (`interrupts.StopBetweenOutputs.output`)."""


def status(
    target: Target,
    names: Sequence[str],
    *,
    as_json: bool,
    watch: bool,
    color: bool,
    output: Output = nullcontext,
) -> int:
    """Print the status once, or on every change with ``watch``; exit 0 when all shown is converged.

    ``watch`` runs until stopped: `main` ends the process on SIGINT or SIGTERM
    between two documents (``output``: each one is printed whole). Run in
    another process's hands, a KeyboardInterrupt is its end too: exit 0.
    """
    try:
        return _status(target, names, as_json=as_json, watch=watch, color=color, output=output)
    except KeyboardInterrupt:
        if not watch:
            raise
        return EXIT_OK


def _status(
    target: Target, names: Sequence[str], *, as_json: bool, watch: bool, color: bool, output: Output
) -> int:
    query = BlockingQuery(
        lambda i, w: target.consul.kv_list(target.layout.operator_prefix, index=i, wait=w), wait=5
    )
    if watch:
        try:
            query.next()  # the index to block on: from here on, a read returns on a change only
        except ConsulError as exc:
            return _unreachable(exc)
    shown = None  # what the last output said: a watch prints a change only
    while True:
        try:
            view = _only(_view(target), names)
        except ConsulError as exc:
            return _unreachable(exc)
        text = (
            json.dumps(to_json(view), indent=2, sort_keys=True)
            if as_json
            else render_table(view, color=color)
        )
        # A write under operator/ that changes nothing shown (another service's records, a
        # record written again as it was) prints nothing: one document per change of what is shown.
        if text != shown:
            shown = text
            with output():
                if as_json:
                    print(text)
                else:
                    if watch:
                        print("\x1b[H\x1b[2J" if color else "", end="")
                    print(text, end="")
                missing = [n for n in names if n not in {s.name for s in view.services}]
                for name in missing:
                    _say(f"{name}: no such service", err=True)
                if watch:
                    # Each update must reach a pipe (`| jq`, a log) now, not when the buffer fills.
                    sys.stdout.flush()
        if not watch:
            return EXIT_OK if converged(view, list(names) or None) else EXIT_NOT_OK
        try:
            # Until something under operator/ changes: placements, statuses, the leader.
            while not query.next()[0]:
                pass
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
            _say(f"{', '.join(names)}: converged")
            return EXIT_OK
        failed = [s for s in view.services if s.name in names and rollout_ended_badly(s)]
        if failed:
            for service in failed:
                _say(f"{service.name}: {service.state}", err=True)
            return EXIT_NOT_OK
        if clock() >= deadline:
            _say(f"timed out after {timeout:g}s:", err=True)
            for line in shortfalls(view, list(names)):
                _say(f"  {line}", err=True)
            return EXIT_NOT_OK
        try:
            query.next()
        except ConsulError:
            time.sleep(min(1.0, max(0.0, deadline - clock())))


def load_files(files: Sequence[str]) -> tuple[list[tuple[str, bytes, Manifest]], bool]:
    """Read (``-``: standard input) and validate every file; print every problem.

    The one loader of manifest files. Returns (the good ones as (file, text, manifest), all good).
    """
    good: list[tuple[str, bytes, Manifest]] = []
    ok = True
    for name in files:
        try:
            data = _read_capped(name)
            if len(data) > MAX_MANIFEST_BYTES:
                _say(
                    f"{name}: larger than the limit of {MAX_MANIFEST_BYTES} bytes (Consul's value limit)",
                    err=True,
                )
                ok = False
                continue
            manifest = parse_manifest(data)
        except OSError as exc:
            _say(f"{name}: cannot read: {exc.strerror or exc}", err=True)
            ok = False
            continue
        except ManifestError as exc:
            for problem in exc.problems:
                _say(f"{name}: {problem}", err=True)
            ok = False
            continue
        good.append((name, data, manifest))
    return good, ok


def _read_capped(name: str) -> bytes:
    """A file's bytes (``-``: standard input), at most one byte past `MAX_MANIFEST_BYTES`.

    Never more: ``operator validate - < /dev/zero`` ends at once instead of
    reading (and holding) all of its input.
    """
    if name == "-":
        return sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
    with open(name, "rb") as file:
        return file.read(MAX_MANIFEST_BYTES + 1)


def validate(files: Sequence[str]) -> int:
    """``operator validate``: one OK line per good file, every problem of a bad one (exit 1)."""
    loaded, ok = load_files(files)
    for name, _, manifest in loaded:
        _say(
            f"{name}: OK ({manifest.name}: {manifest.image}, {manifest.replicas} replicas,"
            f" spec {manifest.spec_hash()})"
        )
    return EXIT_OK if ok else EXIT_NOT_OK


def duplicate_names(loaded: Sequence[tuple[str, bytes, Manifest]]) -> dict[str, list[str]]:
    """Services named by more than one file: name -> the files."""
    files: dict[str, list[str]] = {}
    for file, _, manifest in loaded:
        files.setdefault(manifest.name, []).append(file)
    return {name: names for name, names in files.items() if len(names) > 1}


@dataclass(frozen=True)
class Write:
    """One manifest to write: only if its key still has the modify index read (0: absent)."""

    service: str
    key: str
    data: bytes
    index: int


def write_batches(writes: Sequence[Write]) -> list[list[Write]]:
    """Group writes into transactions within Consul's limits: the one packer, `txn.pack_writes`.

    Values travel in base64 (4/3 of their size) with some JSON around them; a
    write too big for any transaction gets a batch of its own (a single
    check-and-set PUT).
    """
    by_key = {write.key: write for write in writes}
    packing = pack_writes({write.service: {write.key: write.data} for write in writes})
    batches = [[by_key[key] for key in batch.writes] for batch in packing.batches]
    return batches + [[by_key[key]] for key in packing.too_large.values()]


def apply(target: Target, files: Sequence[str]) -> int:
    """Validate every file, show each diff against KV, then write them all with check-and-set.

    Nothing is written unless every file is valid and no two name the same
    service. The writes go in one Consul transaction (more only past
    Consul's limits), each conditioned on the modify index read for the diff:
    if another writer changed a manifest in between, nothing of that
    transaction is written and the command says which service.
    """
    loaded, ok = load_files(files)
    if not ok:
        _say("nothing written: fix the problems above", err=True)
        return EXIT_NOT_OK
    duplicates = duplicate_names(loaded)
    for name, where in sorted(duplicates.items()):
        _say(f"{name}: named by more than one file: {', '.join(where)}", err=True)
    if duplicates:
        _say("nothing written: one file per service", err=True)
        return EXIT_NOT_OK
    writes: list[Write] = []
    created: dict[str, bool] = {}
    try:
        for name, data, manifest in loaded:
            key = target.layout.service_key(manifest.name)
            current = target.consul.kv_get(key, consistent=True).value
            old = current.value.decode(errors="replace") if current else ""
            new = data.decode()
            if current is not None and current.value == data:
                _say(f"{manifest.name}: unchanged")
                continue
            diff = difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"{key} (in Consul)", name
            )
            _say("".join(diff), end="")
            writes.append(Write(manifest.name, key, data, current.modify_index if current else 0))
            created[manifest.name] = current is None
        batches = write_batches(writes)
        if len(batches) > 1:
            _say(
                f"{len(writes)} manifests exceed one Consul transaction (64 operations, 512 KiB):"
                f" writing them in {len(batches)} steps, each all-or-nothing"
            )
        done: list[str] = []
        for batch in batches:
            stale = _write_batch(target, batch)
            if stale:
                for write in batch:
                    if write.key in stale:
                        _say(_conflict(write), err=True)
                rest = [w.service for w in writes if w.service not in done]
                _say(f"nothing written for {', '.join(rest)}", err=True)
                if done:
                    _say(f"already written: {', '.join(done)}", err=True)
                return EXIT_NOT_OK
            for write in batch:
                _say(f"{write.service}: {'created' if created[write.service] else 'configured'}")
                done.append(write.service)
    except ConsulError as exc:
        return _unreachable(exc)
    return EXIT_OK


def _write_batch(target: Target, batch: Sequence[Write]) -> list[str]:
    """Write one batch with check-and-set; the keys another writer changed (then nothing was written)."""
    ops = [txn_operation(w.key, w.data, index=w.index) for w in batch]
    if len(batch) == 1 and not fits_one_transaction(ops):
        write = batch[0]
        return [] if target.consul.kv_put(write.key, write.data, cas=write.index) else [write.key]
    return target.consul.kv_cas_txn([(w.key, w.data, w.index) for w in batch])


def _conflict(write: Write) -> str:
    if write.index == 0:
        return f"{write.service}: another writer created {write.key} since it was read; not overwritten"
    return (
        f"{write.service}: another writer changed {write.key} since it was read"
        f" (modify index {write.index}); not overwritten: run apply again to see the new diff"
    )


def plan(target: Target, files: Sequence[str]) -> int:
    """Show what applying the files would change, per host, without writing anything."""
    loaded, ok = load_files(files)
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
    # A lost host is treated as past its grace, a drain as done: the plan shows where replicas end up.
    after = schedule(
        manifests,
        hosts,
        snapshot.placements,
        snapshot.now,
        lost_grace=0.0,
        cordoned=set(snapshot.maintenance),
        draining={h for h, record in snapshot.maintenance.items() if record.draining},
    )
    for _, _, manifest in loaded:
        name = manifest.name
        before = snapshot.placements.get(name)
        old_manifest = snapshot.manifests.get(name)
        record = after[name]
        _say(f"{name}:")
        if not isinstance(old_manifest, Manifest):
            _say("  new service" if old_manifest is None else "  replaces an invalid manifest")
        else:
            if old_manifest.replicas != manifest.replicas:
                _say(f"  replicas: {old_manifest.replicas} -> {manifest.replicas}")
            if old_manifest.as_written().spec_hash() != manifest.as_written().spec_hash():
                _say("  spec changed: every replica is replaced")
        for host in sorted(set(record.hosts) | set(before.hosts if before else {})):
            was = before.hosts.get(host, 0) if before else 0
            will = record.hosts.get(host, 0)
            _say(f"  {host}: {was} -> {will}" if was != will else f"  {host}: {will} (unchanged)")
        if record.unplaced:
            _say(f"  unplaced: {record.unplaced} ({record.reason or 'no host can take them'})")
    return EXIT_OK


def rollback_refusal(manifest: Manifest | str | None, rollout: RolloutRecord | None) -> str | None:
    """Why the leader would drop a rollback request, or None when it would honour it.

    ``manifest`` is the service's manifest, the first problem of an invalid
    one, or None when there is none. Mirrors `leader_plan.decide_leader`: the
    leader acts only on a valid manifest with a rollout that is progressing,
    complete or failed.
    """
    if manifest is None:
        return "no such service"
    if isinstance(manifest, str):
        return f"its manifest is invalid ({manifest}); the leader rolls back valid manifests only"
    if rollout is None:
        return "no rollout to roll back: the service has had one spec only (no previous spec kept)"
    if rollout.state == RolloutState.ROLLING_BACK:
        return f"already rolling back to spec {rollout.to_spec}"
    if rollout.state == RolloutState.ROLLED_BACK:
        return f"already rolled back to spec {rollout.to_spec}; apply a manifest to move on"
    if rollout.from_spec == rollout.to_spec:
        return (
            f"nothing to roll back to: its last rollout ended on the spec it started from ({rollout.to_spec})"
        )
    return None


def rollback(
    target: Target, name: str, *, timeout: float = 30.0, clock: Callable[[], float] = time.monotonic
) -> int:
    """Ask the leader to return ``name`` to its previous spec; report whether it did.

    Refused up front when the leader would drop the request. Otherwise the
    request (``operator/rollback/<name>``) is written only if none is pending,
    and the command waits until the leader takes it up: 0 once the rollout is
    rolling back, 1 when it was dropped, or when no leader took it within
    ``timeout`` (then the request is withdrawn, so that nothing happens later).
    """
    layout = target.layout
    try:
        refusal = rollback_refusal(*_rollback_facts(target, name))
        if refusal is not None:
            _say(f"{name}: cannot roll back: {refusal}", err=True)
            return EXIT_NOT_OK
        request = RollbackRequest(time.time()).to_json()
        if not target.consul.kv_put(layout.rollback_key(name), request, cas=0):
            _say(
                f"{name}: a rollback is already requested; the leader has not taken it up yet",
                err=True,
            )
            return EXIT_NOT_OK
        _say(f"{name}: rollback requested; waiting for the leader to take it up")
        deadline = clock() + timeout
        query = BlockingQuery(
            lambda i, w: target.consul.kv_get(layout.rollback_key(name), index=i, wait=w), wait=1
        )
        while True:
            _, pending = query.next()
            if pending is None:
                break
            if clock() >= deadline:
                target.consul.kv_delete(layout.rollback_key(name))
                _say(
                    f"{name}: no leader took the request up within {timeout:g}s; request withdrawn"
                    " (is an agent leading? see `operator status`)",
                    err=True,
                )
                return EXIT_NOT_OK
        _, rollout = _rollback_facts(target, name)
    except ConsulError as exc:
        return _unreachable(exc)
    if rollout is not None and rollout.state == RolloutState.ROLLING_BACK:
        _say(f"{name}: rolling back to spec {rollout.to_spec}; `operator wait {name}` follows it")
        return EXIT_OK
    state = "no rollout" if rollout is None else rollout.state
    _say(f"{name}: the leader dropped the rollback request (rollout: {state})", err=True)
    return EXIT_NOT_OK


def _rollback_facts(target: Target, name: str) -> tuple[Manifest | str | None, RolloutRecord | None]:
    """The service's manifest (or its first problem) and its rollout record, read consistently."""
    entry = target.consul.kv_get(target.layout.service_key(name), consistent=True).value
    manifest: Manifest | str | None = None
    if entry is not None:
        try:
            manifest = parse_manifest(entry.value)
        except ManifestError as exc:
            manifest = str(exc.problems[0]) if exc.problems else "invalid"
    raw = target.consul.kv_get(target.layout.rollout_key(name), consistent=True).value
    rollout = None
    if raw is not None:
        try:
            rollout = RolloutRecord.from_json(raw.value)
        except ValueError:
            rollout = None
    return manifest, rollout


def delete(target: Target, names: Sequence[str], *, volumes: bool = False) -> int:
    """Delete manifests: the agents drain and remove every replica. Their volumes stay unless
    ``volumes``: then each agent removes its own once the replicas are gone (`core.volumes`)."""
    code = EXIT_OK
    try:
        for name in names:
            key = target.layout.service_key(name)
            removal = target.layout.volume_removal_key(name)
            if target.consul.kv_get(key).value is None:
                _say(f"{name}: no such service", err=True)
                code = EXIT_NOT_OK
                continue
            target.consul.kv_delete(key)
            if volumes:
                target.consul.kv_put(removal, RemovalRequest(time.time()).to_json())
                _say(f"{name}: deleted; its volumes are removed once its replicas are gone")
                continue
            target.consul.kv_delete(removal)  # an older request must not remove what is kept now
            _say(f"{name}: deleted")
    except ConsulError as exc:
        return _unreachable(exc)
    return code


# --- maintenance: cordon, drain, uncordon, wait --drained ------------------------------------


def _host_record(target: Target, host: str) -> tuple[HostRecord | None, int]:
    """``host``'s maintenance record (None when it has none or it is unreadable) and its modify index."""
    entry = target.consul.kv_get(target.layout.host_key(host), consistent=True).value
    if entry is None:
        return None, 0
    try:
        return HostRecord.from_json(entry.value, host=host), entry.modify_index
    except ValueError:
        return None, entry.modify_index


def _registered(target: Target, host: str) -> bool:
    """Whether ``host`` has a registered agent (of ``--cluster``, when given), live or not."""
    return host in hosts_of(agent_registrations(target.consul, target.cluster, target.layout))


def _put_host_record(target: Target, record: HostRecord, index: int) -> bool:
    """Write ``record`` only if the key still has modify index ``index`` (0: absent); print a conflict."""
    if target.consul.kv_put(target.layout.host_key(record.host), record.to_json(), cas=index):
        return True
    _say(
        f"{record.host}: another writer changed {target.layout.host_key(record.host)} meanwhile;"
        " not overwritten: run the command again",
        err=True,
    )
    return False


def cordon(target: Target, host: str) -> int:
    """``operator cordon HOST``: no new replicas there; what runs there stays."""
    try:
        if not _registered(target, host):
            _say(f"{host}: no such host (no agent of it is registered)", err=True)
            return EXIT_NOT_OK
        record, index = _host_record(target, host)
        if record is not None:
            _say(f"{host}: already {'draining' if record.draining else 'cordoned'}")
            return EXIT_OK
        if not _put_host_record(target, HostRecord(host), index):
            return EXIT_NOT_OK
    except ConsulError as exc:
        return _unreachable(exc)
    _say(f"{host}: cordoned: no new replicas are placed there; what runs there stays")
    return EXIT_OK


def drain(target: Target, host: str, *, deadline: float, force: bool = False) -> int:
    """``operator drain HOST``: cordon it, and have the leader move every replica elsewhere.

    Each replacement passes before the replica it replaces is drained, within
    the services' update limits; what is left after ``deadline`` seconds moves
    at once. A replica that no other host takes (``placement.hosts``, labels,
    the last open host) is never stopped: it stays, stuck, unless ``force``
    (recorded in the host record), which stops it too past the deadline. A
    drain already under way with the same deadline and force is left as it
    is (its deadline keeps running); another one starts it afresh.
    """
    try:
        if not _registered(target, host):
            _say(f"{host}: no such host (no agent of it is registered)", err=True)
            return EXIT_NOT_OK
        record, index = _host_record(target, host)
        if record is not None and record.draining and (record.deadline, record.force) == (deadline, force):
            _say(f"{host}: already draining")
            return EXIT_OK
        new = HostRecord(host, draining=True, deadline=deadline, started=time.time(), force=force)
        if not _put_host_record(target, new, index):
            return EXIT_NOT_OK
    except ConsulError as exc:
        return _unreachable(exc)
    stuck = (
        "replicas with nowhere else to go are stopped too"
        if force
        else "replicas with nowhere else to go stay (--force stops them)"
    )
    _say(
        f"{host}: draining: no new replicas there; every replica moves elsewhere, each replacement"
        f" passing first; what is left after {format_duration(deadline)} moves at once; {stuck}"
    )
    _say(f"  operator wait --drained {host}    # blocks until nothing of ours runs there")
    return EXIT_OK


def uncordon(target: Target, host: str) -> int:
    """``operator uncordon HOST``: the host takes new replicas again (a drain under way stops)."""
    try:
        key = target.layout.host_key(host)
        if target.consul.kv_get(key, consistent=True).value is None:
            _say(f"{host}: not cordoned")
            return EXIT_OK
        target.consul.kv_delete(key)
    except ConsulError as exc:
        return _unreachable(exc)
    _say(f"{host}: uncordoned: new replicas may be placed there; nothing moves back")
    return EXIT_OK


def wait_drained(
    target: Target, host: str, *, timeout: float, clock: Callable[[], float] = time.monotonic
) -> int:
    """Block until nothing of ours is on ``host`` (0), or say what is left at the timeout (1).

    Nothing is left when no placement has a replica there, the host's agent
    reports no container running there (draining ones included) and no
    instance of ours passes there (`maintenance.drain_remains`). A host that
    no agent registered and that is not in maintenance is no such host (1 at once).
    When all that is left is stuck (replicas that no other host takes, which a
    drain without ``--force`` never stops: `maintenance.only_stuck_left`), it
    says what is stuck, per service (count, why), and exits 1 at once.
    """
    deadline = clock() + timeout
    # Placements, status records and the host's record are all under operator/.
    query = BlockingQuery(
        lambda i, w: target.consul.kv_list(target.layout.operator_prefix, index=i, wait=w), wait=1
    )
    while True:
        try:
            snapshot = read_snapshot(target.consul, target.layout, target.cluster, time.time())
        except ConsulError as exc:
            return _unreachable(exc)
        remains = drain_remains(host, snapshot.placements, snapshot.statuses, snapshot.passing)
        known = host in {h.name for h in snapshot.hosts} or host in snapshot.maintenance
        if not known and not remains:
            _say(f"{host}: no such host (no agent of it is registered)", err=True)
            return EXIT_NOT_OK
        if not remains:
            _say(f"{host}: drained")
            return EXIT_OK
        record = snapshot.maintenance.get(host)
        forced = record is not None and record.force
        if not forced and only_stuck_left(host, snapshot.placements, snapshot.statuses, snapshot.passing):
            _say(f"{host}: stuck: replicas with nowhere else to go stay on it:", err=True)
            for line in remains:
                _say(f"  {line}", err=True)
            _say(f"  operator drain --force {host}    # stops them at the deadline", err=True)
            return EXIT_NOT_OK
        if clock() >= deadline:
            record = snapshot.maintenance.get(host)
            if record is None or not record.draining:
                _say(f"{host}: not draining (operator drain {host})", err=True)
            _say(f"timed out after {timeout:g}s; still on {host}:", err=True)
            for line in remains:
                _say(f"  {line}", err=True)
            return EXIT_NOT_OK
        try:
            query.next()
        except ConsulError:
            time.sleep(min(1.0, max(0.0, deadline - clock())))


# --- describe and events ----------------------------------------------------------------


def describe(target: Target, name: str, *, as_json: bool) -> int:
    """Print one service's spec, placement, replicas and recent events; 1 when there is no such service."""
    try:
        now = time.time()
        view = _view(target)
        found = [s for s in view.services if s.name == name]
        if not found:
            _say(f"{name}: no such service", err=True)
            return EXIT_NOT_OK
        entry = target.consul.kv_get(target.layout.service_key(name)).value
        spec = entry.value.decode("utf-8", "replace") if entry is not None else ""
        records = read_statuses(target.consul, target.layout).get(name, {})
        listed = target.consul.health_service(name).value if is_dns_label(name) else []
        instances = [i for i in listed if not is_extra_port(i)]
        recent = read_events(target.consul, target.layout, name, now=now)
    except ConsulError as exc:
        return _unreachable(exc)
    described = build_description(now, found[0], spec, records, instances, recent)
    if as_json:
        only = _only(view, [name])
        status_json = to_json(only)["services"]
        assert isinstance(status_json, list)
        print(json.dumps(description_json(described, status_json[0]), indent=2, sort_keys=True))
    else:
        _say(render_description(described), end="")
    return EXIT_OK


def events(
    target: Target,
    name: str | None,
    *,
    since: float | None,
    follow: bool,
    as_json: bool,
    output: Output = nullcontext,
) -> int:
    """Print the recent events of one service or of all, oldest first; with ``follow``, then each new one
    (``output``: each batch printed whole before a signal ends the process, as for `status`)."""
    query = BlockingQuery(
        lambda i, w: target.consul.kv_list(target.layout.events_prefix, index=i, wait=w), wait=5
    )
    shown: set[tuple[str, str, str, float, int]] = set()
    try:
        if follow:
            query.next()
        while True:
            now = time.time()
            found = read_events(target.consul, target.layout, name, now=now)
            with output():
                for event in found:
                    key = (event.service, event.host, event.reason, event.time, event.count)
                    if key in shown or (since is not None and now - event.time > since):
                        continue
                    shown.add(key)
                    if as_json:
                        print(json.dumps(event.to_dict(), sort_keys=True))
                    else:
                        service = "" if name else f"{event.service:<16} "
                        _say(service + event_line(event, now))
                sys.stdout.flush()
            if not follow:
                return EXIT_OK
            while not query.next()[0]:
                pass
    except ConsulError as exc:
        return _unreachable(exc)
    except KeyboardInterrupt:
        if not follow:
            raise
        return EXIT_OK
