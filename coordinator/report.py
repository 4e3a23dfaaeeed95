"""Match reports: a readable table, the JSON contract (docs/reports.md), or CSV.

Every hit is a filter match: a tested item the node does not hold still matches
with the filter's false-positive probability (2^-30 per item for the default
filter), so each answered node's JSON gives `false_positive_rate` and
`expected_false_hits`, and the table ends with that bound and how to confirm a hit.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.results import NodeResult, head_json
from coordinator.tables import text_console, text_of, titled_table
from fedtrace.wire import NodeStatus

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


def status_summary(statuses: Sequence[NodeStatus]) -> str:
    """``3 nodes, 2 ok, 1 denied``: how many nodes were asked and how each ended."""
    counts = Counter(statuses)
    ended = ", ".join(f"{counts[status]} {status}" for status in NodeStatus if counts[status])
    return plural(len(statuses), "node", "nodes") + (f", {ended}" if ended else "")


def plural(count: int, one: str, many: str) -> str:
    """``1 match``, ``49 matches``."""
    return f"{count:,} {one if count == 1 else many}"


def result_json(result: NodeResult) -> dict[str, Any]:
    """One node's result as docs/reports.md gives it; absent fields are left out, not nulled."""
    out: dict[str, Any] = {"node": result.node, "status": result.status}
    if result.status != NodeStatus.OK:
        out["reason"] = result.reason
    if result.disclosure:
        out["disclosure"] = result.disclosure
    if result.match_count is not None:
        out["match_count"] = result.match_count
    if result.matched is not None:
        out["matched"] = result.matched
    if result.policy_version:
        out["policy_version"] = result.policy_version
    if result.policy_sha256:
        out["policy_sha256"] = result.policy_sha256
    if result.epoch_id:
        out["epoch_id"] = result.epoch_id
    if result.false_positive_rate is not None and result.status == NodeStatus.OK:
        out["false_positive_rate"] = result.false_positive_rate
        out["expected_false_hits"] = result.expected_false_hits
    out["signature"] = result.signature
    out.update(head_json(result.audit_head))
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
    width: int | None = None,
) -> str:
    """The report as `--format` gives it; a table is `width` columns wide (default: the
    terminal's, coordinator.tables)."""
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
    return _table(case, query, dataset, results, watchlist, width)


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


def _power_of_two(bits: int) -> str:
    return f"2^-{bits}"


def false_hit_footer(results: Sequence[NodeResult]) -> str | None:
    """What a hit is worth: the filters' false-positive bound, for a table's footer."""
    answered = [r for r in results if r.false_positive_bits is not None and r.tested_items]
    if not answered:
        return None
    bits = sorted({r.false_positive_bits for r in answered if r.false_positive_bits is not None})
    items = max(r.tested_items or 0 for r in answered)
    rate = " or ".join(_power_of_two(b) for b in bits)
    expected = max(r.expected_false_hits or 0.0 for r in answered)
    return (
        f"each hit is a filter match with false-positive probability {rate} per tested item: "
        f"expected false hits for this query ≈ {items:,}·{_power_of_two(bits[0])} ≈ "
        f"{expected:.2g} per node; confirm a hit with `fedtrace request disclose` before acting"
    )


def _table(
    case: str,
    query: str,
    dataset: str,
    results: Sequence[NodeResult],
    watchlist: WatchlistSummary | None,
    width: int | None,
) -> str:
    console = text_console(width)
    title = f"{query} · dataset {dataset} · case {case}"
    if watchlist is not None:
        title += f" · {watchlist.items} watchlist items"
    headers = ("node", "status", "disclosure", "matches", "policy", "note")
    table = titled_table(title, headers, console.width)
    for r in results:
        table.add_row(
            r.node,
            r.status,
            r.disclosure or "-",
            "-" if r.match_count is None else str(r.match_count),
            r.policy_version or "-",
            r.reason if r.status != NodeStatus.OK else f"{r.seconds:.2f} s",
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
                console.print(f"  {identifier}")
            if len(r.matched) > TABLE_MATCHES_SHOWN:
                console.print(
                    f"  … and {len(r.matched) - TABLE_MATCHES_SHOWN} more "
                    "(--format json or csv lists them all)"
                )
    footer = false_hit_footer(results)
    if footer:
        console.print(f"\n{footer}")
    return text_of(console)
