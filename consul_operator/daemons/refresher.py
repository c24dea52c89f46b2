"""The refresh loop: signal templates' new text into this host's running replicas (`core/refresh.py`).

One read (the leader's ``operator/rendered/`` records, our running
containers, the text each has in its files), one pure decision
(`refresh.plan_refresh`), then the writes and signals. Woken by the watch on
``operator/rendered/`` and after a start of a replica with signal templates
(the text it started with may already be old).
"""

from __future__ import annotations

import structlog

from consul_operator.adapters import event_log
from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.adapters.interfaces import KVStore
from consul_operator.adapters.kv_state import rendered_of
from consul_operator.core import events
from consul_operator.core.errors import OperatorError
from consul_operator.core.keys import Layout
from consul_operator.core.refresh import plan_refresh
from consul_operator.daemons.loop import PassResult

log = structlog.get_logger()


class Refresher:
    """Keeps the signal templates' files of this host's replicas at the leader's text."""

    def __init__(self, consul: KVStore, layout: Layout, docker: DockerActuator) -> None:
        self.consul, self.layout, self.docker = consul, layout, docker

    def reconcile(self) -> PassResult:
        """One pass; a replica that cannot be refreshed is logged and tried again on the next pass."""
        entries = self.consul.kv_list(self.layout.rendered_prefix, consistent=True).value
        records = rendered_of(entries, self.layout)
        if not records:
            return PassResult()
        containers = [c for c in self.docker.list_containers() if c.service in records]
        current = {
            (c.name, path): self.docker.files.read_file(c.name, path)
            for c in containers
            for path, _, _ in records[c.service].files
        }
        for refresh in plan_refresh(records, containers, current):
            c = refresh.container
            try:
                self.docker.refresh(c, refresh.files, refresh.signals)
            except OperatorError as exc:
                log.warning("template not refreshed", service=c.service, container=c.name, error=str(exc))
                continue
            paths = ", ".join(sorted(refresh.files))
            why = f"wrote {paths} of {c.name} anew and sent {', '.join(refresh.signals)}"
            log.info("template refreshed", service=c.service, container=c.name, paths=paths)
            event_log.record(c.service, events.TEMPLATE_REFRESHED, why)
        return PassResult()
