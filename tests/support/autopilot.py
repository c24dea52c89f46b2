"""Consul's autopilot, as the faults wait for it: healthy, with three voters."""

from __future__ import annotations

import json
import urllib.request


def three_healthy_voters(http_address: str) -> bool:
    """Autopilot, as the Consul at ``http_address`` (host:port) reports it: healthy, three healthy voters.

    A server back from a cut or a restart rejoins as a non-voter for autopilot's
    server_stabilization_time; losing a second server in that window leaves one
    voter of two, and no leader. Faults wait for this, as people would.
    """
    try:
        with urllib.request.urlopen(
            f"http://{http_address}/v1/operator/autopilot/health", timeout=2
        ) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return False
    voters = sum(1 for s in health.get("Servers") or [] if s.get("Voter") and s.get("Healthy"))
    return bool(health.get("Healthy")) and voters == 3
