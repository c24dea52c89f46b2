"""How `make test` spreads the suite over pytest-xdist workers: a whole module at a time.

Each worker has its own session environment (tests/support/places.py), so a
module's tests may run on any worker; but on one worker together:

* a module's module-scoped environment (test_acl's secured cluster,
  test_shared_consul's second one, a Prometheus, the chaos run) is then made
  once, and tests placed "last in this module" (they restart daemons) stay last;
* every node test that uses the node environment (tests/nodes/): it is a
  session fixture, systemd containers, made once. `test_secure_nodes.py`
  makes a secured environment of its own (module fixture), so it is a unit
  of its own: another worker boots it meanwhile.

pytest-xdist's `loadscope` groups by module already; this adds the node tests'
group. (Its `loadgroup` with `xdist_group` marks would say the same per test,
but under pytest 9.2 its marks change no node id, so it groups nothing.)
The longest units go first (longest processing time first, the classic rule
for a short makespan): `durations.json` holds each unit's seconds from a
measured `make test` (`make durations` rewrites it from the last run's JUnit
reports). A unit it does not know yet is guessed at ``GUESS_PER_TEST`` seconds
a test. Handed out by test count instead (`loadscope`'s own order), a long
module picked up late kept one worker busy while the others sat idle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

NODE_TESTS = "tests/nodes/"
OWN_NODE_ENVIRONMENT = ("tests/nodes/test_secure_nodes.py",)
DURATIONS = Path(__file__).with_name("durations.json")
GUESS_PER_TEST = 3.0  # seconds: about an integration test's; unit tests are far below it


def expected_seconds() -> dict[str, float]:
    """Each known unit's seconds (`durations.json`); none when the file is missing or unreadable."""
    try:
        found = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}


def longest_first(units: Mapping[str, Mapping[str, bool]], known: Mapping[str, float]) -> list[str]:
    """The units' scopes, the longest expected first (ties: the more tests, then the name)."""

    def expected(scope: str) -> float:
        return known.get(scope, GUESS_PER_TEST * len(units[scope]))

    return sorted(units, key=lambda scope: (-expected(scope), -len(units[scope]), scope))


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its module, or the node tests that share the node environment."""
    module = nodeid.split("::", 1)[0]
    if module.startswith(NODE_TESTS) and module not in OWN_NODE_ENVIRONMENT:
        return NODE_TESTS
    return module


class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """`loadscope` with `scope_of` as its scope."""

    _ordered = False

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)

    def _assign_work_unit(self, node: object) -> None:
        # The queue is complete by the first assignment (`schedule` builds it, then assigns).
        if not self._ordered:
            known = expected_seconds()
            queue = dict(self.workqueue)
            self.workqueue.clear()
            for scope in longest_first(queue, known):
                self.workqueue[scope] = queue[scope]
            self._ordered = True
        super()._assign_work_unit(node)
