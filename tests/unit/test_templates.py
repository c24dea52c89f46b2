"""Templates (``templates:``): validation, the sandboxed renderer and its bounds, what a template
depends on, and the leader's resolution into the spec hash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.cluster_state import ClusterState
from consul_operator.core.desired_state import Manifest, ManifestError, manifest_from_dict, parse_manifest
from consul_operator.core.keys import Layout
from consul_operator.core.leader_plan import LeaderMemory, LeaderSettings, Now, decide_leader
from consul_operator.core.model import ContainerInfo
from consul_operator.core.records import RenderedRecord
from consul_operator.core.refresh import plan_refresh
from consul_operator.core.resolve import resolve
from consul_operator.core.templating import (
    MAX_RENDERED_BYTES,
    Instance,
    TemplateError,
    TemplateInputs,
    dependencies,
    render,
)

HEAD = "name: web\nimage: hello:local\nreplicas: 1\n"
REDIS = TemplateInputs(
    {"app/greeting": "hi"},
    {"redis": (Instance("10.0.0.1", 31000, {"redis": 31000, "metrics": 31001}), Instance("10.0.0.2", 31002))},
)


def problems(extra: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + extra)
    return [str(p) for p in caught.value.problems]


def one(source: str, **fields: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"templates: [{{path: /etc/app.conf, source: {source!r}{extra}}}]\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("templates: {path: /a}\n", "templates: must be a list", id="not-a-list"),
        pytest.param(
            "templates: [{source: x}]\n", "templates[0].path: required field is missing", id="no-path"
        ),
        pytest.param(
            "templates: [{path: /a}]\n", "templates[0].source: required field is missing", id="no-source"
        ),
        pytest.param(
            "templates: [{path: etc/a, source: x}]\n", "templates[0].path: must be an absolute", id="relative"
        ),
        pytest.param(
            "templates: [{path: /etc/../a, source: x}]\n", "templates[0].path: must be", id="dot-dot"
        ),
        pytest.param(
            "templates: [{path: /run/secrets/a, source: x}]\n", "must not be under /run/secrets", id="secrets"
        ),
        pytest.param(
            "templates: [{path: /a, source: x}, {path: /a, source: y}]\n", "'/a' is mounted twice", id="twice"
        ),
        pytest.param(
            "tmpfs: [/a]\ntemplates: [{path: /a, source: x}]\n", "'/a' is mounted twice", id="on-tmpfs"
        ),
        pytest.param(one("{% for %}"), "templates[0].source: line 1: Expected an expression", id="syntax"),
        pytest.param(one("{{ key(name) }}"), "key() takes one literal string", id="key-not-literal"),
        pytest.param(one("{{ key('../operator/leader') }}"), "must be a relative KV path", id="key-escapes"),
        pytest.param(one("{{ key('/abs') }}"), "must be a relative KV path", id="key-absolute"),
        pytest.param(one("{{ service('Bad_Name') }}"), "must name a service", id="bad-service"),
        pytest.param(one("{{ service('web') }}"), "is this service", id="own-service"),
        pytest.param(
            one("x", change_mode="reload"), "templates[0].change_mode: must be restart or signal", id="mode"
        ),
        pytest.param(
            one("x", signal="SIGHUP"), "templates[0].signal: needs change_mode: signal", id="signal-alone"
        ),
        pytest.param(one("x", change_mode="signal", signal="SIGKILL"), "one of SIGHUP", id="sigkill"),
        pytest.param(
            "templates: [{path: /a, source: '" + "x" * 17000 + "'}]\n", "at most 16384 bytes", id="big"
        ),
        pytest.param(
            "templates:\n" + "".join(f"  - {{path: /a{i}, source: x}}\n" for i in range(9)),
            "templates: must have at most 8",
            id="too-many",
        ),
    ],
)
def test_bad_templates_are_refused_with_their_path(extra: str, expected: str) -> None:
    """Every problem of ``templates:`` is named with its path."""
    assert any(expected in p for p in problems(extra)), problems(extra)


def test_a_template_parses_with_its_dependencies_and_defaults() -> None:
    """A template's keys and services are read from its text; change_mode is restart unless given,
    and signal mode sends SIGHUP unless told otherwise; the normalised form parses back equal."""
    manifest = parse_manifest(
        HEAD
        + "templates:\n"
        + "  - {path: /etc/b.conf, source: \"{{ key('a/b') }} {{ service('redis')[0].port }}\"}\n"
        + "  - {path: /etc/a.conf, source: x, change_mode: signal}\n"
    )
    signal, restart = manifest.templates
    assert (signal.path, signal.change_mode, signal.signal) == ("/etc/a.conf", "signal", "SIGHUP")
    assert (restart.keys, restart.services, restart.change_mode) == (("a/b",), ("redis",), "restart")
    assert manifest_from_dict(manifest.to_dict(), key_name="web") == manifest


def test_the_renderer_reads_keys_and_instances() -> None:
    """``key()`` gives a config value, ``service()`` the sorted passing instances with their ports."""
    source = (
        "{{ key('app/greeting') }} {% for r in service('redis') %}{{ r.address }}:{{ r.port }} {% endfor %}"
    )
    assert render(source, REDIS, "config/") == "hi 10.0.0.1:31000 10.0.0.2:31002 "
    assert render("{{ service('redis')[0].ports.metrics }}", REDIS, "config/") == "31001"
    assert render("{{ service('none') | length }}", REDIS, "config/") == "0"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("{{ key('app/x') }}", "key config/app/x missing", id="missing-key"),
        pytest.param("{{ service('none')[0].address }}", "UndefinedError", id="no-instance"),
        pytest.param("{{ nothing }}", "UndefinedError", id="undefined"),
        pytest.param("{{ ''.__class__ }}", "SecurityError", id="sandbox"),
        pytest.param("{{ 'x' * 100000 }}", "a repetition longer than", id="repeat"),
        pytest.param("{{ 2 ** 1000 }}", "an exponent above 64", id="power"),
        pytest.param("{% for i in range(20000) %}{% endfor %}", "range of 20000 numbers", id="range"),
        pytest.param(
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            "more than 100000 loop steps",
            id="nested-loops",
        ),
        pytest.param(
            "{% for i in range(9000) %}{{ 'x' * 60000 }}{% endfor %}", "renders more than", id="output-size"
        ),
        pytest.param("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "recursion too deep", id="recursion"),
        pytest.param("{{ lipsum() }}", "UndefinedError", id="no-globals"),
    ],
)
def test_a_render_failure_is_a_template_error_saying_why(source: str, expected: str) -> None:
    """Whatever goes wrong in a render (a missing key, the sandbox, a bound) is one `TemplateError`."""
    with pytest.raises(TemplateError, match=expected.replace("(", r"\(").replace("*", r"\*")):
        render(source, REDIS, "config/")


def test_a_rendered_text_is_part_of_the_spec_and_a_change_is_a_new_spec() -> None:
    """The text a restart template renders is in the resolved spec (a new text: a new spec hash); a
    signal template's is not (it is rewritten in place); a render error names the template."""
    manifest = parse_manifest(
        HEAD
        + "templates:\n  - {path: /a, source: \"{{ key('g') }}\"}\n"
        + "  - {path: /b, source: \"{{ key('g') }}\", change_mode: signal}\n"
    )
    one = resolve(manifest, {}, "secrets/", TemplateInputs({"g": "1"}), "config/")
    two = resolve(manifest, {}, "secrets/", TemplateInputs({"g": "2"}), "config/")
    assert isinstance(one, Manifest) and isinstance(two, Manifest)
    assert one.resolved.files == (("/a", "1"),)
    assert one.spec_hash() != two.spec_hash()
    failed = resolve(manifest, {}, "secrets/", TemplateInputs(), "config/")
    assert isinstance(failed, ManifestError)
    assert str(failed.problems[0]) == "templates[/a]: does not render: key config/g missing"


