"""Tests of manifest parsing and validation (schema v1) and of the spec hash."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from consul_operator.core.desired_state import (
    GI,
    KI,
    MAX_MANIFEST_BYTES,
    MAX_PROBLEMS,
    MAX_REPLICAS,
    MI,
    HealthCheck,
    Manifest,
    ManifestError,
    Placement,
    Problem,
    Resources,
    UpdatePolicy,
    format_cpus,
    format_memory,
    manifest_from_dict,
    parse_cpus,
    parse_manifest,
)
from consul_operator.core.errors import OperatorError

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "a" * 64


def doc(extra: str = "", **base: str | None) -> str:
    """A manifest's text: valid name/image/replicas lines (overridable, None drops) + `extra`."""
    fields: dict[str, str | None] = {"name": "web", "image": "hello:local", "replicas": "2"}
    fields.update(base)
    head = "".join(f"{key}: {value}\n" for key, value in fields.items() if value is not None)
    return head + extra


def problems_of(text: str | bytes, key_name: str | None = None) -> list[str]:
    """The problems parse_manifest reports for `text`, as strings."""
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, key_name=key_name)
    return [str(problem) for problem in caught.value.problems]


# --- good manifests ------------------------------------------------------------

WEB = Manifest(name="web", image="hello:local", replicas=2)

