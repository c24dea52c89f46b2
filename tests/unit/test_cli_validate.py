"""`operator validate`: exit codes and messages a script or a person relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consul_operator.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_good_manifest_prints_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid manifest gives exit 0 and one OK line naming it."""
    assert main(["validate", str(ROOT / "manifests" / "simple.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "simple.yaml: OK (simple: hello:local, 2 replicas" in out


def test_bad_manifest_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken manifest gives exit 1 and each problem on its own line, naming the field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Simple\nimage: hello:local\nreplica: 2\nplacement: {max_per_host: 0}\n")
    assert main(["validate", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert f"{bad}: replica: unknown field (did you mean 'replicas'?)" in lines
    assert f"{bad}: placement.max_per_host: must be an integer >= 1, got 0" in lines
    assert any(line.startswith(f"{bad}: name: must be a DNS label") for line in lines)
    assert any(line.startswith(f"{bad}: replicas:") for line in lines)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Broken YAML is reported with its position, not a traceback."""
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: simple\nimage: [hello\n")
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "YAML syntax error at line" in err and "column" in err
    assert "Traceback" not in err


def test_missing_file_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """A file that cannot be read gives exit 1 and says so."""
    assert main(["validate", "/nonexistent/x.yaml"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_usage_error_exits_2() -> None:
    """No file at all is a usage error: exit 2, like every CLI convention."""
    result = subprocess.run(
        [sys.executable, "-m", "consul_operator", "validate"], capture_output=True, check=False
    )
    assert result.returncode == 2


def test_stdin_is_read_for_dash() -> None:
    """'-' reads the manifest from standard input."""
    result = subprocess.run(
        [sys.executable, "-m", "consul_operator", "validate", "-"],
        input=(ROOT / "manifests" / "simple.yaml").read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0
    assert b"-: OK (simple" in result.stdout
