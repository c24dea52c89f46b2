"""Volumes (``volumes:``): validation, sticky defaults, replica slots in the host plan, the agent's
``--allow-host-path``, and the longer lost-host grace of a service with a named volume."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.adapters.actuators.docker import DockerActuator
from consul_operator.core.desired_state import (
    VOLUME_LOST_GRACE,
    Manifest,
    ManifestError,
    Placement,
    Volume,
    host_path_refused,
    manifest_from_dict,
    parse_allowed_host_path,
    parse_manifest,
)
from consul_operator.core.errors import DockerError
from consul_operator.core.host_plan import host_desires
from consul_operator.core.model import (
    ContainerInfo,
    DrainContainer,
    HostInfo,
    InFlight,
    ServiceDesire,
    StartContainer,
)
from consul_operator.core.placement import next_schedule_wakeup, schedule
from consul_operator.core.reconcile import plan_host
from consul_operator.core.records import PlacementRecord
from consul_operator.core.volumes import REMOVAL_WINDOW, RemovalRequest, VolumeCleanup, volumes_to_remove

HEAD = "name: db\nimage: redis:7\nreplicas: 1\n"


def problems(extra: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(HEAD + extra)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("volumes: {name: data}\n", "volumes: must be a list", id="not-a-list"),
        pytest.param("volumes: [data]\n", "volumes[0]: must be a mapping", id="not-a-mapping"),
        pytest.param("volumes: [{name: data}]\n", "volumes[0].path: required field is missing", id="no-path"),
        pytest.param("volumes: [{path: /d}]\n", "volumes[0]: needs exactly one of name", id="neither"),
        pytest.param(
            "volumes: [{name: d, host_path: /srv/d, path: /d}]\n", "volumes[0]: needs exactly one", id="both"
        ),
        pytest.param("volumes: [{name: Data, path: /d}]\n", "volumes[0].name: must be 1-32", id="bad-name"),
        pytest.param(
            "volumes: [{name: d, path: d}]\n", "volumes[0].path: must be an absolute path", id="relative"
        ),
        pytest.param(
            "volumes: [{name: d, path: /a/../b}]\n", "volumes[0].path: must be an absolute", id="dotdot"
        ),
        pytest.param(
            "volumes: [{name: d, path: /}]\n", "volumes[0].path: must be an absolute", id="root-path"
        ),
        pytest.param(
            "volumes: [{name: d, path: /proc/x}]\n", "volumes[0].path: must not be under /proc", id="proc"
        ),
        pytest.param(
            "volumes: [{name: d, path: /d}, {name: d, path: /e}]\n",
            "volumes[1].name: 'd' is listed twice",
            id="twice",
        ),
        pytest.param(
            "tmpfs: [/d]\nvolumes: [{name: d, path: /d}]\n",
            "volumes[0].path: '/d' is mounted twice",
            id="on-tmpfs",
        ),
        pytest.param(
            "volumes: [{host_path: /, path: /d}]\n", "volumes[0].host_path: must be", id="host-root"
        ),
        pytest.param(
            "volumes: [{host_path: /var/run/docker.sock, path: /s}]\n", "Docker socket", id="docker-socket"
        ),
        pytest.param(
            "volumes: [{host_path: /run, path: /s}]\n", "Docker socket or above one", id="above-socket"
        ),
        pytest.param("volumes: [{host_path: /var, path: /s}]\n", "Docker socket or above one", id="var"),
        pytest.param("volumes: [{host_path: /proc/1, path: /s}]\n", "under /proc", id="host-proc"),
        pytest.param("volumes: [{host_path: /dev/sda, path: /s}]\n", "/dev", id="host-dev"),
        pytest.param(
            "volumes: [{name: d, path: /d, read_only: yes}]\n", "read_only: must be true or false", id="ro"
        ),
        pytest.param(
            "volumes: [{name: d, path: /d}]\nupdate: {max_surge: 1}\n",
            "update.max_surge: must be 0 for a service with named volumes",
            id="surge",
        ),
        pytest.param(
            "volumes: [{name: d, path: /d}]\nupdate: {max_surge: 0, max_unavailable: 0}\n",
            "update",
            id="frozen-rollout",
        ),
        pytest.param(
            "placement: {lost_grace: 0s}\n", "placement.lost_grace: must be between", id="grace-zero"
        ),
        pytest.param(
            "volumes: [{name: d, path: /d, size: 1}]\n", "volumes[0].size: unknown field", id="unknown"
        ),
    ],
)
def test_bad_volumes_are_named(extra: str, expected: str) -> None:
    """Each bad volume is refused with a problem naming its path; a manifest never mounts /, /proc,
    /sys, /dev, a Docker socket or a directory above one."""
    found = problems(extra)
    assert any(expected in p for p in found), found


def test_named_volumes_make_a_replica_sticky() -> None:
    """A named volume replaces in place (max_surge 0, max_unavailable 1) and waits for a lost host
    `VOLUME_LOST_GRACE` unless the manifest says; a host path alone changes neither. The normalised
    form gives the manifest back; a manifest without volumes keeps its hash."""
    named = parse_manifest(HEAD + "volumes: [{name: data, path: /data}]\n")
    assert (named.update.max_surge, named.update.max_unavailable) == (0, 1)
    assert named.placement.lost_grace == VOLUME_LOST_GRACE
    assert manifest_from_dict(named.to_dict()) == named
    own = parse_manifest(HEAD + "volumes: [{name: data, path: /data}]\nplacement: {lost_grace: 1h}\n")
    assert own.placement.lost_grace == 3600.0
    host = parse_manifest(HEAD + "volumes: [{host_path: /srv/x, path: /x, read_only: true}]\n")
    assert host.update.max_surge == 1 and host.placement.lost_grace is None
    assert host.volumes == (Volume("/x", host_path="/srv/x", read_only=True),)
    plain = parse_manifest(HEAD)
    assert "volumes" not in plain.to_dict() and "lost_grace" not in plain.to_dict()["placement"]  # type: ignore[operator]
    assert named.spec_hash() != plain.spec_hash()


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        pytest.param("/srv", True, id="srv"),
        pytest.param("/srv/", True, id="trailing-slash"),
        pytest.param("/", False, id="root"),
        pytest.param("/var", False, id="above-socket"),
        pytest.param("/run", False, id="run"),
        pytest.param("srv", False, id="relative"),
        pytest.param("/srv/../etc", False, id="dotdot"),
    ],
)
def test_allow_host_path_flag(text: str, ok: bool) -> None:
    """``--allow-host-path`` takes a plain absolute directory, never / nor one above Docker's socket."""
    if ok:
        assert parse_allowed_host_path(text) == "/srv"
    else:
        with pytest.raises(ValueError, match="allow-host-path"):
            parse_allowed_host_path(text)


