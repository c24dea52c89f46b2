"""/healthz's decision: stale loops and unreachable dependencies, with times passed in."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from consul_operator.adapters import metrics
from consul_operator.adapters.health import Health, LoopState, Reachability, problems
from consul_operator.daemons.loop import PassResult, Trigger, run_loop

RESYNC = 60.0


@pytest.mark.parametrize(
    ("loops", "deps", "now", "expected"),
    [
        pytest.param({}, {}, 1000.0, [], id="nothing-recorded-is-healthy"),
        pytest.param(
            {"host": LoopState(RESYNC, started=0.0, last_ok=900.0)}, {}, 1000.0, [], id="recent-pass"
        ),
        pytest.param(
            {"host": LoopState(RESYNC, started=0.0, last_ok=820.0)},
            {},
            1000.0,
            [],
            id="exactly-3x-resync-is-still-fine",
        ),
        pytest.param(
            {"host": LoopState(RESYNC, started=0.0, last_ok=819.0)},
            {},
            1000.0,
            ["loop host: last successful pass for 181s (limit 180s = 3x resync 60s)"],
            id="past-3x-resync-names-the-loop",
        ),
        pytest.param(
            {"lb": LoopState(RESYNC, started=900.0)}, {}, 1000.0, [], id="starting-loop-has-its-grace"
        ),
        pytest.param(
            {"lb": LoopState(RESYNC, started=800.0)},
            {},
            1000.0,
            ["loop lb: no successful pass for 200s (limit 180s = 3x resync 60s)"],
            id="never-passed-since-start",
        ),
        pytest.param(
            {},
            {"consul": Reachability(False, "http://127.0.0.1:8500: [Errno 111] Connection refused")},
            1000.0,
            ["consul: unreachable: http://127.0.0.1:8500: [Errno 111] Connection refused"],
            id="consul-unreachable",
        ),
        pytest.param(
            {}, {"consul": Reachability(True), "docker": Reachability(True)}, 1000.0, [], id="deps-ok"
        ),
        pytest.param(
            {"schedule": LoopState(5.0, started=0.0, last_ok=10.0), "host": LoopState(5.0, started=0.0)},
            {"docker": Reachability(False, "gone"), "nginx": Reachability(False)},
            100.0,
            [
                "docker: unreachable: gone",
                "nginx: unreachable",
                "loop host: no successful pass for 100s (limit 15s = 3x resync 5s)",
                "loop schedule: last successful pass for 90s (limit 15s = 3x resync 5s)",
            ],
            id="every-problem-at-once-sorted",
        ),
    ],
)
def test_problems(
    loops: dict[str, LoopState], deps: dict[str, Reachability], now: float, expected: list[str]
) -> None:
    """Each stale loop and each unreachable dependency gives one line naming it; otherwise none."""
    assert problems(loops, deps, now) == expected


def test_record_follows_reports_and_passes() -> None:
    """A dependency reported down then up, and a loop that passes again, make the record healthy again."""
    now = [0.0]
    health = Health(clock=lambda: now[0])
    health.loop_started("host", 10.0)
    health.report("consul", False, "refused")
    assert health.problems() == ["consul: unreachable: refused"]
    health.report("consul", True)
    assert health.problems() == []
    now[0] = 31.0
    assert health.problems() == ["loop host: no successful pass for 31s (limit 30s = 3x resync 10s)"]
    health.loop_passed("host")
    assert health.problems() == []


def test_probe_is_asked_at_check_time_and_its_failure_is_a_problem() -> None:
    """A registered probe's answer decides its dependency; a probe that raises counts as unreachable."""
    answer: list[str | None] = ["cannot connect to 127.0.0.1:80"]
    health = Health(clock=lambda: 0.0)
    health.add_probe("nginx", lambda: answer[0])
    assert health.problems() == ["nginx: unreachable: cannot connect to 127.0.0.1:80"]
    answer[0] = None
    assert health.problems() == []

    def broken() -> str | None:
        raise RuntimeError("boom")

    health.add_probe("nginx", broken)
    assert health.problems() == ["nginx: unreachable: probe failed: boom"]


def test_run_loop_records_its_passes() -> None:
    """run_loop registers the loop with its resync and records every good pass."""
    now = [100.0]
    health = Health(clock=lambda: now[0])
    stop = threading.Event()
    passes = threading.Semaphore(0)

    def reconcile() -> PassResult:
        passes.release()
        stop.set()
        return PassResult()

    trigger = Trigger()
    run_loop("host", reconcile, trigger, stop, resync=10.0, clock=lambda: now[0], health=health)
    assert passes.acquire(timeout=5)
    now[0] = 129.0
    assert health.problems() == []
    now[0] = 131.0
    assert health.problems() == ["loop host: last successful pass for 31s (limit 30s = 3x resync 10s)"]


def test_excluded_dependency_is_not_judged_nor_its_probe_asked() -> None:
    """``exclude`` leaves a named dependency out (its probe unasked); the others and the loops still count."""
    asked: list[str] = []
    health = Health(clock=lambda: 0.0)
    health.report("consul", False, "refused")

    def probe() -> str | None:
        asked.append("nginx")
        return "cannot connect"

    health.add_probe("nginx", probe)
    assert health.problems(exclude={"consul"}) == ["nginx: unreachable: cannot connect"]
    assert health.problems(exclude={"consul", "nginx"}) == []
    assert asked == ["nginx"]
    assert health.problems() == ["consul: unreachable: refused", "nginx: unreachable: cannot connect"]


def test_healthz_endpoint_answers_503_with_the_problems() -> None:
    """The endpoint answers 200 "ok" when healthy, else 503 with one line per problem; ?exclude= skips one."""
    health = Health(clock=lambda: 0.0)
    server = metrics.serve("127.0.0.1:0", problems=health.problems)
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        health.report("consul", False, "refused")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url, timeout=5)
        assert raised.value.code == 503
        assert raised.value.read() == b"unhealthy\nconsul: unreachable: refused\n"
        with urllib.request.urlopen(f"{url}?exclude=consul", timeout=5) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        health.report("docker", False, "gone")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{url}?exclude=consul", timeout=5)
        assert raised.value.read() == b"unhealthy\ndocker: unreachable: gone\n"
    finally:
        server.shutdown()
        server.server_close()
