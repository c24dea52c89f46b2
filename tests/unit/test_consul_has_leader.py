"""keepalived's `consul` check (deploy/keepalived/consul-has-leader): a cut fails it, a restart does not.

The script asks the local agent for the Raft leader, and systemd about the consul
unit. Here `curl`, `systemctl` and `ps` are stubs on PATH that answer from the
environment, so each row is one state of the agent and its unit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "keepalived" / "consul-has-leader"

STUBS = {
    # curl: the leader's answer in LEADER, or exit 7 (connection refused) when unset.
    # With CURL_ARGS set, it writes its arguments there first, one a line.
    "curl": (
        '[ -n "${CURL_ARGS:-}" ] && printf "%s\\n" "$@" > "$CURL_ARGS"\n'
        '[ -n "${LEADER+x}" ] || exit 7\nprintf %s "$LEADER"\n'
    ),
    # The check reads its settings itself: a sed or a tail is a process a second for nothing.
    "sed": 'echo sed >> "$FORKED"\nexit 99\n',
    "tail": 'echo tail >> "$FORKED"\nexit 99\n',
    # systemctl show -p NAME --value consul: the property from the environment.
    "systemctl": (
        'case "$3" in\n'
        '  ActiveState) echo "$ACTIVE" ;;\n'
        '  SubState) echo "$SUB" ;;\n'
        '  MainPID) echo "$MAINPID" ;;\n'
        "esac\n"
    ),
    # ps -o etimes= -p PID: the process's age in seconds; nothing for pid 0 (no process).
    "ps": '[ "$4" = 0 ] && exit 1\necho "   $AGE"\n',
}


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A directory of the stub commands."""
    for name, body in STUBS.items():
        stub = tmp_path / name
        stub.write_text(f"#!/bin/sh\n{body}")
        stub.chmod(0o755)
    return tmp_path


RUNNING_LONG = {"ACTIVE": "active", "SUB": "running", "MAINPID": "42", "AGE": "3600"}
RUNNING_YOUNG = {**RUNNING_LONG, "AGE": "3"}


@pytest.mark.parametrize(
    ("agent", "passes"),
    [
        pytest.param({**RUNNING_LONG, "LEADER": '"198.18.0.11:8300"'}, True, id="knows-a-leader"),
        pytest.param({**RUNNING_LONG, "LEADER": '""'}, False, id="cut-off-server-no-leader"),
        pytest.param(RUNNING_LONG, False, id="long-running-agent-not-answering"),
        pytest.param(
            {"ACTIVE": "deactivating", "SUB": "stop-sigterm", "MAINPID": "42", "AGE": "3600"},
            True,
            id="restart-old-agent-stopping",
        ),
        pytest.param(
            {"ACTIVE": "activating", "SUB": "start", "MAINPID": "0", "AGE": "0"},
            True,
            id="restart-new-agent-starting",
        ),
        pytest.param(RUNNING_YOUNG, True, id="restarted-agent-not-answering-yet"),
        pytest.param({**RUNNING_YOUNG, "LEADER": '""'}, True, id="restarted-server-no-leader-yet"),
        pytest.param(
            {**RUNNING_LONG, "AGE": "15", "LEADER": '""'}, False, id="restart-grace-over-still-no-leader"
        ),
        pytest.param(
            {"ACTIVE": "activating", "SUB": "auto-restart", "MAINPID": "0", "AGE": "0"},
            False,
            id="crash-loop-restart-pause",
        ),
        pytest.param({"ACTIVE": "inactive", "SUB": "dead", "MAINPID": "0", "AGE": "0"}, False, id="stopped"),
        pytest.param({"ACTIVE": "failed", "SUB": "failed", "MAINPID": "0", "AGE": "0"}, False, id="failed"),
    ],
)
def test_check_fails_on_a_cut_and_passes_through_a_restart(
    stubs: Path, agent: dict[str, str], passes: bool
) -> None:
    """The check passes when the agent knows a leader, or its unit is restarting; else it fails."""
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", **agent}
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert (result.returncode == 0) is passes, result.stderr


def test_the_settings_file_names_consul_and_its_tls_files(stubs: Path, tmp_path: Path) -> None:
    """The check asks the Consul that operator lb's settings name, with their TLS files (the last line
    of a name wins, as in systemd's EnvironmentFile), and reads them without a process of its own."""
    settings = tmp_path / "operator-lb"
    settings.write_text(
        "CONSUL_HTTP_ADDR=127.0.0.1:8500\n"
        "OTHER=CONSUL_CACERT=/not/this\n"
        "CONSUL_HTTP_ADDR=https://198.18.0.13:8501\n"
        "CONSUL_CACERT=/etc/consul.d/tls/ca.pem\n"
        "CONSUL_CLIENT_CERT=/etc/consul.d/tls/client.pem\n"
        "CONSUL_CLIENT_KEY=/etc/consul.d/tls/client-key.pem"  # no final newline
    )
    args, forked = tmp_path / "curl-args", tmp_path / "forked"
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "OPERATOR_LB_SETTINGS": str(settings),
        "CURL_ARGS": str(args),
        "FORKED": str(forked),
        **RUNNING_LONG,
        "LEADER": '"198.18.0.11:8300"',
    }
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    assert args.read_text().splitlines() == [
        "-fs",
        "--max-time",
        "1",
        "--cacert",
        "/etc/consul.d/tls/ca.pem",
        "--cert",
        "/etc/consul.d/tls/client.pem",
        "--key",
        "/etc/consul.d/tls/client-key.pem",
        "https://198.18.0.13:8501/v1/status/leader",
    ]
    assert not forked.exists(), forked.read_text()


def test_without_a_settings_file_the_check_asks_the_local_agent(stubs: Path, tmp_path: Path) -> None:
    """No settings file: the local agent's default address, plain HTTP."""
    args = tmp_path / "curl-args"
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "OPERATOR_LB_SETTINGS": str(tmp_path / "absent"),
        "CURL_ARGS": str(args),
        **RUNNING_LONG,
        "LEADER": '"198.18.0.11:8300"',
    }
    result = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    assert args.read_text().splitlines()[-1] == "http://127.0.0.1:8500/v1/status/leader"
