"""Settings for the whole suite: Hypothesis profiles.

`make test` runs the properties of the pure core derandomized (a fixed seed
per test, so that CI is reproducible); `make fuzz` (HYPOTHESIS_PROFILE=fuzz)
runs a larger budget with fresh randomness.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# The node environment (tests/nodes/conftest.py) is one per session: every node test on one worker.
NODE_TESTS = "tests/nodes/"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests that share an environment bigger than one test on one worker.

    Under `pytest -n N --dist loadgroup` (`make test`) each worker has its own
    session environment (tests/support/places.py); a module whose tests share
    a module-scoped environment (test_acl's secured cluster, test_shared_consul's
    second one, a Prometheus, the chaos run) runs on one worker, so that the
    environment is made once, and the node tests share one node environment.
    """
    for item in items:
        if item.nodeid.startswith(NODE_TESTS):
            item.add_marker(pytest.mark.xdist_group("nodes"))
        elif _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def _uses_module_fixture(item: pytest.Item) -> bool:
    """Whether ``item`` uses a module-scoped fixture of the suite's own."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope == "module" and d.baseid.startswith("tests/")
        for defs in info.name2fixturedefs.values()
        for d in defs
    )
