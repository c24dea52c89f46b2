"""The one "served" probe: which replicas answer for a service through NGINX.

Every test, the chaos harness and the benchmarks ask NGINX the same way: a
GET with ``Host: <service>``, and the hello image's answer ``Hello World
[v2] from <container id, 12 characters>`` names the replica that answered.
"""

from __future__ import annotations

import http.client


def get(address: str, host: str, *, port: int = 80, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One GET of ``path`` at ``address:port`` with ``Host: host``; (status, body)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def replica(body: str) -> str:
    """The container id at the end of a hello answer ("Hello World from 0123456789ab")."""
    return body.rsplit(" ", 1)[-1].strip()


def served(address: str, service: str, requests: int, *, port: int = 80) -> set[str]:
    """The replicas that answered ``requests`` GETs for ``service``; a non-200 answer adds "HTTP <status>"."""
    seen = set()
    for _ in range(requests):
        status, body = get(address, service, port=port)
        seen.add(replica(body) if status == 200 else f"HTTP {status}")
    return seen


def serves(address: str, service: str, replicas: set[str], *, port: int = 80) -> bool:
    """NGINX answers for ``service`` from exactly ``replicas`` (container ids), over 3 GETs per replica."""
    return bool(replicas) and served(address, service, 3 * len(replicas), port=port) == replicas