def test_dependencies_are_sorted_and_distinct() -> None:
    """What a template reads is each key and service once, sorted."""
    assert dependencies("{{ key('b') }}{{ key('a') }}{{ key('b') }}{{ service('s') }}") == (
        ("a", "b"),
        ("s",),
    )


@given(st.text(max_size=200))
def test_property_rendering_any_text_never_crashes_and_stays_bounded(source: str) -> None:
    """Any text is either refused with a TemplateError or renders to at most MAX_RENDERED_BYTES."""
    try:
        dependencies(source)
        out = render(source, REDIS, "config/")
    except TemplateError:
        return
    assert len(out.encode()) <= MAX_RENDERED_BYTES


def _container(name: str, service: str = "web", state: str = "running") -> ContainerInfo:
    return ContainerInfo(id=f"id-{name}", name=name, service=service, spec_hash="s", state=state)


RECORD = RenderedRecord("web", (("/a", "new-a", "SIGHUP"), ("/b", "new-b", "SIGUSR1")))


@pytest.mark.parametrize(
    ("current", "containers", "expected"),
    [
        pytest.param({("c1", "/a"): "new-a", ("c1", "/b"): "new-b"}, [_container("c1")], [], id="up-to-date"),
        pytest.param(
            {("c1", "/a"): "old", ("c1", "/b"): "new-b"},
            [_container("c1")],
            [("c1", {"/a": "new-a"}, ("SIGHUP",))],
            id="one-file-one-signal",
        ),
        pytest.param(
            {("c1", "/a"): "old", ("c1", "/b"): "old"},
            [_container("c1")],
            [("c1", {"/a": "new-a", "/b": "new-b"}, ("SIGHUP", "SIGUSR1"))],
            id="both-files-both-signals",
        ),
        pytest.param({("c1", "/a"): None}, [_container("c1")], [], id="no-such-file-older-spec"),
        pytest.param({("c1", "/a"): "old"}, [_container("c1", state="exited")], [], id="not-running"),
        pytest.param({("c1", "/a"): "old"}, [_container("c1", service="api")], [], id="other-service"),
    ],
)
def test_plan_refresh(
    current: dict[tuple[str, str], str | None],
    containers: list[ContainerInfo],
    expected: list[tuple[str, dict[str, str], tuple[str, ...]]],
) -> None:
    """A running replica whose signal template's text differs from the leader's gets the new text and
    each changed template's signal once; one without the file, stopped, or of another service does not."""
    plan = plan_refresh({"web": RECORD}, containers, current)
    assert [(r.container.name, dict(r.files), r.signals) for r in plan] == expected


