"""A manifest's privileges (user, read_only, tmpfs, cap_add): validated with their paths, hashed only
when set, granted per host by ``--allow-cap``, and turned into Docker's create arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from consul_operator.adapters.actuators.docker import TMPFS_OPTIONS, host_config
from consul_operator.core.desired_state import (
    DEFAULT_CAPABILITIES,
    Manifest,
    ManifestError,
    capabilities_refused,
    manifest_from_dict,
    parse_capabilities,
    parse_manifest,
)
from consul_operator.core.host_plan import host_desires
from consul_operator.core.records import PlacementRecord, frozen_map
from tests.unit.test_desired_state import FULL, doc, problems_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("", {"user": None, "read_only": False, "tmpfs": (), "cap_add": ()}, id="defaults"),
        pytest.param("user: 1000\n", {"user": "1000"}, id="uid-as-integer"),
        pytest.param('user: "1000:1000"\n', {"user": "1000:1000"}, id="uid-gid"),
        pytest.param("user: app:staff\n", {"user": "app:staff"}, id="names"),
        pytest.param("read_only: true\n", {"read_only": True}, id="read-only"),
        pytest.param("tmpfs: [/tmp, /run/app]\n", {"tmpfs": ("/run/app", "/tmp")}, id="tmpfs-sorted"),
        pytest.param("cap_add: [SYS_TIME, NET_ADMIN]\n", {"cap_add": ("NET_ADMIN", "SYS_TIME")}, id="caps"),
        pytest.param("user: null\nread_only: null\ntmpfs: null\ncap_add: null\n", {}, id="nulls-default"),
    ],
)
def test_privileges_parse(extra: str, expected: dict[str, object]) -> None:
    """Good values parse to their normalised form; absent or null ones to the defaults."""
    manifest = parse_manifest(doc(extra))
    for field, value in expected.items():
        assert getattr(manifest, field) == value


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("user: ''\n", "user: must be a user name or uid", id="user-empty"),
        pytest.param("user: 'a b'\n", "user: must be a user name or uid", id="user-space"),
        pytest.param("user: -1\n", "user: must be a user name or uid", id="user-negative"),
        pytest.param("user: '1:2:3'\n", "user: must be a user name or uid", id="user-three-parts"),
        pytest.param("user: true\n", "user: must be a user name or uid", id="user-boolean"),
        pytest.param("read_only: yes\n", "read_only: must be true or false, got string 'yes'", id="ro-yes"),
        pytest.param("tmpfs: /tmp\n", "tmpfs: must be a list of absolute paths", id="tmpfs-not-list"),
        pytest.param("tmpfs: [tmp]\n", "tmpfs[0]: must be an absolute path", id="tmpfs-relative"),
        pytest.param("tmpfs: [/]\n", "tmpfs[0]: must be an absolute path", id="tmpfs-root"),
        pytest.param("tmpfs: ['/a/../etc']\n", "tmpfs[0]: must be an absolute path", id="tmpfs-dotdot"),
        pytest.param("tmpfs: ['/a b']\n", "tmpfs[0]: must be an absolute path", id="tmpfs-space"),
        pytest.param("tmpfs: [/proc/x]\n", "tmpfs[0]: must not be under /proc or /sys", id="tmpfs-proc"),
        pytest.param("tmpfs: [/tmp, /x, /tmp]\n", "tmpfs[2]: '/tmp' is listed twice", id="tmpfs-twice"),
        pytest.param("tmpfs: [1]\n", "tmpfs[0]: must be a string, got integer 1", id="tmpfs-integer"),
        pytest.param("cap_add: NET_ADMIN\n", "cap_add: must be a list of capability names", id="cap-str"),
        pytest.param("cap_add: [ALL]\n", "cap_add[0]: ALL is not allowed", id="cap-all"),
        pytest.param("cap_add: [CAP_NET_ADMIN]\n", "cap_add[0]: write NET_ADMIN, without CAP_", id="prefix"),
        pytest.param("cap_add: [net_admin]\n", "did you mean 'NET_ADMIN'?", id="cap-lowercase"),
        pytest.param("cap_add: [NET_ADMN]\n", "cap_add[0]: not a Linux capability: 'NET_ADMN'", id="typo"),
        pytest.param("cap_add: [KILL, KILL]\n", "cap_add[1]: 'KILL' is listed twice", id="cap-twice"),
    ],
)
def test_bad_privileges_are_refused_naming_the_field(extra: str, expected: str) -> None:
    """Every bad privilege value is a problem whose text names its path (``cap_add[0]``, ``tmpfs[2]`` ...)."""
    problems = problems_of(doc(extra))
    assert any(expected in p for p in problems), problems


def test_every_privilege_problem_is_listed_at_once() -> None:
    """Several bad privilege fields: one problem each, together."""
    problems = problems_of(doc("user: 'a b'\nread_only: 1\ntmpfs: [x]\ncap_add: [ALL]\n"))
    assert [p.split(":")[0] for p in problems] == ["user", "read_only", "tmpfs[0]", "cap_add[0]"]


def test_spec_hash_of_manifests_without_privileges_is_unchanged() -> None:
    """A manifest that sets none of the privilege fields hashes as before they existed (the hashes of
    the base commit 158ead3): upgrading the operator replaces no container."""
    assert parse_manifest((ROOT / "manifests" / "simple.yaml").read_text()).spec_hash() == "e2f124086ffc637c"
    assert parse_manifest(FULL).spec_hash() == "b739566eb07ee00f"
    assert "user" not in parse_manifest(FULL).to_dict()


def test_privileges_round_trip_through_the_normalised_form() -> None:
    """to_dict with privileges set gives them back through manifest_from_dict (the kept revisions)."""
    manifest = parse_manifest(doc("user: 1000\nread_only: true\ntmpfs: [/tmp]\ncap_add: [NET_ADMIN]\n"))
    assert manifest_from_dict(manifest.to_dict()) == manifest


@pytest.mark.parametrize(
    ("cap_add", "allowed", "refused"),
    [
        pytest.param((), frozenset(), (), id="nothing-asked"),
        pytest.param(("NET_ADMIN",), frozenset(), ("NET_ADMIN",), id="not-allowed"),
        pytest.param(("NET_ADMIN",), frozenset({"NET_ADMIN"}), (), id="allowed"),
        pytest.param(("NET_ADMIN", "SYS_TIME"), frozenset({"NET_ADMIN"}), ("SYS_TIME",), id="partly"),
        pytest.param(("CHOWN", "SETUID"), frozenset(), (), id="defaults-always-allowed"),
    ],
)
def test_capabilities_refused(
    cap_add: tuple[str, ...], allowed: frozenset[str], refused: tuple[str, ...]
) -> None:
    """A host refuses exactly the added capabilities outside its --allow-cap and the defaults."""
    assert capabilities_refused(Manifest("web", "hello:local", 1, cap_add=cap_add), allowed) == refused


def test_a_host_that_refuses_a_capability_keeps_its_hands_off() -> None:
    """host_desires: a refused cap_add leaves the service alone here with an error naming field and flag."""
    manifest = Manifest("web", "hello:local", 2, cap_add=("NET_ADMIN",))
    placements = {"web": PlacementRecord("web", manifest.spec_hash(), frozen_map({"h1": 1, "h2": 1}))}
    refused = host_desires("h1", {"web": manifest}, placements, {})["web"]
    assert refused.manifest is None and refused.count == 1 and refused.hold is None
    assert refused.error is not None and refused.error.startswith("cap_add: NET_ADMIN not allowed on h1")
    assert "--allow-cap" in refused.error
    allowed = host_desires("h1", {"web": manifest}, placements, {}, frozenset({"NET_ADMIN"}))["web"]
    assert allowed.manifest == manifest and allowed.count == 1 and allowed.error is None


def test_create_arguments_carry_the_privileges() -> None:
    """Docker gets cap_drop ALL, the defaults plus cap_add, read_only, a tmpfs per path; and the user."""
    manifest = Manifest(
        "web", "hello:local", 1, user="1000", read_only=True, tmpfs=("/tmp",), cap_add=("NET_ADMIN",)
    )
    config = host_config(manifest)
    assert config["cap_drop"] == ["ALL"]
    assert config["cap_add"] == sorted({*DEFAULT_CAPABILITIES, "NET_ADMIN"})
    assert config["read_only"] is True
    assert config["tmpfs"] == {"/tmp": TMPFS_OPTIONS} and "size=64m" in TMPFS_OPTIONS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("NET_ADMIN", {"NET_ADMIN"}, id="one"),
        pytest.param("NET_ADMIN,SYS_TIME", {"NET_ADMIN", "SYS_TIME"}, id="two"),
        pytest.param("", set(), id="empty"),
    ],
)
def test_allow_cap_flag_parses(text: str, expected: set[str]) -> None:
    """--allow-cap takes comma-separated capability names."""
    assert parse_capabilities(text) == expected


@pytest.mark.parametrize("text", ["ALL", "CAP_NET_ADMIN", "net_admin", "NET_ADMIN,BOGUS"])
def test_allow_cap_flag_refuses_unknown_names(text: str) -> None:
    """Anything but capabilities(7) names without CAP_ is refused (ALL included)."""
    with pytest.raises(ValueError, match="not a Linux capability"):
        parse_capabilities(text)


def test_manifest_error_type() -> None:
    """A refused privilege field is a ManifestError like every other problem."""
    with pytest.raises(ManifestError):
        parse_manifest(doc("cap_add: [ALL]\n"))
