"""Run `operator` commands as processes forked from one that has imported the CLI already.

A new interpreter for each `python -m consul_operator ...` spent about 0.6-0.8 CPU-seconds
importing the CLI before it did anything: a perf profile of a whole `make test` (issue 29)
counted 262 such short processes, about 160 CPU-seconds, a tenth of the suite's CPU.
Here multiprocessing's forkserver imports `consul_operator.cli.main` once per test worker,
and each command is a child forked from it: a process of its own, with its own argv,
environment, standard input and output (files, read back after it exits) and exit code,
as `subprocess.run` gives, without the interpreter's start and the imports. Tests of what
only a fresh process shows (signals, a terminal, the interpreter's own start) run
`python -m consul_operator` themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["consul_operator.cli.main"])


def _command(argv: Sequence[str], env: Mapping[str, str], files: Sequence[str]) -> None:
    """In the forked child: the environment and standard streams of a new process, then the command."""
    stdin, stdout, stderr = files
    os.environ.clear()
    os.environ.update(env)
    for path, fd, flags in ((stdin, 0, os.O_RDONLY), (stdout, 1, os.O_WRONLY), (stderr, 2, os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    # multiprocessing gave the child /dev/null as sys.stdin; these are what an interpreter opens.
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's own stream
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    from consul_operator.cli.main import main  # imported already, by the forkserver

    code = main(list(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)  # multiprocessing turns SystemExit(code) into the exit code


def run_cli(
    argv: Sequence[str], *, env: Mapping[str, str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, -m, consul_operator, *argv], capture_output=True, text=True)`, forked."""
    with tempfile.TemporaryDirectory(prefix="operator-cli-") as work:
        files = [str(Path(work) / name) for name in ("stdin", "stdout", "stderr")]
        Path(files[0]).write_text(stdin or "", encoding="utf-8")
        for path in files[1:]:
            Path(path).touch()
        child = _CONTEXT.Process(target=_command, args=(list(argv), dict(env), files), daemon=True)
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["operator", *argv], timeout)
        out, err = (Path(path).read_text(encoding="utf-8", errors="replace") for path in files[1:])
    code = child.exitcode
    # A command killed by a signal: negative, as subprocess reports it.
    return subprocess.CompletedProcess(["operator", *argv], code, out, err)
