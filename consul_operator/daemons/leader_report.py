"""What the leader says about a pass once it is written: log lines, events and metrics.

Everything here happens after the pass's fenced write (`leader_writes`), and
only for what was written: a decision whose write Consul refused is decided
again by the next pass, and is logged, counted and recorded then, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

import structlog

from consul_operator.adapters import event_log, metrics
from consul_operator.core import events
from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderPlan
from consul_operator.core.records import ROLLOUT_STATES

log = structlog.get_logger()


def log_decisions(plan: LeaderPlan, layout: Layout, written: set[str], unwritten: Collection[str]) -> None:
    """Log what the pass decided, and count the rollouts whose state changed, for what was written:
    a decision of a service whose writes were refused or held back (``unwritten``) is left to the
    pass that writes it."""
    for event in plan.events:
        service = event.fields.get("service")
        if isinstance(service, str) and service in unwritten:
            continue
        getattr(log, event.level)(event.message, **event.fields)
    for rollout in plan.rollout_changes:
        if layout.rollout_key(rollout.service) not in written:
            continue
        for state in ROLLOUT_STATES:
            metrics.rollout_state.labels(rollout.service, state).set(1 if state == rollout.state else 0)
        if not rollout.active:
            metrics.rollouts_total.labels(rollout.state).inc()


def record_events(
    layout: Layout, state: ClusterState, plan: LeaderPlan, written: list[str], invalid_seen: dict[str, str]
) -> dict[str, str]:
    """Record the pass's decisions as events (buffered: `event_log`), for what was written; the
    invalid manifests whose first problem is recorded now."""
    occurred = events.leader_events(
        state,
        plan.placements,
        plan.rollouts,
        written,
        lambda k: layout.record_of(layout.placement_prefix, k),
        lambda k: layout.record_of(layout.rollout_prefix, k),
    )
    invalid, seen = events.invalid_events(state.manifests, invalid_seen)
    for event in [*occurred, *invalid]:
        event_log.record(event.service, event.reason, event.message)
    placed = set(written)
    for move in plan.rebalanced:  # counted once its placement is written
        if layout.placement_key(move.service) in placed:
            event_log.record(move.service, events.REBALANCED, move.message)
            metrics.rebalanced_replicas.inc()
    return seen


Figures = tuple[bool, tuple[int, str] | None, tuple[int, int] | None]
"""A service's exported figures: valid; (unplaced, cause) when the pass placed it; (desired, healthy)."""

# What `observe` last exported per service. Setting five gauge children per service
# on every pass was 15 % of an idle leader pass at 1,000 services (labels() and set(),
# 25,000 calls in 5 passes: issue 31's profile); an unchanged service now costs one
# tuple comparison. Forgotten with the gauges (`drop_service`, `drop_all`), on the
# scheduler's thread like `observe`, so that a dropped figure is exported again.
_exported: dict[str, Figures] = {}


def observe(state: ClusterState, plan: LeaderPlan) -> None:
    """Export what only the leader knows: desired, healthy, drift, validity, convergence time."""
    for name in plan.forgotten:
        drop_service(name)
    for name, manifest in state.manifests.items():
        valid = manifest if isinstance(manifest, Manifest) else None
        record = plan.placements.get(name)
        figures: Figures = (
            valid is not None,
            None if record is None else (record.unplaced, record.cause.value),
            None if valid is None else (valid.replicas, state.passing_counts.get(name, 0)),
        )
        if _exported.get(name) == figures:
            continue
        _exported[name] = figures
        metrics.manifest_valid.labels(name).set(1 if valid else 0)
        if record is not None:
            metrics.set_unplaced(name, record.unplaced, record.cause.value)
        if valid is None:
            continue
        healthy = state.passing_counts.get(name, 0)
        metrics.desired_replicas.labels(name).set(valid.replicas)
        metrics.healthy_replicas.labels(name).set(healthy)
        metrics.drift_replicas.labels(name).set(valid.replicas - healthy)
    for done in plan.converged:
        metrics.convergence_seconds.labels(done.service).observe(done.seconds)
        log.info("converged", service=done.service, seconds=round(done.seconds, 3), replicas=done.replicas)
    metrics.agents_reading_placements.set(len(state.placement_readers))


def drop_service(name: str) -> None:
    """A deleted service: stop exporting its figures (bounded label sets)."""
    _exported.pop(name, None)
    for metric in (*metrics.LEADER_SERVICE_GAUGES, metrics.convergence_seconds):
        with contextlib.suppress(KeyError):  # a metric never set for this service
            metric.remove(name)
    for state in ROLLOUT_STATES:
        with contextlib.suppress(KeyError):
            metrics.rollout_state.remove(name, state)
    metrics.drop_unplaced(name)


def drop_all() -> None:
    """No longer the leader: export none of the leader's figures."""
    _exported.clear()
    metrics.rollout_state.clear()
    metrics.convergence_seconds.clear()
    for gauge in metrics.LEADER_SERVICE_GAUGES:
        gauge.clear()
    metrics.drop_unplaced(None)
    metrics.agents_reading_placements.set(0)


def count_placements(keys: int, services: list[str]) -> None:
    """The pass's writes are made: count them and say which services changed."""
    metrics.placement_writes.inc(keys)
    log.info("placements written", changed=services)
