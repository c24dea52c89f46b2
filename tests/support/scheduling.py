"""How `make test` spreads the suite over pytest-xdist workers: a whole module at a time.

Each worker has its own session environment (tests/support/places.py), so a
module's tests may run on any worker; but on one worker together:

* a module's module-scoped environment (test_acl's secured cluster,
  test_shared_consul's second one, a Prometheus, the chaos run) is then made
  once, and tests placed "last in this module" (they restart daemons) stay last;
* every node test (tests/nodes/): the node environment is a session fixture,
  three systemd containers, made once.

pytest-xdist's `loadscope` groups by module already; this adds the node tests'
group. (Its `loadgroup` with `xdist_group` marks would say the same per test,
but under pytest 9.2 its marks change no node id, so it groups nothing.)
Modules with more tests go first (`loadscope`'s reordering), the node tests
among them.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

NODE_TESTS = "tests/nodes/"


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its module, or all the node tests together."""
    if nodeid.startswith(NODE_TESTS):
        return NODE_TESTS
    return nodeid.split("::", 1)[0]


class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """`loadscope` with `scope_of` as its scope."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)