@given(
    st.lists(st.sampled_from(["", "srv", "var", "run", "docker.sock", "proc", "a", "..", "dev"]), max_size=4)
)
def test_host_path_refusal_property(parts: list[str]) -> None:
    """No path that is /, holds a Docker socket below it, or lies under /proc, /sys or /dev passes."""
    path = "/" + "/".join(parts)
    if host_path_refused(path):
        return
    assert path != "/" and "docker.sock" not in path
    assert not any(s.startswith(path.rstrip("/") + "/") for s in ("/var/run/docker.sock", "/run/docker.sock"))
    assert not path.startswith(("/proc/", "/sys/", "/dev/")) and path not in ("/proc", "/sys", "/dev")


def test_host_path_outside_the_agents_directories_is_hands_off() -> None:
    """A host path outside ``--allow-host-path`` leaves the service alone on that host, with an error
    naming the field, the path and the flag; under an allowed directory it runs."""
    manifest = parse_manifest(HEAD + "volumes: [{host_path: /srv/db, path: /d}]\n")
    record = PlacementRecord("db", manifest.spec_hash(), {"host-1": 1})
    refused = host_desires("host-1", {"db": manifest}, {"db": record}, {}, allowed_host_paths=("/data",))
    assert refused["db"].manifest is None
    assert "volumes: host path /srv/db not allowed on host-1" in (refused["db"].error or "")
    allowed = host_desires("host-1", {"db": manifest}, {"db": record}, {}, allowed_host_paths=("/srv",))
    assert allowed["db"] == ServiceDesire("db", manifest, 1)


