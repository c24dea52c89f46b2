"""Logging: structlog, JSON lines for machines, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from consul_operator.core.terminal import clean_lines


def clean_for_terminal(
    _logger: object, _name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Every string of a console log line cleaned (`terminal.clean_lines`: a traceback keeps its lines)."""
    return {key: clean_lines(value) if isinstance(value, str) else value for key, value in event.items()}


def configure(level: str = "info", *, json: bool | None = None, **context: str) -> None:
    """Set up structlog once per process; ``json=None`` picks by whether stderr is a tty.

    ``context`` (e.g. ``daemon="agent", host="host-1"``) goes on every line, from
    every thread: the daemons' threads do not share contextvars.
    """

    def add_context(
        _logger: object, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        for key, value in context.items():
            event.setdefault(key, value)
        return event

    if json is None:
        json = not sys.stderr.isatty()
    # JSON escapes every control character itself; the console renderer writes strings as they are.
    last: list[structlog.typing.Processor] = (
        [structlog.processors.JSONRenderer()]
        if json
        else [clean_for_terminal, structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *last,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
