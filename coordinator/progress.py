"""Progress of a query, node by node: the callback every query kind reports to, and its display.

The coordinator calls `Progress(node, what)` ("*" for the whole query) as each node's
exchange moves on; the CLI shows it as one live status line on a terminal, the
Python API stays silent unless given a callback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.status import Status

Progress = Callable[[str, str], None]  # (node, what is happening)


def silent(node: str, what: str) -> None:
    """The progress callback that shows nothing."""


@contextmanager
def progress_display(enabled: bool) -> Iterator[Progress]:
    """A live status line on stderr when it is a terminal; silent otherwise."""
    if not enabled:
        yield silent
        return
    console = Console(file=sys.stderr, markup=False, emoji=False, highlight=False)
    states: dict[str, str] = {}
    with Status("starting", console=console) as status:

        def update(node: str, what: str) -> None:
            states[node] = what
            status.update(" · ".join(f"{n}: {w}" for n, w in states.items()))

        yield update