DB = parse_manifest(HEAD + "volumes: [{name: data, path: /data}]\n")
DB_V2 = parse_manifest(HEAD.replace("redis:7", "redis:8") + "volumes: [{name: data, path: /data}]\n")


def _ctr(cid: str, slot: int, *, spec: str = DB.spec_hash(), state: str = "running") -> ContainerInfo:
    return ContainerInfo(cid, f"db-{cid}", "db", spec, state, started_at=0.0, created_at=0.0, slot=slot)


def _actions(
    want: int, containers: list[ContainerInfo], manifest: Manifest = DB, busy: frozenset[str] = frozenset()
) -> list[tuple[str, object]]:
    result = plan_host(
        {"db": ServiceDesire("db", manifest, want)},
        containers,
        [],
        InFlight(busy_containers=busy),
        {},
        1000.0,
        mono=0.0,
    )
    out: list[tuple[str, object]] = []
    for a in result.actions:
        if isinstance(a, StartContainer):
            out.append(("start", a.slot))
        elif isinstance(a, DrainContainer):
            out.append(("drain", a.container.id))
        else:
            out.append((type(a).__name__, getattr(a, "container", None) and a.container.id))  # type: ignore[union-attr]
    return out


@pytest.mark.parametrize(
    ("want", "containers", "manifest", "busy", "expected"),
    [
        pytest.param(2, [], DB, frozenset(), [("start", 0), ("start", 1)], id="fresh-slots"),
        pytest.param(2, [_ctr("a", 1)], DB, frozenset(), [("start", 0)], id="lowest-free-slot"),
        pytest.param(
            1,
            [_ctr("a", 0, state="exited")],
            DB,
            frozenset(),
            [("RemoveDead", "a")],
            id="killed-waits-removal",
        ),
        pytest.param(1, [_ctr("a", 0)], DB_V2, frozenset(), [("drain", "a")], id="rollout-drains-first"),
        pytest.param(1, [_ctr("a", 0)], DB_V2, frozenset({"a"}), [], id="draining-holds-the-slot"),
        pytest.param(
            1, [_ctr("a", 0, state="exited")], DB, frozenset({"a"}), [], id="removing-holds-the-slot"
        ),
        pytest.param(1, [_ctr("a", 1)], DB, frozenset(), [], id="a-higher-slot-keeps-running"),
    ],
)
def test_replica_slots(
    want: int,
    containers: list[ContainerInfo],
    manifest: Manifest,
    busy: frozenset[str],
    expected: list[tuple[str, object]],
) -> None:
    """A replica with named volumes starts in the lowest slot below the wanted count that no container
    holds, in any state: a killed or outdated replica's successor waits until it is removed, and then
    takes its slot (and so its volume)."""
    assert sorted(_actions(want, containers, manifest, busy), key=str) == sorted(expected, key=str)


def test_a_lost_host_keeps_a_volume_replica_for_the_manifests_grace() -> None:
    """With the leader's grace (30 s) over but the manifest's (5 min) not, the replica stays placed
    on its lost host; after it, it moves. The leader wakes at both expiries."""
    hosts = [HostInfo("host-1", live=False, lost_since=0.0), HostInfo("host-2")]
    previous = {"db": PlacementRecord("db", DB.spec_hash(), {"host-1": 1})}
    kept = schedule({"db": DB}, hosts, previous, now=60.0, lost_grace=30.0)
    assert kept["db"].hosts == {"host-1": 1}
    moved = schedule({"db": DB}, hosts, previous, now=VOLUME_LOST_GRACE + 1, lost_grace=30.0)
    assert moved["db"].hosts == {"host-2": 1}
    assert next_schedule_wakeup(hosts, 30.0, 10.0, [VOLUME_LOST_GRACE]) == 30.0
    assert next_schedule_wakeup(hosts, 30.0, 40.0, [VOLUME_LOST_GRACE]) == VOLUME_LOST_GRACE
    stateless = Manifest("web", "hello:1", 1, placement=Placement())
    assert schedule(
        {"web": stateless},
        hosts,
        {"web": PlacementRecord("web", "x", {"host-1": 1})},
        now=60.0,
        lost_grace=30.0,
    )["web"].hosts == {"host-2": 1}


