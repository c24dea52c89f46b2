"""The NGINX config the load balancer renders: upstreams, routes, 503s, and hostile catalog data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pytest

from consul_operator.adapters.actuators.nginx import render
from consul_operator.core.desired_state import is_dns_label
from consul_operator.core.model import ServiceInstance
from consul_operator.core.upstreams import BAD_ADDRESS, BAD_NAME, BAD_PORT, LBView, build_view, parse_ip


def inst(address: str, port: int, sid: str = "i") -> ServiceInstance:
    """A passing instance as the health endpoint would report it."""
    return ServiceInstance("node", "127.0.0.1", sid, "svc", address, port, {}, "passing")


def conf(
    instances: Mapping[str, Sequence[ServiceInstance]], default: str | None = "simple", managed: bool = False
) -> tuple[str, LBView]:
    view = build_view(instances.keys(), instances, default)
    return render(view, listen="127.0.0.13:80", managed=managed, prefix="/p"), view


def upstream_servers(text: str, name: str) -> list[str]:
    """The `server` lines of upstream svc_<name>."""
    match = re.search(rf"upstream svc_{name} {{(.*?)}}", text, re.S)
    return re.findall(r"server (\S+) ", match.group(1)) if match else []


def test_no_instance_answers_503_without_an_empty_upstream() -> None:
    """A service with no passing instance gets a 503 answer, never an invalid empty upstream block."""
    text, _ = conf({"simple": []})
    assert "upstream svc_simple" not in text
    assert 'return 503 "no healthy instance of simple\\n";' in text


def test_one_instance() -> None:
    """One passing instance is the upstream's only server, and the default server proxies to it."""
    text, _ = conf({"simple": [inst("127.0.0.11", 32768)]})
    assert upstream_servers(text, "simple") == ["127.0.0.11:32768"]
    default_server = text[text.index("default_server") :]
    assert "proxy_pass http://svc_simple;" in default_server.split("}")[0]


def test_many_instances_sorted_and_deduplicated() -> None:
    """Many instances render in a stable order, so that an unchanged catalog renders the same text."""
    a = [inst("127.0.0.12", 2), inst("127.0.0.11", 9), inst("127.0.0.11", 3), inst("127.0.0.11", 3, "dup")]
    text, _ = conf({"simple": a})
    assert upstream_servers(text, "simple") == ["127.0.0.11:3", "127.0.0.11:9", "127.0.0.12:2"]
    assert conf({"simple": list(reversed(a))})[0] == text


def test_several_services_each_reachable_by_host() -> None:
    """Every service has its own upstream and a server block with its name as server_name."""
    text, _ = conf({"simple": [inst("127.0.0.11", 1)], "web": [inst("127.0.0.12", 2)], "idle": []})
    assert upstream_servers(text, "web") == ["127.0.0.12:2"]
    for name in ("simple", "web", "idle"):
        assert f"server_name {name};" in text
    assert text.count("default_server") == 1


def test_without_a_default_service_unknown_hosts_get_404() -> None:
    """With no default service, the default server answers 404 instead of guessing a service."""
    text, _ = conf({"simple": [inst("127.0.0.11", 1)]}, default=None)
    default_server = text[text.index("default_server") :].split("}")[0]
    assert "return 404" in default_server


def test_ipv6_servers_are_bracketed() -> None:
    """An IPv6 address renders as [addr]:port, which NGINX parses."""
    text, _ = conf({"simple": [inst("::1", 8080)]})
    assert upstream_servers(text, "simple") == ["[::1]:8080"]


def test_managed_config_is_a_whole_nginx_conf_inside_its_prefix() -> None:
    """The managed config is a complete nginx.conf whose pid, logs and temp paths stay in the prefix."""
    text, _ = conf({"simple": []}, managed=True)
    assert "events {" in text and "http {" in text
    paths = re.findall(r"(?:pid|error_log|_temp_path) (\S+?)[; ]", text)
    assert paths and all(p.startswith("/p/") for p in paths)


