"""Drive scripts/staging.sh from tests: an environment of our own, on our own addresses.

The tests never share the developer's `make up` environment: theirs runs on
127.0.0.11-13 under the name "staging"; each test environment has its own
name (which is also its containers' cluster label), its own loopback
addresses and its own run directory under .run/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.support.places import PLACE

ROOT = Path(__file__).resolve().parents[2]
STAGING = ROOT / "scripts" / "staging.sh"
HOSTS = ("host-1", "host-2", "host-3")
# Every daemon `staging.sh up` starts, by the name of its pid file.
PROCESSES = frozenset(
    {"consul-host-1", "consul-host-2", "consul-host-3", "agent-host-1", "agent-host-2", "lb-host-3"}
)
# The test environments resync far less often than any test lasts, so that a
# test converging within its bound proves the reaction to events (Docker's
# event stream, Consul's blocking queries), not the 60 s safety net.
SLOW_RESYNC = (("AGENT_ARGS", "--resync 600s"), ("LB_ARGS", "--resync 600s"))
# The tests' app hosts differ in labels and capacity (tests/integration/test_capacity.py):
# host-1 is the big one in zone a, host-2 the small one in zone b. Nominal capacities (the
# hosts share one machine); CPU quotas above the machine's CPUs would not start, so no
# test asks for more than 1 CPU per replica. Only host-1 lets a manifest add NET_ADMIN
# (tests/integration/test_container_privileges.py).
HOST_CAPACITY_1 = "memory=16Gi,cpus=8"
HOST_CAPACITY_2 = "memory=4Gi,cpus=8"
HOST_1_ALLOWED_CAPS = "NET_ADMIN"
HOST_1_ALLOWED_HOST_PATH = "/tmp/consul-operator-host-paths"
"""The one directory host-1's agent lets manifests mount from (tests/integration/test_volumes.py)."""
HOST_2_REGISTRY_AUTH = Path(tempfile.gettempdir()) / f"consul-operator-registry-auth-{PLACE.name}.json"
"""host-2's agent's --registry-auth file (tests/integration/test_registry.py writes a registry's
credentials into it; the agent reads it again when it changes). `write_registry_auth` writes it."""
NO_REGISTRY_AUTH: dict[str, object] = {"auths": {"registry.invalid": {"username": "nobody", "password": "x"}}}
"""What host-2's --registry-auth file holds between tests: credentials for no registry in use."""
HOSTS_APART = (
    (
        "AGENT_ARGS_HOST1",
        f"--label zone=a --capacity {HOST_CAPACITY_1} --allow-cap {HOST_1_ALLOWED_CAPS}"
        f" --allow-host-path {HOST_1_ALLOWED_HOST_PATH}",
    ),
    (
        "AGENT_ARGS_HOST2",
        f"--label zone=b --capacity {HOST_CAPACITY_2} --registry-auth {HOST_2_REGISTRY_AUTH}",
    ),
)


def write_registry_auth(config: dict[str, object] | None = None) -> None:
    """Write host-2's --registry-auth file (a Docker config.json; default `NO_REGISTRY_AUTH`), readable by
    its owner only, replaced in one rename so that the agent never reads half of it."""
    fd, temporary = tempfile.mkstemp(dir=HOST_2_REGISTRY_AUTH.parent, prefix=".registry-auth-")
    with os.fdopen(fd, "w") as file:
        json.dump(NO_REGISTRY_AUTH if config is None else config, file)
    os.replace(temporary, HOST_2_REGISTRY_AUTH)


def tool(name: str) -> str:
    """Path of a required program; a missing one fails the test run, never skips it."""
    found = shutil.which(name, path=f"{ROOT / '.tools' / 'bin'}:{os.environ.get('PATH', '')}")
    if found is None:
        raise AssertionError(f"{name} is not installed: run `make deps`")
    return found


class Environment(Protocol):
    """What `Cluster` and the chaos checks use of an environment: `Staging`, or `Nodes` (support/nodes.py)."""

    @property
    def name(self) -> str: ...  # also its containers' cluster label
    @property
    def addresses(self) -> tuple[str, str, str]: ...  # host-1..3; NGINX on the third, port 80
    @property
    def run_dir(self) -> Path: ...
    def run(self, command: str) -> subprocess.CompletedProcess[str]: ...  # up, down
    def consul_addr(self, host: str = "host-1") -> str: ...
    def tls_env(self) -> dict[str, str]: ...  # CONSUL_CACERT... for a client; {} without TLS
    def nginx_conf(self) -> str: ...
    def consul_alive(self, host: str) -> bool: ...
    def pids(self) -> dict[str, int]: ...  # daemons that are processes of this machine


