"""Join again the Consul members gossip declared failed: a healed partition settles in seconds, not 30.

When a cut heals, neither side's gossip looks for the other: serf, under
Consul, retries a member it declared failed only every 30 s (its
ReconnectInterval, which Consul does not expose), and memberlist gossips only
with members it believes alive. Meanwhile the returning host's serfHealth
stays critical, so its agent is not live and its replicas are out of the load
balancer: a healed partition settled 24-35 s after the heal (docs/chaos.md,
issue 33). So each agent asks its own Consul agent, every `REJOIN_EVERY`
seconds, to join each member it sees as failed (what ``consul join`` does by
hand): a member still cut off does not answer, and the join fails and changes
nothing; one that answers is alive again at once, for the whole cluster.

With Consul ACLs the join needs ``agent:write`` on the agent's own node
(deploy/acl/operator-agent.hcl grants only read): refused, it is logged once,
and Consul's own 30 s reconnect applies.
"""

from __future__ import annotations

import threading

import structlog

from consul_operator.adapters.interfaces import Members
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied

log = structlog.get_logger()

REJOIN_EVERY = 2.0
"""Seconds between two looks for failed members."""


def rejoin_failed(consul: Members, stop: threading.Event) -> None:
    """Until ``stop``: every `REJOIN_EVERY` s, join each member our Consul agent sees as failed."""
    refused = False
    while not stop.wait(REJOIN_EVERY):
        try:
            failed = consul.failed_members()
        except ConsulError:
            continue  # Consul away: the heartbeat says so
        for name, address in failed:
            try:
                consul.join(address)
            except ConsulPermissionDenied as exc:
                if not refused:
                    log.warning("cannot join failed Consul members (ACL)", member=name, error=str(exc))
                refused = True
                break
            except ConsulError:
                continue  # still cut off (or gone for good): the next look tries again
            log.info("joined a Consul member gossip had declared failed", member=name, address=address)
