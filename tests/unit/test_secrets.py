"""Secrets (``secrets:``): validation, the spec hash (unchanged without secrets, changed by a
version), the leader's resolution, the agent's hold without a revision, and the file owner lookup."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.adapters.runtime_files import filesystem_type, owner_of
from consul_operator.core.desired_state import (
    Manifest,
    ManifestError,
    Resolved,
    Secret,
    manifest_from_dict,
    parse_manifest,
)
from consul_operator.core.errors import DockerError
from consul_operator.core.host_plan import host_desires
from consul_operator.core.keys import Layout
from consul_operator.core.records import Hold, PlacementRecord
from consul_operator.core.resolve import resolve, resolve_manifests

HEAD = "name: web\nimage: hello:local\nreplicas: 1\n"


def problems(extra: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + extra)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("secrets: {name: a}\n", "secrets: must be a list", id="not-a-list"),
        pytest.param("secrets: [a]\n", "secrets[0]: must be a mapping", id="not-a-mapping"),
        pytest.param("secrets: [{env: A}]\n", "secrets[0].name: required field is missing", id="no-name"),
        pytest.param("secrets: [{name: ../x}]\n", "secrets[0].name: must be a secret's name", id="dot-dot"),
        pytest.param("secrets: [{name: a/b}]\n", "secrets[0].name: must be a secret's name", id="slash"),
        pytest.param("secrets: [{name: a}, {name: a}]\n", "secrets[1].name: 'a' is listed twice", id="twice"),
        pytest.param(
            "secrets: [{name: a, env: 1A}]\n", "secrets[0].env: must be a variable name", id="bad-env"
        ),
        pytest.param(
            "env: {A: x}\nsecrets: [{name: a, env: A}]\n", "secrets[0].env: 'A' is set twice", id="env-clash"
        ),
        pytest.param(
            "secrets: [{name: a, env: B}, {name: b, env: B}]\n",
            "secrets[1].env: 'B' is set twice",
            id="env-twice",
        ),
        pytest.param("secrets: [{name: a, value: x}]\n", "secrets[0].value: unknown field", id="a-value"),
        pytest.param(
            "secrets: [{name: a}]\ntmpfs: [/run/secrets]\n",
            "secrets: /run/secrets is where",
            id="mount-taken",
        ),
        pytest.param(
            "secrets: [{name: a}]\nresolved: {secrets: {b: 1}}\n",
            "resolved.secrets: must give",
            id="resolved-other",
        ),
    ],
)
def test_bad_secrets_are_refused_with_their_path(extra: str, expected: str) -> None:
    """Every problem of ``secrets:`` is named with its path."""
    assert any(expected in p for p in problems(extra)), problems(extra)


def test_secrets_are_parsed_sorted_and_round_trip() -> None:
    """``secrets:`` parses into sorted `Secret`s, and the normalised form (with what the leader
    resolved) parses back into an equal manifest with the same spec hash."""
    manifest = parse_manifest(HEAD + "secrets: [{name: redis_password}, {name: api_key, env: API_KEY}]\n")
    assert manifest.secrets == (Secret("api_key", "API_KEY"), Secret("redis_password"))
    resolved = dataclasses.replace(manifest, resolved=Resolved((("api_key", 7), ("redis_password", 9))))
    again = manifest_from_dict(resolved.to_dict(), key_name="web")
    assert again == resolved and again.spec_hash() == resolved.spec_hash()


def test_a_manifest_without_secrets_hashes_as_before() -> None:
    """The spec hash of a manifest without secrets is what it was before secrets existed (pinned)."""
    assert parse_manifest(HEAD + "port: 5000\n").spec_hash() == "637d52321a9481a4"


def test_a_secret_version_changes_the_spec_hash_and_its_value_is_nowhere() -> None:
    """Two versions of a secret are two specs; the normalised form holds the version, never a value."""
    manifest = parse_manifest(HEAD + "secrets: [{name: token}]\n")
    one = resolve(manifest, {"token": 11}, "secrets/")
    two = resolve(manifest, {"token": 12}, "secrets/")
    assert isinstance(one, Manifest) and isinstance(two, Manifest)
    assert len({manifest.spec_hash(), one.spec_hash(), two.spec_hash()}) == 3
    assert one.to_dict()["resolved"] == {"secrets": {"token": 11}}


def test_a_missing_secret_is_a_clear_error_for_that_manifest_only() -> None:
    """A secret not in KV makes its manifest a ManifestError naming the secret and its key; the other
    manifests are resolved as they are."""
    web = parse_manifest(HEAD + "secrets: [{name: db_password}]\n")
    plain = parse_manifest("name: api\nimage: hello:local\nreplicas: 1\n")
    out = resolve_manifests({"web": web, "api": plain}, {}, "secrets/")
    assert out["api"] is plain
    error = out["web"]
    assert isinstance(error, ManifestError)
    assert str(error) == "secrets: secret db_password missing: write it to secrets/web/db_password"


def test_without_read_access_the_manifests_stay_as_written() -> None:
    """A reader that may not read secrets (None) leaves manifests unresolved (the LB's status page)."""
    web = parse_manifest(HEAD + "secrets: [{name: db_password}]\n")
    assert resolve_manifests({"web": web}, None, "secrets/") == {"web": web}


def test_an_agent_never_runs_a_manifest_with_secrets_as_written() -> None:
    """A manifest with secrets whose placed spec has no kept revision here is held, not started as read
    from services/ (that would run without the leader's versions); with the revision, it runs that."""
    manifest = parse_manifest(HEAD + "secrets: [{name: token}]\n")
    resolved = resolve(manifest, {"token": 3}, "secrets/")
    assert isinstance(resolved, Manifest)
    record = PlacementRecord("web", resolved.spec_hash(), {"h": 1})
    held = host_desires("h", {"web": manifest}, {"web": record}, {})["web"]
    assert held.manifest is None and held.hold is Hold.UNPLACED and "revision" in (held.error or "")
    runs = host_desires("h", {"web": manifest}, {"web": record}, {("web", resolved.spec_hash()): resolved})[
        "web"
    ]
    assert runs.revisions[resolved.spec_hash()] == resolved


def test_the_secrets_prefix_is_its_own() -> None:
    """Layout's secrets prefix names each secret's key and may not overlap services/ or operator/."""
    layout = Layout(secrets_prefix="team/secrets")
    assert layout.secret_key("web", "token") == "team/secrets/web/token"
    assert layout.secret_of("team/secrets/web/token") == ("web", "token")
    assert layout.secret_of("team/secrets/web/a/b") is None
    with pytest.raises(ValueError, match="must not overlap"):
        Layout(secrets_prefix="operator/secrets/")


@pytest.mark.parametrize(
    ("user", "owner"),
    [
        pytest.param("", (0, 0), id="root"),
        pytest.param("1234", (1234, 0), id="uid-not-in-passwd"),
        pytest.param("1000", (1000, 100), id="uid-in-passwd"),
        pytest.param("app", (1000, 100), id="name"),
        pytest.param("app:staff", (1000, 50), id="name-and-group"),
        pytest.param("7:8", (7, 8), id="numbers"),
    ],
)
def test_a_secret_file_belongs_to_the_user_the_container_runs_as(user: str, owner: tuple[int, int]) -> None:
    """The owner of the secret files is looked up as Docker does, in the image's passwd and group."""
    files = {
        "/etc/passwd": b"root:x:0:0::/root:/bin/sh\napp:x:1000:100::/app:/bin/sh\n",
        "/etc/group": b"staff:x:50:\n",
    }
    assert owner_of(user, files.get) == owner


def test_an_unknown_user_is_refused() -> None:
    """A user name the image does not know gives no guessed owner but a refusal."""
    with pytest.raises(DockerError, match="not in the image"):
        owner_of("nobody-here", lambda _: b"root:x:0:0::/root:/bin/sh\n")


def test_the_runtime_directory_s_file_system_is_the_deepest_mount() -> None:
    """The file system of a path is that of the deepest mount above it (a tmpfs on /run, not /'s ext4)."""
    mountinfo = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "25 22 0:23 / /run rw,nosuid - tmpfs tmpfs rw,size=1g\n"
        "26 25 0:24 / /run/lock rw - tmpfs tmpfs rw\n"
    )
    assert filesystem_type("/run/consul-operator/x", mountinfo) == "tmpfs"
    assert filesystem_type("/srv/data", mountinfo) == "ext4"
    assert filesystem_type("/running", mountinfo) == "ext4"


