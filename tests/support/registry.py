"""A real private registry for tests: Debian's ``docker-registry`` (distribution) on 127.0.0.1 with a free
port, htpasswd auth and TLS with a self-signed certificate, started and stopped by the test itself.

The Docker engine trusts the certificate through ``/etc/docker/certs.d/<host:port>/ca.crt``, which it
reads at each pull (no engine restart); the directory is removed again at the end.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from tests.support.bounds import PROCESS_S
from tests.support.staging import tool, wait_until

CERTS_D = Path("/etc/docker/certs.d")


@dataclass(frozen=True)
class Registry:
    """A running registry: where it is, and the one user it lets in."""

    address: str  # 127.0.0.1:PORT
    username: str
    password: str
    ca: Path

    def reference(self, repository: str, tag: str) -> str:
        """An image reference on this registry."""
        return f"{self.address}/{repository}:{tag}"

    def auth(self, password: str | None = None) -> dict[str, str]:
        """The Docker SDK's auth_config (with another ``password`` when given)."""
        return {"username": self.username, "password": self.password if password is None else password}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str, ca: Path) -> bool:
    """Whether the registry answers over TLS with its certificate (401 without credentials)."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        urllib.request.urlopen(url, timeout=2, context=context)
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False
    return False


@contextlib.contextmanager
def private_registry(password: str | None = None) -> Iterator[Registry]:
    """A registry with htpasswd auth (one user, ``password`` or a random one) and a self-signed certificate
    for 127.0.0.1, trusted by the engine; everything it made is removed afterwards."""
    binary, htpasswd, openssl = tool("docker-registry"), tool("htpasswd"), tool("openssl")
    work = Path(tempfile.mkdtemp(prefix="registry-"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    username, password = "ci-" + secrets.token_hex(3), password or secrets.token_urlsafe(16)
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # The password goes to htpasswd on standard input (-i), never on its command line.
    users = subprocess.run(
        [htpasswd, "-niB", username], input=password, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    (work / "htpasswd").write_text(users)
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {work / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{address}', tls: {{certificate: {cert}, key: {key}}}}}\n"
        f"auth: {{htpasswd: {{realm: test-registry, path: {work / 'htpasswd'}}}}}\n"
    )
    trusted = CERTS_D / address
    trusted.mkdir(parents=True, exist_ok=True)
    shutil.copy(cert, trusted / "ca.crt")
    log = (work / "registry.log").open("w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: process.poll() is None and _answers(f"https://{address}/v2/", cert),
            timeout=PROCESS_S,
            what=f"the registry on {address}",
        )
        yield Registry(address, username, password, cert)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(trusted, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def push(engine: docker.DockerClient, registry: Registry, source: str, repository: str, tag: str) -> str:
    """Push the local image ``source`` to ``registry`` as ``repository:tag``; the reference pushed.
    The local tag is removed again, so that a pull is the only way the engine has it."""
    reference = registry.reference(repository, tag)
    engine.images.get(source).tag(f"{registry.address}/{repository}", tag)
    try:
        for line in engine.images.push(f"{registry.address}/{repository}", tag, auth_config=registry.auth(),
                                       stream=True, decode=True):  # fmt: skip
            if isinstance(line, dict) and line.get("error"):
                raise AssertionError(f"push of {reference} failed: {line['error']}")
    finally:
        engine.images.remove(reference)
    return reference


def forget(engine: docker.DockerClient, *references: str) -> None:
    """Remove the pulled images ``references`` from the engine (our own tags only)."""
    for reference in references:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(reference)
