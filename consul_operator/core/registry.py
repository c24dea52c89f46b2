"""Private registries, pure: which registry an image is pulled from, whose credentials pull it,
and what a failed pull says.

Credentials come from two places (README, "Private registries"):

* the manifest's ``image_pull_secret: NAME``: the KV key ``secrets/<service>/NAME`` holds
  ``{"username": ..., "password": ...}`` (`parse_pull_secret`);
* the agent's ``--registry-auth FILE``: a Docker ``config.json`` (``{"auths": {"host:port":
  {"auth": base64("user:password")}}}``), read by the agent (`parse_docker_config`), used for an
  image of a registry it names when the manifest names no secret (`credentials_for`).

A password never leaves a `RegistryCredentials` but in the pull's request to the engine: its
``repr`` leaves it out, no error of this module quotes what it parses, and `redact` scrubs a
message that came back from the engine before anyone logs or records it. Like Kubernetes'
kubelet (``ImagePullBackOff``), a failed pull backs off its *image* (`host_pass`), and
`pull_reason` names why in a bounded word that doubles as a metric label.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

DOCKER_HUB: Final = "docker.io"
"""The registry of an image whose name names none (``redis:7``, ``library/redis``)."""
_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

MAX_REGISTRY_AUTH_BYTES: Final = 64 * 1024
"""The largest ``--registry-auth`` file the agent reads."""
MAX_PULL_SECRET_BYTES: Final = 4096
"""The largest pull secret (its KV value) the agent reads."""
MAX_CREDENTIAL_CHARS: Final = 1024
"""The longest user name or password accepted."""
MAX_PULL_ERROR_CHARS: Final = 300
"""How much of the engine's message a status, an event or a log line carries of a failed pull."""

PULL_BACKOFF: Final = "ImagePullBackOff"
"""The head of the status error of a service whose image's pull failed and is backing off."""

PULL_REASONS: Final = ("unauthorized", "not_found", "tls", "unreachable", "timeout", "secret", "error")
"""Why a pull failed (`pull_reason`; the label of ``operator_image_pulls_total``): the registry refused
the credentials, has no such image, its certificate is not trusted, cannot be reached, the pull took
longer than its bound, the manifest's pull secret cannot be read, anything else."""

# Lowercase fragments of the engine's messages, per reason, first match wins.
_REASON_WORDS: Final = (
    ("unauthorized", ("unauthorized", "authentication required", "no basic auth credentials", "denied")),
    ("tls", ("x509", "certificate", "tls:")),
    ("not_found", ("manifest unknown", "not found", "does not exist", "name unknown")),
    ("unreachable", ("connection refused", "no such host", "dial tcp", "no route to host")),
    ("timeout", ("timeout", "timed out", "took longer")),
)


class RegistryAuthError(ValueError):
    """A registry auth file or pull secret that cannot be used; the message never quotes its content."""


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """A user name and password for one registry; the password is left out of ``repr``."""

    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        """The Docker SDK's ``auth_config`` of a pull (to the engine in a header, never on a command line)."""
        return {"username": self.username, "password": self.password}

    def redact(self, text: str) -> str:
        """``text`` with the password (and ``user:password``, plain or base64) replaced by ``***``."""
        pair = f"{self.username}:{self.password}"
        secrets = [pair, base64.b64encode(pair.encode()).decode(), self.password]
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def registry_of(image: str) -> str:
    """The registry an image reference is pulled from, as Docker decides it (distribution/reference's
    ``splitDockerDomain``): a first component with ``.`` or ``:``, or ``localhost``, names it."""
    first, slash, _ = image.partition("/")
    if not slash or (not any(c in first for c in ".:") and first != "localhost" and first == first.lower()):
        return DOCKER_HUB
    return DOCKER_HUB if first in _HUB_ALIASES else first


