"""A bad Consul address or token is a usage error: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consul_operator.consul_client import ConsulAddress, check_token

SECRET = "5e3c1a2b-0000-4000-8000-00000000abcd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:8500", "http://127.0.0.1:8500", id="host-port"),
        pytest.param("127.0.0.1", "http://127.0.0.1:8500", id="default-port"),
        pytest.param("https://consul.example:8501", "https://consul.example:8501", id="https"),
        pytest.param("http://[::1]:8500", "http://[::1]:8500", id="ipv6-bracketed"),
        pytest.param("http://127.0.0.1:8500/", "http://127.0.0.1:8500", id="trailing-slash"),
    ],
)
def test_good_addresses_parse(text: str, expected: str) -> None:
    """Addresses in the forms Consul's own CLI accepts parse to a scheme, host and port."""
    assert str(ConsulAddress.parse(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("http://[::1", id="unclosed-ipv6-bracket"),
        pytest.param("ftp://x", id="other-scheme"),
        pytest.param("127.0.0.1:99999", id="port-out-of-range"),
        pytest.param("127.0.0.1:http", id="port-not-a-number"),
        pytest.param("127.0.0.1:8500\n", id="trailing-newline"),
        pytest.param("a b:8500", id="space-in-host"),
        pytest.param("http://user:pw@127.0.0.1:8500", id="userinfo"),
        pytest.param("http://127.0.0.1:8500/v1/kv", id="path"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    """Anything but host[:port] or http(s)://host[:port] is refused with a message naming the value."""
    with pytest.raises(ValueError, match="must look like host:port"):
        ConsulAddress.parse(text)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(SECRET + "\n", id="newline"),
        pytest.param(SECRET + "\r\nX-Evil: 1", id="header-injection"),
        pytest.param("abc\x01", id="control-character"),
        pytest.param("a b", id="space"),
        pytest.param("tökén", id="non-ascii"),
    ],
)
def test_bad_tokens_are_refused_without_echoing_them(token: str) -> None:
    """A token that could not travel in an HTTP header is refused; the message never repeats it."""
    with pytest.raises(ValueError, match="printable ASCII") as raised:
        check_token(token)
    assert token.strip() not in str(raised.value)


def _operator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_")}
    return subprocess.run(
        [sys.executable, "-m", "consul_operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        pytest.param(["status", "--consul", "http://[::1"], {}, "--consul", id="status-unclosed-bracket"),
        pytest.param(["apply", "x.yaml", "--consul", "ftp://x"], {}, "--consul", id="apply-ftp-scheme"),
        pytest.param(["rollback", "web", "--token", SECRET + "\n"], {}, "--token", id="rollback-newline"),
        pytest.param(["delete", "web", "--token", "a\x07b"], {}, "--token", id="delete-token-bell"),
        pytest.param(
            ["agent", "--host", "host-1", "--consul", "http://[::1"], {}, "--consul", id="agent-daemon"
        ),
        pytest.param(["lb", "--consul", "127.0.0.1:0x50"], {}, "--consul", id="lb-daemon"),
        pytest.param(["status"], {"CONSUL_HTTP_ADDR": "ftp://x"}, "CONSUL_HTTP_ADDR", id="env-address"),
        pytest.param(["wait", "web"], {"CONSUL_HTTP_TOKEN": "a\nb"}, "CONSUL_HTTP_TOKEN", id="env-token"),
    ],
)
def test_bad_connection_values_are_usage_errors(args: list[str], env: dict[str, str], names: str) -> None:
    """Exit 2 with exactly one line on stderr naming the flag or variable, and no traceback."""
    result = _operator(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"operator {args[0]}: error: {names}: ")
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
