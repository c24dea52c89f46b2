"""The surfaces the host and leader sides use of Consul and Docker, as `typing.Protocol`s.

The real clients (`consul_client.ConsulClient`, `actuators.docker.DockerActuator`,
`actuators.catalog.CatalogActuator`) implement them, and so do the tests' fakes:
code that takes a client names the interface, so that a test hands in a fake
without casting it to the real class (controller-runtime's ``client.Client``
and ``client/fake``). Parameters that the fakes name otherwise are
positional-only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from consul_operator.adapters.consul_client import DEFAULT_WAIT, Indexed, KVEntry
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import ConsulError
from consul_operator.core.model import ContainerInfo, Registration, ServiceInstance
from consul_operator.core.txn import CONSUL_MAX_VALUE_BYTES, Sent, Writes


class KVStore(Protocol):
    """Consul's KV store, as the host pass, its reads and the event flusher use it."""

    def kv_get(
        self, key: str, /, *, index: int = 0, wait: float = DEFAULT_WAIT, consistent: bool = False
    ) -> Indexed[KVEntry | None]:
        """One key (`ConsulClient.kv_get`)."""
        ...

    def kv_list(
        self, prefix: str, /, *, index: int = 0, wait: float = DEFAULT_WAIT, consistent: bool = False
    ) -> Indexed[list[KVEntry]]:
        """Every key under ``prefix`` (`ConsulClient.kv_list`)."""
        ...

    def kv_trees(self, prefixes: list[str], /, *, consistent: bool = False) -> dict[str, list[KVEntry]]:
        """Every key under each prefix, in one transaction (`ConsulClient.kv_trees`)."""
        ...

    def kv_keys(
        self,
        prefix: str,
        /,
        *,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
        separator: str | None = None,
    ) -> Indexed[list[str]]:
        """The keys under ``prefix``, without values (`ConsulClient.kv_keys`)."""
        ...

    def kv_stale(self, known: Mapping[str, int], /, *, consistent: bool = False) -> set[str]:
        """The keys of ``known`` whose modify index changed (`ConsulClient.kv_stale`)."""
        ...

    def kv_get_many(self, keys: list[str], /, *, consistent: bool = False) -> list[KVEntry]:
        """The entries of ``keys`` that exist (`ConsulClient.kv_get_many`)."""
        ...

    def kv_get_keys(self, keys: list[str], /, *, consistent: bool = False) -> dict[str, KVEntry]:
        """The entries of exactly ``keys`` that exist (`ConsulClient.kv_get_keys`)."""
        ...

    def kv_txn(self, writes: Mapping[str, bytes | None], /) -> None:
        """Write and delete keys in one transaction, unfenced (`ConsulClient.kv_txn`)."""
        ...

    def write_records(
        self,
        groups: Mapping[str, Writes],
        /,
        *,
        max_value: int | Callable[[str], int] = CONSUL_MAX_VALUE_BYTES,
    ) -> Sent[ConsulError]:
        """Groups of records, packed, each transaction on its own (`ConsulClient.write_records`)."""
        ...


class ClusterReads(KVStore, Protocol):
    """What a read of the whole cluster uses (`snapshot.read_cluster_state`, the leader's pass)."""

    def health_service(
        self,
        service: str,
        /,
        *,
        passing: bool = False,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
    ) -> Indexed[list[ServiceInstance]]:
        """Instances of ``service`` with their checks' status (`ConsulClient.health_service`)."""
        ...

    def passing_instances(self) -> Indexed[dict[str, int]]:
        """Per service, its instances whose checks all pass (`ConsulClient.passing_instances`)."""
        ...

    def checks_index(
        self, *, index: int = 0, wait: float = DEFAULT_WAIT, consistent: bool = False
    ) -> Indexed[int]:
        """The index of every check, without the checks (`ConsulClient.checks_index`)."""
        ...


