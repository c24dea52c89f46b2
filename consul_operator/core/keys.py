"""The KV layout (see the design's "Data in Consul KV"), under configurable prefixes.

Several independent environments can share one Consul cluster by using
different prefixes: ``services/`` for what people write, ``operator/`` for
what the operator writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def kv_prefix(value: str) -> str:
    """A KV prefix in its one form, ``a/b/``; ValueError says why ``value`` is not one.

    Segments of letters, digits, ``_``, ``.`` and ``-`` (not ``.`` or ``..``),
    separated by ``/``; leading and trailing slashes are dropped.
    """
    stripped = value.strip("/")
    if not stripped:
        raise ValueError(f"a KV prefix must name at least one segment, like services/, got {value!r}")
    segments = stripped.split("/")
    if any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        rule = "segments of letters, digits, '_', '.' and '-' separated by '/'"
        raise ValueError(f"a KV prefix must be {rule}, got {value!r}")
    return stripped + "/"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each piece of state lives in Consul KV."""

    services_prefix: str = "services/"
    operator_prefix: str = "operator/"
    secrets_prefix: str = "secrets/"
    config_prefix: str = "config/"

    def __post_init__(self) -> None:
        services = kv_prefix(self.services_prefix)
        operator = kv_prefix(self.operator_prefix)
        secrets = kv_prefix(self.secrets_prefix)
        config = kv_prefix(self.config_prefix)
        if services.startswith(operator) or operator.startswith(services):
            # One inside the other: the operator's own keys would be read as manifests, or the reverse.
            raise ValueError(
                f"the services prefix {services!r} and the operator prefix {operator!r} must not overlap"
            )
        for other, what in ((services, "services"), (operator, "operator")):
            if secrets.startswith(other) or other.startswith(secrets):
                # Secrets must be a prefix of their own: its ACL rule is not the manifests' or the operator's.
                raise ValueError(
                    f"the secrets prefix {secrets!r} and the {what} prefix {other!r} must not overlap"
                )
        object.__setattr__(self, "services_prefix", services)
        object.__setattr__(self, "operator_prefix", operator)
        for other, what in ((secrets, "secrets"), (operator, "operator")):
            if config.startswith(other) or other.startswith(config):
                # A template's key() reads only under config/: never a secret or the operator's state.
                raise ValueError(
                    f"the config prefix {config!r} and the {what} prefix {other!r} must not overlap"
                )
        object.__setattr__(self, "secrets_prefix", secrets)
        object.__setattr__(self, "config_prefix", config)

    def config_key(self, path: str) -> str:
        """``config/<path>``: a value a template reads with ``key("<path>")``."""
        return self.config_prefix + path

    def service_secrets_prefix(self, service: str) -> str:
        """``secrets/<service>/``: the secrets of one service, written by an admin, read by the agents."""
        return f"{self.secrets_prefix}{service}/"

    def secret_key(self, service: str, name: str) -> str:
        """``secrets/<service>/<name>``: one secret's value (a manifest's ``secrets:`` and
        ``image_pull_secret`` name them); beside ``services/``, not under the operator's."""
        return f"{self.secrets_prefix}{service}/{name}"

    def secret_of(self, key: str) -> tuple[str, str] | None:
        """(service, name) of a `secret_key`; None for keys that are not one."""
        return self._pair(self.secrets_prefix, key)

    def service_key(self, name: str) -> str:
        """``services/<name>``: the manifest, written by a person."""
        return self.services_prefix + name

    def service_name(self, key: str) -> str | None:
        """The service a manifest key names; None for keys that are not directly under the prefix."""
        if not key.startswith(self.services_prefix):
            return None
        rest = key[len(self.services_prefix) :]
        return rest if rest and "/" not in rest else None

    @property
    def leader_key(self) -> str:
        """``operator/leader``: held by the leader with a session lock."""
        return self.operator_prefix + "leader"

    @property
    def placement_prefix(self) -> str:
        """``operator/placement/``: the leader's decisions."""
        return self.operator_prefix + "placement/"

    def placement_key(self, name: str) -> str:
        """``operator/placement/<name>``: replicas per host for one service."""
        return self.placement_prefix + name

    @property
    def status_prefix(self) -> str:
        """``operator/status/``: what each agent reports."""
        return self.operator_prefix + "status/"

    def status_key(self, name: str, host: str) -> str:
        """``operator/status/<name>/<host>``: what runs of ``name`` on ``host``."""
        return f"{self.status_prefix}{name}/{host}"

    def status_of(self, key: str) -> tuple[str, str] | None:
        """(service, host) of a `status_key`; None for other keys."""
        return self._pair(self.status_prefix, key)

    @property
    def reports_prefix(self) -> str:
        """``operator/reports/``: each agent's index of its own status records (`reports.py`)."""
        return self.operator_prefix + "reports/"

    def report_key(self, host: str) -> str:
        """``operator/reports/<host>``: a digest of each of ``host``'s status records."""
        return self.reports_prefix + host

    def report_of(self, key: str) -> str | None:
        """The host of a `report_key`; None for other keys."""
        rest = key[len(self.reports_prefix) :] if key.startswith(self.reports_prefix) else ""
        return rest if rest and "/" not in rest else None

    @property
    def revisions_prefix(self) -> str:
        """``operator/revisions/``: manifests of the specs in use, by service and spec hash."""
        return self.operator_prefix + "revisions/"

    def revision_key(self, name: str, spec: str) -> str:
        """``operator/revisions/<name>/<spec>``: the manifest of one spec of ``name``."""
        return f"{self.revisions_prefix}{name}/{spec}"

    def revision_of(self, key: str) -> tuple[str, str] | None:
        """(service, spec) of a `revision_key`; None for keys not under the prefix. A stray key
        deeper down reads as a revision of no spec in use, which the leader removes."""
        rest = self.under(self.revisions_prefix, key)
        if rest is None:
            return None
        name, _, spec = rest.partition("/")
        return name, spec

    @property
    def rollout_prefix(self) -> str:
        """``operator/rollout/``: the leader's rollouts."""
        return self.operator_prefix + "rollout/"

    def rollout_key(self, name: str) -> str:
        """``operator/rollout/<name>``: the rollout of ``name`` (JSON)."""
        return self.rollout_prefix + name

    @property
    def rollback_prefix(self) -> str:
        """``operator/rollback/``: rollback requests (``operator rollback``)."""
        return self.operator_prefix + "rollback/"

    def rollback_key(self, name: str) -> str:
        """``operator/rollback/<name>``: a request to return ``name`` to its previous spec."""
        return self.rollback_prefix + name

    @property
    def volume_removals_prefix(self) -> str:
        """``operator/volume-removals/``: requests to remove deleted services' volumes."""
        return self.operator_prefix + "volume-removals/"

    def volume_removal_key(self, name: str) -> str:
        """``operator/volume-removals/<name>``: ``operator delete NAME --volumes`` (`RemovalRequest`)."""
        return self.volume_removals_prefix + name

    @property
    def hosts_prefix(self) -> str:
        """``operator/hosts/``: hosts in maintenance (``operator cordon`` / ``drain``)."""
        return self.operator_prefix + "hosts/"

    def host_key(self, host: str) -> str:
        """``operator/hosts/<host>``: ``host`` cordoned, or draining (`records.HostRecord`)."""
        return self.hosts_prefix + host

    @property
    def agents_prefix(self) -> str:
        """``operator/agents/``: which Consul node each agent runs on, written by the agent itself."""
        return self.operator_prefix + "agents/"

    def agent_key(self, host: str) -> str:
        """``operator/agents/<host>``: the Consul node of ``host``'s agent (`records.AgentRecord`)."""
        return self.agents_prefix + host

    @property
    def work_prefix(self) -> str:
        """``operator/work/``: each host's work, written by the leader (`work.py`)."""
        return self.operator_prefix + "work/"

    def host_work_prefix(self, host: str) -> str:
        """``operator/work/<host>/``: every shard of ``host``'s work (what its agent blocks on)."""
        return f"{self.work_prefix}{host}/"

    def work_key(self, host: str, shard: int) -> str:
        """``operator/work/<host>/<shard>``: one shard of ``host``'s work."""
        return f"{self.work_prefix}{host}/{shard}"

    def work_host(self, key: str) -> tuple[str, int] | None:
        """The host and shard of an ``operator/work/<host>/<shard>`` key; None for other keys."""
        if not key.startswith(self.work_prefix):
            return None
        host, _, shard = key[len(self.work_prefix) :].partition("/")
        if not host or not shard.isdigit() or not shard.isascii():
            return None
        return host, int(shard)

    def record_of(self, prefix: str, key: str) -> str | None:
        """The service of a ``<prefix><service>`` key; None for other keys."""
        if not key.startswith(prefix):
            return None
        rest = key[len(prefix) :]
        return rest if rest and "/" not in rest else None

    @property
    def rendered_prefix(self) -> str:
        """``operator/rendered/``: the text of each service's ``change_mode: signal`` templates."""
        return self.operator_prefix + "rendered/"

    def rendered_key(self, name: str) -> str:
        """``operator/rendered/<name>``, written by the leader."""
        return self.rendered_prefix + name

    @property
    def events_prefix(self) -> str:
        """``operator/events/``: what the leader and the agents did, and why (`events`)."""
        return self.operator_prefix + "events/"

    def events_key(self, name: str, host: str) -> str:
        """``operator/events/<name>/<host>``: the recent events of ``name`` recorded on ``host``."""
        return f"{self.events_prefix}{name}/{host}"

    def service_events_prefix(self, name: str) -> str:
        """``operator/events/<name>/``: every host's event record of ``name``."""
        return f"{self.events_prefix}{name}/"

    def events_service(self, key: str) -> str | None:
        """The service of a `service_events_prefix` (as a listing with separator "/" gives them);
        None for other keys."""
        if not key.endswith("/"):
            return None
        return self.record_of(self.events_prefix, key[:-1])

    def under(self, prefix: str, key: str) -> str | None:
        """What follows ``prefix`` in ``key``; None when ``key`` is not under it or nothing follows.

        The name of a leader's record (``operator/placement/``, ``rollout/``,
        ``rollback/``): a stray key deeper down reads as a service without a
        manifest, whose record the leader removes.
        """
        if not key.startswith(prefix) or key == prefix:
            return None
        return key[len(prefix) :]

    def _pair(self, prefix: str, key: str) -> tuple[str, str] | None:
        """The two segments of a ``<prefix><a>/<b>`` key; None for other keys."""
        if not key.startswith(prefix):
            return None
        first, slash, second = key[len(prefix) :].partition("/")
        if not first or not slash or not second or "/" in second:
            return None
        return first, second

    def service_of(self, key: str) -> str | None:
        """The service an ``operator/`` record belongs to (placement, status, revision, rollout,
        rollback, rendered); None for other keys. The leader groups its writes by it."""
        for prefix in (
            self.placement_prefix,
            self.status_prefix,
            self.revisions_prefix,
            self.rollout_prefix,
            self.rollback_prefix,
            self.rendered_prefix,
        ):
            if key.startswith(prefix):
                service = key[len(prefix) :].partition("/")[0]
                return service or None
        return None
