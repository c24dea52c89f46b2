"""Commands the tests run in a replica (`docker exec`), asked again when a loaded engine loses the output."""

from __future__ import annotations

from typing import Any

ASKS = 5
"""How often a command that answered exit 0 and nothing is run."""


def exec_in(container: Any, *command: str) -> tuple[int, str]:
    """Run ``command`` in the replica; its exit code and output.

    A loaded engine now and then answers a quick exec with exit code 0 and none of its output
    (moby/moby#27289, docker/docker-py#2042: a run beside two busy workers saw ``id -u`` print
    nothing). Such an answer is asked again, a few times: use this only for commands that print
    something, or that can run twice (``echo x > /probe``).
    """
    code, output = 0, b""
    for _ in range(ASKS):
        code, output = container.exec_run(list(command))
        if code != 0 or output:
            break
    return int(code), output.decode(errors="replace")


def output_of(container: Any, *command: str) -> str:
    """The output of ``command`` in the replica, which must succeed."""
    code, output = exec_in(container, *command)
    assert code == 0, output
    return output
