"""Consul ACLs for real: default deny, the policies of deploy/acl/, one token per role.

The environment is staging.sh's secured variant (STAGING_SECURE=1: ACLs, TLS,
gossip encryption) on .71-73 of the run's block (tests/support/places.py), under its own name: Consul with
deploy/consul/acl.hcl and deploy/consul/tls.hcl, bootstrapped by
scripts/acl-bootstrap.sh, the agents and the LB started with their role's
token and a client certificate (the secured loop itself: test_secure.py). A
token that lacks a permission must get an error naming what it may not do,
and must lose nothing: no KV change, no container touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_IMODE

import docker
import pytest
import requests

from consul_operator.adapters.consul_client import ConsulClient, ConsulTLS
from consul_operator.core.errors import ConsulError, ConsulPermissionDenied, ConsulTLSError, ConsulUnavailable
from tests.support.bounds import PROCESS_S, REACT_S
from tests.support.cli_runner import run_cli
from tests.support.cluster import Cluster, manifest_yaml
from tests.support.places import PLACE
from tests.support.staging import PROCESSES, ROOT, Staging, pid_alive, tool, wait_until

ACL_ADDRESSES = PLACE.three(71)
AGENT_POLICY = ROOT / "deploy" / "acl" / "operator-agent.hcl"
# Docker actions that would mean a container was touched.
TOUCHING = ("create", "start", "kill", "die", "stop", "destroy", "restart")


@pytest.fixture(scope="module")
def acl_env(docker_engine: docker.DockerClient, nginx_binary: str) -> Iterator[Staging]:
    """The ACL staging environment, up for this module and torn down after it."""
    tool("consul")
    env = Staging(f"{PLACE.name}-acl", ACL_ADDRESSES, acl=True, secure=True)
    env.run("down")  # a previous run that crashed may have left it behind
    env.run("up")
    yield env
    env.run("down")


@pytest.fixture(scope="module")
def acl_cluster(acl_env: Staging, docker_engine: docker.DockerClient) -> Cluster:
    """The ACL environment, looked at with the management token."""
    return Cluster(acl_env, client(acl_env, acl_env.token("management")), docker_engine)


def client(env: Staging, token: str | None) -> ConsulClient:
    """A Consul client of the environment with ``token`` and its client certificate."""
    return ConsulClient(env.consul_addr(), token, tls=ConsulTLS.from_env(env.tls_env()))


@pytest.fixture(scope="module")
def running(acl_cluster: Cluster) -> str:
    """A service with 2 replicas, converged, for the tests that must not disturb it."""
    name = "a" + uuid.uuid4().hex[:8]
    acl_cluster.put(name, 2, placement={"max_per_host": 1})
    acl_cluster.wait_converged(name, 2)
    return name


def operator_cli(env: Staging, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `operator` command against the ACL environment with ``token``."""
    return run_cli(
        [*args, "--consul", env.consul_addr(), "--token", token],
        env={**os.environ, **env.tls_env()},
        timeout=60,
    )


