"""The edges a person or a monitor meets: /healthz, check-and-set apply, rollbacks, --watch, exit codes."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import docker
import pytest

from consul_operator.adapters.consul_client import ConsulClient, Indexed, KVEntry
from consul_operator.cli import commands
from consul_operator.cli.commands import Target
from consul_operator.core.keys import Layout
from tests.support import daemons
from tests.support.bounds import PROCESS_S, REMOVAL_S
from tests.support.cluster import Cluster, manifest_yaml, operator
from tests.support.daemons import healthz, started
from tests.support.staging import ROOT, wait_until

# A Consul of the /healthz test's own, on the first test address with ports apart from staging's.
HZ_PORTS = {"http": 18500, "server": 18300, "serf_lan": 18301, "serf_wan": 18302}


# --- /healthz -----------------------------------------------------------------------------


def consul_dev(
    address: str, data: Path, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A single dev-mode Consul server on ``address`` with the HZ_PORTS."""
    return daemons.consul_dev(address, data, log, node="hz", ports=HZ_PORTS)


def daemon_argv(kind: str, address: str, tmp_path: Path) -> tuple[list[str], str]:
    """The command line of an agent or LB against the dev Consul, and its metrics address."""
    consul = f"{address}:{HZ_PORTS['http']}"
    if kind == "agent":
        metrics = f"{address}:19810"
        extra = ["--host", "hz-1", "--advertise", address, "--cluster", f"hz-{uuid.uuid4().hex[:8]}"]
    else:
        metrics = f"{address}:19811"
        extra = ["--listen", f"{address}:18080", "--nginx-dir", str(tmp_path / "nginx")]
    argv = [
        sys.executable,
        "-m",
        "consul_operator",
        kind,
        "--consul",
        consul,
        "--metrics",
        metrics,
        "--log-json",
    ]
    return [*argv, *extra], metrics


@pytest.mark.parametrize("kind", ["agent", "lb"])
def test_healthz_names_consul_while_it_is_away(
    kind: str, cluster: Cluster, docker_engine: docker.DockerClient, nginx_binary: str, tmp_path: Path
) -> None:
    """A daemon answers /healthz 200, then 503 naming Consul while its Consul is stopped, then 200 again."""
    address = cluster.staging.addresses[0]
    argv, metrics = daemon_argv(kind, address, tmp_path)
    with consul_dev(address, tmp_path / "consul", tmp_path / "consul.log") as consul:
        wait_until(
            lambda: ConsulClient(f"{address}:{HZ_PORTS['http']}").leader(),
            timeout=PROCESS_S,
            what="dev Consul",
        )
        with started(argv, tmp_path / f"{kind}.log"):
            wait_until(lambda: healthz(metrics) == (200, "ok\n"), timeout=PROCESS_S, what=f"{kind} healthy")
            consul.send_signal(signal.SIGTERM)
            consul.wait(timeout=PROCESS_S)

            def names_consul() -> bool:
                status, body = healthz(metrics)
                return status == 503 and body.startswith("unhealthy\nconsul: unreachable: ")

            wait_until(names_consul, timeout=PROCESS_S, what=f"{kind} 503 naming consul")
            assert "loop" not in healthz(metrics)[1], "Consul away is not a stale loop yet"
            with consul_dev(address, tmp_path / "consul", tmp_path / "consul.log"):
                wait_until(
                    lambda: healthz(metrics) == (200, "ok\n"), timeout=PROCESS_S, what=f"{kind} healthy again"
                )


# --- apply with check-and-set ---------------------------------------------------------------


