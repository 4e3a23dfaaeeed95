"""Showing the node's audit trail: entries read, filtered and rendered as a table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.audit.chain import entry_time, read_trail

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


def select(
    all_entries: Sequence[Mapping[str, Any]],
    *,
    partner: str | None = None,
    case: str | None = None,
    since: dt.datetime | None = None,
) -> list[Mapping[str, Any]]:
    chosen = []
    for entry in all_entries:
        peer = entry.get("peer") or {}
        if partner and (not isinstance(peer, dict) or peer.get("jurisdiction") != partner):
            continue
        if case and entry.get("case_ref") != case:
            continue
        if since and entry_time(entry) < since:
            continue
        chosen.append(entry)
    return chosen


def _flat(entry: Mapping[str, Any]) -> dict[str, str]:
    peer = entry.get("peer") if isinstance(entry.get("peer"), dict) else {}
    assert isinstance(peer, dict)
    row = {column: entry.get(column, "") for column in SHOW_COLUMNS}
    row["partner"] = peer.get("jurisdiction", "")
    row["role"] = peer.get("role", "")
    return {k: "" if v is None else str(v) for k, v in row.items()}


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
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    table = Table(box=box.SIMPLE_HEAVY, title=f"{len(chosen)} audit entries", title_justify="left")
    shown = (
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
    for column in shown:
        table.add_column(column.replace("_", " "), overflow="fold")
    for entry in chosen:
        row = _flat(entry)
        table.add_row(*(Text(row[c] or "-") for c in shown))  # data is never markup
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]