def consul_acl(env: Staging, *args: str) -> str:
    """`consul acl ...` with the management token; returns its output."""
    result = subprocess.run(
        [
            tool("consul"),
            "acl",
            *args,
            f"-http-addr={env.consul_addr()}",
            f"-token-file={env.run_dir / 'acl' / 'management.token'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, **env.tls_env()},
    )
    return result.stdout


def restricted_token(env: Staging, tmp_path: Path, name: str, rules: str) -> str:
    """A new policy with ``rules`` and a token of it; returns the token's secret."""
    assert rules != AGENT_POLICY.read_text(), "the restriction changed nothing"
    policy = tmp_path / f"{name}.hcl"
    policy.write_text(rules)
    consul_acl(env, "policy", "create", "-name", name, "-rules", f"@{policy}")
    created = json.loads(consul_acl(env, "token", "create", "-policy-name", name, "-format=json"))
    return str(created["SecretID"])


def settled(cluster: Cluster) -> str:
    """Wait until the lock holder has written every work key (a new leader writes them all on its
    first pass, `leader_writes.WorkKeys`); its session. From then on, nobody else may write one."""

    def holder() -> str | None:
        entry = cluster.consul.kv_get(cluster.layout.leader_key, consistent=True).value
        return None if entry is None or not entry.session else entry.session

    def sessions() -> set[str]:
        entries = cluster.consul.kv_list(cluster.layout.work_prefix, consistent=True).value
        return {str(json.loads(e.value)["session"]) for e in entries}

    wait_until(
        lambda: (s := holder()) is not None and sessions() == {s},
        timeout=PROCESS_S,
        what="every work key written by the leader holding the lock",
    )
    session = holder()
    assert session is not None
    return session


def state_of(cluster: Cluster, service: str) -> tuple[dict[str, object], set[tuple[str, str]]]:
    """What must not change: KV (key -> modify index) and the containers (take it once `settled`).

    Left out: the leader lock, the agents' status reports (`operator/status/`),
    which they rewrite whenever a check's result changes, with their digests
    (`operator/reports/`, written with them), and the events
    (`operator/events/`), a log of what happened (a registration, a pass); none
    is state a refused command could lose.
    """
    kv: dict[str, object] = {
        e.key: e.modify_index
        for prefix in ("services/", "operator/")
        for e in cluster.consul.kv_list(prefix).value
        if e.key != "operator/leader"
        and not e.key.startswith(("operator/status/", "operator/reports/", "operator/events/"))
    }
    containers = {(c.id, c.status) for c in cluster.containers(service, all_states=True)}
    return kv, containers


@dataclass(frozen=True)
class Restricted:
    """Agents with a restricted token: their logs, and `state_of` the service before they started."""

    logs: dict[str, Path]
    before: tuple[dict[str, object], set[tuple[str, str]]]


@contextmanager
def agents_with_token(
    cluster: Cluster, token: str, tmp_path: Path, service: str, *extra: str
) -> Iterator[Restricted]:
    """Both agents replaced by agents running with ``token``; the staging ones come back afterwards.

    SIGTERM leaves the containers running; `staging.sh up` restarts the agents
    with their role token, and they find everything as it was. Both staging
    agents get SIGTERM before either is waited for, and ``service``'s state is
    taken once both are gone: stopped one after the other, the second took the
    lock the first gave up and, a new leader, wrote every work key again under
    its own session (issue 31), which then looked like a restricted agent's write.
    """
    env = cluster.staging
    pids = {host: cluster.staging.pids()[f"agent-{host}"] for host in ("host-1", "host-2")}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    for host, pid in pids.items():
        wait_until(lambda: not pid_alive(pid), timeout=PROCESS_S, what=f"agent-{host} to exit")  # noqa: B023
    before = state_of(cluster, service)
    logs = {host: tmp_path / f"agent-{host}.log" for host in ("host-1", "host-2")}
    procs = []
    try:
        for i, host in enumerate(("host-1", "host-2")):
            addr = env.addresses[i]
            with logs[host].open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "consul_operator",
                            "agent",
                            "--host",
                            host,
                            "--advertise",
                            addr,
                            "--consul",
                            env.consul_addr(host),
                            "--cluster",
                            env.name,
                            "--log-json",
                            *extra,
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, **env.tls_env(), "CONSUL_HTTP_TOKEN": token},
                    )
                )
        yield Restricted(logs, before)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        hung: list[int] = []
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                hung.append(proc.pid)
                proc.kill()  # ours, by pid: the next tests need the environment back
                proc.wait(timeout=30)
        env.run("up")
        assert hung == [], f"agents (pids {hung}) still running 60 s after SIGTERM: logs in {tmp_path}"


def log_errors(log: Path) -> list[str]:
    """The error fields of an agent's JSON log lines."""
    errors = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "error" in record:
            errors.append(str(record["error"]))
    return errors


def test_anonymous_requests_are_denied(acl_env: Staging) -> None:
    """ACLs are on with default deny: without a token even a read of services/ is refused."""
    with pytest.raises(ConsulPermissionDenied, match="services/"):
        client(acl_env, None).kv_list("services/")
    # Consul filters a transaction's reads instead of refusing them: the empty answer is probed.
    with pytest.raises(ConsulPermissionDenied, match="services/"):
        client(acl_env, None).kv_trees(["services/", "operator/placement/"], consistent=True)


