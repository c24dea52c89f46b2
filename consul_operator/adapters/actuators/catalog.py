"""Consul registrations of our containers on this host's Consul agent.

Registrations go through the *agent* API (not the catalog API) so that the
agent runs the health check and anti-entropy keeps the catalog in sync; a
registration carries meta naming the operator, cluster, host, container and
spec, so that we find and clean up exactly our own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consul_operator.adapters.actuators import probe as probe_module
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.core.desired_state import Manifest
from consul_operator.core.durations import format_duration
from consul_operator.core.model import (
    EXTRA_PORT_CHECK_SUFFIX,
    MANAGED_BY,
    META_CLUSTER,
    META_CONTAINER,
    META_EXTRA_PORT,
    META_HOST,
    META_LB,
    META_MANAGED_BY,
    META_PORT,
    META_SPEC,
    ContainerInfo,
    Registration,
    extra_port_id,
)


def service_definition(
    container: ContainerInfo,
    manifest: Manifest,
    *,
    cluster: str,
    host: str,
    address: str,
    initial_passing: bool = False,
) -> dict[str, Any]:
    """Consul's service definition for one replica: address, port, meta and health check.

    ``initial_passing``: the check starts as passing instead of critical, for a
    replica whose check the agent has just run itself and seen pass (`probe`).

    ``health.http`` is an HTTP GET check, as the manifest asks. Consul 1.8
    follows its redirects and has no way to say otherwise (it refuses
    ``DisableRedirects``, a field of later versions, with "unknown field"):
    what the last answer says stays in the check's Output inside Consul,
    which the operator never reads (`ConsulClient.health_service`). Our own
    probe follows none (`probe.run_check`). docs/deploy.md says what remains.
    """
    port = container.host_port
    if port is None:
        raise ValueError(f"container {container.name} has no published port")
    health = manifest.health
    check: dict[str, Any] = {
        "CheckID": f"{container.name}-check",
        "Interval": format_duration(health.interval),
        "Timeout": format_duration(health.timeout),
    }
    if health.http:
        check["Name"] = f"HTTP GET {health.http}"
        check["HTTP"] = f"http://{address}:{port}{health.http}"
    else:
        check["Name"] = f"TCP {address}:{port}"
        check["TCP"] = f"{address}:{port}"
    if initial_passing:
        check["Status"] = "passing"
    definition: dict[str, Any] = {
        "ID": container.name,
        "Name": manifest.name,
        "Address": address,
        "Port": port,
        "Meta": {
            META_MANAGED_BY: MANAGED_BY,
            META_CLUSTER: cluster,
            META_HOST: host,
            META_CONTAINER: container.id,
            META_SPEC: container.spec_hash,
        },
        "Check": check,
    }
    primary = manifest.primary_port_name
    if primary is not None:  # ``ports:``; the ``port:`` shorthand registers as it always did
        definition["Tags"] = [primary]
        definition["Meta"][META_PORT] = primary
        if not manifest.load_balanced:
            definition["Meta"][META_LB] = "no"
    return definition


def extra_port_definitions(
    container: ContainerInfo, manifest: Manifest, *, cluster: str, host: str, address: str
) -> list[dict[str, Any]]:
    """The registrations of a replica's ports other than its primary one (`Manifest.extra_ports`):
    each under the service's name, tagged with the port's name, with a TCP check on it. A port
    the container does not publish (yet) has none."""
    published = dict(container.host_ports)
    definitions = []
    for name, container_port in manifest.extra_ports:
        port = published.get(container_port)
        if port is None:
            continue
        sid = extra_port_id(container.name, name)
        definitions.append(
            {
                "ID": sid,
                "Name": manifest.name,
                "Address": address,
                "Port": port,
                "Tags": [name],
                "Meta": {
                    META_MANAGED_BY: MANAGED_BY,
                    META_CLUSTER: cluster,
                    META_HOST: host,
                    META_CONTAINER: container.id,
                    META_SPEC: container.spec_hash,
                    META_PORT: name,
                    META_EXTRA_PORT: "true",
                    META_LB: "no",
                },
                "Check": {
                    "CheckID": sid + EXTRA_PORT_CHECK_SUFFIX,
                    "Name": f"TCP {address}:{port}",
                    "TCP": f"{address}:{port}",
                    "Interval": format_duration(manifest.health.interval),
                    "Timeout": format_duration(manifest.health.timeout),
                },
            }
        )
    return definitions


class CatalogActuator:
    """Our registrations on the local Consul agent."""

    def __init__(self, consul: ConsulClient, *, cluster: str, host: str, advertise: str) -> None:
        self.consul = consul
        self.cluster = cluster
        self.host = host
        self.advertise = advertise

    def registrations(self) -> list[Registration]:
        """Our registrations on this agent, with whether all their checks pass."""
        services = self.consul.agent_services()
        checks = self.consul.agent_checks()
        passing: dict[str, bool] = {}
        restored: dict[str, bool] = {}  # a check critical with no output: never run since Consul loaded it
        for check in checks.values():
            sid = check.get("ServiceID") or ""
            if sid:
                passing[sid] = passing.get(sid, True) and check.get("Status") == "passing"
                unrun = check.get("Status") == "critical" and not check.get("Output")
                restored[sid] = restored.get(sid, False) or unrun
        result = []
        for sid, svc in services.items():
            meta = svc.get("Meta") or {}
            if (
                meta.get(META_MANAGED_BY) != MANAGED_BY
                or meta.get(META_CLUSTER) != self.cluster
                or meta.get(META_HOST) != self.host
            ):
                continue
            result.append(
                Registration(
                    service_id=sid,
                    service=svc.get("Service", ""),
                    container_id=meta.get(META_CONTAINER, ""),
                    spec_hash=meta.get(META_SPEC, ""),
                    address=svc.get("Address", ""),
                    port=int(svc.get("Port") or 0),
                    healthy=passing.get(sid, False),
                    restored=restored.get(sid, False),
                    extra_port=meta.get(META_PORT, "") if meta.get(META_EXTRA_PORT) else "",
                )
            )
        return result

    def definition(
        self, container: ContainerInfo, manifest: Manifest, *, initial_passing: bool = False
    ) -> dict[str, Any]:
        """The service definition of one replica of ours (`service_definition`)."""
        return service_definition(
            container,
            manifest,
            cluster=self.cluster,
            host=self.host,
            address=self.advertise,
            initial_passing=initial_passing,
        )

    def register(self, container: ContainerInfo, manifest: Manifest) -> None:
        """Register (or update) one running replica with its health check, and its extra ports:
        passing from the start if its check passes when run here now (one try within the
        check's timeout).

        A check registered critical keeps no output until Consul's first run, and that is what
        a check restored by a restarted Consul looks like (`registrations`): without the try, a
        healthy replica registered again (its registration was lost) read as restored at the
        next pass, and was registered a second time, deregistered first.
        """
        definition = self.definition(container, manifest)
        if _passes_once(definition, manifest):
            definition["Check"]["Status"] = "passing"
        self.consul.register_service(definition)
        self._register_extra_ports(container, manifest)

    def _register_extra_ports(self, container: ContainerInfo, manifest: Manifest) -> None:
        for definition in self._extra_port_definitions(container, manifest):
            self.consul.register_service(definition)

    def _extra_port_definitions(self, container: ContainerInfo, manifest: Manifest) -> list[dict[str, Any]]:
        return extra_port_definitions(
            container, manifest, cluster=self.cluster, host=self.host, address=self.advertise
        )

    def register_started(self, container: ContainerInfo, manifest: Manifest, *, probe: bool = True) -> bool:
        """Register a replica that has just started, passing from the start if its check passes now.

        Runs the registered check itself (`probe.passes_within`) for up to one
        check interval (at most `probe.MAX_BUDGET`), each run within what is left
        of it; returns whether it passed (else the check starts critical, and
        Consul's runs decide, as for any registration). Without ``probe``, at once.
        """
        definition = self.definition(container, manifest)
        health = manifest.health
        budget = min(health.interval, probe_module.MAX_BUDGET)
        passed = probe and probe_module.passes_within(definition["Check"], health.timeout, budget)
        if passed:
            definition["Check"]["Status"] = "passing"
        self.consul.register_service(definition)
        self._register_extra_ports(container, manifest)
        return passed

    def register_restored(
        self, container: ContainerInfo, manifest: Manifest, service_ids: Sequence[str]
    ) -> bool:
        """Register again, passing, the registrations ``service_ids`` of a replica (its own and its extra
        ports') whose checks Consul restored critical (its agent restarted).

        Each only if its check passes when we run it now (`probe.passes_within`,
        one try within the check's timeout: an action's worker waits no longer);
        returns whether all did. Deregistered first: registering a check Consul
        knows keeps the check's status, critical until Consul's first run, up
        to one interval after the restart.
        """
        wanted = set(service_ids)
        definitions = [
            self.definition(container, manifest),
            *self._extra_port_definitions(container, manifest),
        ]
        every = True
        for definition in definitions:
            if definition["ID"] not in wanted:
                continue
            if not _passes_once(definition, manifest):
                every = False
                continue
            definition["Check"]["Status"] = "passing"
            self.consul.deregister_service(definition["ID"])
            self.consul.register_service(definition)
        return every

    def deregister(self, service_id: str) -> None:
        """Remove one replica's registration (and its check)."""
        self.consul.deregister_service(service_id)


def _passes_once(definition: Mapping[str, Any], manifest: Manifest) -> bool:
    """Whether a registration's check passes when run here now: one try within the check's
    timeout (at most `probe.MAX_BUDGET`), so that an action's worker waits no longer. A
    re-registration (`register`, `register_restored`) tries once; a start tries for up to an
    interval (`register_started`), since a replica just started may not answer yet."""
    timeout = min(manifest.health.timeout, probe_module.MAX_BUDGET)
    return probe_module.passes_within(definition["Check"], timeout, timeout)
