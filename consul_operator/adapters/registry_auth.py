"""The credentials of an image pull: the manifest's pull secret from KV, else the agent's ``--registry-auth``.

Read only when a pull is needed (an image already on the engine needs none).
The secret's KV read is this module's own small function, `read_pull_secret`,
kept apart so that the general secrets reader (``secrets:``) can take it over.
Nothing here logs: the credentials go to the engine in the pull's header, and
an error names the key or the file, never what it holds.
"""

from __future__ import annotations

import os
import threading

from consul_operator.adapters.interfaces import KVStore
from consul_operator.core.desired_state import Manifest
from consul_operator.core.errors import ConsulError, ImagePullFailed
from consul_operator.core.keys import Layout
from consul_operator.core.registry import (
    MAX_REGISTRY_AUTH_BYTES,
    RegistryAuthError,
    RegistryCredentials,
    credentials_for,
    parse_docker_config,
    parse_pull_secret,
    pull_error,
)


def read_registry_auth(path: str) -> dict[str, RegistryCredentials]:
    """The credentials per registry of the Docker config file ``path`` (``--registry-auth``);
    ValueError naming the file and what is wrong with it (never its content)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_REGISTRY_AUTH_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from exc
    try:
        return parse_docker_config(data)
    except RegistryAuthError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def read_pull_secret(kv: KVStore, layout: Layout, service: str, name: str) -> RegistryCredentials:
    """The pull secret ``name`` of ``service`` (KV ``secrets/<service>/<name>``:
    ``{"username", "password"}``); `RegistryAuthError` naming the key when it is missing or unusable."""
    key = layout.secret_key(service, name)
    try:
        entry = kv.kv_get(key).value
    except ConsulError as exc:
        raise RegistryAuthError(f"cannot read the pull secret {key}: {exc}") from exc
    if entry is None:
        raise RegistryAuthError(f"no pull secret at {key} (consul kv put it: a JSON username and password)")
    try:
        return parse_pull_secret(entry.value)
    except RegistryAuthError as exc:
        raise RegistryAuthError(f"the pull secret {key}: {exc}") from exc


class PullAuth:
    """Whose credentials pull a manifest's image: its ``image_pull_secret`` (read from KV at each pull),
    else the ``--registry-auth`` file's for the image's registry, else none (the engine's own).

    The file is read again when it changed (its modification time and size): new credentials
    need no agent restart.
    """

    def __init__(self, kv: KVStore | None, layout: Layout, auth_file: str | None = None) -> None:
        self.kv = kv
        self.layout = layout
        self.auth_file = auth_file
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._auths: dict[str, RegistryCredentials] = {}

    def credentials(self, manifest: Manifest) -> RegistryCredentials | None:
        """The credentials of a pull of ``manifest.image``; `ImagePullFailed` (reason ``secret``)
        when the manifest names a pull secret that cannot be read, or the file went bad."""
        if manifest.image_pull_secret:
            if self.kv is None:
                raise self._failed(manifest, "no Consul to read the pull secret from")
            try:
                return read_pull_secret(self.kv, self.layout, manifest.name, manifest.image_pull_secret)
            except RegistryAuthError as exc:
                raise self._failed(
                    manifest, f"image_pull_secret {manifest.image_pull_secret}: {exc}"
                ) from exc
        if self.auth_file is None:
            return None
        try:
            return credentials_for(manifest.image, self._file_auths())
        except ValueError as exc:
            raise self._failed(manifest, f"--registry-auth {exc}") from exc

    def _file_auths(self) -> dict[str, RegistryCredentials]:
        assert self.auth_file is not None
        with self._lock:
            try:
                info = os.stat(self.auth_file)
            except OSError as exc:
                raise ValueError(f"{self.auth_file}: {exc.strerror or exc}") from exc
            stamp = (info.st_mtime, info.st_size)
            if stamp != self._stamp:
                self._auths = read_registry_auth(self.auth_file)
                self._stamp = stamp
            return self._auths

    @staticmethod
    def _failed(manifest: Manifest, detail: str) -> ImagePullFailed:
        message = pull_error(manifest.image, "secret", detail)
        return ImagePullFailed(message, image=manifest.image, reason="secret")
