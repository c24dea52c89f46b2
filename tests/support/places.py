"""Where a test run's environments live: one block of loopback addresses and one name per pytest worker.

Every environment a test starts takes its addresses from its run's block, by
the same last octets in every block:

  .21-.23  the session's staging environment (`staging`, `cluster` fixtures)
  .24      the load balancer tests' own NGINX (test_lb_daemon, test_lb_edges, test_load_balancer)
  .26      host_actions' extra Consul client agent (refuses deregistrations)
  .29      an address where nothing listens
  .31-.33  test_foundation's up/down environment
  .54-.56  test_shared_consul's second environment
  .57-.59  test_demo's environment
  .61-.63  the chaos run's environment
  .64-.66  test_demo_app's environment (`make demo-app`)
  .71-.73  test_acl's secured environment

A serial run (no pytest-xdist worker) uses the block of OPERATOR_TEST_ADDRS's
first address (default 127.0.0.x, as before), under OPERATOR_TEST_NAME.
Under `pytest -n N` worker gwK uses the block 127.0.(OPERATOR_TEST_WORKER_BLOCK + K)
(default 100: 127.0.100.x, 127.0.101.x, ...) under the name "<name>-gwK", so
that workers never share an address, a Consul cluster, a KV prefix or a
container label. Two checkouts running `make test` at once set
OPERATOR_TEST_WORKER_BLOCK (and OPERATOR_TEST_NAME) apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_ADDRS = "127.0.0.21 127.0.0.22 127.0.0.23"
DEFAULT_WORKER_BLOCK = 100


@dataclass(frozen=True)
class Place:
    """One run's (or one worker's) block of loopback addresses, and its environments' name."""

    block: str  # the first three octets, e.g. "127.0.100"
    addresses: tuple[str, str, str]  # the session environment's host-1..3
    name: str  # the session environment's name, also its containers' cluster label

    def at(self, last: int) -> str:
        """The block's address ending in ``last``."""
        return f"{self.block}.{last}"

    def three(self, first: int) -> tuple[str, str, str]:
        """Three consecutive addresses of the block: host-1..3 of another environment."""
        return (self.at(first), self.at(first + 1), self.at(first + 2))


def place_for(environ: Mapping[str, str]) -> Place:
    """The place of a run from its environment variables (PYTEST_XDIST_WORKER is set by pytest-xdist)."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    base_name = environ.get("OPERATOR_TEST_NAME")
    if worker:
        match = re.fullmatch(r"gw(\d+)", worker)
        if match is None:
            raise ValueError(f"PYTEST_XDIST_WORKER={worker!r} is not a worker id (gw0, gw1...)")
        third = int(environ.get("OPERATOR_TEST_WORKER_BLOCK", DEFAULT_WORKER_BLOCK)) + int(match[1])
        if not 0 <= third <= 255:
            raise ValueError(f"worker {worker} has no block: 127.0.{third} is not an address")
        block = f"127.0.{third}"
        return Place(block, (f"{block}.21", f"{block}.22", f"{block}.23"), f"{base_name or 'test'}-{worker}")
    addrs = environ.get("OPERATOR_TEST_ADDRS", DEFAULT_ADDRS).split()
    if len(addrs) != 3:
        raise ValueError(f"OPERATOR_TEST_ADDRS needs three addresses, got {addrs}")
    # Moved addresses (OPERATOR_TEST_ADDRS) alone give a name of their own: two checkouts on
    # one Docker engine need different names, or each one's agents would take the other's
    # containers for their own (and remove them).
    default_name = "test" if "OPERATOR_TEST_ADDRS" not in environ else "test-" + addrs[0].replace(".", "-")
    return Place(addrs[0].rsplit(".", 1)[0], (addrs[0], addrs[1], addrs[2]), base_name or default_name)


# This process's place: pytest-xdist sets PYTEST_XDIST_WORKER before a worker imports any test.
PLACE = place_for(os.environ)
