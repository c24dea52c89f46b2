"""Bad flags are usage errors (exit 2, one line, no traceback); `validate` never reads past its cap."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from consul_operator.core.desired_state import MAX_MANIFEST_BYTES
from tests.support.bounds import PROCESS_S

OPERATOR = str(Path(sys.executable).parent / "operator")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "OPERATOR_", "DOCKER_"))}
    return subprocess.run(
        [OPERATOR, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, "CONSUL_HTTP_ADDR": "127.0.0.1:1", **env},
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        pytest.param(["status", "--services-prefix", "/"], {}, "--services-prefix", id="status-prefix-slash"),
        pytest.param(
            ["agent", "--host", "h1", "--services-prefix", "/"], {}, "--services-prefix", id="agent-prefix"
        ),
        pytest.param(["lb", "--operator-prefix", "//"], {}, "--operator-prefix", id="lb-operator-prefix"),
        pytest.param(["status", "--services-prefix", "a b"], {}, "--services-prefix", id="prefix-space"),
        pytest.param(["status", "--operator-prefix", "x/../y"], {}, "--operator-prefix", id="prefix-dotdot"),
        pytest.param(["status"], {"OPERATOR_SERVICES_PREFIX": "/"}, "--services-prefix", id="env-prefix"),
        pytest.param(
            ["apply", "x.yaml", "--services-prefix", "a", "--operator-prefix", "a/"],
            {},
            "must not overlap",
            id="same-prefixes",
        ),
        pytest.param(
            ["wait", "web", "--services-prefix", "op/services", "--operator-prefix", "op"],
            {},
            "must not overlap",
            id="nested-prefixes",
        ),
        pytest.param(["agent", "--host", "h1", "--metrics", "bogus"], {}, "--metrics", id="agent-metrics"),
        pytest.param(["lb", "--metrics", "bogus"], {}, "--metrics", id="lb-metrics"),
        pytest.param(["lb", "--metrics", "127.0.0.1:99999"], {}, "--metrics", id="metrics-port-range"),
        pytest.param(["agent", "--host", "h1", "--metrics", "a b:9810"], {}, "--metrics", id="metrics-space"),
        pytest.param(["agent", "--host", "h1", "--docker", "bogus"], {}, "--docker", id="docker-flag"),
        pytest.param(["agent", "--host", "h1"], {"DOCKER_HOST": "bogus"}, "DOCKER_HOST", id="docker-env"),
        pytest.param(["agent", "--host", "h1", "--allow-cap", "ALL"], {}, "--allow-cap", id="allow-cap-all"),
        pytest.param(["status", "--bogus"], {}, "unrecognized arguments", id="unknown-flag"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(args: list[str], env: dict[str, str], names: str) -> None:
    """Exit 2 and exactly one line on stderr naming the flag or variable: never a traceback (exit 1)."""
    result = _run(args, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"operator {args[0]}: error: ") or lines[0].startswith("operator: error: ")
    assert names in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def _feed_without_eof(stream: object, data: bytes, done: threading.Event) -> None:
    """Write ``data`` and keep the stream open until ``done``: a reader waiting for EOF waits forever."""
    assert hasattr(stream, "write")
    try:
        stream.write(data)
        stream.flush()  # type: ignore[attr-defined]
    except BrokenPipeError:
        return
    done.wait()


@pytest.mark.parametrize("source", ["stdin", "fifo"])
def test_validate_reads_at_most_one_byte_past_the_cap(tmp_path: Path, source: str) -> None:
    """`validate -` (or a FIFO) stops reading one byte past the cap and says so, without waiting for EOF."""
    data = b"#" * (MAX_MANIFEST_BYTES + 4096)
    done = threading.Event()
    fifo = tmp_path / "manifest.yaml"
    if source == "fifo":
        os.mkfifo(fifo)
    proc = subprocess.Popen(
        [OPERATOR, "validate", "-" if source == "stdin" else str(fifo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    if source == "stdin":
        writer = threading.Thread(target=_feed_without_eof, args=(proc.stdin, data, done), daemon=True)
    else:
        writer = threading.Thread(target=lambda: _feed_without_eof(fifo.open("wb"), data, done), daemon=True)
    writer.start()
    try:
        code = proc.wait(timeout=PROCESS_S)
    finally:
        done.set()
        proc.kill()
        proc.wait()
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert code == 1, err
    assert f"larger than the limit of {MAX_MANIFEST_BYTES} bytes" in err
    assert "Traceback" not in err
