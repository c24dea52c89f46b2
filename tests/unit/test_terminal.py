"""Terminal escapes in stored data are shown escaped, never sent raw, by every human-facing output."""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.adapters.logs import clean_for_terminal
from consul_operator.cli.main import main
from consul_operator.core.describe import build_description, event_line, render_description
from consul_operator.core.events import CRASHED, ServiceEvent
from consul_operator.core.records import StatusRecord
from consul_operator.core.status import (
    HostPlacement,
    HostRow,
    ServiceState,
    ServiceStatus,
    StatusView,
    render_table,
)
from consul_operator.core.terminal import clean, clean_lines

ESC = "\x1b"
CSI_RED = "\x1b[31m"
OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # writes "rm -rf ~" into the clipboard
BEL = "\x07"
RAW = (ESC, BEL, "\x9b", "\r", "\x08")


def _raw_free(text: str) -> bool:
    """No character a terminal would act on: ESC, BEL, 8-bit CSI, CR, backspace."""
    return not any(char in text for char in RAW)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("plain text: ok", "plain text: ok", id="plain"),
        pytest.param(ESC, "\\x1b", id="esc"),
        pytest.param(f"{CSI_RED}red\x1b[0m", "\\x1b[31mred\\x1b[0m", id="csi-colour"),
        pytest.param("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H", id="csi-clear-screen"),
        pytest.param(OSC52, "\\x1b]52;c;cm0gLXJmIH4K\\x07", id="osc52-clipboard"),
        pytest.param("\x1b]0;title\x07", "\\x1b]0;title\\x07", id="osc-title"),
        pytest.param(BEL, "\\x07", id="bel"),
        pytest.param("\x9b31m", "\\x9b31m", id="c1-csi"),
        pytest.param("ok\rFAKE", "ok\\rFAKE", id="carriage-return"),
        pytest.param("abc\x08\x08\x08xyz", "abc\\x08\\x08\\x08xyz", id="backspace"),
        pytest.param("a\nb", "a\\nb", id="newline-in-a-line"),
        pytest.param("\u202eevil", "\\u202eevil", id="bidi-override"),
        pytest.param("\x7f", "\\x7f", id="del"),
        pytest.param("café ünïcode 名前", "café ünïcode 名前", id="printable-unicode-kept"),
    ],
)
def test_clean_shows_control_characters_escaped(text: str, shown: str) -> None:
    """ESC, CSI, OSC 52, BEL, C1, CR, backspace, bidi controls come out as Python escapes; the rest as is."""
    assert clean(text) == shown


def test_clean_lines_keeps_newlines_and_cleans_each_line() -> None:
    """Several lines stay several lines, each cleaned; a CR inside one stays visible."""
    assert clean_lines(f"a: {OSC52}\nb: x\ry\n") == "a: \\x1b]52;c;cm0gLXJmIH4K\\x07\nb: x\\ry\n"


@given(st.text())
def test_property_clean_output_is_inert_and_idempotent(text: str) -> None:
    """For every text: no control, format or separator character but the space survives; twice is once."""
    out = clean(text)
    assert all(c == " " or unicodedata.category(c)[0] not in "CZ" for c in out)
    assert clean(out) == out


STATUS = ServiceStatus(
    "web",
    "hello:local",
    1,
    1,
    1,
    0,
    "Converged",
    {f"h1{OSC52}": HostPlacement(1, 1, 1)},
    (f"1 of 1 replicas fit on no host: h2: lacks label zone=a{CSI_RED}{BEL}",),
    None,
    phase=ServiceState.CONVERGED,
)
SPEC = f'name: web\nimage: hello:local\nenv:\n  X: "{OSC52}"\nplacement:\n  labels: {{zone: "{CSI_RED}"}}\r\n'
EVENT = ServiceEvent(90.0, f"h1{ESC}[2J", "web", CRASHED, f"exited {OSC52}{BEL}")


def test_describe_text_has_no_raw_escape_from_spec_host_or_event() -> None:
    """Env and label values in the stored spec, a host name and an event message all show escaped."""
    records = {f"h1{OSC52}": StatusRecord("web", "h1", instances=(f"web-{CSI_RED}",))}
    described = build_description(100.0, STATUS, SPEC, records, [], [EVENT, replace(EVENT, count=2)])
    text = render_description(described)
    assert _raw_free(text), repr(text)
    assert '  X: "\\x1b]52;c;cm0gLXJmIH4K\\x07"' in text
    assert "zone=a\\x1b[31m\\x07" in text
    assert "exited \\x1b]52;c;cm0gLXJmIH4K\\x07\\x07" in text


def test_event_line_is_clean() -> None:
    """`operator events` prints event_line: its host, reason and message never carry a raw escape."""
    line = event_line(replace(EVENT, reason=f"Crashed{BEL}"), 100.0)
    assert _raw_free(line) and "\\x1b[2J" in line and "Crashed\\x07" in line


def test_status_table_cleans_host_labels_and_errors() -> None:
    """A host label and a service error with escapes show escaped in `operator status` (colour off)."""
    host = HostRow("h1", True, {"zone": f"a{OSC52}"})
    view = StatusView(100.0, "h1", None, (host,), (STATUS,))
    text = render_table(view, color=False)
    assert _raw_free(text) and "zone=a\\x1b]52;c;cm0gLXJmIH4K\\x07" in text


def test_validate_output_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`operator validate`'s lines (file names, problems quoting values) carry no raw escape."""
    bad = tmp_path / f"bad{ESC}]52;c;eA==.yaml"
    # YAML's own escapes ("\\e", "\\a"): raw control bytes are a YAML error of their own.
    bad.write_text('name: web\nimage: "hello:\\e[31m"\nreplicas: 1\nenv: {"\\e]52;c;eA==\\a": x}\n')
    raw = tmp_path / "raw.yaml"
    raw.write_text(f"name: web{OSC52}\n")
    missing = tmp_path / f"gone{BEL}.yaml"
    assert main(["validate", str(bad), str(missing), str(raw)]) == 1
    captured = capsys.readouterr()
    assert _raw_free(captured.out + captured.err), captured
    assert "image: must be an image reference" in captured.err
    assert "\\x1b]52;c;eA==\\x07" in captured.err
    assert "gone\\x07.yaml: cannot read" in captured.err


def test_console_log_lines_are_cleaned() -> None:
    """A daemon's log on a terminal (the console renderer) shows a value's escapes escaped."""
    out = io.StringIO()
    renderer = structlog.dev.ConsoleRenderer(colors=False)
    event = clean_for_terminal(None, "info", {"event": f"started {OSC52}", "error": f"x{CSI_RED}\ny"})
    out.write(renderer(None, "info", event))
    assert _raw_free(out.getvalue())
    assert event["error"] == "x\\x1b[31m\ny"


def test_json_output_needs_no_cleaning() -> None:
    """`--json` output is safe as it is: json.dumps escapes every control character."""
    assert _raw_free(json.dumps({"message": OSC52 + "\x9b" + "\r"}))