def _registry_key(key: str) -> str:
    """A config.json ``auths`` key as a registry: ``https://host:port/v1/`` is ``host:port``."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _credential(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CREDENTIAL_CHARS:
        raise RegistryAuthError(f"{what} must be a string of 1-{MAX_CREDENTIAL_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise RegistryAuthError(f"{what} must not hold control characters")
    return value


def _load_json(text: str | bytes, limit: int, what: str) -> object:
    if len(text) > limit:
        raise RegistryAuthError(f"{what} is larger than {limit} bytes")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        # The position only: the content is a secret.
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise RegistryAuthError(f"{what} is not JSON{where}") from None


def parse_docker_config(text: str | bytes) -> dict[str, RegistryCredentials]:
    """The credentials per registry of a Docker ``config.json`` (its ``auths``: ``auth``, or
    ``username`` and ``password``); `RegistryAuthError` says what is wrong, never what it holds.
    Credential helpers (``credsStore``, ``credHelpers``) run programs: refused."""
    data = _load_json(text, MAX_REGISTRY_AUTH_BYTES, "the registry auth file")
    if not isinstance(data, Mapping):
        raise RegistryAuthError("the registry auth file must be a JSON object with 'auths'")
    helpers = [k for k in ("credsStore", "credHelpers") if data.get(k)]
    if helpers:
        raise RegistryAuthError(f"{', '.join(helpers)}: credential helpers are not supported; give 'auths'")
    auths = data.get("auths")
    if not isinstance(auths, Mapping) or not auths:
        raise RegistryAuthError("the registry auth file must have a non-empty 'auths' object")
    found: dict[str, RegistryCredentials] = {}
    for key, entry in auths.items():
        registry = _registry_key(str(key))
        what = f"auths[{registry!r}]"
        if not isinstance(entry, Mapping):
            raise RegistryAuthError(f"{what} must be an object")
        if entry.get("auth"):
            found[registry] = _basic(entry["auth"], what)
        else:
            username = _credential(entry.get("username"), f"{what}.username")
            found[registry] = RegistryCredentials(
                username, _credential(entry.get("password"), f"{what}.password")
            )
    return found


def _basic(value: object, what: str) -> RegistryCredentials:
    """``auth``: base64 of ``user:password``."""
    if not isinstance(value, str):
        raise RegistryAuthError(f"{what}.auth must be a string")
    try:
        pair = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise RegistryAuthError(f"{what}.auth must be base64 of 'user:password'") from None
    username, colon, password = pair.partition(":")
    if not colon:
        raise RegistryAuthError(f"{what}.auth must be base64 of 'user:password'")
    return RegistryCredentials(
        _credential(username, f"{what} user"), _credential(password, f"{what} password")
    )


def parse_pull_secret(text: str | bytes) -> RegistryCredentials:
    """A pull secret's value: ``{"username": ..., "password": ...}``; `RegistryAuthError` if not."""
    data = _load_json(text, MAX_PULL_SECRET_BYTES, "the pull secret")
    if not isinstance(data, Mapping):
        raise RegistryAuthError('the pull secret must be a JSON object {"username": ..., "password": ...}')
    return RegistryCredentials(
        _credential(data.get("username"), "its username"), _credential(data.get("password"), "its password")
    )


def credentials_for(image: str, auths: Mapping[str, RegistryCredentials]) -> RegistryCredentials | None:
    """The agent's credentials for ``image``'s registry, if its auth file has them."""
    return auths.get(registry_of(image))


def pull_reason(message: str) -> str:
    """The bounded reason of a failed pull's message (`PULL_REASONS`)."""
    lowered = message.lower()
    for reason, words in _REASON_WORDS:
        if any(word in lowered for word in words):
            return reason
    return "error"


def pull_error(image: str, reason: str, detail: str) -> str:
    """The text of a failed pull (an event's, a log line's; a status puts `PULL_BACKOFF` before it):
    the reason first, then the engine's words on one line, bounded."""
    flat = " ".join(detail.split())
    if len(flat) > MAX_PULL_ERROR_CHARS:
        flat = flat[: MAX_PULL_ERROR_CHARS - 3] + "..."
    return f"pulling {image} failed ({reason}): {flat}"
