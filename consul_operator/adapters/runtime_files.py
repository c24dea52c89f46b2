"""Files the agent hands a replica: its secrets and rendered templates, on a tmpfs of the host,
bind-mounted read-only.

Each container that needs them gets a directory of its own,
``<runtime dir>/<cluster>/<host>/<container>/secrets/``, one file per secret,
mode 0400, owned by the user the container runs as; Docker mounts it read-only
at ``/run/secrets`` (`desired_state.SECRETS_PATH`). This is Swarm's way
(its engine writes each task's secrets to a tmpfs under its own directory and
bind-mounts them), and it keeps the value:

* off disk: the runtime directory must be on a tmpfs (`on_tmpfs`; the default
  ``/run/consul-operator`` is systemd's ``RuntimeDirectory=``), or no replica
  with secrets starts here;
* out of ``docker inspect`` (it shows the bind's source path only, not the
  value; an ``env:`` secret is the exception the manifest asks for) and off
  every command line (the agent writes the file itself).

Docker's own ways do not fit: a ``tmpfs`` mount exists only once the container
runs (``docker cp``/``put_archive`` before the start writes under it, to the
container's disk layer), and a write after the start races the application
reading its secret at start-up.

A rendered template (``templates:``, not secret: the leader keeps its text in
the revision) is a file ``<container>/files/<hash of its path>``, mode 0444, bind-mounted
read-only at its path; a ``change_mode: signal`` template is rewritten in
place (`rewrite`: the same inode, which the bind mount shows at once).

The directory goes with its container (`RuntimeFiles.forget`) and is swept of
containers no longer there (`RuntimeFiles.sweep`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Final

from consul_operator.core.errors import DockerError

DEFAULT_RUNTIME_DIR: Final = "/run/consul-operator"
FILE_MODE: Final = 0o400
"""A secret file's mode: readable by its owner (the container's user) only, as Swarm's default."""
DIR_MODE: Final = 0o755
"""A container's directories: the container's user must enter them and list its secrets."""
TREE_MODE: Final = 0o711
"""The directories above (cluster, host): nobody lists which containers have secrets."""


def file_name(path: str) -> str:
    """The host file name of a template at ``path`` in the container."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def filesystem_type(path: str, mountinfo: str | None = None) -> str:
    """The file system type of the mount that holds ``path`` (from ``/proc/self/mountinfo``)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    target = os.path.realpath(path)
    best, kind = "", ""
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split(" ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, after[0]
    return kind


def owner_of(user: str, read_file: Callable[[str], bytes | None]) -> tuple[int, int]:
    """The uid and gid a container of ``user`` (``NAME|UID[:GROUP|GID]``, "" for root) runs as: names
    looked up in the container's own ``/etc/passwd`` and ``/etc/group`` (``read_file``), as Docker does."""
    name, _, group = user.partition(":")
    uid: int | None = int(name) if name.isdigit() else None
    gid: int | None = int(group) if group.isdigit() else None
    if not name:
        uid = 0
    if uid is None or (not group and gid is None):
        for fields in _entries(read_file("/etc/passwd")):
            if len(fields) >= 4 and (fields[0] == name or (uid is not None and fields[2] == str(uid))):
                uid = int(fields[2]) if uid is None and fields[2].isdigit() else uid
                if not group and fields[3].isdigit():
                    gid = int(fields[3])
                break
    if group and gid is None:
        for fields in _entries(read_file("/etc/group")):
            if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
                gid = int(fields[2])
                break
    if uid is None or (group and gid is None):
        raise DockerError(f"user {user!r} is not in the image's /etc/passwd or /etc/group")
    return uid, (gid if gid is not None else 0)


def _entries(text: bytes | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.decode("utf-8", "replace").splitlines() if line.strip()]


def file_from_tar(archive: bytes) -> bytes | None:
    """The first regular file of a tar stream (Docker's ``get_archive`` of one file)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            if member.isfile():
                extracted = tar.extractfile(member)
                return None if extracted is None else extracted.read()
    return None


class RuntimeFiles:
    """The per-container directories under one host's runtime directory."""

    def __init__(self, root: str | None, cluster: str, host: str) -> None:
        self.root = root
        self.base = None if root is None else Path(root) / cluster / host
        self.lock = threading.Lock()  # a start's directory is never swept before its container exists
        self._tmpfs: bool | None = None

    def on_tmpfs(self) -> bool:
        """Whether the runtime directory is on a tmpfs (looked up once)."""
        if self._tmpfs is None:
            self._tmpfs = self.root is not None and filesystem_type(self.root) == "tmpfs"
        return self._tmpfs

    def secrets_dir(self, container: str) -> str:
        """Where ``container``'s secret files go (created, empty)."""
        if self.base is None or not self.on_tmpfs():
            raise DockerError(
                f"secrets need the agent's --runtime-dir on a tmpfs (now {self.root}, "
                f"{filesystem_type(self.root) if self.root else 'none'}): a secret is never written to disk"
            )
        for directory in (self.base.parent, self.base):
            directory.mkdir(mode=TREE_MODE, parents=True, exist_ok=True)
        place = self.base / container / "secrets"
        place.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(place.parent, DIR_MODE)
        os.chmod(place, DIR_MODE)
        return str(place)

    def write_files(self, container: str, files: Mapping[str, str]) -> dict[str, str]:
        """Write ``container``'s rendered templates (by path in the container); the host file of each."""
        if self.base is None:
            raise DockerError("templates need the agent's --runtime-dir")
        place = self.base / container / "files"
        place.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(place.parent, DIR_MODE)
        os.chmod(place, DIR_MODE)
        sources: dict[str, str] = {}
        for path, text in sorted(files.items()):
            host = str(place / file_name(path))
            self.rewrite(host, text)
            sources[path] = host
        return sources

    def file_of(self, container: str, path: str) -> str | None:
        """The host file of ``container``'s template at ``path`` (None without a runtime directory)."""
        return None if self.base is None else str(self.base / container / "files" / file_name(path))

    def rewrite(self, host: str, text: str) -> None:
        """Write ``text`` into the file ``host`` in place (created 0444 if absent, never through a link)."""
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o444)
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            os.ftruncate(fd, len(data))
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)

    def read_file(self, container: str, path: str) -> str | None:
        """The text of ``container``'s template at ``path`` as written here (None: it has none)."""
        host = self.file_of(container, path)
        if host is None:
            return None
        try:
            return Path(host).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def write_secrets(self, directory: str, values: Mapping[str, bytes], owner: tuple[int, int]) -> None:
        """One file per secret, mode 0400, owned by ``owner`` (the agent needs CAP_CHOWN unless it is
        that user); a file is never followed through a link nor left half written."""
        for name, value in values.items():
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                if owner != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(fd, *owner)
                    except PermissionError as exc:
                        raise DockerError(
                            f"cannot give secret file {name} to uid {owner[0]}: the agent needs CAP_CHOWN "
                            "(deploy/systemd/operator-agent.service) or to run as that user"
                        ) from exc
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def forget(self, container: str) -> None:
        """Remove ``container``'s directory (it is gone)."""
        if self.base is not None and container and "/" not in container and container not in (".", ".."):
            shutil.rmtree(self.base / container, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Names of the containers that have a directory here."""
        if self.base is None or not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if p.is_dir())

    def sweep(self, alive: Collection[str]) -> list[str]:
        """Remove the directories of containers not in ``alive`` (call under `lock`); their names."""
        gone = [name for name in self.leftovers() if name not in alive]
        for name in gone:
            self.forget(name)
        return gone
