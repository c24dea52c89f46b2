"""How `make test` spreads tests over workers (tests/support/scheduling.py): whole modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scheduling import expected_seconds, longest_first, scope_of
from tests.support.slowest import unit_seconds


@pytest.mark.parametrize(
    ("nodeid", "scope"),
    [
        pytest.param("tests/integration/test_acl.py::test_x", "tests/integration/test_acl.py", id="module"),
        pytest.param("tests/unit/test_places.py::test_y[gw0-a::b]", "tests/unit/test_places.py", id="params"),
        pytest.param("tests/nodes/test_partitions.py::test_z", "tests/nodes/", id="node-test"),
        pytest.param("tests/nodes/test_deploy_path.py::test_w", "tests/nodes/", id="other-node-module"),
        pytest.param(
            "tests/nodes/test_secure_nodes.py::test_v[host-1]",
            "tests/nodes/test_secure_nodes.py",
            id="node-module-with-its-own-environment",
        ),
    ],
)
def test_a_module_or_the_node_tests_are_one_work_unit(nodeid: str, scope: str) -> None:
    """Every test of a module shares a worker; every node test on the shared node environment shares one."""
    assert scope_of(nodeid) == scope


def test_the_longest_known_unit_goes_first_and_an_unknown_one_is_guessed_by_its_tests() -> None:
    """Units go out longest expected first; one missing from durations.json counts its tests."""
    units = {
        "tests/integration/test_short.py": {"a": False, "b": False},
        "tests/nodes/": {"c": False},
        "tests/integration/test_new.py": {f"t{i}": False for i in range(40)},  # 40 x 3 s guessed
        "tests/unit/test_many.py": {f"u{i}": False for i in range(200)},
    }
    known = {"tests/integration/test_short.py": 5.0, "tests/nodes/": 280.0, "tests/unit/test_many.py": 2.0}
    assert longest_first(units, known) == [
        "tests/nodes/",
        "tests/integration/test_new.py",
        "tests/integration/test_short.py",
        "tests/unit/test_many.py",
    ]


def test_durations_json_is_read_and_unit_seconds_sum_a_junit_report(tmp_path: Path) -> None:
    """`make durations` sums a JUnit report per unit, and the scheduler reads that file back."""
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.nodes.test_partitions" name="test_a" time="100.5"/>'
        '<testcase classname="tests.nodes.test_deploy_path" name="test_b[host-1]" time="20.0"/>'
        '<testcase classname="tests.integration.test_acl" name="test_c" time="3.25"/>'
        "</testsuite></testsuites>"
    )
    assert unit_seconds([report, tmp_path / "missing.xml"]) == {
        "tests/integration/test_acl.py": 3.2,
        "tests/nodes/": 120.5,
    }
    assert expected_seconds()["tests/nodes/"] > 0  # the committed file
