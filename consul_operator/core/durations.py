"""Durations as people write them in manifests and flags: "500ms", "2s", "1m30s", "1h".

Strict on purpose: a bare number is refused because "2" could mean seconds or
milliseconds, and a typo like "2 sec" must be an error, not a silent default.
The resolution is one millisecond, so every accepted value has exactly one
canonical spelling (`format_duration`) that parses back to the same number.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Final

MAX_DURATION_SECONDS: Final = 24 * 60 * 60
"""Nothing the operator waits for is longer than a day; larger values are typos."""

# No real duration is longer than this; it also keeps the Decimal arithmetic cheap.
_MAX_TEXT_CHARS: Final = 32

_NUMBER: Final = r"[0-9]+(?:\.[0-9]+)?"
# Units in decreasing order, each at most once ("1s1m" is refused, unlike Go's
# time.ParseDuration). [0-9] rather than \d: \d would accept non-ASCII digits.
_DURATION_RE: Final = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)
_BARE_NUMBER_RE: Final = re.compile(rf"-?{_NUMBER}")
_MS_PER_UNIT: Final = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_EXPECTED: Final = 'must be a duration like "2s" or "500ms"'


class DurationError(ValueError):
    """A value that is not an acceptable duration; `field` names the setting it was for."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def parse_duration(value: object, *, field: str) -> float:
    """Return `value` (a string such as "1m30s") in seconds, or raise DurationError.

    The message of the error is plain ("must be a duration like ..."), without
    the field name, so that callers can prefix it with their own path; `field`
    is kept on the error for callers that want it.
    """
    if not isinstance(value, str):
        raise DurationError(f"{_EXPECTED}, got {_describe(value)}", field)
    text = value
    if len(text) > _MAX_TEXT_CHARS:
        raise DurationError(f"{_EXPECTED}, got a {len(text)}-character string", field)
    if text.startswith("-"):
        raise DurationError(f"must not be negative, got {text!r}", field)
    if _BARE_NUMBER_RE.fullmatch(text):
        raise DurationError(f"{_EXPECTED}, got {text!r} (a number needs a unit: ms, s, m or h)", field)
    match = _DURATION_RE.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        raise DurationError(f"{_EXPECTED}, got {text!r}", field)
    total_ms = sum(
        (Decimal(number) * _MS_PER_UNIT[unit] for unit, number in match.groupdict().items() if number),
        Decimal(0),
    )
    if total_ms != total_ms.to_integral_value():
        raise DurationError(f"must be a whole number of milliseconds, got {text!r}", field)
    if total_ms > MAX_DURATION_SECONDS * 1000:
        raise DurationError(f"must be at most {format_duration(MAX_DURATION_SECONDS)}, got {text!r}", field)
    return int(total_ms) / 1000


def format_duration(seconds: float) -> str:
    """Spell `seconds` in the canonical, shortest form: "2s", "500ms", "1m30s", "1.5s", "0s".

    Rounds to the millisecond, the resolution `parse_duration` accepts, so
    `parse_duration(format_duration(x))` gives back any parsed value exactly.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot spell {seconds!r} as a duration")
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return "0s"
    hours, rest = divmod(total_ms, _MS_PER_UNIT["h"])
    minutes, rest = divmod(rest, _MS_PER_UNIT["m"])
    secs, millis = divmod(rest, _MS_PER_UNIT["s"])
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if secs:
        # "1.5s" is shorter than "1s500ms"; trailing zeros of the fraction go.
        fraction = f".{millis:03d}".rstrip("0") if millis else ""
        parts.append(f"{secs}{fraction}s")
    elif millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _describe(value: object) -> str:
    """Name a non-string value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {value!r} (a number needs a unit: ms, s, m or h)"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__