def environ(pid: int) -> dict[str, str]:
    """The environment a process started with."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def with_descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (NGINX master and workers under the LB)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found


def test_daemons_run_with_their_role_tokens(acl_env: Staging) -> None:
    """The agents get the operator-agent token and the LB the operator-lb token, in CONSUL_HTTP_TOKEN."""
    pids = acl_env.pids()
    for name, role in (
        ("agent-host-1", "operator-agent"),
        ("agent-host-2", "operator-agent"),
        ("lb-host-3", "operator-lb"),
    ):
        assert environ(pids[name]).get("CONSUL_HTTP_TOKEN") == acl_env.token(role), name


def test_no_staging_process_has_a_token_on_its_command_line(acl_env: Staging) -> None:
    """/proc/<pid>/cmdline of every staging daemon (Consul, agents, LB, NGINX) holds no token value."""
    secrets = {f.stem: f.read_text().strip() for f in (acl_env.run_dir / "acl").glob("*.token")}
    assert {"management", "operator-agent", "operator-lb", "consul-host-1"} <= set(secrets)
    pids = acl_env.pids()
    assert set(pids) >= PROCESSES
    checked: dict[int, str] = {}
    for pid in pids.values():
        for proc in with_descendants(pid):
            try:
                checked[proc] = Path(f"/proc/{proc}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # ended meanwhile (an NGINX worker after a reload)
    assert any("nginx" in cmdline for cmdline in checked.values()), "NGINX is among the processes checked"
    for proc, cmdline in checked.items():
        for role, secret in secrets.items():
            assert secret not in cmdline, f"the {role} token is in the command line of pid {proc}"
        assert "--token" not in cmdline.split("\0"), f"pid {proc} has --token"


def test_whole_loop_works_with_role_tokens(acl_env: Staging, acl_cluster: Cluster, tmp_path: Path) -> None:
    """operator apply with the admin token starts replicas that pass and that NGINX serves on :80."""
    name = "a" + uuid.uuid4().hex[:8]
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(manifest_yaml(name, 2, placement={"max_per_host": 1}))
    admin = acl_env.token("operator-admin")

    applied = operator_cli(acl_env, admin, "apply", str(manifest))
    assert applied.returncode == 0, applied.stderr
    acl_cluster.wait_converged(name, 2)
    assert acl_cluster.per_host(name) == {"host-1": 1, "host-2": 1}
    status = operator_cli(acl_env, admin, "status", name)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Converged" in status.stdout

    wait_until(
        lambda: acl_cluster.lb_serves(name, 2),
        timeout=30,
        what=f"NGINX on {acl_env.addresses[2]}:80 serving both replicas",
    )

    deleted = operator_cli(acl_env, admin, "delete", name)
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: not acl_cluster.containers(name, all_states=True), timeout=60, what=f"{name} removed")


def test_lb_token_cannot_change_services_and_loses_nothing(
    acl_env: Staging, acl_cluster: Cluster, running: str, tmp_path: Path
) -> None:
    """apply and delete with the read-only LB token are refused, naming the key; nothing changes."""
    settled(acl_cluster)
    before = state_of(acl_cluster, running)
    since = time.time()
    manifest = tmp_path / f"{running}.yaml"
    manifest.write_text(manifest_yaml(running, 3))
    lb = acl_env.token("operator-lb")

    applied = operator_cli(acl_env, lb, "apply", str(manifest))
    assert applied.returncode == 2
    assert f"error: permission denied for writing KV 'services/{running}'" in applied.stderr
    assert "check the ACL token" in applied.stderr
    assert "cannot read Consul" not in applied.stderr
    deleted = operator_cli(acl_env, lb, "delete", running)
    assert deleted.returncode == 2
    assert f"error: permission denied for deleting KV 'services/{running}'" in deleted.stderr

    assert state_of(acl_cluster, running) == before
    assert acl_cluster.converged(running, 2)
    assert acl_cluster.container_events(running, since, TOUCHING) == []


def test_agent_without_operator_write_never_leads_and_loses_nothing(
    acl_env: Staging, acl_cluster: Cluster, running: str, tmp_path: Path
) -> None:
    """Agents whose token may only read operator/ are refused the leader lock, by name; nothing moves."""
    rules = AGENT_POLICY.read_text().replace(
        'key_prefix "operator/" {\n  policy = "write"', 'key_prefix "operator/" {\n  policy = "read"'
    )
    token = restricted_token(acl_env, tmp_path, "agent-without-operator-write", rules)
    since = time.time()

    with agents_with_token(acl_cluster, token, tmp_path, running, "--lost-grace", "1s") as restricted:
        logs, before = restricted.logs, restricted.before

        def refused() -> bool:
            return any(
                "permission denied for acquiring 'operator/leader'" in e
                for log in logs.values()
                for e in log_errors(log)
            )

        wait_until(refused, timeout=30, what="an agent refused the leader lock")
        # Refused again after more than the lost grace: still nobody leads, nothing moved.
        wait_until(
            lambda: sum("operator/leader" in e for log in logs.values() for e in log_errors(log)) >= 4,
            timeout=30,
            what="repeated refusals",
        )
        assert acl_cluster.leader() is None
        assert state_of(acl_cluster, running) == before
    acl_cluster.wait_converged(running, 2)
    assert acl_cluster.container_events(running, since, TOUCHING) == []


def test_agent_without_services_read_drains_nothing(
    acl_env: Staging, acl_cluster: Cluster, running: str, tmp_path: Path
) -> None:
    """Agents whose token cannot read services/: the one that leads fails its passes, naming it, instead
    of draining all; the host passes read only their work keys and go on (nothing drains either)."""
    rules = AGENT_POLICY.read_text().replace('key_prefix "services/" {\n  policy = "read"\n}\n', "")
    token = restricted_token(acl_env, tmp_path, "agent-without-services-read", rules)
    since = time.time()

    with agents_with_token(acl_cluster, token, tmp_path, running) as restricted:
        logs, before = restricted.logs, restricted.before

        def refusals() -> int:
            return sum(
                "permission denied for listing KV 'services/'" in e
                for log in logs.values()
                for e in log_errors(log)
            )

        # Several failed leader passes in a row: every one refused before deciding.
        wait_until(lambda: refusals() >= 3, timeout=30, what="the leader's passes refused")
        assert state_of(acl_cluster, running) == before
    acl_cluster.wait_converged(running, 2)
    assert acl_cluster.container_events(running, since, TOUCHING) == []


def test_agent_without_node_read_schedules_nothing(
    acl_env: Staging, acl_cluster: Cluster, running: str, tmp_path: Path
) -> None:
    """A leader whose token cannot read nodes (so sees no live host) refuses to schedule; nothing moves."""
    rules = AGENT_POLICY.read_text().replace('node_prefix "" {\n  policy = "read"\n}\n', "")
    token = restricted_token(acl_env, tmp_path, "agent-without-node-read", rules)
    since = time.time()

    with agents_with_token(acl_cluster, token, tmp_path, running, "--lost-grace", "1s") as restricted:
        logs, before = restricted.logs, restricted.before

        def refusals() -> int:
            return sum("does not see itself live" in e for log in logs.values() for e in log_errors(log))

        # Back-off 0.5 + 1 + 2 s: the third refusal comes well after the 1 s lost grace.
        # The agents start with the block: their start-up is in this wait too.
        wait_until(
            lambda: refusals() >= 3, timeout=PROCESS_S + REACT_S, what="the leader refusing to schedule"
        )
        assert any(
            'node_prefix "" and service_prefix "" read' in e
            for e in log_errors(logs["host-1"]) + log_errors(logs["host-2"])
        )
        assert state_of(acl_cluster, running) == before
    acl_cluster.wait_converged(running, 2)
    assert acl_cluster.container_events(running, since, TOUCHING) == []


def test_admin_token_cordons_and_drains_and_may_write_nothing_else_of_the_operator(
    acl_env: Staging, acl_cluster: Cluster, running: str
) -> None:
    """The admin token writes operator/hosts/ (cordon, drain, uncordon), the LB token cannot, and the
    admin token still may not write the operator's other state."""
    admin, lb = acl_env.token("operator-admin"), acl_env.token("operator-lb")
    key = acl_cluster.layout.host_key("host-1")
    settled(acl_cluster)
    before = state_of(acl_cluster, running)
    refused = operator_cli(acl_env, lb, "cordon", "host-1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "permission denied" in refused.stderr and "operator/hosts/host-1" in refused.stderr
    assert acl_cluster.consul.kv_get(key).value is None
    try:
        for command in ("cordon", "drain"):
            done = operator_cli(acl_env, admin, command, "host-1")
            assert done.returncode == 0, done.stderr
        shown = json.loads(operator_cli(acl_env, admin, "status", "--json").stdout)
        host = next(h for h in shown["hosts"] if h["name"] == "host-1")
        assert host["cordoned"] is True and host["drain"]["deadline"] == 300.0
        admin_client = client(acl_env, admin)
        with pytest.raises(ConsulPermissionDenied):
            admin_client.kv_put(acl_cluster.layout.placement_key(running), b"{}")
    finally:
        done = operator_cli(acl_env, admin, "uncordon", "host-1")
        assert done.returncode == 0, done.stderr
    assert acl_cluster.consul.kv_get(key).value is None
    wait_until(lambda: acl_cluster.converged(running, 2), timeout=60, what=f"{running} as before")
    assert state_of(acl_cluster, running)[1] == before[1], "no container touched: none could move"


def test_admin_token_may_request_a_rollback_and_the_lb_token_may_not(
    acl_env: Staging, acl_cluster: Cluster
) -> None:
    """`operator rollback` writes operator/rollback/<name>: the admin token may, the LB token may not."""
    key = acl_cluster.layout.rollback_key("acl-rollback-probe")
    admin = client(acl_env, acl_env.token("operator-admin"))
    lb = client(acl_env, acl_env.token("operator-lb"))
    with pytest.raises(ConsulPermissionDenied):
        lb.kv_put(key, b"{}")
    try:
        assert admin.kv_put(key, b"{}", cas=0)
    finally:
        admin.kv_delete(key)


def test_admin_writes_secrets_agents_read_them_and_the_lb_token_neither(
    acl_env: Staging, acl_cluster: Cluster
) -> None:
    """secrets/<service>/<name>: the admin token writes it, the agents' token reads it but may not
    write it, and the load balancer's token can neither read nor write it."""
    key = acl_cluster.layout.secret_key("acl-secret-probe", "password")
    admin = client(acl_env, acl_env.token("operator-admin"))
    agent = client(acl_env, acl_env.token("operator-agent"))
    lb = client(acl_env, acl_env.token("operator-lb"))
    try:
        assert admin.kv_put(key, b"planted-acl-value")
        entry = agent.kv_get(key).value
        assert entry is not None and entry.value == b"planted-acl-value"
        with pytest.raises(ConsulPermissionDenied):
            agent.kv_put(key, b"other")
        with pytest.raises(ConsulPermissionDenied):
            lb.kv_put(key, b"other")
        with pytest.raises(ConsulPermissionDenied):
            lb.kv_get(key)
    finally:
        admin.kv_delete(key)


def test_admin_writes_template_config_and_agents_read_it(acl_env: Staging, acl_cluster: Cluster) -> None:
    """config/<path>, what templates' key() reads: the admin token writes it, the agents' token (the
    leader renders) reads it but may not write it."""
    key = acl_cluster.layout.config_key("acl-probe/greeting")
    admin = client(acl_env, acl_env.token("operator-admin"))
    agent = client(acl_env, acl_env.token("operator-agent"))
    try:
        assert admin.kv_put(key, b"hello")
        entry = agent.kv_get(key).value
        assert entry is not None and entry.value == b"hello"
        with pytest.raises(ConsulPermissionDenied):
            agent.kv_put(key, b"other")
    finally:
        admin.kv_delete(key)


# --- secured: TLS, gossip encryption, secrets hygiene (#21) -----------------------------


def test_plain_http_to_consul_is_refused(acl_env: Staging) -> None:
    """Secured, Consul has no plain HTTP port, and plain HTTP to its HTTPS port gets no answer but 400."""
    address = acl_env.addresses[0]
    with pytest.raises(ConsulUnavailable, match="Connection refused"):
        ConsulClient(f"http://{address}:8500", acl_env.token("management"), tls=ConsulTLS()).leader()
    with pytest.raises(ConsulError, match="HTTP request to an HTTPS server"):
        ConsulClient(f"http://{address}:8501", acl_env.token("management"), tls=ConsulTLS()).leader()


def test_a_client_without_a_certificate_is_refused(acl_env: Staging) -> None:
    """verify_incoming: with the right CA but no client certificate, Consul ends the handshake."""
    tls = ConsulTLS(ca_file=acl_env.tls_env()["CONSUL_CACERT"])
    with pytest.raises(ConsulTLSError, match="refused our client certificate"):
        ConsulClient(acl_env.consul_addr(), acl_env.token("management"), tls=tls).leader()


def test_a_wrong_ca_is_refused_with_a_clear_error(acl_env: Staging, tmp_path: Path) -> None:
    """A CA that did not sign Consul's certificate: CLI exit 2, one line naming the host and the CA file."""
    subprocess.run([tool("consul"), "tls", "ca", "create"], cwd=tmp_path, check=True, capture_output=True)
    wrong_ca = str(tmp_path / "consul-agent-ca.pem")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "consul_operator",
            "status",
            "--consul",
            acl_env.consul_addr(),
            "--ca-file",
            wrong_ca,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **acl_env.tls_env(), "CONSUL_HTTP_TOKEN": acl_env.token("operator-admin")},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert acl_env.consul_addr() in lines[0] and wrong_ca in lines[0], lines[0]
    assert "certificate verify failed" in lines[0], lines[0]