GOOD = [
    pytest.param(doc(), WEB, id="minimal"),
    pytest.param(doc(replicas="0"), Manifest("web", "hello:local", 0), id="zero-replicas"),
    pytest.param(doc(replicas=str(MAX_REPLICAS)), Manifest("web", "hello:local", MAX_REPLICAS), id="cap"),
    pytest.param(
        doc(
            "port: 5000\n"
            'command: ["httpd", "-f", "-p", "5000"]\n'
            "env:\n  ZED: last\n  GREETING: hi\n  EMPTY: ''\n"
            "placement:\n  hosts: [host-2, host-1]\n  max_per_host: 1\n"
            "health:\n  http: /health?deep=1\n  interval: 5s\n  timeout: 500ms\n"
            "drain: 0s\nstop_grace: 1m30s\n"
        ),
        Manifest(
            name="web",
            image="hello:local",
            replicas=2,
            port=5000,
            command=("httpd", "-f", "-p", "5000"),
            env=(("EMPTY", ""), ("GREETING", "hi"), ("ZED", "last")),
            placement=Placement(hosts=("host-1", "host-2"), max_per_host=1),
            health=HealthCheck(http="/health?deep=1", interval=5.0, timeout=0.5),
            drain=0.0,
            stop_grace=90.0,
        ),
        id="every-field",
    ),
    pytest.param(
        doc("port:\ncommand: ~\nenv: null\nplacement:\nhealth:\ndrain:\nstop_grace: null\n"),
        WEB,
        id="null-optional-fields-take-defaults",
    ),
    pytest.param(
        doc("env:\n  A: yes\n  B: on\n  C: '1'\n  D: 010\n  E: 1:30\n  F: 2024-01-01\n"),
        Manifest(
            "web",
            "hello:local",
            2,
            env=(
                ("A", "yes"),
                ("B", "on"),
                ("C", "1"),
                ("D", "010"),
                ("E", "1:30"),
                ("F", "2024-01-01"),
            ),
        ),
        id="yaml-1.1-lookalikes-stay-strings",
    ),
    pytest.param(
        doc("port: 80\nhealth: {http: /}\n"),
        Manifest("web", "hello:local", 2, port=80, health=HealthCheck(http="/")),
        id="http-check-with-port",
    ),
    pytest.param(
        doc("health: {interval: 1h, timeout: 100ms}\n"),
        Manifest("web", "hello:local", 2, health=HealthCheck(interval=3600.0, timeout=0.1)),
        id="health-duration-bounds",
    ),
    pytest.param(
        doc("drain: 10m\nstop_grace: 10m\n"),
        Manifest("web", "hello:local", 2, drain=600.0, stop_grace=600.0),
        id="drain-and-grace-caps",
    ),
    pytest.param("---\nreplicas: 2\nimage: hello:local\nname: web\n...\n", WEB, id="explicit-document"),
    pytest.param(doc().encode("utf-8"), WEB, id="bytes"),
    pytest.param("\ufeff" + doc(), WEB, id="byte-order-mark"),
    pytest.param(doc(name="a" * 63), Manifest("a" * 63, "hello:local", 2), id="name-63-chars"),
    pytest.param(doc(name="a-1"), Manifest("a-1", "hello:local", 2), id="name-with-dash"),
    pytest.param(doc(name="'7'"), Manifest("7", "hello:local", 2), id="name-digit-quoted"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_manifest_parses(text: str | bytes, expected: Manifest) -> None:
    """A valid manifest parses to the expected normalised Manifest."""
    assert parse_manifest(text) == expected


@pytest.mark.parametrize(
    "image",
    [
        pytest.param("hello:local", id="name-and-tag"),
        pytest.param("busybox", id="bare-name"),
        pytest.param("library/busybox:1.36", id="path"),
        pytest.param("registry.example.com:5000/team/app:v1.2", id="registry-with-port"),
        pytest.param("localhost:5000/a/b/c", id="localhost"),
        pytest.param("127.0.0.1:5000/app:V1.0_rc-1", id="ip-registry-uppercase-tag"),
        pytest.param("[::1]:5000/app", id="ipv6-registry"),
        pytest.param(f"busybox@{DIGEST}", id="digest"),
        pytest.param(f"busybox:1.36@{DIGEST}", id="tag-and-digest"),
        pytest.param("a__b.c-d---e_f", id="separators"),
        pytest.param("app:" + "t" * 128, id="tag-128-chars"),
    ],
)
def test_good_image_reference(image: str) -> None:
    """Image references that Docker accepts are accepted."""
    assert parse_manifest(doc(image=f"'{image}'")).image == image


def test_simple_example_manifest_parses() -> None:
    """The demo manifest in manifests/simple.yaml is valid."""
    text = (REPO / "manifests" / "simple.yaml").read_bytes()
    manifest = parse_manifest(text, key_name="services/simple")
    assert manifest.name == "simple"
    assert manifest.replicas == 2
    assert manifest.port == 5000
    assert manifest.health == HealthCheck(http="/health", interval=2.0, timeout=1.0)
    assert manifest.stop_grace == 5.0


@pytest.mark.parametrize(
    "key_name",
    [pytest.param("web", id="segment"), pytest.param("services/web", id="full-key")],
)
def test_name_matching_key_is_accepted(key_name: str) -> None:
    """A name equal to its key's last segment passes the key check."""
    assert parse_manifest(doc(), key_name=key_name).name == "web"


# --- bad manifests -------------------------------------------------------------

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
)

BAD_YAML = [
    pytest.param("", ["manifest is empty"], id="empty"),
    pytest.param("# nothing here\n\n", ["manifest is empty"], id="only-comments"),
    pytest.param("---\n", ["manifest is empty"], id="empty-document"),
    pytest.param(
        doc() + "---\n" + doc(),
        ["the manifest must hold exactly one YAML document; another starts at line 4, column 1"],
        id="two-documents",
    ),
    pytest.param(
        "name: web\nimage\nreplicas: 2\n",
        ["YAML syntax error at line 3, column 1: could not find expected ':'"],
        id="syntax-error-with-position",
    ),
    pytest.param(
        "name: web\nimage: [a\n",
        ["YAML syntax error at line 3, column 1:"],
        id="unclosed-flow-list",
    ),
    pytest.param(
        "name: web\n  image: x\n",
        ["YAML syntax error at line 2, column 8: mapping values are not allowed here"],
        id="bad-indentation",
    ),
    pytest.param(
        "name: web\nimage: hello:local\nreplicas: 2\nreplicas: 3\n",
        ["duplicate key 'replicas' (line 4, column 1)"],
        id="duplicate-key",
    ),
    pytest.param(
        doc("health:\n  interval: 2s\n  interval: 3s\nport: 1\nport: 2\n"),
        ["duplicate key 'interval' (line 6, column 3)", "duplicate key 'port' (line 8, column 1)"],
        id="every-duplicate-key-reported",
    ),
    pytest.param(
        doc("port: !!python/object/apply:os.system ['true']\n"),
        ["YAML tag !!python/object/apply:os.system is not allowed (line 4, column 7)"],
        id="python-tag",
    ),
    pytest.param(doc("port: !foo 1\n"), ["YAML tag !foo is not allowed (line 4, column 7)"], id="custom-tag"),
    pytest.param(doc("env: !!set {A: null}\n"), ["YAML tag !!set is not allowed"], id="set-tag"),
    pytest.param(doc("env: {A: !!binary aGk=}\n"), ["YAML tag !!binary is not allowed"], id="binary-tag"),
    pytest.param(doc("command: !!str [a]\n"), ["YAML tag !!str is not allowed"], id="scalar-tag-on-list"),
    pytest.param(
        doc("port: !!int eighty\n"),
        ["cannot read 'eighty' as !!int (line 4, column 7)"],
        id="explicit-tag-does-not-fit",
    ),
    pytest.param(
        doc("env: &e {A: b}\n"),
        ["YAML anchors and aliases are not allowed (line 4, column 6)"],
        id="anchor",
    ),
    pytest.param(BILLION_LAUGHS, ["YAML anchors and aliases are not allowed"], id="billion-laughs"),
    pytest.param(doc("<<: {port: 80}\n"), ["'<<': unknown field"], id="merge-key-is-just-a-string"),
    pytest.param(
        doc("? [a]\n: 1\n"),
        ["a key must be a plain value, not a list or mapping (line 4, column 3)"],
        id="complex-key",
    ),
    pytest.param(
        "a: " + "[" * 40 + "]" * 40 + "\n",
        ["YAML nested deeper than 32 levels"],
        id="deep-nesting",
    ),
    pytest.param(
        "name: web\nimage: a\x00b\n",
        ["YAML syntax error at line 2, column 9: character U+0000 is not allowed"],
        id="nul-character",
    ),
    pytest.param(
        b"name: w\xffb\n",
        ["manifest is not valid UTF-8 (byte 7: invalid start byte)"],
        id="not-utf8",
    ),
    pytest.param(
        b"#" * (MAX_MANIFEST_BYTES + 1),
        [f"manifest is {MAX_MANIFEST_BYTES + 1} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes"],
        id="size-cap-bytes",
    ),
    pytest.param(
        "#" + "\u00e9" * (MAX_MANIFEST_BYTES // 2),
        [f"manifest is {MAX_MANIFEST_BYTES + 1} bytes"],
        id="size-cap-counts-utf8-bytes",
    ),
    pytest.param("- a\n- b\n", ["the top level must be a mapping of fields, got list"], id="list"),
    pytest.param("just text\n", ["got string 'just text'"], id="scalar"),
]

BAD_FIELDS = [
    # unknown fields
    pytest.param(doc("replica: 3\n"), ["replica: unknown field (did you mean 'replicas'?)"], id="typo-top"),
    pytest.param(
        doc("colour: blue\n"),
        ["colour: unknown field (known fields: name, image, replicas, port,"],
        id="unknown-without-suggestion",
    ),
    pytest.param(
        doc("placement: {max_host: 1}\n"),
        ["placement.max_host: unknown field (did you mean 'max_per_host'?)"],
        id="typo-placement",
    ),
    pytest.param(
        doc("health: {timout: 1s}\n"),
        ["health.timout: unknown field (did you mean 'timeout'?)"],
        id="typo-health",
    ),
    pytest.param(doc("1: x\n"), ["field names must be strings, got integer 1"], id="non-string-field-name"),
    # name
    pytest.param(doc(name=None), ["name: required field is missing"], id="name-missing"),
    pytest.param(doc(name="[web]"), ["name: must be a string, got list"], id="name-list"),
    pytest.param(doc(name="Web"), ["name: must be a DNS label", "got 'Web'"], id="name-uppercase"),
    pytest.param(doc(name="web_1"), ["name: must be a DNS label"], id="name-underscore"),
    pytest.param(doc(name="-web"), ["name: must be a DNS label"], id="name-leading-dash"),
    pytest.param(doc(name="web-"), ["name: must be a DNS label"], id="name-trailing-dash"),
    pytest.param(
        doc(name="operator-agent"), ["name: 'operator-agent' is reserved"], id="name-reserved-agent"
    ),
    pytest.param(doc(name="consul"), ["name: 'consul' is reserved"], id="name-reserved-consul"),
    pytest.param(doc(name="a" * 64), ["name: must be a DNS label"], id="name-64-chars"),
    pytest.param(doc(name="''"), ["name: must be a DNS label", "got ''"], id="name-empty"),
    pytest.param(doc(name="7"), ["name: must be a string, got integer 7"], id="name-number"),
    # image
    pytest.param(doc(image=None), ["image: required field is missing"], id="image-missing"),
    pytest.param(doc(image="5"), ["image: must be a string, got integer 5"], id="image-number"),
    pytest.param(
        doc(image="Hello"),
        ["image: must be an image reference", "got 'Hello' (repository names must be lowercase)"],
        id="image-uppercase",
    ),
    pytest.param(doc(image="'a b'"), ["image: must be an image reference"], id="image-space"),
    pytest.param(doc(image="-x"), ["image: must be an image reference"], id="image-leading-dash"),
    pytest.param(doc(image="'x:'"), ["image: must be an image reference"], id="image-empty-tag"),
    pytest.param(doc(image="':tag'"), ["image: must be an image reference"], id="image-only-tag"),
    pytest.param(doc(image="''"), ["image: must be an image reference"], id="image-empty"),
    pytest.param(doc(image="a//b"), ["image: must be an image reference"], id="image-empty-path"),
    pytest.param(
        doc(image="busybox@sha256:abc"),
        ["image: must be an image reference"],
        id="image-short-digest",
    ),
    pytest.param(doc(image="app:" + "t" * 129), ["image: must be an image reference"], id="image-long-tag"),
    pytest.param(
        doc(image="a" * 256),
        ["image: must be at most 255 characters, got 256"],
        id="image-too-long",
    ),
    # replicas
    pytest.param(doc(replicas=None), ["replicas: required field is missing"], id="replicas-missing"),
    pytest.param(
        doc(replicas="true"), ["replicas: must be an integer, got boolean true"], id="replicas-bool"
    ),
    pytest.param(doc(replicas="2.5"), ["replicas: must be an integer, got number 2.5"], id="replicas-float"),
    pytest.param(
        doc(replicas="2.0"),
        ["replicas: must be an integer, got number 2.0"],
        id="replicas-whole-float",
    ),
    pytest.param(doc(replicas="'2'"), ["replicas: must be an integer, got string '2'"], id="replicas-string"),
    pytest.param(doc(replicas="yes"), ["replicas: must be an integer, got string 'yes'"], id="replicas-yes"),
    pytest.param(doc(replicas="-1"), ["replicas: must be an integer >= 0, got -1"], id="replicas-negative"),
    pytest.param(
        doc(replicas=str(MAX_REPLICAS + 1)),
        [f"replicas: must be an integer <= {MAX_REPLICAS}, got {MAX_REPLICAS + 1}"],
        id="replicas-over-cap",
    ),
    pytest.param(doc(replicas=""), ["replicas: must be an integer, got null"], id="replicas-null"),
    # port
    pytest.param(doc("port: 0\n"), ["port: must be an integer >= 1, got 0"], id="port-zero"),
    pytest.param(doc("port: 65536\n"), ["port: must be an integer <= 65535, got 65536"], id="port-too-big"),
    pytest.param(doc("port: false\n"), ["port: must be an integer, got boolean false"], id="port-bool"),
    pytest.param(doc("port: '80'\n"), ["port: must be an integer, got string '80'"], id="port-string"),
    pytest.param(doc("port: 080\n"), ["port: must be an integer, got string '080'"], id="port-octal"),
    # command
    pytest.param(
        doc("command: httpd -f\n"),
        ["command: must be a list of strings, got string 'httpd -f'"],
        id="command-string",
    ),
    pytest.param(doc("command: []\n"), ["command: must not be empty"], id="command-empty"),
    pytest.param(
        doc(f"command: [{', '.join(['a'] * 65)}]\n"),
        ["command: must have at most 64 entries, got 65"],
        id="command-too-many",
    ),
    pytest.param(
        doc("command: [httpd, 5, [x]]\n"),
        ["command[1]: must be a string, got integer 5", "command[2]: must be a string, got list"],
        id="command-non-string-items",
    ),
    pytest.param(
        doc(f"command: [{'x' * 4097}]\n"),
        ["command[0]: must be at most 4096 characters, got 4097"],
        id="command-arg-too-long",
    ),
    pytest.param(
        doc('command: ["a\\0b"]\n'),
        ["command[0]: must not contain NUL characters"],
        id="command-nul",
    ),
    # env
    pytest.param(doc("env: [A=b]\n"), ["env: must be a mapping of NAME: value, got list"], id="env-list"),
    pytest.param(
        doc("env: {" + ", ".join(f"V{i}: x" for i in range(129)) + "}\n"),
        ["env: must have at most 128 entries, got 129"],
        id="env-too-many",
    ),
    pytest.param(
        doc("env: {FOO: 1}\n"),
        ['env.FOO: must be a string, got integer 1 (quote it: FOO: "1")'],
        id="env-integer-value",
    ),
    pytest.param(
        doc("env: {DEBUG: true}\n"),
        ['env.DEBUG: must be a string, got boolean true (quote it: DEBUG: "true")'],
        id="env-boolean-value",
    ),
    pytest.param(
        doc("env: {EMPTY: }\n"),
        ['env.EMPTY: must be a string, got null (write "" for an empty value)'],
        id="env-null-value",
    ),
    pytest.param(doc("env: {LIST: [a]}\n"), ["env.LIST: must be a string, got list"], id="env-list-value"),
    pytest.param(
        doc("env: {1FOO: x, FOO-BAR: y}\n"),
        [
            "env.1FOO: variable name must use only letters, digits and '_', not starting with a digit",
            "env.FOO-BAR: variable name must use only",
        ],
        id="env-bad-names",
    ),
    pytest.param(doc("env: {'A B': x}\n"), ["env['A B']: variable name must use only"], id="env-name-space"),
    pytest.param(
        doc("env: {" + "A" * 257 + ": x}\n"),
        ["env: variable name 'AAAA", "is longer than 256 characters"],
        id="env-name-too-long",
    ),
    pytest.param(
        doc("env: {BIG: " + "x" * (32 * 1024 + 1) + "}\n"),
        ["env.BIG: must be at most 32 KiB"],
        id="env-value-too-big",
    ),
    pytest.param(doc('env: {A: "x\\0"}\n'), ["env.A: must not contain NUL characters"], id="env-value-nul"),
    pytest.param(
        doc("env: {1: x}\n"),
        ["env: variable names must be strings, got integer 1"],
        id="env-int-key",
    ),
    # placement
    pytest.param(
        doc("placement: [host-1]\n"),
        ["placement: must be a mapping, got list"],
        id="placement-list",
    ),
    pytest.param(
        doc("placement: {hosts: []}\n"),
        ["placement.hosts: must not be empty (leave it out to allow every host)"],
        id="hosts-empty",
    ),
    pytest.param(
        doc("placement: {hosts: host-1}\n"),
        ["placement.hosts: must be a list of host names, got string 'host-1'"],
        id="hosts-string",
    ),
    pytest.param(
        doc("placement: {hosts: [host-1, Host_2, 3]}\n"),
        [
            "placement.hosts[1]: must be a DNS label",
            "got 'Host_2'",
            "placement.hosts[2]: must be a string, got integer 3",
        ],
        id="hosts-bad-entries",
    ),
    pytest.param(
        doc("placement: {hosts: [host-1, host-2, host-1]}\n"),
        ["placement.hosts[2]: 'host-1' is listed twice"],
        id="hosts-duplicate",
    ),
    pytest.param(
        doc("placement: {hosts: [" + ", ".join(f"h{i}" for i in range(65)) + "]}\n"),
        ["placement.hosts: must have at most 64 entries, got 65"],
        id="hosts-too-many",
    ),
    pytest.param(
        doc("placement: {max_per_host: 0}\n"),
        ["placement.max_per_host: must be an integer >= 1, got 0"],
        id="max-per-host-zero",
    ),
    pytest.param(
        doc(f"placement: {{max_per_host: {MAX_REPLICAS + 1}}}\n"),
        [f"placement.max_per_host: must be an integer <= {MAX_REPLICAS}"],
        id="max-per-host-over-cap",
    ),
    pytest.param(
        doc("placement: {max_per_host: true}\n"),
        ["placement.max_per_host: must be an integer, got boolean true"],
        id="max-per-host-bool",
    ),
    # health
    pytest.param(
        doc("port: 80\nhealth: /health\n"),
        ["health: must be a mapping, got string '/health'"],
        id="health-string",
    ),
    pytest.param(doc("health: {http: /health}\n"), ["health.http: needs 'port'"], id="http-without-port"),
    pytest.param(
        doc("port: 80\nhealth: {http: health}\n"),
        ["health.http: must be a path starting with '/', got 'health'"],
        id="http-relative",
    ),
    pytest.param(
        doc("port: 80\nhealth: {http: /a b}\n"),
        ["health.http: must be printable ASCII without spaces"],
        id="http-space",
    ),
    pytest.param(
        doc("port: 80\nhealth: {http: /caf\u00e9}\n"),
        ["health.http: must be printable ASCII without spaces"],
        id="http-non-ascii",
    ),
    pytest.param(
        doc("port: 80\nhealth: {http: /" + "a" * 1024 + "}\n"),
        ["health.http: must be at most 1024 characters, got 1025"],
        id="http-too-long",
    ),
    pytest.param(
        doc("port: 80\nhealth: {http: 5}\n"),
        ["health.http: must be a string, got integer 5"],
        id="http-number",
    ),
    pytest.param(
        doc("health: {interval: 50ms, timeout: 10ms}\n"),
        [
            "health.interval: must be between 100ms and 1h, got 50ms",
            "health.timeout: must be between 100ms and 1h, got 10ms",
        ],
        id="health-durations-too-short",
    ),
    pytest.param(
        doc("health: {interval: 2h}\n"),
        ["health.interval: must be between 100ms and 1h, got 2h"],
        id="interval-too-long",
    ),
    pytest.param(
        doc("health: {interval: 2s, timeout: 2s}\n"),
        ["health.timeout: must be shorter than health.interval (2s), got 2s"],
        id="timeout-equal-interval",
    ),
    pytest.param(
        doc("health: {interval: 500ms}\n"),
        ["health.timeout: must be shorter than health.interval (500ms), got 1s (the default)"],
        id="default-timeout-over-interval",
    ),
    pytest.param(
        doc("health: {interval: 2}\n"),
        ['health.interval: must be a duration like "2s" or "500ms", got number 2'],
        id="interval-without-unit",
    ),
    # drain and stop_grace
    pytest.param(
        doc("drain: 2 sec\n"),
        ["""drain: must be a duration like "2s" or "500ms", got '2 sec'"""],
        id="drain-bad-duration",
    ),
    pytest.param(doc("drain: 11m\n"), ["drain: must be between 0s and 10m, got 11m"], id="drain-too-long"),
    pytest.param(
        doc("stop_grace: -1s\n"),
        ["stop_grace: must not be negative, got '-1s'"],
        id="grace-negative",
    ),
    pytest.param(
        doc("stop_grace: 1h\n"),
        ["stop_grace: must be between 0s and 10m, got 1h"],
        id="grace-too-long",
    ),
    pytest.param(
        doc("stop_grace: true\n"),
        ["stop_grace: must be a duration", "got boolean true"],
        id="grace-bool",
    ),
    # update
    pytest.param(
        doc("update: {max_surge: 1, max_unavail: 1}\n"), ["did you mean 'max_unavailable'?"], id="update-typo"
    ),
    pytest.param(
        doc("update: {max_surge: true}\n"),
        ["update.max_surge: must be an integer, got boolean true"],
        id="surge-bool",
    ),
    pytest.param(
        doc("update: {max_surge: -1}\n"),
        ["update.max_surge: must be an integer >= 0, got -1"],
        id="surge-negative",
    ),
    pytest.param(
        doc("update: {max_unavailable: 101}\n"),
        ["update.max_unavailable: must be an integer <= 100"],
        id="unavailable-over-cap",
    ),
    pytest.param(
        doc("update: {max_surge: 0}\n"),
        ["update: max_surge and max_unavailable must not both be 0"],
        id="surge-and-unavailable-zero",
    ),
    pytest.param(
        doc("update: {min_healthy: 2}\n"), ["update.min_healthy: must be a duration"], id="min-healthy-number"
    ),
    pytest.param(
        doc("update: {min_healthy: 2h}\n"),
        ["update.min_healthy: must be between 0s and 1h"],
        id="min-healthy-too-long",
    ),
    pytest.param(
        doc("update: {deadline: 500ms}\n"),
        ["update.deadline: must be between 1s and 24h"],
        id="deadline-too-short",
    ),
    pytest.param(
        doc("update: {auto_rollback: 1}\n"),
        ["update.auto_rollback: must be true or false, got integer 1"],
        id="rollback-int",
    ),
    pytest.param(doc("update: [max_surge]\n"), ["update: must be a mapping"], id="update-not-mapping"),
]


def test_update_policy_defaults() -> None:
    """Without an update section: surge 1, unavailable 0, min_healthy 5s, deadline 5m, auto_rollback."""
    assert parse_manifest(doc()).update == UpdatePolicy(1, 0, 5.0, 300.0, True)


def test_update_policy_parses() -> None:
    """Every field of the update section is read; durations in seconds."""
    text = doc(
        "update: {max_surge: 0, max_unavailable: 1, min_healthy: 1s, deadline: 20s, auto_rollback: false}\n"
    )
    assert parse_manifest(text).update == UpdatePolicy(0, 1, 1.0, 20.0, False)


@pytest.mark.parametrize(("text", "expected"), BAD_YAML + BAD_FIELDS)
def test_bad_manifest_is_refused(text: str | bytes, expected: list[str]) -> None:
    """A bad manifest raises ManifestError, and each expected text is part of some problem."""
    problems = problems_of(text)
    for snippet in expected:
        assert any(snippet in problem for problem in problems), (snippet, problems)


def test_every_problem_is_reported_at_once() -> None:
    """Problems in several fields are all reported together, in schema order."""
    text = (
        "name: Web\n"
        "replicas: true\n"
        "replica: 2\n"
        "port: 0\n"
        "env: {FOO: 1}\n"
        "placement: {max_per_host: 0}\n"
        "health: {http: /x, interval: soon}\n"
        "drain: 1d\n"
    )
    assert problems_of(text) == [
        "replica: unknown field (did you mean 'replicas'?)",
        "name: must be a DNS label (1-63 characters: lowercase letters, digits and '-', "
        "starting and ending with a letter or digit), got 'Web'",
        "image: required field is missing",
        "replicas: must be an integer, got boolean true",
        "port: must be an integer >= 1, got 0",
        'env.FOO: must be a string, got integer 1 (quote it: FOO: "1")',
        "placement.max_per_host: must be an integer >= 1, got 0",
        """health.interval: must be a duration like "2s" or "500ms", got 'soon'""",
        """drain: must be a duration like "2s" or "500ms", got '1d'""",
    ]


def test_problem_list_is_capped() -> None:
    """A flood of problems is cut to MAX_PROBLEMS, with a count of the rest."""
    text = doc("".join(f"unknown{i}: x\n" for i in range(MAX_PROBLEMS + 10)))
    problems = problems_of(text)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == "... and 10 more problems"


def test_oversized_manifest_is_not_parsed() -> None:
    """Input over the size cap yields exactly one problem, even when it is also bad YAML."""
    assert len(problems_of("[" * (MAX_MANIFEST_BYTES + 1))) == 1


def test_syntax_error_is_a_single_problem() -> None:
    """A YAML syntax error gives one problem with a 1-based line and column."""
    assert problems_of("name: web\nimage: 'x\n") == [
        "YAML syntax error at line 3, column 1: found unexpected end of stream "
        "(while scanning a quoted scalar at line 2, column 8)"
    ]


def test_name_must_match_its_key() -> None:
    """A name that differs from its KV key's last segment is refused."""
    assert problems_of(doc(name="bar"), key_name="services/foo") == [
        "name: must equal its key's last segment 'foo', got 'bar'"
    ]


def test_manifest_from_dict_validates_loaded_data() -> None:
    """Already-loaded data gets the same checks, with Python's bool-is-int trap closed."""
    with pytest.raises(ManifestError) as caught:
        manifest_from_dict({"name": "web", "image": "hello:local", "replicas": True, "port": 1.0})
    assert [str(p) for p in caught.value.problems] == [
        "replicas: must be an integer, got boolean true",
        "port: must be an integer, got number 1.0",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(None, "manifest is empty", id="none"),
        pytest.param([], "the top level must be a mapping of fields, got list", id="list"),
        pytest.param("web", "the top level must be a mapping of fields, got string 'web'", id="str"),
    ],
)
def test_manifest_from_dict_needs_a_mapping(data: object, expected: str) -> None:
    """Data that is not a mapping is one problem saying what it is."""
    with pytest.raises(ManifestError) as caught:
        manifest_from_dict(data)
    assert [str(p) for p in caught.value.problems] == [expected]


def test_to_dict_round_trips() -> None:
    """The normalised form spells durations canonically and loads back to an equal Manifest."""
    manifest = parse_manifest(
        doc("port: 80\nenv: {B: x, A: y}\nhealth: {http: /, interval: 1m30s}\ndrain: 1500ms\n")
    )
    data = manifest.to_dict()
    assert data["health"] == {"http": "/", "interval": "1m30s", "timeout": "1s"}
    assert data["drain"] == "1.5s"
    assert data["stop_grace"] == "10s"
    assert data["env"] == {"A": "y", "B": "x"}
    assert data["placement"] == {"hosts": None, "max_per_host": None, "labels": {}, "rebalance": True}
    assert data["resources"] == {"memory": "256Mi", "cpus": 0.25}
    assert data["pids_limit"] == 1024
    assert manifest_from_dict(data) == manifest


def test_env_dict() -> None:
    """env_dict gives the environment as a dict."""
    manifest = parse_manifest(doc("env: {B: x, A: y}\n"))
    assert manifest.env == (("A", "y"), ("B", "x"))
    assert manifest.env_dict == {"A": "y", "B": "x"}


# --- problems and the error ----------------------------------------------------


def test_problem_text() -> None:
    """A problem reads 'path: message', or just the message for the whole manifest."""
    assert str(Problem("placement.max_per_host", "must be an integer >= 1, got 0")) == (
        "placement.max_per_host: must be an integer >= 1, got 0"
    )
    assert str(Problem("", "manifest is empty")) == "manifest is empty"


def test_manifest_error_lists_problems_one_per_line() -> None:
    """ManifestError is an OperatorError whose text lists every problem on its own line."""
    error = ManifestError([Problem("a", "one"), Problem("", "two")])
    assert isinstance(error, OperatorError)
    assert str(error) == "a: one\ntwo"


def test_manifest_error_pickles() -> None:
    """ManifestError survives pickling with its problems intact."""
    error = ManifestError([Problem("a", "one")])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ManifestError)
    assert copy.problems == error.problems
    assert str(copy) == str(error)


