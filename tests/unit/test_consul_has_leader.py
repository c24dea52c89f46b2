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
    "curl": '[ -n "${LEADER+x}" ] || exit 7\nprintf %s "$LEADER"\n',
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