def test_the_rendered_record_round_trips() -> None:
    """`RenderedRecord` parses back what it writes, and refuses what is not one."""
    assert RenderedRecord.from_json(RECORD.to_json(), service="web") == RECORD
    with pytest.raises(ValueError, match="not a rendered record"):
        RenderedRecord.from_json(b'{"files": {"/a": {"text": 1}}}', service="web")


def _signal_manifest(text: str) -> Manifest:
    manifest = parse_manifest(
        HEAD + "templates: [{path: /a, source: \"{{ key('g') }}\", change_mode: signal}]\n"
    )
    resolved = resolve(manifest, {}, "secrets/", TemplateInputs({"g": text}), "config/")
    assert isinstance(resolved, Manifest)
    return resolved


@pytest.mark.parametrize(
    ("kept", "text", "expected"),
    [
        pytest.param(None, "1", "written", id="first-text"),
        pytest.param(RenderedRecord("web", (("/a", "1", "SIGHUP"),)), "1", "untouched", id="same-text"),
        pytest.param(RenderedRecord("web", (("/a", "1", "SIGHUP"),)), "2", "written", id="new-text"),
    ],
)
def test_the_leader_writes_a_signal_template_s_text_only_when_it_changes(
    kept: RenderedRecord | None, text: str, expected: str
) -> None:
    """The leader writes operator/rendered/<name> when its signal templates' text differs from what KV
    holds, and the spec (and so the placement's spec hash) is the same whatever the text."""
    manifest = _signal_manifest(text)
    assert manifest.spec_hash() == _signal_manifest("other").spec_hash()
    state = ClusterState(
        manifests={"web": manifest},
        hosts={"h1": (True, {})},
        rendered={} if kept is None else {"web": kept},
    )
    plan = decide_leader(state, LeaderMemory(), Now(1000.0, 1.7e9), LeaderSettings("h1", Layout(), 10.0))
    key = Layout().rendered_key("web")
    if expected == "written":
        assert RenderedRecord.from_json(plan.writes[key] or b"", service="web").files == (
            ("/a", text, "SIGHUP"),
        )
    else:
        assert key not in plan.writes


def test_a_deleted_service_s_rendered_record_goes() -> None:
    """The rendered record of a service without a manifest is deleted."""
    state = ClusterState(hosts={"h1": (True, {})}, rendered={"web": RECORD})
    plan = decide_leader(state, LeaderMemory(), Now(1000.0, 1.7e9), LeaderSettings("h1", Layout(), 10.0))
    assert plan.writes[Layout().rendered_key("web")] is None
