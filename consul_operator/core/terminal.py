"""Text for a person's terminal: what stored data says is shown, never obeyed (pure).

Manifests, event messages, labels, host names and Consul's error texts come
from KV and the catalog, which anyone with write access there fills. Sent to
a terminal raw, ``ESC [ … m`` repaints it, ``ESC ] 52 ; c ; … BEL`` (OSC 52)
writes the clipboard, ``ESC ] 0 ; …`` retitles the window, and CR or
backspace hide what a line really says. Every human-facing output of the
operator (`operator status`, `describe`, `events`, `plan`, `apply`,
`validate`, `wait`, the error lines, the console log) goes through `clean`
or `clean_lines`; JSON output needs neither (``json.dumps`` escapes every
control character).
"""

from __future__ import annotations

import unicodedata


def _shown(char: str) -> str:
    """One character as it may reach a terminal: itself, or its Python escape (``\\x1b``)."""
    if char == " " or unicodedata.category(char)[0] not in "CZ":
        return char
    return repr(char)[1:-1]


def clean(text: str) -> str:
    """``text`` as one line that a terminal prints and never interprets.

    Every control character (C0 such as ESC, BEL, CR, backspace and newline;
    DEL; C1 such as ``\\x9b``, the 8-bit CSI), format character (the bidi
    overrides U+202E …) and separator other than the space (U+2028 …) comes out
    as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``); everything else is
    unchanged. Idempotent: an escape is printable, so cleaning twice changes
    nothing.
    """
    if text.isprintable():
        return text
    return "".join(_shown(char) for char in text)


def clean_lines(text: str) -> str:
    """Text of several lines (a manifest, a diff, a rendered table) cleaned line by line, ``\\n`` kept."""
    return "\n".join(clean(line) for line in text.split("\n"))
