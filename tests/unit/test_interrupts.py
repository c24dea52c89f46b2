"""How `status --watch` and `events --follow` stop on a signal (`cli.interrupts.StopBetweenOutputs`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import NoReturn

import pytest

from consul_operator.cli.interrupts import StopBetweenOutputs


class Exited(Exception):
    """What the fake exit raises in place of ending the test's process."""


def stopper() -> tuple[StopBetweenOutputs, list[int]]:
    codes: list[int] = []

    def exit_now(code: int) -> NoReturn:
        codes.append(code)
        raise Exited

    return StopBetweenOutputs(exit_now=exit_now), codes


def test_a_signal_between_outputs_ends_the_process_at_once_with_0() -> None:
    """Between two outputs a signal ends the process there and then, exit 0."""
    stop, codes = stopper()
    with pytest.raises(Exited):
        stop.on_signal(signal.SIGINT, None)
    assert codes == [0]


def test_a_signal_during_an_output_waits_for_its_end() -> None:
    """During an output nothing ends until the output is whole; then the process ends, exit 0."""
    stop, codes = stopper()
    written: list[str] = []
    with pytest.raises(Exited), stop.output():
        written.append("first half")
        stop.on_signal(signal.SIGTERM, None)
        assert codes == []
        written.append("second half")
    assert written == ["first half", "second half"] and codes == [0]


def test_an_output_without_a_signal_goes_on() -> None:
    """No signal: outputs follow each other and nothing ends."""
    stop, codes = stopper()
    for _ in range(3):
        with stop.output():
            pass
    assert codes == []


# Starts the script in argv[1] with SIGINT at ``disposition`` (as a shell's ``&`` ignores it):
# an ignored signal stays ignored across exec.
WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.{}); "
    "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])"
)


@pytest.mark.parametrize(
    "disposition", ["SIG_DFL", "SIG_IGN"], ids=["inherited-default", "inherited-ignored"]
)
def test_a_real_sigint_ends_a_process_blocked_where_a_keyboardinterrupt_could_not(disposition: str) -> None:
    """SIGINT ends with 0 a process that swallows KeyboardInterrupt, even one started ignoring SIGINT."""
    script = textwrap.dedent(
        """
        import select
        from consul_operator.cli.interrupts import StopBetweenOutputs
        StopBetweenOutputs().install()
        print("ready", flush=True)
        while True:
            try:
                select.select([], [], [], 60)  # blocked, as in a Consul query
            except BaseException:  # what a careless library may do with a KeyboardInterrupt
                pass
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-c", WITH_SIGINT.format(disposition), script]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