NOW = 1_700_000_000.0
FRESH = RemovalRequest(NOW - 10)


@pytest.mark.parametrize(
    ("requests", "manifests", "containers", "expected"),
    [
        pytest.param({}, set(), set(), VolumeCleanup((), False), id="no-request-keeps"),
        pytest.param(
            {"db": FRESH}, set(), set(), VolumeCleanup((("db", "v0"), ("db", "v1")), False), id="removed"
        ),
        pytest.param({"db": FRESH}, {"db"}, set(), VolumeCleanup((), False), id="manifest-again-keeps"),
        pytest.param({"db": FRESH}, set(), {"db"}, VolumeCleanup((), True), id="containers-left-waits"),
        pytest.param(
            {"db": RemovalRequest(NOW - REMOVAL_WINDOW - 1)},
            set(),
            set(),
            VolumeCleanup((), False),
            id="expired",
        ),
        pytest.param({"web": FRESH}, set(), set(), VolumeCleanup((), False), id="other-service"),
    ],
)
def test_volumes_to_remove(
    requests: dict[str, RemovalRequest], manifests: set[str], containers: set[str], expected: VolumeCleanup
) -> None:
    """Only a current ``delete --volumes`` request of a service with no manifest removes its volumes on
    a host, and only once no container of it is left there (until then the agent looks again)."""
    assert volumes_to_remove(requests, manifests, containers, {"db": ["v1", "v0"]}, NOW) == expected


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        pytest.param(b'{"requested": 5}', RemovalRequest(5.0), id="good"),
        pytest.param(b'{"requested": true}', None, id="bool"),
        pytest.param(b"[1]", None, id="list"),
        pytest.param(b"nope", None, id="not-json"),
        pytest.param(b'{"requested": 5, "pad": "' + b"x" * 200 + b'"}', None, id="too-big"),
    ],
)
def test_removal_request_parsing(data: bytes, parsed: RemovalRequest | None) -> None:
    """A removal request is read in one place; anything else in its key is never honoured."""
    assert RemovalRequest.from_json(data) == parsed
    if parsed is not None:
        assert RemovalRequest.from_json(parsed.to_json()) == parsed


def test_a_symbolic_link_out_of_an_allowed_directory_is_not_mounted(tmp_path: Path) -> None:
    """The agent resolves a host path before it mounts it: a link under ``--allow-host-path`` that
    leads out of it (to /etc) is refused with an error; a real directory under it is bound as asked."""
    (tmp_path / "real").mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    allowed = (str(tmp_path),)
    actuator = DockerActuator(None, cluster="c", host="h", advertise="127.0.0.1", allowed_host_paths=allowed)

    def manifest(sub: str) -> Manifest:
        return parse_manifest(
            HEAD + f"volumes: [{{host_path: {tmp_path / sub}, path: /x, read_only: true}}]\n"
        )

    assert actuator._binds(manifest("real"), None) == {str(tmp_path / "real"): {"bind": "/x", "mode": "ro"}}
    with pytest.raises(DockerError, match="resolves to /etc, outside --allow-host-path"):
        actuator._binds(manifest("escape"), None)
    named = parse_manifest(HEAD + "volumes: [{name: data, path: /data}]\n")
    assert actuator._binds(named, 3) == {"c-h-db-3-data": {"bind": "/data", "mode": "rw"}}
