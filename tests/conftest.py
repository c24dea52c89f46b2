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


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadscope` (`make test`): one module per work unit, and every node test in one.

    See tests/support/scheduling.py; any other --dist keeps pytest-xdist's own.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.scheduling import ModuleScheduling

    return ModuleScheduling(config, log)
