"""Resolving a manifest into the spec its replicas run: what it names in Consul, read by the leader.

A manifest names its secrets (``secrets:``) but holds no value. Before the
leader places it, it reads each secret's *version* (its KV ModifyIndex,
never the value, `snapshot.read_cluster_state`) and `resolve_manifests`
puts the versions into the manifest (`desired_state.Resolved`). They are
then part of its spec hash and of the revision the leader keeps, so that:

* a changed secret is a new spec, rolled out per ``update:`` like any other
  change (Kubernetes does not roll on a changed Secret; Nomad's template
  ``change_mode`` and Swarm's immutable secrets do, in their ways);
* every host runs the same spec: the agents run a manifest with secrets only
  from the leader's kept revision (`host_plan.host_desires`), never as read
  from ``services/``, and read the values themselves just before a start.

A secret that is not in KV makes the manifest unusable for now: a
`ManifestError` naming it, which the leader treats as an invalid manifest
(whatever runs keeps running, its placement is kept, an event says why) for
that service only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from consul_operator.core.desired_state import Manifest, ManifestError, Problem, Resolved

SecretVersions = Mapping[str, Mapping[str, int]]
"""Per service, each of its secrets present in KV and its ModifyIndex."""


def resolve(manifest: Manifest, versions: Mapping[str, int], secrets_prefix: str) -> Manifest | ManifestError:
    """``manifest`` with the versions of its secrets, or why it cannot run (a secret missing from KV).

    A manifest without secrets is returned as it is (its spec hash unchanged).
    """
    if not manifest.needs_resolving:
        return manifest
    missing = [s.name for s in manifest.secrets if s.name not in versions]
    if missing:
        return ManifestError(
            Problem("secrets", f"secret {name} missing: write it to {secrets_prefix}{manifest.name}/{name}")
            for name in missing
        )
    found = tuple(sorted((s.name, versions[s.name]) for s in manifest.secrets))
    return dataclasses.replace(manifest, resolved=Resolved(secrets=found))


def resolve_manifests(
    manifests: Mapping[str, Manifest | ManifestError], versions: SecretVersions | None, secrets_prefix: str
) -> dict[str, Manifest | ManifestError]:
    """Every manifest `resolve`d; ``versions`` None (a reader not allowed to read secrets: the load
    balancer's status page) leaves them as they are."""
    if versions is None:
        return dict(manifests)
    return {
        name: resolve(m, versions.get(name, {}), secrets_prefix) if isinstance(m, Manifest) else m
        for name, m in manifests.items()
    }
