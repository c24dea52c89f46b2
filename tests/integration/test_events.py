"""Seeing why: events per decision on the real staging environment, `describe`, `events`, and the
status page in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from consul_operator.adapters import metrics
from consul_operator.adapters.consul_client import ConsulClient
from consul_operator.adapters.event_log import EventRecorder, read_events
from consul_operator.core.events import CRASHED, MAX_EVENTS, PLACED, parse_record
from tests.support.bounds import CONVERGE_S, PROCESS_S, REACT_S, ROLLOUT_S
from tests.support.cluster import Cluster
from tests.support.cluster import operator as run_operator
from tests.support.staging import ROOT, wait_until

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
EVENT_S = CONVERGE_S + 5  # an event is flushed within 1 s of its decision


def operator(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI against the test environment, for this environment's cluster only."""
    return run_operator(cluster, args[0], "--cluster", cluster.staging.name, *args[1:])


def events_of(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    """`operator events NAME --json`: the service's events, oldest first."""
    done = operator(cluster, "events", service, "--since", "10m", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def wait_event(cluster: Cluster, service: str, reason: str, pattern: str = "") -> dict[str, Any]:
    """Wait for an event of ``service`` with ``reason`` whose message matches ``pattern``; return it."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [
            e
            for e in events_of(cluster, service)
            if e["reason"] == reason and re.search(pattern, e["message"])
        ]
        return bool(found)

    wait_until(seen, timeout=EVENT_S, what=f"a {reason} event of {service} matching {pattern!r}")
    return found[-1]


def test_deploy_crash_and_scale_down_are_events_and_describe_shows_them(
    cluster: Cluster, service_name: str
) -> None:
    """Placed, Started, Registered, Crashed (exit code, back-off), Drained and Stopped are recorded;
    describe shows spec, placement, replicas and those events, newest last."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    wait_event(cluster, service_name, "Placed", r"replicas per host: host-1=1, host-2=1")
    wait_event(cluster, service_name, "Started", r"started container")
    wait_event(cluster, service_name, "Registered", r"registered .* at port \d+")

    victim = cluster.containers(service_name)[0]
    victim.kill()  # SIGKILL: exit code 137
    crash = wait_event(cluster, service_name, "Crashed", rf"container {victim.name} exited with code 137")
    assert crash["host"] in ("host-1", "host-2")
    cluster.wait_converged(service_name, 2)

    cluster.put(service_name, 1)
    cluster.wait_converged(service_name, 1)
    wait_event(cluster, service_name, "Drained", r"deregistered .* stopping it in 0.5s")
    wait_event(cluster, service_name, "Stopped", r"stopped and removed")

    text = operator(cluster, "describe", service_name)
    assert text.returncode == 0, text.stderr
    for part in (
        "Spec:",
        "image: hello:local",
        "Placement:",
        "Replicas:",
        "Events (newest last):",
        "Crashed",
    ):
        assert part in text.stdout, text.stdout
    described = json.loads(operator(cluster, "describe", service_name, "--json").stdout)
    assert [r["health"] for r in described["replicas"]] == ["passing"]
    assert described["replicas"][0]["address"].startswith(tuple(cluster.staging.addresses))
    times = [e["time"] for e in described["events"]]
    assert times == sorted(times) and described["events"][-1]["reason"] in ("Stopped", "Drained", "Placed")
    assert {"Placed", "Started", "Registered", "Crashed", "Drained", "Stopped"} <= {
        e["reason"] for e in described["events"]
    }
    missing = operator(cluster, "describe", "nosuch" + service_name)
    assert missing.returncode == 1 and "no such service" in missing.stderr


def test_invalid_and_unplaceable_manifests_are_events(cluster: Cluster, service_name: str) -> None:
    """An invalid manifest is an event naming its first problem; replicas no host fits: Unplaceable, why."""
    cluster.put(service_name, -1)
    invalid = wait_event(cluster, service_name, "InvalidManifest", "replicas")
    assert invalid["host"] == cluster.leader()
    cluster.put(service_name, 1, resources={"memory": "500Gi", "cpus": 0.1})
    unplaced = wait_event(cluster, service_name, "Unplaceable", r"1 replica\(s\) unplaced: .*memory")
    print(f"unplaceable: {unplaced['message']}")


def test_broken_update_is_rollout_steps_and_a_rollback(cluster: Cluster, service_name: str) -> None:
    """A rollout is RolloutStep events; a new spec that never passes ends in a RolledBack event with why."""
    update = {"max_surge": 1, "max_unavailable": 0, "min_healthy": "1s", "deadline": "4s"}
    cluster.put(service_name, 1, update=update)
    cluster.wait_converged(service_name, 1)
    cluster.put(
        service_name, 1, update=update, health={"http": "/nope", "interval": "1s", "timeout": "500ms"}
    )
    wait_event(cluster, service_name, "RolloutStep", r"progressing: 0/1 updated")
    back = wait_event(cluster, service_name, "RolledBack", r"rolling back to .*not healthy within 4s")
    print(f"rolled back: {back['message']}")
    wait_until(
        lambda: any(
            e["reason"] == "RolloutStep" and "rolled_back" in e["message"]
            for e in events_of(cluster, service_name)
        ),
        timeout=ROLLOUT_S,
        what="the rollback to end",
    )


def test_events_follow_prints_each_new_event_and_since_filters(cluster: Cluster, service_name: str) -> None:
    """`events --follow` prints a new event as it is written, across services; `--since` drops older ones."""
    command = [sys.executable, "-m", "consul_operator", "events", "--consul", cluster.staging.consul_addr()]
    follow = subprocess.Popen([*command, "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        os.set_blocking(follow.stdout.fileno(), False)
        cluster.put(service_name, 1)
        lines: list[str] = []

        def placed() -> bool:
            lines.extend((follow.stdout.read() or "").splitlines())  # type: ignore[union-attr]
            return any(json.loads(line)["service"] == service_name for line in lines if line)

        wait_until(placed, timeout=EVENT_S, what=f"--follow to print an event of {service_name}")
    finally:
        follow.terminate()
        assert follow.wait(PROCESS_S) == 0
    cluster.wait_converged(service_name, 1)
    wait_event(cluster, service_name, "Started")
    recent = operator(cluster, "events", service_name, "--since", "0s", "--json")
    assert recent.returncode == 0 and recent.stdout == "", recent.stdout


@pytest.fixture
def host_2(cluster: Cluster) -> Iterator[str]:
    """host-2, uncordoned again after the test whatever happened (the other tests place there)."""
    yield "host-2"
    done = operator(cluster, "uncordon", "host-2")
    assert done.returncode == 0, done.stderr


def test_drain_moves_replicas_with_the_reason(cluster: Cluster, service_name: str, host_2: str) -> None:
    """Draining a host moves its replicas: a Moved event names the host and "host draining"."""
    cluster.put(service_name, 2)
    cluster.wait_converged(service_name, 2)
    done = operator(cluster, "drain", host_2, "--deadline", "1m")
    assert done.returncode == 0, done.stderr
    wait_event(cluster, service_name, "Moved", rf"1 replica\(s\) moved off {host_2}: host draining")
    wait_until(lambda: cluster.per_host(service_name) == {"host-1": 2}, timeout=CONVERGE_S, what="moved")


def test_flushes_are_batched_bounded_and_collapse_storms(cluster: Cluster) -> None:
    """Against real Consul: 150 decisions keep the last 100 in one record, 50 crashes are one event
    counting 50, all in one flush; with Consul away the buffer keeps its newest and counts what it drops."""
    service = "e" + uuid.uuid4().hex[:8]
    recorder = EventRecorder()
    recorder.host = "host-9"
    ok_before = metrics.events_flushes.labels("ok")._value.get()
    for i in range(150):
        recorder.record(service, PLACED, f"decision {i}")
    for i in range(50):
        recorder.record(service, CRASHED, f"container c{i} exited with code 1")
    try:
        recorder.flush(cluster.consul, cluster.layout)
        assert metrics.events_flushes.labels("ok")._value.get() == ok_before + 1
        entry = cluster.consul.kv_get(cluster.layout.events_key(service, "host-9")).value
        assert entry is not None
        record = parse_record(entry.value)
        assert len(record) == MAX_EVENTS
        assert record[-1].reason == CRASHED and record[-1].count == 50
        assert record[0].message == "decision 51" and record[-2].message == "decision 149"
        assert len(read_events(cluster.consul, cluster.layout, service)) == MAX_EVENTS
    finally:
        cluster.consul.kv_delete(cluster.layout.events_prefix + service, recurse=True)

    away = EventRecorder(size=10)
    dropped = metrics.events_dropped._value.get()
    for i in range(25):
        away.record(service, PLACED, f"decision {i}")
    away.flush(ConsulClient("127.0.0.1:9"), cluster.layout)  # nothing listens: refused
    assert away.pending() == 10
    assert metrics.events_dropped._value.get() == dropped + 15


# --- the status page in a real browser --------------------------------------------------


def chromium() -> str:
    """The Debian package's browser; scripts/deps.sh installs it. Missing is a failure, not a skip."""
    found = shutil.which("chromium")
    assert found, "chromium is missing: run `make deps` (Debian package chromium)"
    return found


def browse(url: str, *extra: str) -> str:
    """Headless Chromium on a loopback URL: the DOM after scripts ran (or, with extra, a screenshot)."""
    assert url.startswith("http://127."), url
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=2000",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_status_page_in_a_browser_shows_converged_drifting_and_hostile_text(
    cluster: Cluster, service_name: str, other_service: str
) -> None:
    """Chromium renders the agent's page: a converged service, a drifting one, and a hostile service
    name and event message shown as text (no element, no script run); a screenshot is kept in .run/."""
    cluster.put(service_name, 1)
    cluster.put(other_service, 1, image="hello:no-such-tag")  # never runs: drift 1
    hostile_key = cluster.layout.service_key(HOSTILE.replace("/", "|"))
    cluster.consul.kv_put(hostile_key, b"name: nope\n")
    recorder = EventRecorder()
    recorder.host = "host-1"
    recorder.record(other_service, CRASHED, HOSTILE)
    try:
        recorder.flush(cluster.consul, cluster.layout)
        cluster.wait_converged(service_name, 1)
        url = f"http://{cluster.staging.addresses[0]}:9810/"

        def rows() -> str:
            dom = browse(url, "--dump-dom")
            shown[0] = dom
            return dom

        shown = [""]
        wait_until(
            lambda: f'data-service="{service_name}"' in rows() and "Converged" in shown[0],
            timeout=REACT_S + CONVERGE_S,
            what="the page to show the converged service",
        )
        dom = shown[0]
        row = re.search(rf'<tr class="service-row[^"]*" data-service="{service_name}">(.*?)</tr>', dom, re.S)
        assert row and '<td class="state">Converged</td>' in row.group(1), dom
        drifting = re.search(rf'data-service="{other_service}">(.*?)</tr>', dom, re.S)
        assert drifting and '<td class="drift">1</td>' in drifting.group(1), dom
        # The hostile texts are text: escaped in the DOM, no element made of them, no script run.
        assert "&lt;script&gt;document.title" in dom and "&lt;img src=x onerror" in dom
        assert "<img" not in dom and "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)  # type: ignore[union-attr]
        shot = ROOT / ".run" / "status-page.png"
        shot.parent.mkdir(exist_ok=True)
        browse(url, f"--screenshot={shot}", "--window-size=1280,900")
        assert shot.stat().st_size > 10_000
    finally:
        cluster.consul.kv_delete(hostile_key)
        cluster.consul.kv_delete(cluster.layout.events_prefix + other_service, recurse=True)
