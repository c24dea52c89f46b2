"""Private registries: credentials parsed without leaking, the manifest's image_pull_secret, and the
per-image pull back-off (``ImagePullBackOff``) of the host pass."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_operator.core.backoff import Backoff, backoff_delay
from consul_operator.core.desired_state import Manifest, ManifestError, parse_manifest
from consul_operator.core.host_pass import HostMemory, HostSettings, HostState, decide_host
from consul_operator.core.keys import Layout
from consul_operator.core.model import ContainerInfo, Now, Outcome, StartContainer
from consul_operator.core.records import PlacementRecord, frozen_map
from consul_operator.core.registry import (
    DOCKER_HUB,
    PULL_BACKOFF,
    RegistryAuthError,
    RegistryCredentials,
    credentials_for,
    parse_docker_config,
    parse_pull_secret,
    pull_reason,
    registry_of,
)

PASSWORD = "s3cr3t-Planted-9f1c"
HOST = "h1"
MONO, WALL = 1000.0, 1.7e9
PRIVATE = "127.0.0.1:5443/team/app:1"


def basic(user: str, password: str) -> str:
    """config.json's ``auth``: base64 of user:password."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        pytest.param("redis:7", DOCKER_HUB, id="official-image"),
        pytest.param("library/redis", DOCKER_HUB, id="hub-namespace"),
        pytest.param("docker.io/library/redis:7", DOCKER_HUB, id="hub-spelled-out"),
        pytest.param("index.docker.io/x/y", DOCKER_HUB, id="hub-alias"),
        pytest.param("127.0.0.1:5443/team/app:1", "127.0.0.1:5443", id="ip-and-port"),
        pytest.param("registry.example.com/app", "registry.example.com", id="dotted-host"),
        pytest.param("localhost/app", "localhost", id="localhost"),
        pytest.param("team/app:1", DOCKER_HUB, id="no-dot-no-colon-is-a-hub-namespace"),
        pytest.param("app@sha256:" + "a" * 64, DOCKER_HUB, id="digest"),
    ],
)
def test_registry_of_an_image(image: str, registry: str) -> None:
    """The registry an image is pulled from, decided as Docker decides it."""
    assert registry_of(image) == registry


def test_docker_config_gives_credentials_per_registry() -> None:
    """auths by host:port or URL, with auth or username/password, each found for its images."""
    config = {
        "auths": {
            "127.0.0.1:5443": {"auth": basic("ci", PASSWORD)},
            "https://index.docker.io/v1/": {"username": "me", "password": "hub-pass"},
            "https://registry.example.com/v2/": {"auth": basic("u", "p:with:colons")},
        }
    }
    auths = parse_docker_config(json.dumps(config))
    assert credentials_for(PRIVATE, auths) == RegistryCredentials("ci", PASSWORD)
    assert credentials_for("redis:7", auths) == RegistryCredentials("me", "hub-pass")
    assert credentials_for("registry.example.com/app", auths) == RegistryCredentials("u", "p:with:colons")
    assert credentials_for("other.example.com/app", auths) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("{not json " + PASSWORD, "not JSON", id="not-json"),
        pytest.param("[]", "JSON object", id="not-an-object"),
        pytest.param("{}", "'auths'", id="no-auths"),
        pytest.param(
            json.dumps({"credsStore": "desktop", "auths": {}}), "credential helpers", id="creds-store"
        ),
        pytest.param(json.dumps({"auths": {"r:1": {"auth": "%%" + PASSWORD}}}), "base64", id="bad-base64"),
        pytest.param(
            json.dumps({"auths": {"r:1": {"auth": base64.b64encode(PASSWORD.encode()).decode()}}}),
            "user:password",
            id="auth-without-colon",
        ),
        pytest.param(json.dumps({"auths": {"r:1": {"username": "u"}}}), "password", id="no-password"),
        pytest.param(
            json.dumps({"auths": {"r:1": {"username": "u", "password": PASSWORD + "\n"}}}),
            "control characters",
            id="newline-in-password",
        ),
        pytest.param(
            json.dumps({"auths": {"r:1": {"username": "u", "password": "x" * 70_000}}}),
            "larger than",
            id="too-large",
        ),
    ],
)
def test_a_bad_auth_file_is_refused_without_quoting_it(text: str, says: str) -> None:
    """Each malformed config.json is refused with what is wrong, never with the password it holds."""
    with pytest.raises(RegistryAuthError, match=says) as caught:
        parse_docker_config(text)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None or PASSWORD not in str(caught.value.__cause__)


