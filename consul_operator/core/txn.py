"""Consul transactions as plain data: the operations, their encoded size, packing them, and
sending them so that one refusal never stops another write.

Pure: no I/O. Every writer of KV transactions packs with `pack_writes`, the
one packer, within the one limit below (issue 30: the CLI's check-and-set
writes, the agents' status records, the event flusher and the leader's
fenced writes):

* the request body of ``/v1/txn`` is refused over 512 KiB (HTTP 413;
  ``txn_max_req_len``), and values travel base64-encoded in it, a third larger;
* Consul 1.8 refuses a transaction of more than 64 operations, and every
  fenced write spends one on the ``check-session`` of the lock.

Writes come in *groups* (one per service, or per record): a group goes into
one transaction whenever it fits in one, so that a service's placement,
rollout and revision records change together. A write that no transaction
can hold is never sent: its group is returned as `Packing.too_large`. Then
`send_groups` sends each transaction on its own and retries the groups of a
refused one a group at a time, so that only the group at fault is refused
(a 413, an ACL denial on one key) and every other is written.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

CONSUL_MAX_REQUEST_BYTES: Final = 512 * 1024
"""Consul's ``txn_max_req_len``: the largest ``/v1/txn`` request body it accepts."""
CONSUL_MAX_TXN_OPS: Final = 64
"""The most operations Consul 1.8 accepts in one transaction."""

CONSUL_MAX_VALUE_BYTES: Final = 512 * 1024
"""Consul's ``kv_max_value_size``: the largest value one key may hold (a plain PUT's body)."""

TXN_MAX_BYTES: Final = CONSUL_MAX_REQUEST_BYTES - 4 * 1024
"""What one transaction's writes may take of its body, for every writer: Consul's limit less a
margin for the lock check of a fenced write and the list's brackets."""
TXN_MAX_WRITES: Final = CONSUL_MAX_TXN_OPS - 1
"""Writes per transaction, for every writer: one operation is left for a fenced write's
``check-session`` on the lock."""

# The widest ``"Index"`` a check-and-set operation carries (a uint64), counted in every
# write's size so that the same packing holds for ``set``, ``delete`` and ``cas``.
_INDEX_BYTES: Final = len(', "Index": 18446744073709551615')

# json.dumps' default item separator between two operations of the body.
_SEPARATOR_BYTES: Final = 2

Writes = Mapping[str, bytes | None]
"""Key -> new value, or None to delete the key."""


def txn_operation(key: str, value: bytes | None, *, index: int | None = None) -> dict[str, Any]:
    """The ``/v1/txn`` operation that sets ``key`` to ``value`` (deletes it for None); with
    ``index``, a check-and-set: only if the key's modify index is still ``index`` (0: absent)."""
    if value is None:
        return {"KV": {"Verb": "delete", "Key": key}}
    encoded = base64.b64encode(value).decode("ascii")
    if index is not None:
        return {"KV": {"Verb": "cas", "Key": key, "Value": encoded, "Index": index}}
    return {"KV": {"Verb": "set", "Key": key, "Value": encoded}}


def check_session_operation(lock_key: str, session: str) -> dict[str, Any]:
    """The operation that fails the whole transaction unless ``session`` holds ``lock_key``."""
    return {"KV": {"Verb": "check-session", "Key": lock_key, "Session": session}}


def txn_body(lock_key: str, session: str, writes: Writes) -> str:
    """The JSON body of a fenced write: the lock check first (operation 0), then the writes."""
    ops = [check_session_operation(lock_key, session)]
    ops.extend(txn_operation(key, value) for key, value in writes.items())
    return json.dumps(ops)


def operation_bytes(key: str, value: bytes | None) -> int:
    """What one write adds to a transaction body at most, separator included (as a ``cas`` too)."""
    return len(json.dumps(txn_operation(key, value)).encode("utf-8")) + _SEPARATOR_BYTES + _INDEX_BYTES


def fits_one_transaction(ops: list[dict[str, Any]]) -> bool:
    """Whether Consul takes ``ops`` as one transaction: at most 64 operations and 512 KiB of body."""
    return len(ops) <= CONSUL_MAX_TXN_OPS and len(json.dumps(ops).encode()) <= CONSUL_MAX_REQUEST_BYTES


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One transaction's worth of writes, and the groups (services) they belong to."""

    groups: tuple[str, ...]
    writes: Mapping[str, bytes | None]
    owners: Mapping[str, str] = field(default_factory=dict)
    """Key -> its group (several groups share a transaction when they fit)."""


