"""The ``templates:`` language: Jinja2 in its `SandboxedEnvironment`, with two functions and bounds.

A template reads Consul through two functions only, each with a *literal*
argument, so that what a template depends on is known from its text alone
(`dependencies`), read by the leader in one go, and nothing else:

* ``key("app/greeting")``: the value of KV ``config/app/greeting`` (the
  cluster's config prefix, `keys.Layout.config_prefix`; a relative path of
  segments, no ``..``). Nothing outside that prefix can be named, so neither
  ``operator/`` nor any service's ``secrets/``: a secret reaches a replica as
  its own file (``secrets:``), never through a rendered file that the leader
  keeps in ``operator/revisions/``.
* ``service("redis")``: the passing instances of that service in this
  cluster, sorted by address and port, each with ``.address``, ``.port`` (the
  replica's primary port) and ``.ports`` (by name, with ``ports:``).

Bounds, so that a template cannot stall the leader's pass: `MAX_RENDERED_BYTES`
of output (rendering stops there), ``range`` of at most `MAX_RANGE` and
`MAX_ITERATIONS` steps of every ``range`` together, ``*`` and ``**`` that
would make a string, list or number larger than `MAX_RENDERED_BYTES` refused,
and Jinja's sandbox (no attribute starting with ``_``, no unsafe callables).
Everything here is pure: text and data in, text or an error out.
"""

from __future__ import annotations

import operator as op
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

MAX_RENDERED_BYTES: Final = 64 * 1024
"""A rendered file at most; rendering stops and fails past it."""
MAX_RANGE: Final = 10_000
MAX_ITERATIONS: Final = 100_000
"""Steps of every ``range`` of one render together (nested loops multiply)."""
MAX_DEPENDENCIES: Final = 32
"""Distinct keys and services one template may name."""
_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}(?:/[A-Za-z0-9_.-]{1,128}){0,15}")
_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
FUNCTIONS: Final = ("key", "service")


class TemplateError(ValueError):
    """A template that does not parse, names what it may not, or fails to render; says why."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One passing instance of a service, as ``service()`` gives it to a template."""

    address: str
    port: int
    ports: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TemplateInputs:
    """What the leader read for the templates: config values by key (relative to the config prefix),
    and passing instances by service (sorted)."""

    config: Mapping[str, str] = field(default_factory=dict)
    instances: Mapping[str, tuple[Instance, ...]] = field(default_factory=dict)


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_ITERATIONS

    def bounded_range(self, *args: int) -> Iterator[int]:
        numbers = range(*args)
        if len(numbers) > MAX_RANGE:
            raise TemplateError(f"range of {len(numbers)} numbers, more than {MAX_RANGE}")
        return self._count(numbers)

    def _count(self, numbers: Sequence[int]) -> Iterator[int]:
        for number in numbers:
            self.left -= 1
            if self.left < 0:
                raise TemplateError(f"more than {MAX_ITERATIONS} loop steps")
            yield number


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with ``*`` and ``**`` bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise TemplateError("an exponent above 64")
            return op.pow(left, right)
        sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
        if sizes and counts and sizes[0] * max(counts[0], 0) > MAX_RENDERED_BYTES:
            raise TemplateError(f"a repetition longer than {MAX_RENDERED_BYTES}")
        return op.mul(left, right)


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()
    return env


_PARSER: Final = _environment()


def dependencies(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The KV keys (relative to the config prefix) and services ``source`` reads, each sorted; raises
    `TemplateError` for a syntax error or a ``key``/``service`` call without one literal, valid argument."""
    try:
        tree = _PARSER.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"line {exc.lineno}: {exc.message}") from exc
    keys: set[str] = set()
    services: set[str] = set()
    for call in tree.find_all(nodes.Call):
        if not isinstance(call.node, nodes.Name) or call.node.name not in FUNCTIONS:
            continue
        name = call.node.name
        literal = (
            len(call.args) == 1
            and not call.kwargs
            and call.dyn_args is None
            and call.dyn_kwargs is None
            and isinstance(call.args[0], nodes.Const)
            and isinstance(call.args[0].value, str)
        )
        if not literal:
            raise TemplateError(f"line {call.lineno}: {name}() takes one literal string, like {name}('x')")
        argument = call.args[0]
        assert isinstance(argument, nodes.Const)
        value = str(argument.value)
        if name == "key":
            if not _KEY_RE.fullmatch(value) or any(s in (".", "..") for s in value.split("/")):
                raise TemplateError(
                    f"line {call.lineno}: key({value[:80]!r}) must be a relative KV path under the config "
                    "prefix: segments of letters, digits, '_', '.' and '-', no '..'"
                )
            keys.add(value)
        else:
            if not _DNS_LABEL_RE.fullmatch(value):
                raise TemplateError(f"line {call.lineno}: service({value[:80]!r}) must name a service")
            services.add(value)
    if len(keys) + len(services) > MAX_DEPENDENCIES:
        raise TemplateError(f"names more than {MAX_DEPENDENCIES} keys and services")
    return tuple(sorted(keys)), tuple(sorted(services))


def render(source: str, inputs: TemplateInputs, config_prefix: str) -> str:
    """``source`` rendered with `key` and `service` over ``inputs``; `TemplateError` says why not (a key
    missing, an index out of range, the sandbox refusing, the output over `MAX_RENDERED_BYTES`)."""
    budget = _Budget()

    def key(path: str) -> str:
        if path not in inputs.config:
            raise TemplateError(f"key {config_prefix}{path} missing")
        return inputs.config[path]

    def service(name: str) -> list[Instance]:
        return list(inputs.instances.get(name, ()))

    env = _environment()
    env.globals.update({"key": key, "service": service, "range": budget.bounded_range})
    try:
        chunks: list[str] = []
        size = 0
        for chunk in env.from_string(source).generate():
            size += len(chunk.encode("utf-8"))
            if size > MAX_RENDERED_BYTES:
                raise TemplateError(f"renders more than {MAX_RENDERED_BYTES} bytes")
            chunks.append(chunk)
    except TemplateError:
        raise
    except RecursionError as exc:
        raise TemplateError("recursion too deep") from exc
    except Exception as exc:  # the template's own failure, whatever Jinja or Python raised
        raise TemplateError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return "".join(chunks)