class RacingConsul(ConsulClient):
    """A real Consul client that lets another writer change each key right after we read it."""

    def __init__(self, address: str, other: ConsulClient, values: dict[str, bytes]) -> None:
        super().__init__(address)
        self.other = other
        self.values = values

    def kv_get(
        self,
        key: str,
        *,
        index: int = 0,
        wait: float = 30.0,
        consistent: bool = False,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Indexed[KVEntry | None]:
        result = super().kv_get(
            key, index=index, wait=wait, consistent=consistent, stale=stale, timeout=timeout
        )
        if key in self.values:
            self.other.kv_put(key, self.values.pop(key))
        return result


def apply_in_process(client: ConsulClient, files: list[Path]) -> tuple[int, str, str]:
    """`commands.apply` against ``client``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.apply(Target(client, Layout(), None), [str(f) for f in files])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def names(cluster: Cluster) -> Iterator[list[str]]:
    """Two fresh service names; their manifests are deleted afterwards."""
    fresh = ["c" + uuid.uuid4().hex[:8] for _ in range(2)]
    yield fresh
    for name in fresh:
        cluster.delete(name)
    for name in fresh:
        wait_until(
            lambda: not cluster.containers(name, all_states=True),  # noqa: B023
            timeout=REMOVAL_S,
            what=f"{name} removed",
        )


def test_apply_loses_to_a_writer_that_changed_a_manifest_and_writes_nothing(
    cluster: Cluster, names: list[str], tmp_path: Path
) -> None:
    """Another writer changes one of two manifests between read and write: apply says so, writes neither."""
    first, second = names
    cluster.put(first, 0)
    theirs = manifest_yaml(first, 0, env={"BY": "them"}).encode()
    files = [tmp_path / "first.yaml", tmp_path / "second.yaml"]
    files[0].write_text(manifest_yaml(first, 0, env={"BY": "me"}))
    files[1].write_text(manifest_yaml(second, 0))
    racing = RacingConsul(cluster.staging.consul_addr(), cluster.consul, {f"services/{first}": theirs})

    code, out, err = apply_in_process(racing, files)
    assert code == 1, out + err
    assert f"{first}: another writer changed services/{first} since it was read" in err
    assert f"nothing written for {first}, {second}" in err
    entry = cluster.consul.kv_get(f"services/{first}").value
    assert entry is not None and entry.value == theirs
    assert cluster.consul.kv_get(f"services/{second}").value is None, "all or nothing"

    code, out, err = apply_in_process(cluster.consul, files)
    assert code == 0, err
    assert f"{first}: configured" in out and f"{second}: created" in out
    assert "-  BY: them" in out, "the second apply shows the diff against the other writer's manifest"


def test_apply_does_not_overwrite_a_manifest_created_meanwhile(
    cluster: Cluster, names: list[str], tmp_path: Path
) -> None:
    """A service that was absent when read but created before the write is not overwritten (cas index 0)."""
    name = names[0]
    theirs = manifest_yaml(name, 0, env={"BY": "them"}).encode()
    mine = tmp_path / "mine.yaml"
    mine.write_text(manifest_yaml(name, 0))
    racing = RacingConsul(cluster.staging.consul_addr(), cluster.consul, {f"services/{name}": theirs})

    code, _, err = apply_in_process(racing, [mine])
    assert code == 1
    assert f"{name}: another writer created services/{name} since it was read; not overwritten" in err
    entry = cluster.consul.kv_get(f"services/{name}").value
    assert entry is not None and entry.value == theirs


def test_apply_refuses_two_files_naming_one_service(
    cluster: Cluster, names: list[str], tmp_path: Path
) -> None:
    """Two files with the same service name: both named in the error, nothing written, exit 1."""
    name, other = names
    files = [tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"]
    files[0].write_text(manifest_yaml(name, 0))
    files[1].write_text(manifest_yaml(other, 0))
    files[2].write_text(manifest_yaml(name, 1))
    result = operator(cluster, "apply", *map(str, files))
    assert result.returncode == 1
    assert f"{name}: named by more than one file: {files[0]}, {files[2]}" in result.stderr
    assert "nothing written" in result.stderr
    for service in names:
        assert cluster.consul.kv_get(f"services/{service}").value is None


# --- rollbacks that cannot be honoured --------------------------------------------------------


def test_rollback_refuses_what_the_leader_would_drop(cluster: Cluster, names: list[str]) -> None:
    """rollback of a missing, invalid or never-rolled-out service exits 1 saying why, requests nothing."""
    invalid, plain = names
    cluster.put_raw(invalid, "name: [broken\n")
    cluster.put(plain, 0)
    cases = {
        "nosuchservice": "nosuchservice: cannot roll back: no such service",
        invalid: f"{invalid}: cannot roll back: its manifest is invalid (",
        plain: f"{plain}: cannot roll back: no rollout to roll back",
    }
    for name, message in cases.items():
        result = operator(cluster, "rollback", name)
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith(message), result.stderr
        assert cluster.consul.kv_get(f"operator/rollback/{name}").value is None


# --- status --watch, exit codes ---------------------------------------------------------------


class Documents:
    """The JSON documents a running `status --watch --json` has printed so far, read as they come."""

    def __init__(self, stream: IO[str]) -> None:
        self.docs: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), name="watch-reader", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        decoder, text = json.JSONDecoder(), ""
        for line in stream:
            text += line
            with contextlib.suppress(ValueError):  # a document is complete once it parses
                doc, _ = decoder.raw_decode(text.strip())
                self.docs.append(doc)
                text = ""

    def states(self, name: str) -> list[str]:
        """The state of ``name`` in each document ("-" while it is not shown)."""
        return [next((s["state"] for s in d["services"] if s["name"] == name), "-") for d in list(self.docs)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_status_watch_prints_each_change_until_a_signal(
    cluster: Cluster, service_name: str, sig: signal.Signals
) -> None:
    """`status --watch --json | …`: a document per change up to Converged; SIGINT/SIGTERM: exit 0, quiet."""
    # A person's pipe (`| jq`) is block-buffered: no PYTHONUNBUFFERED from the test run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack: where a hang hangs
    argv = [sys.executable, "-m", "consul_operator", "status", "--watch", "--json", service_name]
    argv += ["--consul", cluster.staging.consul_addr(), "--cluster", cluster.staging.name]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        watch = Documents(proc.stdout)
        wait_until(lambda: watch.docs, timeout=30, what="the first document")
        # Other tests' leftovers on this cluster may still change a host's line: a document each.
        assert set(watch.states(service_name)) == {"-"}
        cluster.put(service_name, 2)
        wait_until(
            lambda: watch.states(service_name)[-1] == "Converged",
            timeout=60,
            what="a document saying Converged",
        )
        states = watch.states(service_name)
        assert len(states) >= 3 and states[0] == "-" and "Progressing" in states, states
        # A document only when what it shows changed: status records written again as they
        # were (every agent's records heal every few seconds) print nothing.
        docs = list(watch.docs)
        assert all(one != two for one, two in itertools.pairwise(docs)), docs
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            raise AssertionError(
                f"still running 30 s after {sig.name}:\n{proc.stderr.read()[-6000:]}"
            ) from None
        assert code == 0
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# Nothing listens on this port of the test environment's first address.
NO_CONSUL_PORT = 18599


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--watch"),
        ("wait", "web", "--timeout", "5s"),
        ("apply", "manifests/simple.yaml"),
    ],
    ids=["status", "status-watch", "wait", "apply"],
)
def test_unreachable_consul_exits_2(cluster: Cluster, args: tuple[str, ...]) -> None:
    """With no Consul at the address, status (also --watch), wait and apply say so and exit 2 at once."""
    consul = f"{cluster.staging.addresses[0]}:{NO_CONSUL_PORT}"
    started_at = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "consul_operator", *args, "--consul", consul],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot read Consul" in result.stderr and consul in result.stderr
    assert time.monotonic() - started_at < 30


@pytest.mark.parametrize(
    "args",
    [
        ("status", "nosuch"),
        ("status", "--json", "nosuch"),
        ("wait", "nosuch", "--timeout", "1s"),
        ("delete", "nosuch"),
    ],
    ids=["status", "status-json", "wait", "delete"],
)
def test_unknown_service_exits_1_naming_it(cluster: Cluster, args: tuple[str, ...]) -> None:
    """A named service that does not exist: `NAME: no such service` on stderr, exit 1."""
    result = operator(cluster, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nosuch: no such service" in result.stderr


def test_wait_exits_2_when_consul_goes_away(cluster: Cluster, tmp_path: Path) -> None:
    """`wait` blocked on a service that never converges exits 2 soon after its Consul stops."""
    address = cluster.staging.addresses[0]
    consul = f"{address}:{HZ_PORTS['http']}"
    with consul_dev(address, tmp_path / "consul", tmp_path / "consul.log") as server:
        wait_until(lambda: ConsulClient(consul).leader(), timeout=60, what="dev Consul")
        argv = [
            sys.executable,
            "-m",
            "consul_operator",
            "wait",
            "never",
            "--timeout",
            "120s",
            "--consul",
            consul,
        ]
        waiting = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                waiting.wait(timeout=3)  # a window for an early exit (there must be none)
            assert waiting.poll() is None, "wait ended while Consul was there"
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            stopped = time.monotonic()
            _, stderr = waiting.communicate(timeout=60)
            assert waiting.returncode == 2, stderr
            assert "cannot read Consul" in stderr
            assert time.monotonic() - stopped < 30
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(timeout=30)