# --- spec hash -------------------------------------------------------------------

FULL = doc(
    "port: 5000\n"
    "command: [httpd, -f]\n"
    "env: {GREETING: hi, OTHER: x}\n"
    "health: {http: /health, interval: 2s, timeout: 1s}\n"
)


def spec_hash(text: str) -> str:
    """The spec hash of the manifest `text`."""
    return parse_manifest(text).spec_hash()


def test_spec_hash_shape() -> None:
    """The spec hash is 16 lowercase hex digits and is stable across parses."""
    value = spec_hash(FULL)
    assert len(value) == 16
    assert all(char in "0123456789abcdef" for char in value)
    assert value == spec_hash(FULL)


def test_spec_hash_ignores_key_order() -> None:
    """The same manifest with fields and env entries in another order has the same hash."""
    reordered = (
        "health: {timeout: 1s, http: /health, interval: 2s}\n"
        "env: {OTHER: x, GREETING: hi}\n"
        "command: [httpd, -f]\n"
        "port: 5000\nreplicas: 2\nimage: hello:local\nname: web\n"
    )
    assert spec_hash(reordered) == spec_hash(FULL)


def test_spec_hash_ignores_spelled_out_defaults() -> None:
    """Defaults written out, or spelled differently, give the hash of defaults left out."""
    explicit = doc(
        "port: 5000\ncommand: null\nenv: {}\n"
        "health: {http: null, interval: 2000ms, timeout: 1.0s}\n"
        "placement: {}\ndrain: 2s\nstop_grace: 10s\n"
    )
    assert spec_hash(explicit) == spec_hash(doc("port: 5000\n"))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"replicas": "5"}, id="replicas"),
        pytest.param({"replicas": "0"}, id="scaled-to-zero"),
        pytest.param({"placement": "{hosts: [host-1], max_per_host: 1}"}, id="placement"),
        pytest.param({"drain": "10s"}, id="drain"),
        pytest.param({"stop_grace": "1m"}, id="stop-grace"),
        pytest.param({"update": "{max_surge: 2, deadline: 1m}"}, id="update"),
    ],
)
def test_spec_hash_ignores_what_does_not_replace_containers(change: dict[str, str]) -> None:
    """Scaling, placement, drain and stop_grace changes leave the spec hash alone."""
    base = {"name": "web", "image": "hello:local", "replicas": "2", "port": "5000"}
    assert spec_hash(doc(**(base | change))) == spec_hash(doc(**base))


