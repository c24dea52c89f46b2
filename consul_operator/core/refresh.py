"""Which running replicas get a signal template's new text, and which signal: a pure decision.

A ``change_mode: signal`` template is not part of the spec: its text is in
the leader's ``operator/rendered/<service>`` record (`records.RenderedRecord`).
Each agent compares it with what each running replica of the service on its
host has in its file (read by `daemons/refresher.py`) and, where they differ,
writes the new text in place and sends that template's signal, once per
signal and replica (Nomad's ``change_mode = "signal"``). A replica without
the file (a spec from before the template) is left alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from consul_operator.core.model import ContainerInfo
from consul_operator.core.records import RenderedRecord


@dataclass(frozen=True, slots=True)
class Refresh:
    """Write ``files`` (path -> text) into ``container``'s template files, then send it ``signals``."""

    container: ContainerInfo
    files: Mapping[str, str]
    signals: tuple[str, ...]


def plan_refresh(
    records: Mapping[str, RenderedRecord],
    containers: Sequence[ContainerInfo],
    current: Mapping[tuple[str, str], str | None],
    busy: Collection[str] = (),
) -> list[Refresh]:
    """The refreshes that bring every running replica's signal templates to the leader's text.

    ``current``: the text of (container name, path) as the replica has it, None when it has no such
    file; ``busy``: ids of containers an action holds (being stopped): left alone.
    """
    plan: list[Refresh] = []
    for container in sorted(containers, key=lambda c: c.name):
        record = records.get(container.service)
        if record is None or container.state != "running" or container.id in busy:
            continue
        files: dict[str, str] = {}
        signals: list[str] = []
        for path, text, signal in record.files:
            now = current.get((container.name, path))
            if now is None or now == text:
                continue
            files[path] = text
            if signal not in signals:
                signals.append(signal)
        if files:
            plan.append(Refresh(container, files, tuple(signals)))
    return plan
