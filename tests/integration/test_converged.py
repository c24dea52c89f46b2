"""`Converged` is exact (issue 26): `kv put && operator wait` waits for the whole rollout.

On the real staging environment: a spec change, then `operator wait` at once;
when it returns, every container of ours (Docker's own view, by labels) runs
the new image, draining ones included.
"""

from __future__ import annotations

import time

from tests.support.bounds import ROLLOUT_S
from tests.support.cluster import Cluster, operator

REPLICAS = 2
# A quick rollout (min_healthy 0s) keeps six of them short; the pacing is the same.
UPDATE = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "0s", "deadline": "2m"}
ROUNDS = 6


def test_wait_right_after_a_spec_change_returns_only_once_every_replica_runs_it(
    cluster: Cluster, service_name: str
) -> None:
    """hello:local <-> hello:v2 six times, `operator wait` at once after each put: each time it
    exits 0, every running container of the service runs the new image, exactly ``REPLICAS`` of them."""
    cluster.put(service_name, REPLICAS, update=UPDATE)
    cluster.wait_converged(service_name, REPLICAS)
    took: list[float] = []
    for round_ in range(ROUNDS):
        image = "hello:v2" if round_ % 2 == 0 else "hello:local"
        cluster.put(service_name, REPLICAS, image=image, update=UPDATE)
        started = time.monotonic()
        waited = operator(cluster, "wait", service_name, "--timeout", f"{ROLLOUT_S:g}s")
        took.append(time.monotonic() - started)
        assert waited.returncode == 0, f"round {round_}: {waited.stdout}{waited.stderr}"
        images = sorted(c.attrs["Config"]["Image"] for c in cluster.containers(service_name))
        assert images == [image] * REPLICAS, f"round {round_}: wait returned with {images} running"
    print(f"wait after put: {min(took):.1f}-{max(took):.1f}s over {ROUNDS} rollouts")