# FULL as data: each case below changes exactly one field of it.
FULL_FIELDS: dict[str, object] = {
    "name": "web",
    "image": "hello:local",
    "replicas": 2,
    "port": 5000,
    "command": ["httpd", "-f"],
    "env": {"GREETING": "hi", "OTHER": "x"},
    "health": {"http": "/health", "interval": "2s", "timeout": "1s"},
}


def with_field(name: str, value: object) -> str:
    """FULL with exactly ``name`` set to ``value`` (None: the field left out)."""
    fields = {k: v for k, v in FULL_FIELDS.items() if k != name}
    if value is not None:
        fields[name] = value
    return yaml.safe_dump(fields)


def test_full_fields_is_full() -> None:
    """The table's base is the same manifest as FULL, so each case differs from FULL in one field only."""
    assert spec_hash(with_field("name", "web")) == spec_hash(FULL)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("name", "web2", id="name"),
        pytest.param("image", "hello:v2", id="image"),
        pytest.param("command", ["httpd"], id="command"),
        pytest.param("command", None, id="command-removed"),
        pytest.param("env", {"GREETING": "hello", "OTHER": "x"}, id="env-value"),
        pytest.param("env", {"GREETING": "hi"}, id="env-entry-removed"),
        pytest.param("env", {"GREETING": "hi", "OTHER": "x", "NEW": "y"}, id="env-entry-added"),
        pytest.param("port", 5001, id="port"),
        pytest.param("health", {"http": "/ready", "interval": "2s", "timeout": "1s"}, id="health-path"),
        pytest.param("health", {"http": "/health", "interval": "5s", "timeout": "1s"}, id="health-interval"),
        pytest.param(
            "health", {"http": "/health", "interval": "2s", "timeout": "1500ms"}, id="health-timeout"
        ),
        pytest.param("resources", {"memory": "512Mi"}, id="resources-memory"),
        pytest.param("resources", {"cpus": 1}, id="resources-cpus"),
        pytest.param("pids_limit", 100, id="pids-limit"),
        pytest.param("user", "1000", id="user"),
        pytest.param("read_only", True, id="read-only"),
        pytest.param("tmpfs", ["/tmp"], id="tmpfs"),
        pytest.param("cap_add", ["NET_ADMIN"], id="cap-add"),
    ],
)
def test_spec_hash_changes_with_each_container_field(name: str, value: object) -> None:
    """Changing exactly one field of what a container is changes the hash: every such field is in it."""
    assert spec_hash(with_field(name, value)) != spec_hash(FULL)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("replicas", 5, id="replicas"),
        pytest.param("replicas", 0, id="scaled-to-zero"),
        pytest.param("placement", {"hosts": ["host-1"], "max_per_host": 1}, id="placement"),
        pytest.param("placement", {"labels": {"zone": "a"}}, id="placement-labels"),
        pytest.param("drain", "10s", id="drain"),
        pytest.param("stop_grace", "1m", id="stop-grace"),
        pytest.param("update", {"max_surge": 2, "deadline": "1m"}, id="update"),
        pytest.param("resources", {"memory": "256Mi", "cpus": 0.25}, id="default-resources-spelled-out"),
        pytest.param("pids_limit", 1024, id="default-pids-limit-spelled-out"),
        pytest.param("read_only", False, id="default-read-only-spelled-out"),
        pytest.param("tmpfs", [], id="empty-tmpfs-spelled-out"),
        pytest.param("cap_add", [], id="empty-cap-add-spelled-out"),
    ],
)
def test_spec_hash_leaves_out_each_other_field(name: str, value: object) -> None:
    """Changing exactly one field that does not replace containers leaves the hash alone."""
    assert spec_hash(with_field(name, value)) == spec_hash(FULL)