@pytest.mark.parametrize(
    ("address", "port", "reason"),
    [
        pytest.param("127.0.0.1; include /etc/passwd", 80, BAD_ADDRESS, id="directive-injection-address"),
        pytest.param("evil.example.com", 80, BAD_ADDRESS, id="hostname-not-ip"),
        pytest.param("127.0.0.1\n}", 80, BAD_ADDRESS, id="newline-brace-address"),
        pytest.param("", 80, BAD_ADDRESS, id="empty-address"),
        pytest.param("127.0.0.1", 0, BAD_PORT, id="port-zero"),
        pytest.param("127.0.0.1", 70000, BAD_PORT, id="port-too-big"),
    ],
)
def test_hostile_instance_is_rejected_not_escaped(address: str, port: int, reason: str) -> None:
    """Catalog data that is not an IP and a 1-65535 port is left out and reported; good peers still render."""
    text, view = conf({"simple": [inst(address, port, "bad"), inst("127.0.0.11", 5000, "good")]})
    assert upstream_servers(text, "simple") == ["127.0.0.11:5000"]
    assert [(r.instance, r.reason) for r in view.rejected] == [("bad", reason)]
    if reason == BAD_ADDRESS and address:
        assert address not in text


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("evil;}", id="brace"),
        pytest.param("Upper", id="uppercase"),
        pytest.param("a" * 64, id="too-long"),
        pytest.param("x y", id="space"),
        pytest.param("-lead", id="leading-dash"),
    ],
)
def test_hostile_service_name_is_rejected(name: str) -> None:
    """A service (KV key) name that is not a DNS label never reaches the config."""
    text, view = conf({name: [inst("127.0.0.11", 1)], "simple": []})
    assert [(r.service, r.reason) for r in view.rejected] == [(name, BAD_NAME)]
    assert name not in text
    assert "server_name simple;" in text


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("::1%x", id="ipv6-scope-id"),
        pytest.param("fe80::1%eth0", id="link-local-with-interface"),
        pytest.param("::1%\n}", id="scope-id-with-newline"),
        pytest.param("127.0.0.1\n", id="ipv4-trailing-newline"),
        pytest.param("127.000.0.1", id="ipv4-leading-zeros"),
        pytest.param("\uff11\uff12\uff17.0.0.1", id="non-ascii-digits"),
    ],
)
def test_address_grammar_is_ipv4_or_unscoped_ipv6(address: str) -> None:
    """Only IPv4 and IPv6 without a scope id pass: what CPython accepts but NGINX refuses is left out."""
    text, view = conf({"simple": [inst(address, 80, "bad"), inst("127.0.0.11", 5000, "good")]})
    assert upstream_servers(text, "simple") == ["127.0.0.11:5000"]
    assert [(r.instance, r.reason) for r in view.rejected] == [("bad", BAD_ADDRESS)]
    assert "%" not in text


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("127.0.0.11", "127.0.0.11", id="ipv4"),
        pytest.param("::1", "::1", id="ipv6-loopback"),
        pytest.param("2001:DB8::0:1", "2001:db8::1", id="ipv6-normalised"),
        pytest.param("::ffff:127.0.0.1", "::ffff:7f00:1", id="ipv4-mapped"),
    ],
)
def test_good_addresses_are_normalised(address: str, expected: str) -> None:
    """IPv4 and unscoped IPv6 pass, in their normal form."""
    assert parse_ip(address) == expected


def test_non_string_address_is_refused() -> None:
    """An integer address (which `ipaddress` would turn into an IP) is not an address."""
    assert parse_ip(2130706433) is None


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("simple\n", id="trailing-newline"),
        pytest.param("simple\r", id="trailing-carriage-return"),
        pytest.param("sim\x00ple", id="nul"),
        pytest.param("simple\t", id="tab"),
    ],
)
def test_service_name_is_matched_whole(name: str) -> None:
    """A name with a trailing newline or a control character is not a DNS label, anywhere."""
    assert not is_dns_label(name)
    text, view = conf({name: [inst("127.0.0.11", 1)], "simple": []})
    assert [(r.service, r.reason) for r in view.rejected] == [(name, BAD_NAME)]
    assert name not in text
