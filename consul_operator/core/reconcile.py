"""The operator's decisions, as pure functions: the entry of "Reconcile = pure plan + actuators".

Nothing behind these names does I/O, reads a clock or draws a random
number: time comes in as arguments, every input is plain data, and the same
input always gives the same output in the same order. The loops read the
world into that data, these functions decide, and the actuators carry the
decisions out. Each subject has a module of its own:

| decision | function | module |
| --- | --- | --- |
| the leader's whole pass: placements, rollouts, KV writes, wake-up | `decide_leader` | ``leader_plan.py`` |
| replicas per host | `schedule` | ``placement.py`` |
| host filters (fit, labels); why unplaced | `fits`, `matches_labels`, `unplaced_reason` | ``placement.py`` |
| a rollout's state machine and pacing | `next_rollout`, `plan_rollout` | ``rollout.py`` |
| cordoned hosts; a drain: its deadline, its pacing | `time_drains`, `plan_drain` | ``maintenance.py`` |
| one host's whole pass: actions, status writes, events, metrics, wake-up | `decide_host` | ``host_pass.py`` |
| what one host should run | `host_desires` | ``host_plan.py`` |
| one host's actions | `plan_host` | ``host_plan.py`` |
| how long to wait after failures | `exponential`, `Backoff` | ``backoff.py`` |
| what ``operator status`` shows | `build_status` | ``status.py`` |

The data they decide over: ``records.py`` (the KV records),
``cluster_state.py`` (everything the leader and the status view read, once
per pass), ``model.py`` (hosts, containers, registrations, actions).
"""

from __future__ import annotations

from consul_operator.core.backoff import Backoff, backoff_after_failure, exponential
from consul_operator.core.host_pass import HostMemory, HostPlan, decide_host
from consul_operator.core.host_plan import host_desires, plan_host
from consul_operator.core.leader_plan import LeaderMemory, LeaderPlan, decide_leader
from consul_operator.core.placement import (
    fits,
    matches_labels,
    next_schedule_wakeup,
    schedule,
    unplaced_reason,
)
from consul_operator.core.rollout import next_rollout, plan_rollout
from consul_operator.core.status import build_status

__all__ = [
    "Backoff",
    "HostMemory",
    "HostPlan",
    "LeaderMemory",
    "LeaderPlan",
    "backoff_after_failure",
    "build_status",
    "decide_host",
    "decide_leader",
    "exponential",
    "fits",
    "host_desires",
    "matches_labels",
    "next_rollout",
    "next_schedule_wakeup",
    "plan_host",
    "plan_rollout",
    "schedule",
    "unplaced_reason",
]