# --- resources, pids_limit, placement.labels ----------------------------------------


@pytest.mark.parametrize(
    ("extra", "memory", "millicpus", "pids"),
    [
        pytest.param("", 256 * MI, 250, 1024, id="defaults-when-absent"),
        pytest.param("resources: {}\npids_limit: null\n", 256 * MI, 250, 1024, id="defaults-when-empty"),
        pytest.param("resources: {memory: 64Mi}\n", 64 * MI, 250, 1024, id="memory-only"),
        pytest.param("resources: {cpus: 2}\n", 256 * MI, 2000, 1024, id="cpus-integer"),
        pytest.param("resources: {memory: 2Gi, cpus: 0.25}\n", 2 * GI, 250, 1024, id="gi-and-two-decimals"),
        pytest.param("resources: {memory: 8192Ki, cpus: 0.01}\n", 8 * MI, 10, 1024, id="smallest"),
        pytest.param("resources: {memory: 1024Gi, cpus: 256}\n", 1024 * GI, 256_000, 1024, id="largest"),
        pytest.param("pids_limit: 64\n", 256 * MI, 250, 64, id="pids-limit"),
    ],
)
def test_resources_parse(extra: str, memory: int, millicpus: int, pids: int) -> None:
    """Memory in Ki/Mi/Gi and decimal CPUs become bytes and thousandths; absent ones take the defaults."""
    manifest = parse_manifest(doc(extra))
    assert manifest.resources == Resources(memory, millicpus)
    assert manifest.pids_limit == pids


