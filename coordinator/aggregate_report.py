"""Aggregate reports: the match report's shape (coordinator.report) plus figures and their noise.

Per node: ``match_count`` and ``aggregates: {column: value}`` (money in euros,
exact to the cent before noise), ``noise_scale`` and ``interval_95`` for each
noisy figure, ``min_cohort``. Figures whose (noisy) match count is below the
node's ``min_cohort`` are withheld as ``"< k"``. With ``--total-only`` the
nodes carry no figures and the report has one ``total``. Figures that cannot be
negative (coordinator.figures) are shown clamped at 0; ``clamped`` lists them,
true where the noise took the value below 0. The table's footer says what ± means.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from coordinator.figures import AggregateOutcome, AggregateResult, FederationTotal, Figure
from coordinator.report import WatchlistSummary, report_json, result_json
from coordinator.tables import text_console, text_of, titled_table
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.wire import NodeStatus


def _figures_json(figures: dict[str, Figure], min_cohort: int, withheld: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if withheld:
        out["match_count"] = f"< {min_cohort}"
        out["aggregates"] = {name: f"< {min_cohort}" for name in figures if name != COUNT_COLUMN}
        return out
    out["match_count"] = figures[COUNT_COLUMN].amount()
    out["aggregates"] = {n: f.amount() for n, f in figures.items() if n != COUNT_COLUMN}
    noisy = {n: f for n, f in figures.items() if f.scale > 0}
    if noisy:
        out["noise_scale"] = {
            n: f.scale / 10**f.decimals if f.decimals else f.scale for n, f in noisy.items()
        }
        out["interval_95"] = {n: f.interval_95() for n, f in noisy.items()}
        floored = {n: f.clamped for n, f in noisy.items() if f.non_negative}
        if floored:
            out["clamped"] = floored
    return out


def aggregate_result_json(result: AggregateResult) -> dict[str, Any]:
    out = result_json(result.result)
    if result.result.status == NodeStatus.OK:
        out["min_cohort"] = result.min_cohort
        if result.figures is not None:
            out.update(_figures_json(result.figures, result.min_cohort, result.withheld))
    return out


def total_json(total: FederationTotal) -> dict[str, Any]:
    out: dict[str, Any] = {"status": total.status, "nodes": total.nodes}
    if total.status != NodeStatus.OK:
        out["reason"] = total.reason
        return out
    out["min_cohort"] = total.min_cohort
    assert total.figures is not None
    out.update(_figures_json(total.figures, total.min_cohort, total.withheld))
    return out


def aggregate_report_json(
    case: str,
    dataset: str,
    outcome: AggregateOutcome,
    watchlist: WatchlistSummary | None = None,
    legal_basis: str = "",
    columns: Sequence[str] = (),
) -> dict[str, Any]:
    report = report_json(
        case, "aggregate", dataset, [r.result for r in outcome.results], watchlist, legal_basis
    )
    report["columns"] = list(columns)
    report["results"] = [aggregate_result_json(r) for r in outcome.results]
    if outcome.total is not None:
        report["total"] = total_json(outcome.total)
    return report


def render_aggregate(
    fmt: str,
    case: str,
    dataset: str,
    outcome: AggregateOutcome,
    watchlist: WatchlistSummary | None = None,
    legal_basis: str = "",
    columns: Sequence[str] = (),
    width: int | None = None,
) -> str:
    """The report as `--format` gives it; a table is `width` columns wide (default: the
    terminal's, coordinator.tables)."""
    report = aggregate_report_json(case, dataset, outcome, watchlist, legal_basis, columns)
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    rows = [(r["node"], r) for r in report["results"]]
    if "total" in report:
        rows.append(("TOTAL", {"status": report["total"]["status"], **report["total"]}))
    if fmt == "csv":
        return _csv(rows, columns)
    return _table(case, dataset, rows, columns, watchlist, width)


def _cell(entry: dict[str, Any], figure: str) -> str:
    value = (
        entry.get("match_count")
        if figure == COUNT_COLUMN
        else entry.get("aggregates", {}).get(figure)
    )
    if value is None:
        return "-"
    text = (
        f"{value:,.2f}"
        if isinstance(value, float)
        else (f"{value:,}" if isinstance(value, int) else str(value))
    )
    interval = entry.get("interval_95", {}).get(figure)
    if interval is not None and isinstance(value, int | float):
        width = round(interval[1] - value, 6)  # the noise's half-width; the low end may be cut
        text += (
            f" ± {width:,.2f}" if isinstance(width, float) and width % 1 else f" ± {int(width):,}"
        )
    return text


def _csv(rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    figures = [COUNT_COLUMN, *columns]
    writer.writerow(
        [
            "node",
            "status",
            "figure",
            "value",
            "interval_95_low",
            "interval_95_high",
            "noise_scale",
            "min_cohort",
            "policy_version",
            "reason",
        ]
    )
    for node, entry in rows:
        for figure in figures:
            value = (
                entry.get("match_count")
                if figure == COUNT_COLUMN
                else entry.get("aggregates", {}).get(figure)
            )
            interval = entry.get("interval_95", {}).get(figure, ["", ""])
            writer.writerow(
                [
                    node,
                    entry["status"],
                    figure,
                    "" if value is None else value,
                    interval[0],
                    interval[1],
                    entry.get("noise_scale", {}).get(figure, ""),
                    entry.get("min_cohort", ""),
                    entry.get("policy_version", ""),
                    entry.get("reason", ""),
                ]
            )
    return buffer.getvalue()


NOISE_FOOTER = (
    "± is the 95% interval of the node's differential-privacy noise; "
    "figures of non-negative columns are clamped at 0"
)


def _table(
    case: str,
    dataset: str,
    rows: Sequence[tuple[str, dict[str, Any]]],
    columns: Sequence[str],
    watchlist: WatchlistSummary | None,
    width: int | None,
) -> str:
    console = text_console(width)
    title = f"aggregate · dataset {dataset} · case {case}"
    if watchlist is not None:
        title += f" · {watchlist.items} watchlist items"
    table = titled_table(title, ("node", "status", "matches", *columns, "note"), console.width)
    for node, entry in rows:
        note = (
            entry.get("reason", "")
            if entry["status"] != NodeStatus.OK
            else f"min cohort {entry.get('min_cohort', '-')}"
        )
        table.add_row(
            node,
            entry["status"],
            _cell(entry, COUNT_COLUMN),
            *(_cell(entry, c) for c in columns),
            note,
        )
    console.print(table)
    if any(entry.get("interval_95") for _, entry in rows):
        console.print(NOISE_FOOTER)
    return text_of(console)