def test_pull_secret_parses_and_refuses() -> None:
    """A pull secret is {"username", "password"}; anything else is refused without quoting it."""
    assert parse_pull_secret(json.dumps({"username": "ci", "password": PASSWORD})).username == "ci"
    for bad in ("", PASSWORD, json.dumps({"username": "ci"}), json.dumps({"password": PASSWORD})):
        with pytest.raises(RegistryAuthError) as caught:
            parse_pull_secret(bad)
        assert PASSWORD not in str(caught.value)


@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P")), min_size=8, max_size=60))
def test_credentials_never_show_their_password_property(password: str) -> None:
    """repr leaves the password out, and redact scrubs it (plain, as user:password, base64) from text."""
    credentials = RegistryCredentials("someone", password.replace("*", "x"))
    password = credentials.password
    assert repr(credentials) == "RegistryCredentials(username='someone')"
    pair = f"someone:{password}"
    text = f"a {password} b {pair} c {base64.b64encode(pair.encode()).decode()} d"
    assert password not in credentials.redact(text)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param(
            "Head https://r/v2/a/manifests/1: no basic auth credentials", "unauthorized", id="no-creds"
        ),
        pytest.param("unauthorized: authentication required", "unauthorized", id="wrong-password"),
        pytest.param("pull access denied for x, repository does not exist", "unauthorized", id="denied"),
        pytest.param("x509: certificate signed by unknown authority", "tls", id="untrusted-cert"),
        pytest.param("manifest for r/a:1 not found: manifest unknown", "not_found", id="no-such-tag"),
        pytest.param("dial tcp 127.0.0.1:9: connect: connection refused", "unreachable", id="refused"),
        pytest.param("net/http: request canceled (Client.Timeout exceeded)", "timeout", id="timeout"),
        pytest.param("something else went wrong", "error", id="other"),
    ],
)
def test_pull_reason(message: str, reason: str) -> None:
    """The engine's message of a failed pull comes down to one bounded reason."""
    assert pull_reason(message) == reason


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("regcred", True, id="plain"),
        pytest.param("redis_password", True, id="underscore"),
        pytest.param("a.b-c", True, id="dot-dash"),
        pytest.param("../x", False, id="path"),
        pytest.param(".hidden", False, id="leading-dot"),
        pytest.param("a/b", False, id="slash"),
        pytest.param("x" * 65, False, id="too-long"),
        pytest.param(7, False, id="number"),
        pytest.param("a\n", False, id="newline"),
    ],
)
def test_image_pull_secret_is_validated(value: object, ok: bool) -> None:
    """image_pull_secret takes a secret's name; anything else is a problem naming the field."""
    text = f"name: web\nimage: {PRIVATE}\nreplicas: 1\nimage_pull_secret: {json.dumps(value)}\n"
    if ok:
        assert parse_manifest(text).image_pull_secret == value
    else:
        with pytest.raises(ManifestError, match="image_pull_secret"):
            parse_manifest(text)


def test_image_pull_secret_is_kept_but_not_hashed() -> None:
    """The secret's name goes into the normalised form (revisions) but not the spec hash."""
    plain = parse_manifest(f"name: web\nimage: {PRIVATE}\nreplicas: 1\n")
    secret = parse_manifest(f"name: web\nimage: {PRIVATE}\nreplicas: 1\nimage_pull_secret: regcred\n")
    assert plain.spec_hash() == secret.spec_hash()
    assert "image_pull_secret" not in plain.to_dict()
    assert secret.to_dict()["image_pull_secret"] == "regcred"


def test_secret_key() -> None:
    """A service's secret lives at secrets/<service>/<name>, whatever the operator's prefixes."""
    assert Layout("svc/", "op/").secret_key("web", "regcred") == "secrets/web/regcred"


# --- the per-image back-off of the host pass ----------------------------------------------------