@dataclass(frozen=True)
class Staging:
    """One local staging environment started by scripts/staging.sh."""

    name: str
    addresses: tuple[str, str, str]
    acl: bool = False  # Consul with ACLs on, default deny, role tokens (STAGING_ACL=1)
    secure: bool = False  # also TLS (HTTPS only, mutual), gossip encryption (STAGING_SECURE=1)
    extra_env: tuple[tuple[str, str], ...] = ()  # more of staging.sh's variables (AGENT_ARGS...)
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", ROOT / ".run" / self.name)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points staging.sh at this environment."""
        return {
            **os.environ,
            "STAGING_NAME": self.name,
            "STAGING_ADDRS": " ".join(self.addresses),
            "RUN_DIR": str(self.run_dir),
            "STAGING_ACL": "1" if self.acl or self.secure else "0",
            "STAGING_SECURE": "1" if self.secure else "0",
            **dict(self.extra_env),
        }

    def token(self, role: str) -> str:
        """The secret of a token staging.sh made with ACLs on (management, operator-agent, operator-lb...)."""
        return (self.run_dir / "acl" / f"{role}.token").read_text().strip()

    def consul_addr(self, host: str = "host-1") -> str:
        """HTTP address of the Consul agent of ``host`` (https://...:8501 when secured)."""
        address = self.addresses[HOSTS.index(host)]
        return f"https://{address}:8501" if self.secure else f"{address}:8500"

    def tls_env(self) -> dict[str, str]:
        """The consul CLI's TLS variables for a client of this environment (none unless secured)."""
        if not self.secure:
            return {}
        tls = self.run_dir / "tls"
        return {
            "CONSUL_CACERT": str(tls / "consul-agent-ca.pem"),
            "CONSUL_CLIENT_CERT": str(tls / "dc1-client-consul-0.pem"),
            "CONSUL_CLIENT_KEY": str(tls / "dc1-client-consul-0-key.pem"),
        }

    def nginx_conf(self) -> str:
        """The configuration the load balancer installed in its own NGINX."""
        return (self.run_dir / "nginx" / "nginx.conf").read_text()

    def consul_alive(self, host: str) -> bool:
        """Whether the Consul agent of ``host`` runs."""
        return pid_alive(self.pids().get(f"consul-{host}", -1))

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``staging.sh COMMAND``; a failure fails the test with the script's output."""
        result = subprocess.run(
            ["bash", str(STAGING), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"staging.sh {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def pids(self) -> dict[str, int]:
        """The pids staging.sh recorded, by process name."""
        pid_dir = self.run_dir / "pids"
        if not pid_dir.is_dir():
            return {}
        found = {}
        for path in pid_dir.glob("*.pid"):
            # staging.sh renames each file in whole; one removed meanwhile is simply gone.
            with contextlib.suppress(FileNotFoundError):
                found[path.stem] = int(path.read_text().split()[0])
        return found


QUICK_POLL = 0.1
"""Seconds between looks at a condition for the first `QUICK_FOR` seconds of a wait."""
QUICK_FOR = 2.0
SLOW_POLL = 0.25
"""Seconds between looks after that: a wait that lasts is for something slow (a drain, a grace, a
restart), which a quarter of a second more does not change, while every look costs the daemons and
the Docker engine it asks: a `Cluster.converged` look took about 6 ms of CPU in all (the test 2.8,
Consul 2.5, the Docker engine 0.8), a scrape of an agent's /metrics 3.4 ms of the agent's (issue 29)."""


def poll_interval(waited: float) -> float:
    """Seconds until the next look at a condition, ``waited`` seconds into the wait."""
    return QUICK_POLL if waited < QUICK_FOR else SLOW_POLL


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    Looks every `poll_interval` unless ``interval`` fixes it (a test that times a reaction).
    With ``OPERATOR_TEST_WAITS=FILE`` every wait appends how long it took against its
    bound to FILE (JSON lines): the figures tests/support/bounds.py is set from.
    """
    started = clock()
    deadline = started + timeout
    last_error: Exception | None = None
    while (now := clock()) < deadline:
        try:
            value = condition()
        except Exception as exc:  # the condition may fail while things converge
            last_error = exc
        else:
            if value:
                _record_wait(what, clock() - started, timeout, met=True)
                return value
        sleep(poll_interval(now - started) if interval is None else interval)
    _record_wait(what, clock() - started, timeout, met=False)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def _record_wait(what: str, seconds: float, timeout: float, *, met: bool) -> None:
    """One line of OPERATOR_TEST_WAITS, when set: which test waited how long for what."""
    path = os.environ.get("OPERATOR_TEST_WAITS")
    if not path:
        return
    line = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").removesuffix(" (call)"),
        "what": what,
        "seconds": round(seconds, 3),
        "bound": timeout,
        "met": met,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def restart_docker_engine() -> None:
    """Restart the Docker engine: through systemd when it runs it, else by dockerd's own pid file.

    dockerd writes its pid to /var/run/docker.pid; after stopping that one
    process, `scripts/deps.sh` starts the engine again the way `make deps` does.
    """
    systemctl = shutil.which("systemctl")
    if systemctl and Path("/run/systemd/system").is_dir():
        subprocess.run([systemctl, "restart", "docker"], check=True, timeout=120)
        return
    pid_file = Path("/var/run/docker.pid")
    if not pid_file.exists():
        raise AssertionError("cannot restart the Docker engine: no systemd, no /var/run/docker.pid")
    pid = int(pid_file.read_text().split()[0])
    if Path(f"/proc/{pid}/exe").resolve().name != "dockerd":
        raise AssertionError(f"/var/run/docker.pid names pid {pid}, which is not dockerd")
    os.kill(pid, 15)
    wait_until(lambda: not pid_alive(pid), timeout=60, what="dockerd to stop")
    subprocess.run(["bash", str(ROOT / "scripts" / "deps.sh")], check=True, capture_output=True, timeout=300)