def test_gossip_is_encrypted(acl_env: Staging) -> None:
    """Every server runs with the gossip key: the keyring has exactly that one key on all three."""
    key = (acl_env.run_dir / "tls" / "gossip.key").read_text().strip()
    listed = keyring(acl_env, "-list")
    assert key in listed
    assert "[3/3]" in listed, listed


def keyring(env: Staging, *args: str) -> str:
    """`consul keyring ...` over HTTPS with the management token; returns its output."""
    result = subprocess.run(
        [
            tool("consul"),
            "keyring",
            *args,
            f"-http-addr={env.consul_addr()}",
            f"-token-file={env.run_dir / 'acl' / 'management.token'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **env.tls_env()},
    )
    return result.stdout


def secrets_of(env: Staging) -> dict[str, str]:
    """Every secret of the environment: the tokens, the gossip key, the private keys."""
    secrets = {f.name: f.read_text().strip() for f in (env.run_dir / "acl").glob("*.token")}
    secrets["gossip.key"] = (env.run_dir / "tls" / "gossip.key").read_text().strip()
    for key in (env.run_dir / "tls").glob("*-key.pem"):
        # The base64 body of a PEM key: any line of it in a log is a leak.
        secrets[key.name] = "".join(key.read_text().splitlines()[1:-1])
    return secrets


def test_no_secret_in_any_log_line_or_command_line(
    acl_env: Staging, acl_cluster: Cluster, running: str
) -> None:
    """No token, gossip key or private key in any daemon's log or in any staging process's command line."""
    secrets = secrets_of(acl_env)
    assert {"management.token", "operator-agent.token", "gossip.key", "dc1-client-consul-0-key.pem"} <= set(
        secrets
    )
    logs = list((acl_env.run_dir / "logs").glob("*.log"))
    assert {log.stem for log in logs} >= PROCESSES
    for log in logs:
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            for name, secret in secrets.items():
                assert secret not in line, f"{name} in {log.name} line {number}"
    for pid in acl_env.pids().values():
        for proc in with_descendants(pid):
            try:
                cmdline = Path(f"/proc/{proc}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            for name, secret in secrets.items():
                assert secret not in cmdline, f"{name} in the command line of pid {proc}"


def test_key_and_token_files_are_private_to_their_user(acl_env: Staging) -> None:
    """Private keys, tokens, the gossip key and files holding it: mode 0600, owned by the daemons' user."""
    files = [
        *(acl_env.run_dir / "acl").glob("*.token"),
        acl_env.run_dir / "acl" / "management.header",
        *(acl_env.run_dir / "tls").glob("*-key.pem"),
        acl_env.run_dir / "tls" / "gossip.key",
        *(acl_env.run_dir / "tls").glob("host-*.hcl"),
    ]
    # 7 tokens, the management header, the CA's, client's and 3 servers' keys, the gossip key in 4 files.
    assert len(files) == 7 + 1 + 5 + 1 + 3
    daemon_uid = Path(f"/proc/{acl_env.pids()['agent-host-1']}").stat().st_uid
    for path in files:
        info = path.stat()
        assert S_IMODE(info.st_mode) == 0o600, f"{path}: {oct(S_IMODE(info.st_mode))}"
        assert info.st_uid == daemon_uid, (
            f"{path} is owned by uid {info.st_uid}, the daemons run as {daemon_uid}"
        )


def test_metrics_are_served_over_tls_only(acl_env: Staging) -> None:
    """With --metrics-tls-cert/key, /metrics answers over HTTPS (verified by the CA), not over plain HTTP."""
    address = f"{acl_env.addresses[0]}:9810"
    ca = acl_env.tls_env()["CONSUL_CACERT"]
    answer = requests.get(f"https://{address}/metrics", verify=ca, timeout=10)
    assert answer.status_code == 200 and "operator_" in answer.text
    log = acl_env.run_dir / "logs" / "agent-host-1.log"
    before = log.stat().st_size
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{address}/metrics", timeout=10)
    assert requests.get(f"https://{address}/healthz", verify=ca, timeout=10).status_code == 200
    with log.open() as lines:
        lines.seek(before)
        assert "Traceback" not in lines.read(), "a failed handshake is logged as a crash"


def test_gossip_key_rotates_without_stopping_anything(
    acl_env: Staging, acl_cluster: Cluster, running: str
) -> None:
    """docs/deploy.md's rotation: install, use, remove; the servers stay members, the containers stay up."""
    before = {c.id for c in acl_cluster.containers(running)}
    old = (acl_env.run_dir / "tls" / "gossip.key").read_text().strip()
    new = subprocess.run(
        [tool("consul"), "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    keyring(acl_env, "-install", new)
    keyring(acl_env, "-use", new)
    keyring(acl_env, "-remove", old)
    listed = keyring(acl_env, "-list")
    assert new in listed and old not in listed, listed
    assert "[3/3]" in listed, f"not every server answered: {listed}"
    assert {c.id for c in acl_cluster.containers(running)} == before
    acl_cluster.wait_converged(running, 2)


def presented_certificate(env: Staging, address: str) -> bytes:
    """The certificate (DER) Consul's HTTPS API at ``address`` presents, verified with the CA."""
    files = env.tls_env()
    context = ssl.create_default_context(cafile=files["CONSUL_CACERT"])
    context.load_cert_chain(files["CONSUL_CLIENT_CERT"], files["CONSUL_CLIENT_KEY"])
    with (
        socket.create_connection((address, 8501), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_server_certificate_rotates_without_stopping_anything(
    acl_env: Staging, acl_cluster: Cluster, running: str, tmp_path: Path
) -> None:
    """docs/deploy.md's rotation: a new certificate of the same CA, then `consul reload`: nothing stops."""
    tls = acl_env.run_dir / "tls"
    address = acl_env.addresses[0]
    before = {c.id for c in acl_cluster.containers(running)}
    old = presented_certificate(acl_env, address)
    ca = ["-ca", str(tls / "consul-agent-ca.pem"), "-key", str(tls / "consul-agent-ca-key.pem")]
    create = [
        tool("consul"),
        "tls",
        "cert",
        "create",
        "-server",
        "-dc",
        "dc1",
        "-additional-ipaddress",
        address,
    ]
    subprocess.run([*create, *ca], cwd=tmp_path, check=True, capture_output=True)
    new = ssl.PEM_cert_to_DER_cert((tmp_path / "dc1-server-consul-0.pem").read_text())
    assert new != old
    # In place: the files keep their mode (0600) and owner.
    (tls / "dc1-server-consul-0-key.pem").write_text((tmp_path / "dc1-server-consul-0-key.pem").read_text())
    (tls / "dc1-server-consul-0.pem").write_text((tmp_path / "dc1-server-consul-0.pem").read_text())
    os.kill(acl_env.pids()["consul-host-1"], signal.SIGHUP)
    wait_until(lambda: presented_certificate(acl_env, address) == new, timeout=30, what="the new certificate")
    assert acl_env.consul_alive("host-1")
    status = operator_cli(acl_env, acl_env.token("operator-admin"), "status", running)
    assert status.returncode == 0, status.stderr
    assert {c.id for c in acl_cluster.containers(running)} == before
