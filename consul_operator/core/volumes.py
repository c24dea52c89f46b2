"""Removing a deleted service's volumes (``operator delete NAME --volumes``): the pure decision.

``operator delete NAME`` keeps the volumes of NAME's replicas: deleting a manifest by mistake
must not lose a database. ``--volumes`` also writes a removal request,
``operator/volume-removals/<name>`` (`RemovalRequest`); every agent then removes its own
volumes of NAME (`volumes_to_remove`) once the service has no manifest and no container
of it is left on that host (Docker refuses to remove a volume in use). A request is honoured
for `REMOVAL_WINDOW` after it was made, so that a service created again later under the same
name and deleted without ``--volumes`` keeps its volumes; ``operator delete`` without
``--volumes`` deletes any request of the name at once.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

REMOVAL_WINDOW: Final = 86400.0
"""Seconds (wall clock) a removal request is honoured: a host down for longer keeps its volumes."""
MAX_REQUEST_BYTES: Final = 128
"""A removal request's JSON at most (it holds one time)."""


@dataclass(frozen=True, slots=True)
class RemovalRequest:
    """``operator delete NAME --volumes`` at ``requested`` (Unix seconds)."""

    requested: float

    def to_json(self) -> bytes:
        """The KV value, checked against `MAX_REQUEST_BYTES`."""
        data = json.dumps({"requested": round(self.requested, 3)}).encode()
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"a removal request is {len(data)} bytes, more than {MAX_REQUEST_BYTES}")
        return data

    @classmethod
    def from_json(cls, data: bytes) -> RemovalRequest | None:
        """The request, or None for a value that is not one (never honoured)."""
        if len(data) > MAX_REQUEST_BYTES:
            return None
        try:
            requested = json.loads(data).get("requested")
        except (ValueError, AttributeError):
            return None
        if isinstance(requested, bool) or not isinstance(requested, int | float):
            return None
        return cls(float(requested))


@dataclass(frozen=True, slots=True)
class VolumeCleanup:
    """What an agent does about removal requests: the volumes to remove now, and whether some
    requested service still has containers here (then it looks again soon)."""

    remove: tuple[tuple[str, str], ...]  # (service, volume name)
    waiting: bool


def volumes_to_remove(
    requests: Mapping[str, RemovalRequest],
    manifests: Collection[str],
    containers: Collection[str],
    volumes: Mapping[str, Sequence[str]],
    now: float,
) -> VolumeCleanup:
    """This host's volumes to remove: those of a service with a current request (made within
    `REMOVAL_WINDOW` before ``now``), no manifest (``manifests``: services that have one) and
    no container here (``containers``: services with one, in any state)."""
    remove: list[tuple[str, str]] = []
    waiting = False
    for service in sorted(volumes):
        request = requests.get(service)
        if request is None or abs(now - request.requested) > REMOVAL_WINDOW or service in manifests:
            continue
        if service in containers:
            waiting = True
            continue
        remove.extend((service, name) for name in sorted(volumes[service]))
    return VolumeCleanup(tuple(remove), waiting)
