"""tests/support/cli_runner.py: a command forked from the preloaded CLI answers as a new process does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.cli_runner import run_cli

GOOD = "name: web\nimage: hello:local\nreplicas: 2\n"
BROKEN = "name: [\n"


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        pytest.param(["validate", "-"], GOOD, id="valid-manifest-on-stdin"),
        pytest.param(["validate", "-"], BROKEN, id="broken-manifest-exits-1"),
        pytest.param(["status", "--consul", "127.0.0.1:1"], None, id="unreachable-consul-exits-2"),
        pytest.param(["no-such-command"], None, id="usage-error-exits-2"),
    ],
)
def test_forked_command_answers_as_a_new_process(argv: list[str], stdin: str | None) -> None:
    """Exit code, standard output and standard error are those of `python -m consul_operator`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    fresh = subprocess.run(
        [sys.executable, "-m", "consul_operator", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    forked = run_cli(argv, env=env, stdin=stdin, timeout=60)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    # argparse names the program from argv[0]: "__main__.py" for `-m`, the forked child's own otherwise.
    assert forked.stderr.replace("__main__.py", "operator") == fresh.stderr.replace("__main__.py", "operator")
