"""Where a test run's environments live (tests/support/places.py): one block and one name per worker."""

from __future__ import annotations

import pytest

from tests.support.places import Place, place_for


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, Place("127.0.0", ("127.0.0.21", "127.0.0.22", "127.0.0.23"), "test"), id="default"),
        pytest.param(
            {"OPERATOR_TEST_ADDRS": "127.0.3.21 127.0.3.22 127.0.3.23"},
            Place("127.0.3", ("127.0.3.21", "127.0.3.22", "127.0.3.23"), "test-127-0-3-21"),
            id="moved-addresses-name-of-their-own",
        ),
        pytest.param(
            {"OPERATOR_TEST_ADDRS": "127.0.3.21 127.0.3.22 127.0.3.23", "OPERATOR_TEST_NAME": "mine"},
            Place("127.0.3", ("127.0.3.21", "127.0.3.22", "127.0.3.23"), "mine"),
            id="moved-and-named",
        ),
        pytest.param(
            {"PYTEST_XDIST_WORKER": "gw0"},
            Place("127.0.100", ("127.0.100.21", "127.0.100.22", "127.0.100.23"), "test-gw0"),
            id="first-worker",
        ),
        pytest.param(
            {"PYTEST_XDIST_WORKER": "gw3", "OPERATOR_TEST_NAME": "ci", "OPERATOR_TEST_ADDRS": "x y z"},
            Place("127.0.103", ("127.0.103.21", "127.0.103.22", "127.0.103.23"), "ci-gw3"),
            id="worker-ignores-serial-addresses",
        ),
        pytest.param(
            {"PYTEST_XDIST_WORKER": "gw1", "OPERATOR_TEST_WORKER_BLOCK": "150"},
            Place("127.0.151", ("127.0.151.21", "127.0.151.22", "127.0.151.23"), "test-gw1"),
            id="worker-blocks-moved",
        ),
    ],
)
def test_each_run_and_worker_has_its_own_place(environ: dict[str, str], expected: Place) -> None:
    """A serial run keeps the old addresses; each xdist worker gets its own block and name."""
    assert place_for(environ) == expected


def test_workers_never_share_an_address() -> None:
    """Every address any environment of one worker uses differs from every other worker's."""
    blocks = [place_for({"PYTEST_XDIST_WORKER": f"gw{k}"}) for k in range(8)]
    used = [{p.at(last) for last in range(1, 255)} for p in blocks]
    assert all(a.isdisjoint(b) for i, a in enumerate(used) for b in used[i + 1 :])
    assert len({p.name for p in blocks}) == len(blocks)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"PYTEST_XDIST_WORKER": "master"}, id="not-a-worker-id"),
        pytest.param({"PYTEST_XDIST_WORKER": "gw200"}, id="past-the-last-block"),
        pytest.param({"OPERATOR_TEST_ADDRS": "127.0.0.1 127.0.0.2"}, id="two-addresses"),
    ],
)
def test_a_place_that_cannot_be_is_a_clear_error(environ: dict[str, str]) -> None:
    """A worker id or an address list that gives no place fails with what is wrong."""
    with pytest.raises(ValueError, match=r"worker|address"):
        place_for(environ)
