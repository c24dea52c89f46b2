"""How `make test` spreads tests over workers (tests/support/scheduling.py): whole modules."""

from __future__ import annotations

import pytest

from tests.support.scheduling import scope_of


@pytest.mark.parametrize(
    ("nodeid", "scope"),
    [
        pytest.param("tests/integration/test_acl.py::test_x", "tests/integration/test_acl.py", id="module"),
        pytest.param("tests/unit/test_places.py::test_y[gw0-a::b]", "tests/unit/test_places.py", id="params"),
        pytest.param("tests/nodes/test_partitions.py::test_z", "tests/nodes/", id="node-test"),
        pytest.param("tests/nodes/test_deploy_path.py::test_w", "tests/nodes/", id="other-node-module"),
    ],
)
def test_a_module_or_the_node_tests_are_one_work_unit(nodeid: str, scope: str) -> None:
    """Every test of a module shares a worker; every node test shares the one node environment's."""
    assert scope_of(nodeid) == scope
