"""Whether a service is converged: the one judgement behind `operator status`, `wait`, the
status page and the leader's ``operator_convergence_seconds``.

A service is converged only when what runs is what its manifest in KV asks
for *now*, not when the counts of a previous spec happen to match (issue 26:
``kv put && operator wait`` returned in the middle of a rollout):

* the leader's placement is of the manifest's spec, every replica placed;
* the rollout record, if any, targets that spec and is ``complete`` (one of
  another spec means the leader has not taken up the manifest yet; one that
  is progressing, held or rolling back is not done);
* every running replica the agents report runs that spec (their per-spec
  counts, draining containers included), as many as the manifest asks;
* that many pass.

Pure: records in, a reason out.
"""

from __future__ import annotations

from collections.abc import Iterable

from consul_operator.core.desired_state import Manifest
from consul_operator.core.records import PlacementRecord, RolloutRecord, RolloutState, StatusRecord

CONVERGED_REASON = ""
"""What `unconverged` says of a converged service."""


def running_specs(record: StatusRecord) -> dict[str, int]:
    """Running containers per spec hash of one status record.

    A record without per-spec counts (written by an agent older than them)
    counts its running containers under the spec it reports.
    """
    if record.specs:
        return {spec: n for spec, n in record.specs.items() if n > 0}
    return {record.spec_hash: record.running} if record.running > 0 else {}


def unconverged(
    manifest: Manifest,
    placement: PlacementRecord | None,
    records: Iterable[StatusRecord],
    healthy: int,
    rollout: RolloutRecord | None,
) -> str:
    """Why the service is not converged (for people, first reason only), or "" when it is.

    ``records`` are the agents' status records of the service, ``healthy`` its
    instances passing, ``rollout`` its rollout record (None: none).
    """
    spec, replicas = manifest.spec_hash(), manifest.replicas
    if placement is None:
        return "not placed yet"
    if placement.unplaced > 0:
        return f"{placement.unplaced} replicas not placed"
    placed_specs = {s for host in placement.hosts for s in placement.spec_counts(host)}
    if placement.spec_hash != spec or placed_specs - {spec}:
        return "the placement is not of the current spec yet"
    if placement.total != replicas:
        return f"{placement.total} of {replicas} replicas placed"
    if rollout is not None and rollout.to_spec != spec:
        return "the leader has not taken up the current spec yet"
    if rollout is not None and rollout.state != RolloutState.COMPLETE:
        return f"rollout {rollout.state.value} ({rollout.updated}/{rollout.total} updated)"
    current = other = 0
    for record in records:
        for running_spec, count in running_specs(record).items():
            if running_spec == spec:
                current += count
            else:
                other += count
    if other:
        return f"{other} running replica{'s' if other != 1 else ''} of another spec"
    if current != replicas:
        return f"{current} of {replicas} replicas running the current spec"
    if healthy != replicas:
        return f"{healthy} of {replicas} replicas passing"
    return CONVERGED_REASON
