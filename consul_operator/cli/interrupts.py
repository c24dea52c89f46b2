"""How a command that runs until stopped (`status --watch`, `events --follow`) stops: on SIGINT
or SIGTERM, at once, never in the middle of an output, with exit 0.

Two things Python does by default do not serve such a command:

* started with SIGINT ignored (a shell does that to a command started with ``&``), Python
  leaves it ignored: a `status --watch` of a test run started so ran on 30 s after its SIGINT,
  blocked in a Consul query (its stack, printed by faulthandler on SIGABRT);
* otherwise SIGINT becomes a KeyboardInterrupt raised after whichever bytecode runs then:
  inside requests' connection pool, half through a lock's release. The signal module's
  documentation warns that this can leave a program inconsistent.

So both signals get a handler here, whatever was inherited, and it raises nothing: between two
outputs (the last one flushed) it ends the process at once, with ``os._exit``, so that no
finaliser runs that could wait on what the signal interrupted; during an output it only notes
the signal, and the end of that output ends the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopBetweenOutputs:
    """Ends the process on SIGINT or SIGTERM, but only between two outputs (`output`)."""

    def __init__(self, code: int = 0, exit_now: Callable[[int], NoReturn] = os._exit) -> None:
        self._code = code
        self._exit_now = exit_now
        self._writing = False
        self._stopping = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here from now on (the main thread only, as Python requires)."""
        for sig in SIGNALS:
            signal.signal(sig, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Stop now, or once the output being written is whole."""
        if self._writing:
            self._stopping = True
            return
        self._stop()

    @contextlib.contextmanager
    def output(self) -> Iterator[None]:
        """One whole output: printed and flushed before a signal may end the process."""
        self._writing = True
        try:
            yield
            sys.stdout.flush()
        finally:
            self._writing = False
        if self._stopping:
            self._stop()

    def _stop(self) -> None:
        # Nothing to flush: stdout was flushed at the end of the last output, and stderr is
        # line-buffered. A flush here could re-enter a write the signal interrupted.
        self._exit_now(self._code)
