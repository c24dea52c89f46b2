"""A bad Consul address or token is a usage error: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consul_operator.adapters.consul_client import ConsulAddress, ConsulClient, ConsulTLS, check_token

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
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
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


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, ConsulTLS(), id="nothing-set-verifies"),
        pytest.param(
            {"CONSUL_CACERT": "/ca.pem", "CONSUL_TLS_SERVER_NAME": "server.dc1.consul"},
            ConsulTLS(ca_file="/ca.pem", server_name="server.dc1.consul"),
            id="ca-and-server-name",
        ),
        pytest.param(
            {"CONSUL_CLIENT_CERT": "/c.pem", "CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_HTTP_SSL": "true"},
            ConsulTLS(cert_file="/c.pem", key_file="/k.pem", ssl=True),
            id="client-pair-and-ssl",
        ),
        pytest.param(
            {"CONSUL_HTTP_SSL_VERIFY": "false"}, ConsulTLS(verify=False), id="verify-off-explicitly"
        ),
        pytest.param({"CONSUL_HTTP_SSL_VERIFY": "1"}, ConsulTLS(verify=True), id="verify-on-as-1"),
    ],
)
def test_tls_settings_come_from_the_consul_cli_variables(env: dict[str, str], expected: ConsulTLS) -> None:
    """The operator reads the same TLS variables as the consul CLI, verification on unless turned off."""
    assert ConsulTLS.from_env(env) == expected


@pytest.mark.parametrize(
    ("address", "env", "expected"),
    [
        pytest.param("127.0.0.1:8501", {"CONSUL_HTTP_SSL": "true"}, "https://127.0.0.1:8501", id="ssl-var"),
        pytest.param("https://127.0.0.1:8501", {}, "https://127.0.0.1:8501", id="https-address"),
        pytest.param(
            "http://127.0.0.1:8500", {"CONSUL_HTTP_SSL": "true"}, "https://127.0.0.1:8500", id="http-upgraded"
        ),
        pytest.param(
            "https://127.0.0.1:8501", {"CONSUL_HTTP_SSL": "false"}, "https://127.0.0.1:8501", id="https-kept"
        ),
        pytest.param("127.0.0.1:8500", {"CONSUL_HTTP_SSL": ""}, "http://127.0.0.1:8500", id="empty-unset"),
        pytest.param("127.0.0.1:8500", {}, "http://127.0.0.1:8500", id="plain"),
    ],
)
def test_https_follows_the_address_and_consul_http_ssl(
    address: str, env: dict[str, str], expected: str
) -> None:
    """CONSUL_HTTP_SSL=true makes the address https, an http:// one included (as the consul CLI never
    reverts to HTTP once TLS is asked for); false or empty leaves the address's scheme."""
    assert str(ConsulClient(address, tls=ConsulTLS.from_env(env)).address) == expected


GO_TRUE = ["1", "t", "T", "TRUE", "true", "True"]
GO_FALSE = ["0", "f", "F", "FALSE", "false", "False"]
GO_ERRORS = ["no", "off", "yes", "on", "tRUE", "False ", " 1", "2", "enabled", "y", "n", "trUe"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        *(pytest.param(v, t, True, id=f"{v}={t}") for v in ("SSL", "SSL_VERIFY") for t in GO_TRUE),
        *(pytest.param(v, f, False, id=f"{v}={f}") for v in ("SSL", "SSL_VERIFY") for f in GO_FALSE),
        pytest.param("SSL", "", None, id="SSL-empty-as-unset"),
        pytest.param("SSL_VERIFY", "", True, id="SSL_VERIFY-empty-keeps-verifying"),
        pytest.param("SSL", None, None, id="SSL-unset"),
        pytest.param("SSL_VERIFY", None, True, id="SSL_VERIFY-unset-verifies"),
    ],
)
def test_tls_flags_parse_as_go_parsebool(variable: str, value: str | None, expected: bool | None) -> None:
    """CONSUL_HTTP_SSL and _SSL_VERIFY take exactly strconv.ParseBool's spellings; empty is unset."""
    env = {} if value is None else {f"CONSUL_HTTP_{variable}": value}
    tls = ConsulTLS.from_env(env)
    assert (tls.ssl if variable == "SSL" else tls.verify) is expected


@pytest.mark.parametrize("variable", ["CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY"])
@pytest.mark.parametrize("value", GO_ERRORS)
def test_tls_flags_outside_parsebool_are_refused(variable: str, value: str) -> None:
    """Any other spelling (no, off, yes, tRUE, padded ...) is an error naming the variable, never "off"."""
    with pytest.raises(ValueError, match=f"^{variable} must be one of 1/t/T/TRUE/true/True/0/f/F"):
        ConsulTLS.from_env({variable: value})


def test_verification_uses_the_ca_file_and_the_client_pair(tmp_path: Path) -> None:
    """The HTTP client verifies with the given CA file and presents the client certificate."""
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    client = ConsulClient("https://127.0.0.1:8501", tls=ConsulTLS(str(ca), str(cert), str(key)))
    assert client._client.http.verify == str(ca)
    assert client._client.http.cert == (str(cert), str(key))
    assert ConsulClient("https://127.0.0.1:8501", tls=ConsulTLS())._client.http.verify is True


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(
            ["status", "--ca-file", "/nonexistent/ca.pem"],
            {},
            "CA file /nonexistent/ca.pem: no such file",
            id="flag-ca",
        ),
        pytest.param(
            ["status"],
            {"CONSUL_CACERT": "/nonexistent/ca.pem"},
            "CA file /nonexistent/ca.pem: no such file",
            id="env-ca",
        ),
        pytest.param(
            ["apply", "x.yaml", "--client-cert", "/nonexistent/c.pem"],
            {},
            "needs both a certificate and a key file",
            id="cert-without-key",
        ),
        pytest.param(
            ["wait", "web"],
            {"CONSUL_HTTP_SSL": "maybe"},
            "CONSUL_HTTP_SSL must be one of 1/t/T/TRUE/true/True/0/f/F/FALSE/false/False",
            id="bad-ssl",
        ),
        pytest.param(
            ["status"],
            {"CONSUL_HTTP_SSL_VERIFY": "off"},
            "CONSUL_HTTP_SSL_VERIFY must be one of 1/t/T/TRUE/true/True/0/f/F/FALSE/false/False",
            id="verify-off-spelled-off",
        ),
        pytest.param(
            ["agent", "--host", "host-1", "--metrics-tls-cert", "/nonexistent/m.pem"],
            {},
            "--metrics-tls-cert and --metrics-tls-key go together",
            id="metrics-cert-without-key",
        ),
        pytest.param(
            ["lb", "--metrics-tls-cert", "/nonexistent/m.pem", "--metrics-tls-key", "/nonexistent/k.pem"],
            {},
            "--metrics-tls-cert /nonexistent/m.pem: no such file",
            id="metrics-cert-missing",
        ),
    ],
)
def test_bad_tls_settings_are_usage_errors(args: list[str], env: dict[str, str], message: str) -> None:
    """A missing certificate file or a bad TLS variable: exit 2, one line naming the file or variable."""
    result = _operator(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"operator {args[0]}: error: ") and message in lines[0], lines[0]