@dataclass(frozen=True, slots=True)
class Packing:
    """The transactions to send, in order, and the groups left out: ``too_large`` maps each to
    its first key whose write no transaction can hold (Consul would refuse it: 413)."""

    batches: tuple[WriteBatch, ...]
    too_large: Mapping[str, str]

    def __iter__(self) -> Iterator[WriteBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def pack_writes(
    groups: Mapping[str, Writes],
    *,
    max_bytes: int = TXN_MAX_BYTES,
    max_writes: int = TXN_MAX_WRITES,
    max_value: int | Callable[[str], int] = CONSUL_MAX_VALUE_BYTES,
) -> Packing:
    """Pack the writes of ``groups`` into as few transactions as fit Consul's limits.

    Groups are taken in sorted order and never split while they fit in one
    transaction on their own; a group too big for one is split by key. A
    group with a write that fits no transaction at all (its operation alone
    over ``max_bytes``), or with a value over ``max_value`` (the writer's
    bound of its records, or a function of the key that gives each record's:
    `records.record_bound`; checked here before anything is sent), is left out
    whole, in `Packing.too_large`: sending it would only earn a 413, and the
    rest of its group must not be written without it. Empty groups are left
    out. The validator keeps a service's records within one transaction
    (`desired_state.MAX_REVISION_BYTES`), so in practice only many deletes
    (the status records of many lost hosts) are split: they do not depend on
    each other.
    """
    bound = max_value if callable(max_value) else (lambda _key: max_value)
    batches: list[WriteBatch] = []
    too_large: dict[str, str] = {}
    names: list[str] = []
    writes: dict[str, bytes | None] = {}
    owners: dict[str, str] = {}
    size = 0

    def flush() -> None:
        nonlocal names, writes, owners, size
        if writes:
            batches.append(WriteBatch(tuple(names), writes, owners))
        names, writes, owners, size = [], {}, {}, 0

    for name in sorted(groups):
        items = sorted(groups[name].items())
        if not items:
            continue
        sizes = [operation_bytes(k, v) for k, v in items]
        oversized = [
            key
            for (key, value), op_size in zip(items, sizes, strict=True)
            if op_size > max_bytes or (value is not None and len(value) > bound(key))
        ]
        if oversized:
            too_large[name] = oversized[0]
            continue
        if len(items) <= max_writes and sum(sizes) <= max_bytes:
            if len(writes) + len(items) > max_writes or size + sum(sizes) > max_bytes:
                flush()
            names.append(name)
            writes.update(items)
            owners.update((key, name) for key, _ in items)
            size += sum(sizes)
            continue
        flush()  # too big for one transaction: this group's writes go in their own
        for (key, value), op_size in zip(items, sizes, strict=True):
            if writes and (len(writes) + 1 > max_writes or size + op_size > max_bytes):
                flush()
            if not names:
                names.append(name)
            writes[key] = value
            owners[key] = name
            size += op_size
        flush()
    flush()
    return Packing(tuple(batches), too_large)


E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Sent(Generic[E]):
    """What `send_groups` wrote: the groups and keys written, and each refused group's refusal."""

    groups: tuple[str, ...]
    keys: tuple[str, ...]
    refused: Mapping[str, E]


def send_groups(packing: Packing, send: Callable[[Writes], E | None], too_large: E) -> Sent[E]:
    """Send every transaction of ``packing`` on its own; one refusal never stops another write.

    ``send`` writes one transaction and returns None, or the refusal (data:
    a status, an error); what must end everything (the lock lost, Consul
    away) it raises instead. A refused transaction of several groups is sent
    again one group at a time, so that only the group at fault is refused;
    after a refused part of a group split over several transactions, the
    rest of that group is not sent. Groups `Packing.too_large` are refused
    with ``too_large``, unsent.
    """
    keys: list[str] = []
    refused: dict[str, E] = dict.fromkeys(packing.too_large, too_large)
    for batch in packing.batches:
        if len(batch.groups) == 1 and batch.groups[0] in refused:
            continue
        refusal = send(batch.writes)
        if refusal is None:
            keys.extend(batch.writes)
        elif len(batch.groups) == 1:
            refused[batch.groups[0]] = refusal
        else:
            for group in batch.groups:  # find the one at fault; the others go through
                part = {k: v for k, v in batch.writes.items() if batch.owners[k] == group}
                alone = send(part)
                if alone is None:
                    keys.extend(part)
                else:
                    refused[group] = alone
    groups = tuple(dict.fromkeys(g for b in packing.batches for g in b.groups if g not in refused))
    return Sent(groups, tuple(keys), refused)