BAD_RESOURCES = [
    pytest.param("resources: {memory: 256M}\n", "did you mean 256Mi?", id="decimal-unit-M"),
    pytest.param("resources: {memory: 1G}\n", "did you mean 1Gi?", id="decimal-unit-G"),
    pytest.param("resources: {memory: 512MB}\n", "did you mean 512Mi?", id="unit-MB"),
    pytest.param("resources: {memory: 268435456}\n", "plain byte counts are not accepted", id="bytes"),
    pytest.param("resources: {memory: 1.5Gi}\n", "1536Mi, not 1.5Gi", id="fraction"),
    pytest.param("resources: {memory: 1Ti}\n", "Ki, Mi or Gi", id="unit-Ti"),
    pytest.param("resources: {memory: 4Mi}\n", "between 8Mi and 1024Gi, got 4Mi", id="memory-too-small"),
    pytest.param("resources: {memory: 2048Gi}\n", "between 8Mi and 1024Gi, got 2048Gi", id="memory-too-big"),
    pytest.param("resources: {cpus: 0.125}\n", "at most two decimals", id="three-decimals"),
    pytest.param("resources: {cpus: 0}\n", "between 0.01 and 256, got 0", id="cpus-zero"),
    pytest.param("resources: {cpus: -1}\n", "between 0.01 and 256, got -1", id="cpus-negative"),
    pytest.param("resources: {cpus: 300}\n", "between 0.01 and 256, got 300", id="cpus-too-many"),
    pytest.param("resources: {cpus: 500m}\n", "write it unquoted", id="millicores"),
    pytest.param("resources: {cpus: '0.5'}\n", "write it unquoted", id="cpus-quoted"),
    pytest.param("resources: {cpus: .inf}\n", "at most two decimals", id="cpus-infinite"),
    pytest.param("resources: {cpus: true}\n", "got boolean true", id="cpus-boolean"),
    pytest.param("resources: {mem: 1Gi}\n", "did you mean 'memory'?", id="unknown-field"),
    pytest.param("resources: 1Gi\n", "resources: must be a mapping", id="not-a-mapping"),
    pytest.param("pids_limit: 8\n", "pids_limit: must be an integer >= 16", id="pids-too-low"),
    pytest.param("pids_limit: 100000\n", "pids_limit: must be an integer <= 65536", id="pids-too-high"),
    pytest.param("pids_limit: -1\n", "pids_limit: must be an integer >= 16", id="pids-unlimited"),
    pytest.param("placement: {labels: [zone]}\n", "must be a mapping of label: value", id="labels-list"),
    pytest.param("placement: {labels: {'a b': x}}\n", "a label key must be", id="label-key"),
    pytest.param("placement: {labels: {zone: 1}}\n", 'quote it: zone: "1"', id="label-value-number"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_RESOURCES)
def test_bad_resources_are_refused(extra: str, expected: str) -> None:
    """Units, bounds and types of resources, pids_limit and placement.labels are checked strictly."""
    problems = problems_of(doc(extra))
    assert any(expected in problem for problem in problems), problems


def test_every_resource_problem_is_listed() -> None:
    """A manifest with several bad resources names each one."""
    problems = problems_of(doc("resources: {memory: 1G, cpus: 0.001}\npids_limit: 1\n"))
    assert [p.split(":")[0] for p in problems] == ["resources.memory", "resources.cpus", "pids_limit"]


def test_placement_labels_parse_sorted() -> None:
    """placement.labels is a set of label: value pairs (order means nothing)."""
    manifest = parse_manifest(doc("placement: {labels: {zone: a, disk: ssd}}\n"))
    assert manifest.placement.labels == (("disk", "ssd"), ("zone", "a"))


def test_resources_round_trip_through_the_normalised_form() -> None:
    """The normalised form spells resources canonically, and reads back to an equal manifest."""
    manifest = parse_manifest(doc("resources: {memory: 1024Mi, cpus: 1.50}\npids_limit: 300\n"))
    data = manifest.to_dict()
    assert data["resources"] == {"memory": "1Gi", "cpus": 1.5}
    assert manifest_from_dict(data) == manifest


def test_revision_of_an_older_version_reads_with_the_defaults() -> None:
    """A revision written before resources existed (no resources, no pids_limit) gets the defaults."""
    data = parse_manifest(doc()).to_dict()
    del data["resources"], data["pids_limit"]
    assert manifest_from_dict(data) == parse_manifest(doc())


@pytest.mark.parametrize(
    ("millicpus", "text"),
    [(500, "0.5"), (2000, "2"), (250, "0.25"), (1010, "1.01"), (1800, "1.8"), (0, "0")],
    ids=["half", "whole", "quarter", "hundredths", "tenths", "zero"],
)
def test_format_cpus(millicpus: int, text: str) -> None:
    """CPUs print as the shortest decimal, and read back to the same thousandths."""
    assert format_cpus(millicpus) == text
    assert parse_cpus(text) == millicpus


@pytest.mark.parametrize(
    ("size", "text"),
    [(256 * MI, "256Mi"), (2 * GI, "2Gi"), (1536 * MI, "1536Mi"), (3 * KI, "3Ki"), (1000, "1000")],
    ids=["mi", "gi", "not-whole-gi", "ki", "bytes"],
)
def test_format_memory(size: int, text: str) -> None:
    """Memory prints in the largest binary unit that divides it exactly."""
    assert format_memory(size) == text