WEB = Manifest(name="web", image=PRIVATE, replicas=1, port=5000)
API = Manifest(name="api", image=PRIVATE, replicas=1, port=5000)
OTHER = Manifest(name="other", image="hello:local", replicas=1, port=5000)
PULL_ERROR = "pulling 127.0.0.1:5443/team/app:1 failed (unauthorized): unauthorized: authentication required"


def state(*manifests: Manifest, outcomes: tuple[Outcome, ...] = ()) -> HostState:
    """Each manifest placed once on this host, nothing running yet."""
    placements = {m.name: PlacementRecord(m.name, m.spec_hash(), frozen_map({HOST: 1})) for m in manifests}
    return HostState({m.name: m for m in manifests}, placements, {}, outcomes=outcomes)


def pull_failed(service: str, at: float) -> Outcome:
    """A start of ``service`` that failed pulling PRIVATE at monotonic ``at``."""
    return Outcome("start", service, None, PULL_ERROR, at, image=PRIVATE, pull_failed=True)


def starts(plan_actions: tuple[object, ...]) -> list[str]:
    """The services the plan starts."""
    return [a.manifest.name for a in plan_actions if isinstance(a, StartContainer)]


def test_a_failed_pull_backs_off_the_image_for_every_service_and_says_image_pull_backoff() -> None:
    """After a failed pull no service of that image starts until its back-off ends; others start; the
    status says ImagePullBackOff with the registry's reason; the services' own streaks stay clean."""
    now = Now(MONO, WALL)
    plan = decide_host(
        state(WEB, API, OTHER, outcomes=(pull_failed("web", MONO - 0.1),)),
        HostMemory(),
        now,
        HostSettings(HOST),
    )
    assert starts(plan.actions) == ["other"]
    pull = plan.memory.pull_backoffs[PRIVATE]
    assert pull.failures == 1 and pull.last_error.startswith(f"{PULL_BACKOFF}: ")
    assert plan.memory.backoffs == {}
    for service in ("web", "api"):
        record = plan.status_writes[service]
        assert record is not None and record.error.startswith(PULL_BACKOFF)
        assert "(unauthorized)" in record.error and "next try in" in record.error
    assert plan.wake_at == pytest.approx(MONO - 0.1 + backoff_delay(1))
    assert plan.gauges["web"].failures == 1

    later = Now(MONO + backoff_delay(1), WALL + backoff_delay(1))
    again = decide_host(state(WEB, API, OTHER), plan.memory, later, HostSettings(HOST))
    assert starts(again.actions) == ["api", "other", "web"]


def test_starts_that_waited_for_one_pull_count_it_once() -> None:
    """Three starts failing with the same pull are one failure; the next wave's failure is the second."""
    wave = tuple(pull_failed("web", MONO + i * 0.01) for i in range(3))
    first = decide_host(state(WEB, outcomes=wave), HostMemory(), Now(MONO, WALL), HostSettings(HOST))
    assert first.memory.pull_backoffs[PRIVATE].failures == 1
    at = MONO + backoff_delay(1) + 0.5
    second = decide_host(
        state(WEB, outcomes=(pull_failed("web", at),)), first.memory, Now(at, WALL), HostSettings(HOST)
    )
    assert second.memory.pull_backoffs[PRIVATE].failures == 2
    assert second.memory.pull_backoffs[PRIVATE].retry_at == at + backoff_delay(2)


def test_a_start_of_the_image_clears_its_pull_backoff_and_unused_images_are_forgotten() -> None:
    """A start that succeeded ends the image's back-off; an image no manifest names is forgotten."""
    memory = HostMemory(
        pull_backoffs={PRIVATE: Backoff(2, MONO + 50, "x"), "gone:1": Backoff(1, MONO + 50, "y")}
    )
    ok = Outcome("start", "web", None, "", MONO, image=PRIVATE)
    plan = decide_host(state(WEB, outcomes=(ok,)), memory, Now(MONO, WALL), HostSettings(HOST))
    assert plan.memory.pull_backoffs == {}
    held = decide_host(state(WEB), memory, Now(MONO, WALL), HostSettings(HOST))
    assert set(held.memory.pull_backoffs) == {PRIVATE}


