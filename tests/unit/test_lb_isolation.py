"""Finding the services NGINX refuses, and what is served instead: pure helpers of `upstreams`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consul_operator.core.upstreams import LBView, Server, Upstream, find_faulty, restrict, substitute


def refusing(bad: set[str], calls: list[frozenset[str]]) -> Callable[[frozenset[str]], bool]:
    """A fake `nginx -t`: a group passes when it holds none of ``bad``; records each group tested."""

    def passes(group: frozenset[str]) -> bool:
        calls.append(group)
        return not (group & bad)

    return passes


NAMES = [f"s{i:02d}" for i in range(32)]


@pytest.mark.parametrize(
    ("bad", "max_tests"),
    [
        pytest.param({"s00"}, 10, id="first-of-32"),
        pytest.param({"s31"}, 10, id="last-of-32"),
        pytest.param({"s07", "s08"}, 20, id="two-neighbours"),
        pytest.param({"s03", "s19", "s30"}, 30, id="three-apart"),
        pytest.param(set(NAMES), 62, id="all"),
    ],
)
def test_find_faulty_bisects(bad: set[str], max_tests: int) -> None:
    """Exactly the refused services are found, with about k log n tests rather than n."""
    calls: list[frozenset[str]] = []
    assert find_faulty(NAMES, refusing(bad, calls)) == bad
    assert len(calls) <= max_tests


def test_find_faulty_single_service() -> None:
    """With one service, known to fail, it is the culprit without another test."""
    calls: list[frozenset[str]] = []
    assert find_faulty(["only"], refusing({"only"}, calls)) == {"only"}
    assert calls == []


def test_find_faulty_interaction_without_culprit() -> None:
    """Services refused only together yield no culprit (the caller's final test catches it)."""
    assert find_faulty(["a", "b"], lambda group: len(group) < 2) == frozenset()


def view() -> LBView:
    return LBView(
        (
            Upstream("a", (Server("127.0.0.11", 1),)),
            Upstream("b", (Server("127.0.0.11", 2),)),
            Upstream("c", ()),
        ),
        "b",
    )


@pytest.mark.parametrize(
    ("names", "services", "default"),
    [
        pytest.param({"a", "b"}, ["a", "b"], "b", id="with-default"),
        pytest.param({"a"}, ["a"], None, id="without-default"),
        pytest.param(set(), [], None, id="empty"),
    ],
)
def test_restrict(names: set[str], services: list[str], default: str | None) -> None:
    """A restricted view holds only the named services, and the default server only if its service is one."""
    got = restrict(view(), names)
    assert [up.name for up in got.upstreams] == services
    assert got.default_service == default


def test_substitute_keeps_last_good_or_serves_503() -> None:
    """A faulty service keeps its last good upstream, else none (503); the others stay fresh."""
    last_good = {"a": Upstream("a", (Server("127.0.0.12", 9),))}
    got = substitute(view(), {"a", "b"}, last_good)
    assert got.upstreams == (last_good["a"], Upstream("b", ()), view().upstreams[2])
    assert got.default_service == "b"
