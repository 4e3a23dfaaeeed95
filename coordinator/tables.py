"""Where the coordinator's tables are drawn: a rich console as wide as the terminal, no markup.

On a terminal the width is rich's own detection (the terminal's size, or
``COLUMNS``); otherwise ``COLUMNS`` or `DEFAULT_WIDTH`. Markup, emoji codes and
highlighting are off, so a case reference, a node's reason or an identifier
containing ``[bold]``, ``[/]`` or ``:smile:`` prints exactly as it is. A column
is at least as wide as its header, so no header wraps in the middle of a word
(unless the headers alone are wider than the terminal).
"""

from __future__ import annotations

import io
import os
import sys

from rich import box
from rich.console import Console
from rich.table import Table

DEFAULT_WIDTH = 100
_PADDING = 3  # a column's padding and its share of the table's edges


def terminal_width() -> int:
    """The width to draw tables at: the terminal's, else COLUMNS, else DEFAULT_WIDTH."""
    if sys.stdout.isatty():
        return Console().width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else DEFAULT_WIDTH


def text_console(width: int | None = None) -> Console:
    """A console that draws into a string (`text_of`) at `width` or the terminal's width."""
    return Console(
        file=io.StringIO(),
        width=width or terminal_width(),
        force_terminal=False,
        color_system=None,
        markup=False,
        emoji=False,
        highlight=False,
    )


def text_of(console: Console) -> str:
    """What has been printed to a `text_console`."""
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def titled_table(title: str | None, headers: tuple[str, ...], width: int) -> Table:
    """A table with these column headers, none narrower than its header when they all fit in
    `width` (else rich shares the width out and folds what does not fit, cutting nothing)."""
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    fits = sum(len(header) + _PADDING for header in headers) <= width
    for header in headers:
        table.add_column(header, overflow="fold", min_width=len(header) if fits else None)
    return table