def test_a_running_replica_is_left_alone_by_its_images_pull_backoff() -> None:
    """A pull back-off holds starts only: a running replica of the image keeps running, no error."""
    c = ContainerInfo(
        "c1", "web-c1", "web", WEB.spec_hash(), "running", host_port=30000, started_at=WALL - 60
    )
    memory = HostMemory(pull_backoffs={PRIVATE: Backoff(3, MONO + 30, f"{PULL_BACKOFF}: x")})
    base = state(WEB)
    plan = decide_host(
        HostState(base.manifests, base.placements, {}, (c,)), memory, Now(MONO, WALL), HostSettings(HOST)
    )
    assert plan.actions[0].__class__.__name__ == "Register"
    assert not any(isinstance(a, StartContainer) for a in plan.actions)
    record = plan.status_writes["web"]
    assert record is not None and record.error == ""


def test_a_bad_registry_auth_file_is_a_usage_error_that_does_not_quote_it(tmp_path: Path) -> None:
    """operator agent --registry-auth with a malformed file: exit 2, one line naming the file, no password."""
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"r:1": {"auth": "' + PASSWORD + '"}}}')
    for target in (str(path), str(tmp_path / "missing.json")):
        done = subprocess.run(
            [sys.executable, "-m", "consul_operator", "agent", "--host", "h1", "--registry-auth", target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--registry-auth" in lines[0] and target in lines[0], done.stderr
        assert PASSWORD not in done.stderr + done.stdout


def test_a_rollout_to_an_image_in_pull_backoff_keeps_the_old_replica_and_says_why() -> None:
    """During a paced rollout to a private image whose pull failed, the new spec's start waits for the
    image's back-off, the old spec's replica keeps running, and the status says ImagePullBackOff."""
    old = Manifest(name="web", image="hello:local", replicas=1, port=5000)
    new = WEB
    c = ContainerInfo(
        "c1", "web-c1", "web", old.spec_hash(), "running", host_port=30000, started_at=WALL - 60
    )
    specs = {HOST: {old.spec_hash(): 1, new.spec_hash(): 1}}
    record = PlacementRecord("web", new.spec_hash(), frozen_map({HOST: 2}), specs=specs)
    base = HostState(
        {"web": new},
        {"web": record},
        {("web", old.spec_hash()): old},
        (c,),
        outcomes=(pull_failed("web", MONO),),
    )
    plan = decide_host(base, HostMemory(), Now(MONO, WALL), HostSettings(HOST))
    assert starts(plan.actions) == []
    assert not any(type(a).__name__ == "DrainContainer" for a in plan.actions)
    written = plan.status_writes["web"]
    assert written is not None
    assert written.error.startswith(f"{PULL_BACKOFF}: pulling {PRIVATE}"), written.error


IMAGES = (PRIVATE, "127.0.0.1:5443/team/other:2")


@given(
    st.lists(
        st.tuples(st.sampled_from(("web", "api")), st.sampled_from(IMAGES), st.floats(0, 200)),
        max_size=12,
    )
)
def test_failed_pulls_back_off_only_their_image_property(failures: list[tuple[str, str, float]]) -> None:
    """Whatever pulls fail, when: no service's own streak moves, each image's count stays within its
    failures, its wait within the cap, and a start of an image with no failure is never held."""
    outcomes = tuple(
        Outcome("start", s, None, PULL_ERROR, MONO + at, image=i, pull_failed=True)
        for s, i, at in sorted(failures, key=lambda f: f[2])
    )
    manifests = [
        Manifest(name=s, image=i, replicas=1, port=5000) for s, i in {(s, i) for s, i, _ in failures}
    ]
    by_name = {m.name: m for m in manifests}  # one manifest per service name (the last image wins)
    end = Now(MONO + 201, WALL)
    plan = decide_host(state(*by_name.values(), outcomes=outcomes), HostMemory(), end, HostSettings(HOST))
    assert plan.memory.backoffs == {}
    named = {m.image for m in by_name.values()}
    for image, pull in plan.memory.pull_backoffs.items():
        assert image in named
        assert 1 <= pull.failures <= sum(1 for _, i, _ in failures if i == image)
        assert pull.retry_at <= MONO + 200 + backoff_delay(pull.failures)
    held = {i for i, b in plan.memory.pull_backoffs.items() if not b.ready(end.mono)}
    assert {m.image for m in by_name.values() if m.name in starts(plan.actions)}.isdisjoint(held)
    assert {m.name for m in by_name.values() if m.image not in held} <= set(starts(plan.actions))
