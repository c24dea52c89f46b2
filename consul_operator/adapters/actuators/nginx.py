"""NGINX: render the config, apply it safely, and run NGINX when we manage it.

Safe apply (what consul-template does not do, see the design's lessons):
render all services in one pass; if the text equals the file on disk, do
nothing; else write a temp file, run ``nginx -t`` on it, rename it into place
atomically and reload. A config that fails the test is never installed, so
NGINX keeps serving the last good one.

Two modes:

* `ManagedNginx`: an NGINX of our own, with its own prefix directory, config,
  pid and logs; started by `operator lb`, reloaded with SIGHUP, restarted if
  it dies, stopped on exit. One left running by a predecessor that was killed
  (it runs in its own session, so it outlives a kill -9 of `operator lb`) is
  adopted: it serves on, and is reloaded and stopped like our own.
* `SystemNginx`: an existing NGINX; we own one file in its conf.d and run a
  reload command. The whole system config can only be tested in place, so the
  new file is renamed in, tested, and the previous one restored if it fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import structlog

from consul_operator.core.errors import OperatorError
from consul_operator.core.upstreams import LBView

log = structlog.get_logger()

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("consul_operator", "adapters/actuators"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # not HTML; every value is whitelisted before it gets here
    keep_trailing_newline=True,
)


class NginxError(OperatorError):
    """NGINX could not be started, tested or reloaded."""


def render(view: LBView, *, listen: str, managed: bool, prefix: str = "") -> str:
    """The config text for ``view``: a whole nginx.conf (managed) or an http-level snippet."""
    by_name = {up.name: up for up in view.upstreams}
    default = by_name.get(view.default_service) if view.default_service else None
    return _TEMPLATES.get_template("nginx.conf.j2").render(
        upstreams=view.upstreams, default=default, listen=listen, managed=managed, prefix=prefix
    )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What `apply` did: nothing (unchanged), installed and reloaded, or refused with why."""

    changed: bool
    ok: bool
    error: str = ""
    # The config passed `nginx -t` and is installed, but the reload failed: retry the reload.
    reload_failed: bool = False


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _run(command: list[str], what: str) -> tuple[bool, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{what}: {exc}"
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ManagedNginx:
    """An NGINX of our own under ``prefix``."""

    def __init__(
        self, prefix: Path, *, binary: str = "nginx", on_exit: Callable[[], None] = lambda: None
    ) -> None:
        self.prefix = prefix.resolve()
        self.binary = binary
        self.conf = self.prefix / "nginx.conf"
        self.on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # a master a killed predecessor left running
        self._stopping = False
        for sub in ("tmp", "logs"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)

    def current(self) -> str | None:
        """The installed config, or None."""
        try:
            return self.conf.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def test(self, path: Path) -> tuple[bool, str]:
        """``nginx -t`` of the config at ``path``."""
        return _run([self.binary, "-t", "-q", *self._paths(path)], "nginx -t")

    def _paths(self, conf: Path) -> list[str]:
        # -e: NGINX logs to its compiled-in error log before it has read the
        # config; keep even that inside our prefix.
        return ["-p", str(self.prefix), "-e", str(self.prefix / "logs" / "error.log"), "-c", str(conf)]

    def check(self, text: str) -> tuple[bool, str]:
        """``nginx -t`` of ``text`` as a whole config, installing nothing."""
        tmp = self.conf.with_name(f".nginx.conf.{os.getpid()}.check")
        _write(tmp, text)
        try:
            return self.test(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def apply(self, text: str) -> ApplyResult:
        """Install ``text`` if it differs and passes ``nginx -t``; then reload (or start)."""
        if text == self.current():
            self.ensure_running()
            return ApplyResult(changed=False, ok=True)
        tmp = self.conf.with_name(f".nginx.conf.{os.getpid()}.tmp")
        _write(tmp, text)
        ok, output = self.test(tmp)
        if not ok:
            tmp.unlink(missing_ok=True)
            return ApplyResult(changed=False, ok=False, error=f"nginx -t failed: {output}")
        os.replace(tmp, self.conf)
        if self.running():
            self.reload()
        else:
            self.ensure_running()
        return ApplyResult(changed=True, ok=True)

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._adopted is not None and _alive(self._adopted):
            return self._adopted
        return None

    def running(self) -> bool:
        """Whether our NGINX master runs."""
        return self.pid is not None

    def ensure_running(self) -> None:
        """Start NGINX on the installed config, unless it runs or there is no config yet."""
        if self.running() or self.current() is None:
            return
        left = self._left_running()
        if left is not None:
            # Starting another would fail to bind the port while this one serves on,
            # unreloaded, for good.
            self._adopted = left
            log.info("nginx of a previous run adopted", pid=left, prefix=str(self.prefix))
            threading.Thread(
                target=self._watch_adopted, args=(left,), name="nginx-watch", daemon=True
            ).start()
            return
        self._proc = subprocess.Popen(
            [self.binary, *self._paths(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "logs" / "stderr.log", "ab"),  # noqa: SIM115 - owned by the child
            # Its own process group: if the master is killed, its orphaned workers
            # (which keep the port) are found by the group id and nothing else.
            start_new_session=True,
        )
        log.info("nginx started", pid=self._proc.pid, prefix=str(self.prefix))
        proc = self._proc
        threading.Thread(target=self._watch, args=(proc,), name="nginx-watch", daemon=True).start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        self._ended(proc.pid, code)

    def _watch_adopted(self, pid: int) -> None:
        """Wait for the end of a master that is not our child (there is no exit code to read)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already, or a kernel without pidfds
            while _alive(pid):
                time.sleep(0.5)
        else:
            try:
                select.select([fd], [], [])
            finally:
                os.close(fd)
        self._ended(pid, None)

    def _ended(self, pid: int, code: int | None) -> None:
        if self._stopping:
            return
        # A master that died without stopping its workers leaves them holding the
        # listen socket, and a new master could not bind it: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        log.warning("nginx exited; restarting it", pid=pid, code=code)
        self.on_exit()

    def _left_running(self) -> int | None:
        """The master our pid file names, if it still runs our NGINX on our prefix."""
        try:
            pid = int((self.prefix / "nginx.pid").read_text().split()[0])
            exe = Path(f"/proc/{pid}/exe").resolve()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        ours = exe == Path(shutil.which(self.binary) or self.binary).resolve()
        return pid if ours and str(self.prefix) in title and _alive(pid) else None

    def reload(self) -> None:
        """SIGHUP: NGINX re-reads its config; old workers finish their requests."""
        pid = self.pid
        if pid is None:
            raise NginxError("nginx is not running")
        os.kill(pid, signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGQUIT (graceful), then SIGTERM."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout)
            log.info("nginx stopped", pid=proc.pid)
        elif (adopted := self.pid) is not None:
            for sig in (signal.SIGQUIT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(adopted, sig)
                deadline = time.monotonic() + timeout
                while _alive(adopted) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not _alive(adopted):
                    break
            log.info("nginx stopped", pid=adopted)


class SystemNginx:
    """An NGINX we do not run: one file of ours in its conf.d, a test and a reload command."""

    def __init__(
        self, conf: Path, *, test_cmd: str = "nginx -t", reload_cmd: str = "nginx -s reload"
    ) -> None:
        self.conf = conf
        self.test_cmd = shlex.split(test_cmd)
        self.reload_cmd = shlex.split(reload_cmd)
        # Whether the NGINX may not run the file on disk: a reload failed since it
        # was installed. A new process cannot know how its predecessor's last
        # reload went, so it reloads once at start.
        self.reload_pending = True

    def current(self) -> str | None:
        """Our installed file, or None."""
        try:
            return self.conf.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def check(self, text: str) -> tuple[bool, str]:
        """Test ``text`` in place (the whole system config), then put the previous file back."""
        previous = self.current()
        self._install(text)
        try:
            return _run(self.test_cmd, "nginx -t")
        finally:
            self._restore(previous)

    def apply(self, text: str) -> ApplyResult:
        """Rename the new file in, test the whole config, restore the old file if the test fails.

        A failed reload leaves the new file in place and `reload_pending` set: the
        next apply, even of the same text, reloads again.
        """
        previous = self.current()
        if text == previous:
            if not self.reload_pending:
                return ApplyResult(changed=False, ok=True)
            return self._reload()
        self._install(text)
        ok, output = _run(self.test_cmd, "nginx -t")
        if not ok:
            self._restore(previous)
            return ApplyResult(changed=False, ok=False, error=f"nginx -t failed: {output}")
        self.reload_pending = True
        return self._reload()

    def _reload(self) -> ApplyResult:
        ok, output = _run(self.reload_cmd, "reload")
        if not ok:
            return ApplyResult(changed=False, ok=False, error=f"reload failed: {output}", reload_failed=True)
        self.reload_pending = False
        return ApplyResult(changed=True, ok=True)

    def _install(self, text: str) -> None:
        tmp = self.conf.with_name(f".{self.conf.name}.tmp")
        _write(tmp, text)
        os.replace(tmp, self.conf)

    def _restore(self, previous: str | None) -> None:
        if previous is None:
            self.conf.unlink(missing_ok=True)
        else:
            self._install(previous)

    def ensure_running(self) -> None:
        """The system's service manager runs this NGINX, not us."""

    def stop(self, timeout: float = 10.0) -> None:
        """Nothing to stop: not ours."""