@given(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), min_size=1, max_size=5, unique=True))
def test_property_no_secret_value_reaches_the_normalised_form(names: list[str]) -> None:
    """Whatever secrets a manifest names, its normalised form (the revision, the spec hash's input)
    holds their names and versions only: a value is never given to the manifest at all."""
    listed = "".join(f"  - name: {n}\n" for n in names)
    manifest = parse_manifest(HEAD + "secrets:\n" + listed)
    resolved = resolve(manifest, {n: i for i, n in enumerate(names)}, "secrets/")
    assert isinstance(resolved, Manifest)
    assert resolved.to_dict()["resolved"] == {"secrets": {n: i for i, n in enumerate(names)}}
    assert {s["name"] for s in resolved.to_dict()["secrets"]} == set(names)  # type: ignore[attr-defined]


def test_as_written_drops_what_the_leader_resolved() -> None:
    """`operator plan` compares manifests as written: a resolved manifest without its versions hashes
    as the manifest in services/ does (else every plan of a service with secrets said "spec changed")."""
    manifest = parse_manifest(HEAD + "secrets: [{name: token}]\n")
    resolved = resolve(manifest, {"token": 5}, "secrets/")
    assert isinstance(resolved, Manifest)
    assert resolved.spec_hash() != manifest.spec_hash()
    assert resolved.as_written().spec_hash() == manifest.spec_hash()
