"""The ``operator`` command: subcommands and their wiring.

Exit codes follow the usual convention: 0 success, 1 the thing checked is not
as wanted (an invalid manifest, a service not converged), 2 a usage error or
an unreachable dependency.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from consul_operator.desired_state import ManifestError, parse_manifest

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_USAGE = 2


def cmd_validate(args: argparse.Namespace) -> int:
    """Check manifests locally: one OK line per good file, every problem of a bad one."""
    worst = EXIT_OK
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            worst = EXIT_NOT_OK
            continue
        try:
            manifest = parse_manifest(data)
        except ManifestError as exc:
            for problem in exc.problems:
                print(f"{name}: {problem}", file=sys.stderr)
            worst = EXIT_NOT_OK
            continue
        print(
            f"{name}: OK ({manifest.name}: {manifest.image}, {manifest.replicas} replicas,"
            f" spec {manifest.spec_hash()})"
        )
    return worst


def build_parser() -> argparse.ArgumentParser:
    """The command line of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="operator",
        description="Converge Docker containers on plain hosts to manifests in Consul KV.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check manifest files locally ('-' reads stdin)")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``operator`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