class LeaderLock(Protocol):
    """Sessions, the leader lock and fenced writes: what `daemons.leader.LeaderElection` uses."""

    def kv_get(
        self,
        key: str,
        /,
        *,
        index: int = 0,
        wait: float = DEFAULT_WAIT,
        consistent: bool = False,
        stale: bool = False,
    ) -> Indexed[KVEntry | None]:
        """One key (`ConsulClient.kv_get`): the lock, and the session that holds it."""
        ...

    def kv_acquire(self, key: str, value: bytes | str, session: str, /) -> bool:
        """Take the lock ``key`` with ``session``; whether it was taken (`ConsulClient.kv_acquire`)."""
        ...

    def kv_release(self, key: str, session: str, /) -> bool:
        """Release the lock ``key`` held by ``session``; whether it was (`ConsulClient.kv_release`)."""
        ...

    def fenced_write(self, lock_key: str, session: str, writes: Mapping[str, bytes | None], /) -> None:
        """Write only while ``session`` holds ``lock_key``, else `NotLeader` (`ConsulClient.fenced_write`)."""
        ...

    def session_create(
        self, name: str, /, *, checks: Sequence[str], lock_delay: float, ttl: float | None = None
    ) -> str:
        """A new session tied to ``checks`` and renewed within ``ttl`` (`ConsulClient.session_create`)."""
        ...

    def session_renew(self, session: str, /) -> bool:
        """Renew a session's TTL; False once it ended (`ConsulClient.session_renew`)."""
        ...

    def session_destroy(self, session: str, /) -> None:
        """End a session (`ConsulClient.session_destroy`)."""
        ...

    def session_info(self, session: str, /) -> dict[str, Any] | None:
        """A session, None once it ended (`ConsulClient.session_info`)."""
        ...

    def node_sessions(self, node: str, /) -> list[dict[str, Any]]:
        """The sessions of ``node`` (`ConsulClient.node_sessions`)."""
        ...


class Members(Protocol):
    """The local agent's view of the gossip pool (`rejoin.rejoin_failed`)."""

    def failed_members(self) -> list[tuple[str, str]]:
        """Name and address of each member gossip declared failed (`ConsulClient.failed_members`)."""
        ...

    def join(self, address: str, /) -> None:
        """Join the member at ``address`` (`ConsulClient.join`)."""
        ...


class Containers(Protocol):
    """Our containers on one host's engine (`actuators.docker.DockerActuator`)."""

    host: str

    def list_containers(self, starting: Collection[str] = (), /) -> list[ContainerInfo]:
        """Ours on this host (``starting``: names being started, looked at even half-created)."""
        ...

    def ensure_volumes(self, manifest: Manifest, slot: int | None, /) -> tuple[str, ...]:
        """Create replica ``slot``'s named volumes that do not exist yet; the names of those created."""
        ...

    def start(
        self,
        manifest: Manifest,
        *,
        name: str,
        slot: int | None = None,
        secrets: Mapping[str, bytes] | None = None,
    ) -> ContainerInfo:
        """Create and start one replica of ``manifest`` named ``name`` (in ``slot``: its volumes; with
        ``secrets``: the values of its secrets by name)."""
        ...

    def stop(self, container_id: str, grace: float, /) -> None:
        """Stop a container, killing it after ``grace`` seconds."""
        ...

    def remove(self, container_id: str, /) -> None:
        """Remove a container."""
        ...


class Catalog(Protocol):
    """Our registrations on this host's Consul agent (`actuators.catalog.CatalogActuator`)."""

    def registrations(self) -> list[Registration]:
        """Ours on this host."""
        ...

    def register(self, container: ContainerInfo, manifest: Manifest, /) -> None:
        """(Re-)register a running container with its check."""
        ...

    def register_started(
        self, container: ContainerInfo, manifest: Manifest, /, *, probe: bool = True
    ) -> bool:
        """Register a replica just started; whether its check passed at once."""
        ...

    def register_restored(
        self, container: ContainerInfo, manifest: Manifest, service_ids: Sequence[str], /
    ) -> bool:
        """Register again, passing, the registrations ``service_ids`` of a replica (its own, its extra
        ports') whose checks a restarted Consul restored critical, each if its check passes when run
        now; whether all did."""
        ...

    def deregister(self, service_id: str, /) -> None:
        """Drop a registration."""
        ...
