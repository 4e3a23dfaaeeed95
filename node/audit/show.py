"""Showing the node's audit trail: entries read, filtered and rendered as a table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.audit.chain import entry_time, read_trail

if TYPE_CHECKING:
    from rich.console import Console

NARROW_DEFAULT_WIDTH = 100  # columns for tables when the output is not a terminal
FOLLOW_POLL_SECONDS = 0.5

SHOW_COLUMNS = (
    "seq",
    "time",
    "event",
    "partner",
    "role",
    "case_ref",
    "legal_basis",
    "kind",
    "dataset",
    "item_count",
    "disclosure",
    "outcome",
    "reason",
)


def entries(directory: Path) -> list[dict[str, Any]]:
    """Every well-formed entry, in file order (use `verify_trail` to trust them)."""
    lines, _ = read_trail(directory)
    out = []
    for text in lines:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _partner_of(entry: Mapping[str, Any]) -> str:
    peer = entry.get("peer") or {}
    return str(peer.get("jurisdiction") or "") if isinstance(peer, dict) else ""


def select(
    all_entries: Sequence[Mapping[str, Any]],
    *,
    partner: str | None = None,
    case: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[Mapping[str, Any]]:
    """Entries that match every filter given (partner in any case); `limit`: the newest N."""
    chosen = []
    for entry in all_entries:
        if partner and _partner_of(entry).upper() != partner.upper():
            continue
        if case and entry.get("case_ref") != case:
            continue
        if since and entry_time(entry) < since:
            continue
        if until and entry_time(entry) > until:
            continue
        chosen.append(entry)
    if limit is not None:
        chosen = chosen[-limit:] if limit > 0 else []
    return chosen


def partner_hint(all_entries: Sequence[Mapping[str, Any]], partner: str) -> str | None:
    """When no entry names `partner`: one line naming the partners that do (or None)."""
    known = sorted({p for p in map(_partner_of, all_entries) if p})
    if partner.upper() in (p.upper() for p in known):
        return None
    close = difflib.get_close_matches(partner.upper(), known, n=1, cutoff=0.5)
    guess = f" (did you mean {close[0]}?)" if close else ""
    listed = ", ".join(known) if known else "none yet"
    return f"no audit entry names partner {partner!r}{guess}; partners in the trail: {listed}"


def terminal_console() -> Console:
    """A console writing to a buffer as wide as the terminal (COLUMNS, else 100, off one)."""
    from rich.console import Console

    if sys.stdout.isatty():
        width = shutil.get_terminal_size((NARROW_DEFAULT_WIDTH, 24)).columns
    else:
        try:
            width = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            width = NARROW_DEFAULT_WIDTH
    return Console(
        file=io.StringIO(), width=max(width, 40), force_terminal=False, color_system=None
    )


@dataclass(frozen=True)
class Filters:
    """What `audit show` selects: the same filters for the first listing and for --follow."""

    partner: str | None = None
    case: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def follow(
    directory: Path,
    filters: Filters,
    fmt: str,
    write: Callable[[str], None],
    stop: threading.Event,
    *,
    after: int,
    poll_seconds: float = FOLLOW_POLL_SECONDS,
) -> None:
    """Write entries appended after the first `after` ones as they come, until `stop` is set.

    JSON is one object per line, CSV rows without the header, a table per new batch.
    """
    seen = after
    while not stop.wait(poll_seconds):
        current = entries(directory)
        if len(current) <= seen:
            continue
        new = select(
            current[seen:],
            partner=filters.partner,
            case=filters.case,
            since=filters.since,
            until=filters.until,
        )
        seen = len(current)
        if not new:
            continue
        if fmt == "json":
            write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in new))
        elif fmt == "csv":
            write(render_entries(new, "csv").split("\n", 1)[1])
        else:
            write(render_entries(new, "table"))


def _flat(entry: Mapping[str, Any]) -> dict[str, str]:
    peer = entry.get("peer") if isinstance(entry.get("peer"), dict) else {}
    assert isinstance(peer, dict)
    row = {column: entry.get(column, "") for column in SHOW_COLUMNS}
    row["partner"] = peer.get("jurisdiction", "")
    row["role"] = peer.get("role", "")
    return {k: "" if v is None else str(v) for k, v in row.items()}


_TABLE_COLUMNS = (
    "seq",
    "time",
    "event",
    "partner",
    "case_ref",
    "legal_basis",
    "kind",
    "dataset",
    "item_count",
    "disclosure",
    "outcome",
    "reason",
)
# Most wanted first: columns join the table in this order while they fit the terminal.
_PRIORITY = (
    "seq",
    "time",
    "event",
    "partner",
    "outcome",
    "case_ref",
    "reason",
    "kind",
    "dataset",
    "disclosure",
    "legal_basis",
    "item_count",
)
_ALWAYS = ("seq", "time", "event", "outcome")
_FLEXIBLE = ("case_ref", "reason")  # these wrap; the others keep their width
_FLEX_MIN = {"case_ref": 12, "reason": 24}  # the width a flexible column keeps at least
_HEADINGS = {
    "seq": "#",
    "time": "time (UTC)",
    "case_ref": "case",
    "legal_basis": "basis",
    "item_count": "items",
    "disclosure": "level",
}


def _widest(column: str, rows: Sequence[Mapping[str, str]]) -> int:
    values = [len(row[column] or "-") for row in rows]
    return max([len(_HEADINGS.get(column, column)), *values])


def _fitting_columns(rows: Sequence[Mapping[str, str]], width: int) -> tuple[list[str], list[str]]:
    """The columns to show (table order) and the filled ones left out for want of width."""
    filled = [c for c in _PRIORITY if c in _ALWAYS or any(row[c] for row in rows)]
    chosen: set[str] = set()
    used = 1  # the table's edge
    for column in filled:
        need = _widest(column, rows)
        if column in _FLEXIBLE:
            need = min(need, _FLEX_MIN[column])
        need += 3  # padding either side and the space between columns
        if used + need <= width or column in ("seq", "time", "event"):
            chosen.add(column)
            used += need
    shown = [c for c in _TABLE_COLUMNS if c in chosen]
    return shown, [_HEADINGS.get(c, c) for c in filled if c not in chosen]


def render_entries(chosen: Sequence[Mapping[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(list(chosen), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=(*SHOW_COLUMNS, "policy_version", "budget"), lineterminator="\n"
        )
        writer.writeheader()
        for entry in chosen:
            row: dict[str, str] = _flat(entry)
            row["policy_version"] = str(entry.get("policy_version", ""))
            budget = entry.get("budget")
            row["budget"] = json.dumps(budget, sort_keys=True) if budget else ""
            writer.writerow(row)
        return buffer.getvalue()
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = terminal_console()
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{len(chosen)} audit entries",
        title_justify="left",
        pad_edge=False,
        padding=(0, 1),
    )
    rows = []
    for entry in chosen:
        row = _flat(entry)
        row["time"] = row["time"].replace("T", " ")[5:19]  # MM-DD HH:MM:SS, UTC
        version = entry.get("policy_version")
        if version and str(entry.get("event", "")).startswith(("policy-", "node-started")):
            row["reason"] = f"policy {version}" + (f": {row['reason']}" if row["reason"] else "")
        rows.append(row)
    shown, hidden = _fitting_columns(rows, console.width)
    if hidden:
        table.caption = f"not shown at this width: {', '.join(hidden)} (--format csv has all)"
        table.caption_justify = "left"
    for column in shown:
        table.add_column(
            _HEADINGS.get(column, column),
            overflow="fold",
            no_wrap=column not in _FLEXIBLE,
            min_width=min(_widest(column, rows), _FLEX_MIN[column])
            if column in _FLEXIBLE
            else None,
        )
    for row in rows:
        table.add_row(*(Text(row[c] or "-") for c in shown))  # data is never markup
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]
