"""Resolving a manifest into the spec its replicas run: what it names in Consul, read by the leader.

A manifest names its secrets (``secrets:``) but holds no value, and its
``templates:`` read Consul. Before the leader places it, it reads each
secret's *version* (its KV ModifyIndex, never the value), the config keys and
the passing instances its templates name (`snapshot.read_cluster_state`: the
I/O), and `resolve_manifests` (pure) puts the versions and each ``change_mode:
restart`` template's rendered text into the manifest (`desired_state.Resolved`).
They are then part of its spec hash and of the revision the leader keeps, so that:

* a changed secret is a new spec, rolled out per ``update:`` like any other
  change (Kubernetes does not roll on a changed Secret; Nomad's template
  ``change_mode`` and Swarm's immutable secrets do, in their ways);
* a template whose rendered text changes (a key written, the database's
  replica moved) is a new spec too, rolled per ``update:``;
* every host runs the same spec, the same rendered file: the agents run a manifest with secrets only
  from the leader's kept revision (`host_plan.host_desires`), never as read
  from ``services/``, and read the values themselves just before a start.

Rendering happens once, on the leader, because the leader decides rollouts:
agents rendering each for themselves could hold different texts, and so
different specs, for one service at the same moment.

A secret that is not in KV, or a template that fails to render, makes the manifest unusable for now: a
`ManifestError` naming it, which the leader treats as an invalid manifest
(whatever runs keeps running, its placement is kept, an event says why) for
that service only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from consul_operator.core.desired_state import (
    MAX_REVISION_BYTES,
    Manifest,
    ManifestError,
    Problem,
    Resolved,
    revision_json,
)
from consul_operator.core.records import MAX_RENDERED_BYTES, RenderedRecord
from consul_operator.core.templating import TemplateError, TemplateInputs, render

SecretVersions = Mapping[str, Mapping[str, int]]
"""Per service, each of its secrets present in KV and its ModifyIndex."""


def resolve(
    manifest: Manifest,
    versions: Mapping[str, int],
    secrets_prefix: str,
    inputs: TemplateInputs | None = None,
    config_prefix: str = "config/",
) -> Manifest | ManifestError:
    """``manifest`` with the versions of its secrets and its rendered templates, or why it cannot run
    (a secret missing from KV, a template that does not render: each named).

    A manifest without secrets or templates is returned as it is (its spec hash unchanged).
    """
    if not manifest.needs_resolving:
        return manifest
    problems = [
        Problem("secrets", f"secret {s.name} missing: write it to {secrets_prefix}{manifest.name}/{s.name}")
        for s in manifest.secrets
        if s.name not in versions
    ]
    files: list[tuple[str, str]] = []
    live: list[tuple[str, str, str]] = []
    for template in manifest.templates:
        try:
            text = render(template.source, inputs or TemplateInputs(), config_prefix)
        except TemplateError as exc:
            problems.append(Problem(f"templates[{template.path}]", f"does not render: {exc}"))
            continue
        if template.change_mode == "restart":
            files.append((template.path, text))
        else:
            live.append((template.path, text, template.signal or "SIGHUP"))
    if problems:
        return ManifestError(problems)
    found = tuple(sorted((s.name, versions[s.name]) for s in manifest.secrets))
    resolved = dataclasses.replace(
        manifest, resolved=Resolved(secrets=found, files=tuple(sorted(files)), live=tuple(sorted(live)))
    )
    if live and len(rendered_record(resolved).to_json()) > MAX_RENDERED_BYTES:
        why = f"the signal templates render more than {MAX_RENDERED_BYTES} bytes of JSON together"
        return ManifestError([Problem("templates", why)])
    size = len(revision_json(resolved))
    if size > MAX_REVISION_BYTES:
        why = f"rendered, the manifest is {size} bytes of JSON, more than {MAX_REVISION_BYTES}"
        return ManifestError([Problem("templates", why)])
    return resolved


def resolve_manifests(
    manifests: Mapping[str, Manifest | ManifestError],
    versions: SecretVersions | None,
    secrets_prefix: str,
    inputs: TemplateInputs | None = None,
    config_prefix: str = "config/",
) -> dict[str, Manifest | ManifestError]:
    """Every manifest `resolve`d; ``versions`` None (a reader not allowed to read secrets: the load
    balancer's status page) leaves them as they are."""
    if versions is None:
        return dict(manifests)
    return {
        name: resolve(m, versions.get(name, {}), secrets_prefix, inputs, config_prefix)
        if isinstance(m, Manifest)
        else m
        for name, m in manifests.items()
    }


def rendered_record(manifest: Manifest) -> RenderedRecord:
    """The ``operator/rendered/<service>`` record of a resolved manifest's signal templates."""
    return RenderedRecord(manifest.name, manifest.resolved.live)
