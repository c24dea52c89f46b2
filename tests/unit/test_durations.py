"""Tests of the strict duration parser and its canonical spelling."""

from __future__ import annotations

import math

import pytest

from consul_operator.core.durations import DurationError, format_duration, parse_duration

GOOD = [
    pytest.param("500ms", 0.5, id="milliseconds"),
    pytest.param("2s", 2.0, id="seconds"),
    pytest.param("1m", 60.0, id="minutes"),
    pytest.param("1h", 3600.0, id="hours"),
    pytest.param("1m30s", 90.0, id="minutes-and-seconds"),
    pytest.param("1h2m3s4ms", 3723.004, id="every-unit"),
    pytest.param("1.5s", 1.5, id="decimal-seconds"),
    pytest.param("0.25m", 15.0, id="decimal-minutes"),
    pytest.param("1.0s", 1.0, id="decimal-with-zero-fraction"),
    pytest.param("90s", 90.0, id="seconds-above-a-minute"),
    pytest.param("0s", 0.0, id="zero"),
    pytest.param("0ms", 0.0, id="zero-milliseconds"),
    pytest.param("24h", 86400.0, id="the-cap"),
]

BAD = [
    pytest.param("", "got ''", id="empty"),
    pytest.param("2", "(a number needs a unit", id="bare-number-string"),
    pytest.param("1.5", "(a number needs a unit", id="bare-decimal-string"),
    pytest.param("2 sec", """must be a duration like "2s" or "500ms", got '2 sec'""", id="word-unit"),
    pytest.param("2 s", "got '2 s'", id="inner-space"),
    pytest.param(" 2s", "got ' 2s'", id="leading-space"),
    pytest.param("2s ", "got '2s '", id="trailing-space"),
    pytest.param("2s\n", "got '2s\\n'", id="trailing-newline"),
    pytest.param("2S", "got '2S'", id="upper-case-unit"),
    pytest.param("1d", "got '1d'", id="unknown-unit"),
    pytest.param("2us", "got '2us'", id="microseconds"),
    pytest.param("-1s", "must not be negative, got '-1s'", id="negative"),
    pytest.param("1s1m", "got '1s1m'", id="units-out-of-order"),
    pytest.param("1m1m", "got '1m1m'", id="unit-twice"),
    pytest.param(".5s", "got '.5s'", id="no-leading-digit"),
    pytest.param("1.s", "got '1.s'", id="no-fraction-digit"),
    pytest.param("1e3s", "got '1e3s'", id="exponent"),
    pytest.param("\u0663s", "got '\u0663s'", id="non-ascii-digit"),
    pytest.param("0.5ms", "must be a whole number of milliseconds", id="below-resolution"),
    pytest.param("25h", "must be at most 24h, got '25h'", id="over-the-cap"),
    pytest.param("24h1ms", "must be at most 24h", id="just-over-the-cap"),
    pytest.param("1" * 40 + "s", "41-character string", id="too-long"),
    pytest.param(True, "got boolean true", id="boolean"),
    pytest.param(2, "got number 2 (a number needs a unit", id="integer"),
    pytest.param(2.5, "got number 2.5", id="float"),
    pytest.param(None, "got null", id="null"),
    pytest.param(["2s"], "got list", id="list"),
    pytest.param({"s": 2}, "got mapping", id="mapping"),
]

CANONICAL = [
    pytest.param(0.0, "0s", id="zero"),
    pytest.param(0.001, "1ms", id="one-millisecond"),
    pytest.param(0.5, "500ms", id="half-second"),
    pytest.param(1.5, "1.5s", id="decimal-is-shorter-than-s-and-ms"),
    pytest.param(2.0, "2s", id="seconds"),
    pytest.param(60.25, "1m250ms", id="minute-and-milliseconds"),
    pytest.param(90.0, "1m30s", id="minute-and-seconds"),
    pytest.param(3600.0, "1h", id="hour-without-zero-parts"),
    pytest.param(3661.25, "1h1m1.25s", id="every-part"),
    pytest.param(86400.0, "24h", id="day"),
]


@pytest.mark.parametrize(("text", "seconds"), GOOD)
def test_parse_accepts(text: str, seconds: float) -> None:
    """A well-formed duration parses to its number of seconds."""
    assert parse_duration(text, field="drain") == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(("value", "expected"), BAD)
def test_parse_rejects(value: object, expected: str) -> None:
    """A malformed, out-of-range or non-string value raises a ValueError saying what it got."""
    with pytest.raises(ValueError) as caught:
        parse_duration(value, field="drain")
    assert expected in str(caught.value)


def test_error_is_a_value_error_that_names_its_field() -> None:
    """The error is a ValueError whose text is plain and whose field is kept on it."""
    with pytest.raises(DurationError) as caught:
        parse_duration("soon", field="health.interval")
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "health.interval"
    assert str(caught.value) == """must be a duration like "2s" or "500ms", got 'soon'"""


@pytest.mark.parametrize(("seconds", "text"), CANONICAL)
def test_format_is_canonical(seconds: float, text: str) -> None:
    """Seconds are spelled in the shortest canonical form."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), CANONICAL)
def test_canonical_form_round_trips(seconds: float, text: str) -> None:
    """Parsing a canonical spelling gives the seconds back, and formatting those the spelling."""
    parsed = parse_duration(text, field="drain")
    assert parsed == seconds
    assert format_duration(parsed) == text


@pytest.mark.parametrize(("text", "seconds"), GOOD)
def test_every_accepted_value_round_trips(text: str, seconds: float) -> None:
    """Any accepted spelling, once formatted, parses back to exactly the same value."""
    parsed = parse_duration(text, field="drain")
    assert parse_duration(format_duration(parsed), field="drain") == parsed


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(-1.0, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="infinity"),
    ],
)
def test_format_rejects_impossible_values(seconds: float) -> None:
    """Negative and non-finite numbers cannot be spelled as a duration."""
    with pytest.raises(ValueError, match="cannot spell"):
        format_duration(seconds)
