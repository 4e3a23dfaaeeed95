"""Query reports for the investigator: a readable table, the JSON contract (docs/reports.md), or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from coordinator.match import NodeResult

FORMATS = ("table", "json", "csv")
TABLE_MATCHES_SHOWN = 20


@dataclass(frozen=True)
class WatchlistSummary:
    file: str
    kind: str
    lines: int
    items: int
    duplicates: int
    skipped_invalid: int


def result_json(result: NodeResult) -> dict[str, Any]:
    """One node's result in the shape docs/reports.md gives; absent fields are left out, not nulled."""
    out: dict[str, Any] = {"node": result.node, "status": result.status}
    if result.status != "ok":
        out["reason"] = result.reason
    if result.disclosure:
        out["disclosure"] = result.disclosure
    if result.match_count is not None:
        out["match_count"] = result.match_count
    if result.matched is not None:
        out["matched"] = result.matched
    if result.policy_version:
        out["policy_version"] = result.policy_version
    if result.epoch_id:
        out["epoch_id"] = result.epoch_id
    out["signature"] = result.signature
    out["seconds"] = result.seconds
    return out


def report_json(
    case: str,
    query: str,
    dataset: str,
    results: Sequence[NodeResult],
    watchlist: WatchlistSummary | None = None,
    legal_basis: str = "",
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "case": case,
        "query": query,
        "dataset": dataset,
        "results": [result_json(r) for r in results],
    }
    if legal_basis:
        report["legal_basis"] = legal_basis
    if watchlist is not None:
        report["watchlist"] = watchlist.__dict__
    return report


def render(
    fmt: str,
    case: str,
    query: str,
    dataset: str,
    results: Sequence[NodeResult],
    watchlist: WatchlistSummary | None = None,
    legal_basis: str = "",
) -> str:
    if fmt == "json":
        return (
            json.dumps(
                report_json(case, query, dataset, results, watchlist, legal_basis),
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    if fmt == "csv":
        return _csv(results)
    return _table(case, query, dataset, results, watchlist)


def _csv(results: Sequence[NodeResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["node", "status", "disclosure", "match_count", "identifier", "policy_version", "reason"]
    )
    for r in results:
        count = "" if r.match_count is None else r.match_count
        for identifier in r.matched or [""]:
            writer.writerow(
                [r.node, r.status, r.disclosure, count, identifier, r.policy_version, r.reason]
            )
    return buffer.getvalue()


def _table(
    case: str,
    query: str,
    dataset: str,
    results: Sequence[NodeResult],
    watchlist: WatchlistSummary | None,
) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    title = f"{query} · dataset {dataset} · case {case}"
    if watchlist is not None:
        title += f" · {watchlist.items} watchlist items"
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    for column in ("node", "status", "disclosure", "matches", "policy", "note"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            r.node,
            r.status,
            r.disclosure or "-",
            "-" if r.match_count is None else str(r.match_count),
            r.policy_version or "-",
            r.reason if r.status != "ok" else f"{r.seconds:.2f} s",
        )
    console.print(table)
    if watchlist is not None and (watchlist.duplicates or watchlist.skipped_invalid):
        console.print(
            f"watchlist {watchlist.file}: {watchlist.duplicates} duplicate(s) collapsed,"
            f" {watchlist.skipped_invalid} invalid line(s) skipped"
        )
    for r in results:
        if r.matched:
            console.print(f"\n{r.node} holds {len(r.matched)} of the watchlist items:")
            for identifier in r.matched[:TABLE_MATCHES_SHOWN]:
                console.print(f"  {identifier}", highlight=False)
            if len(r.matched) > TABLE_MATCHES_SHOWN:
                console.print(
                    f"  … and {len(r.matched) - TABLE_MATCHES_SHOWN} more "
                    "(--format json or csv lists them all)"
                )
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)
