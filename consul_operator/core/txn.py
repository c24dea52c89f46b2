"""Consul transactions as plain data: the operations, their encoded size, and packing them.

Pure: no I/O. `ConsulClient.fenced_write` sends what `txn_body` builds; the
leader packs its writes with `pack_writes` so that no transaction goes past
Consul's limits:

* the request body of ``/v1/txn`` is refused over 512 KiB (HTTP 413;
  ``txn_max_req_len``), and values travel base64-encoded in it, a third larger;
* Consul 1.8 refuses a transaction of more than 64 operations, and every
  fenced write spends one on the ``check-session`` of the lock.

Writes come in *groups* (one per service): a group goes into one transaction
whenever it fits in one, so that a service's placement, rollout and revision
records change together; a write that Consul refuses fails only the
transactions that hold it, and the leader retries each group of a refused
transaction on its own to find the one at fault.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

CONSUL_MAX_REQUEST_BYTES: Final = 512 * 1024
"""Consul's ``txn_max_req_len``: the largest ``/v1/txn`` request body it accepts."""
CONSUL_MAX_TXN_OPS: Final = 64
"""The most operations Consul 1.8 accepts in one transaction."""

TXN_MAX_BYTES: Final = CONSUL_MAX_REQUEST_BYTES - 4 * 1024
"""What the leader puts in one transaction body: Consul's limit less a margin for the lock check."""
TXN_MAX_WRITES: Final = CONSUL_MAX_TXN_OPS - 1
"""Writes per fenced transaction: one operation is the ``check-session`` on the lock."""

# json.dumps' default item separator between two operations of the body.
_SEPARATOR_BYTES: Final = 2

Writes = Mapping[str, bytes | None]
"""Key -> new value, or None to delete the key."""


def txn_operation(key: str, value: bytes | None) -> dict[str, Any]:
    """The ``/v1/txn`` operation that sets ``key`` to ``value`` (deletes it for None)."""
    if value is None:
        return {"KV": {"Verb": "delete", "Key": key}}
    return {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode("ascii")}}


def check_session_operation(lock_key: str, session: str) -> dict[str, Any]:
    """The operation that fails the whole transaction unless ``session`` holds ``lock_key``."""
    return {"KV": {"Verb": "check-session", "Key": lock_key, "Session": session}}


def txn_body(lock_key: str, session: str, writes: Writes) -> str:
    """The JSON body of a fenced write: the lock check first (operation 0), then the writes."""
    ops = [check_session_operation(lock_key, session)]
    ops.extend(txn_operation(key, value) for key, value in writes.items())
    return json.dumps(ops)


def operation_bytes(key: str, value: bytes | None) -> int:
    """What one write adds to a transaction body, separator included."""
    return len(json.dumps(txn_operation(key, value)).encode("utf-8")) + _SEPARATOR_BYTES


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One transaction's worth of writes, and the groups (services) they belong to."""

    groups: tuple[str, ...]
    writes: Mapping[str, bytes | None]


def pack_writes(
    groups: Mapping[str, Writes], *, max_bytes: int = TXN_MAX_BYTES, max_writes: int = TXN_MAX_WRITES
) -> list[WriteBatch]:
    """Pack the writes of ``groups`` into as few transactions as fit Consul's limits.

    Groups are taken in sorted order and never split while they fit in one
    transaction on their own; a group too big for one is split by key (a
    single write larger than ``max_bytes`` goes alone: Consul refuses it, and
    only it). Empty groups are left out. The validator keeps a service's
    records within one transaction (`desired_state.MAX_REVISION_BYTES`), so
    in practice only many deletes (the status records of many lost hosts) are
    split: they do not depend on each other.
    """
    batches: list[WriteBatch] = []
    names: list[str] = []
    writes: dict[str, bytes | None] = {}
    size = 0

    def flush() -> None:
        nonlocal names, writes, size
        if writes:
            batches.append(WriteBatch(tuple(names), writes))
        names, writes, size = [], {}, 0

    for name in sorted(groups):
        items = sorted(groups[name].items())
        if not items:
            continue
        sizes = [operation_bytes(k, v) for k, v in items]
        if len(items) <= max_writes and sum(sizes) <= max_bytes:
            if len(writes) + len(items) > max_writes or size + sum(sizes) > max_bytes:
                flush()
            names.append(name)
            writes.update(items)
            size += sum(sizes)
            continue
        flush()  # too big for one transaction: this group's writes go in their own
        for (key, value), op_size in zip(items, sizes, strict=True):
            if writes and (len(writes) + 1 > max_writes or size + op_size > max_bytes):
                flush()
            if not names:
                names.append(name)
            writes[key] = value
            size += op_size
        flush()
    flush()
    return batches
