"""Overlap reports: the overlap as a table and matrix, JSON or CSV.

JSON extends the report shape of docs/reports.md: ``{"case", "query": "overlap", "dataset",
"overlap", "groups", "pairwise", "results": [...]}``, one result per node asked
(``ok``, ``denied``, ``unavailable`` or ``error``, with ``reason``). Counts under
the minimum cohort are the string ``"< k"``; a pair hiding a suppressed group is
``"suppressed"`` (docs/overlap.md, "Minimum cohort").
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich import box
from rich.table import Table

from coordinator.overlap import OverlapNodeResult, OverlapOutcome
from coordinator.results import head_json
from coordinator.tables import text_console, text_of, titled_table
from fedtrace.wire import NodeStatus


def result_json(result: OverlapNodeResult) -> dict[str, Any]:
    out: dict[str, Any] = {"node": result.node, "status": result.status}
    if result.status != NodeStatus.OK:
        out["reason"] = result.reason
    if result.disclosure:
        out["disclosure"] = result.disclosure
    for name in ("set_size", "reveal_to_owner", "min_cohort", "shared_records"):
        value = getattr(result, name)
        if value is not None:
            out[name] = value
    if result.policy_version:
        out["policy_version"] = result.policy_version
    if result.policy_sha256:
        out["policy_sha256"] = result.policy_sha256
    out["signature"] = result.signature
    out.update(head_json(result.audit_head))
    out["seconds"] = result.seconds
    return out


def report_json(
    case: str, dataset: str, report: OverlapOutcome, legal_basis: str = ""
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "case": case,
        "query": "overlap",
        "dataset": dataset,
        "overlap": {
            "overlap_id": report.overlap_id,
            "participants": list(report.roster),
            "reveal_to_owners": report.reveal,
            "min_cohort": report.min_cohort,
            "seconds": report.seconds,
        },
        "groups": None
        if report.groups is None
        else [
            {"jurisdictions": [c for c in report.roster if c in group], "count": count}
            for group, count in report.groups.items()
        ],
        "pairwise": None
        if report.pairwise is None
        else [
            {"jurisdictions": list(pair), "count": count} for pair, count in report.pairwise.items()
        ],
        "results": [result_json(r) for r in report.results],
    }
    if legal_basis:
        document["legal_basis"] = legal_basis
    return document


def render(
    fmt: str,
    case: str,
    dataset: str,
    report: OverlapOutcome,
    legal_basis: str = "",
    width: int | None = None,
) -> str:
    """The report as `--format` gives it; a table is `width` columns wide (default: the
    terminal's, coordinator.tables)."""
    if fmt == "json":
        return (
            json.dumps(
                report_json(case, dataset, report, legal_basis), indent=2, ensure_ascii=False
            )
            + "\n"
        )
    if fmt == "csv":
        return _csv(report)
    return _table(case, dataset, report, width)


def _csv(report: OverlapOutcome) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "jurisdictions", "count", "status", "reason", "policy_version"])
    for r in report.results:
        writer.writerow(
            [
                "node",
                r.node,
                "" if r.set_size is None else r.set_size,
                r.status,
                r.reason if r.status != NodeStatus.OK else "",
                r.policy_version,
            ]
        )
    for group, count in (report.groups or {}).items():
        writer.writerow(
            ["group", " ".join(c for c in report.roster if c in group), count, "", "", ""]
        )
    for pair, count in (report.pairwise or {}).items():
        writer.writerow(["pair", " ".join(pair), count, "", "", ""])
    return buffer.getvalue()


def _table(case: str, dataset: str, report: OverlapOutcome, width: int | None) -> str:
    console = text_console(width)
    nodes = titled_table(
        f"overlap · dataset {dataset} · case {case}",
        ("node", "status", "items", "reveal", "min cohort", "policy", "note"),
        console.width,
    )
    for r in report.results:
        nodes.add_row(
            r.node,
            r.status,
            "-" if r.set_size is None else f"{r.set_size:,}",
            "-" if r.reveal_to_owner is None else ("yes" if r.reveal_to_owner else "no"),
            "-" if r.min_cohort is None else str(r.min_cohort),
            r.policy_version or "-",
            r.reason if r.status != NodeStatus.OK else f"{r.seconds:.2f} s",
        )
    console.print(nodes, highlight=False)
    if report.groups is None or report.pairwise is None:
        console.print("no overlap: fewer than two nodes took part, or it stopped (see above)")
        return text_of(console)
    cohort = (
        f'; counts below {report.min_cohort} shown as "< {report.min_cohort}"'
        if report.min_cohort > 1
        else ""
    )
    console.print(f"\nitems held by exactly these jurisdictions{cohort}:", highlight=False)
    groups = Table(box=box.SIMPLE_HEAVY)
    groups.add_column("jurisdictions", min_width=len("jurisdictions"))
    groups.add_column("items", justify="right", min_width=len("items"))
    for group, count in report.groups.items():
        groups.add_row(" + ".join(c for c in report.roster if c in group), _count(count))
    console.print(groups, highlight=False)
    console.print("pairwise: items both hold, whoever else holds them too:", highlight=False)
    matrix = Table(box=box.SIMPLE_HEAVY)
    matrix.add_column("")
    for code in report.roster:
        matrix.add_column(code, justify="right", min_width=len(code))
    for row in report.roster:
        cells = []
        for column in report.roster:
            if row == column:
                cells.append("-")
                continue
            pair = (row, column) if (row, column) in report.pairwise else (column, row)
            cells.append(_count(report.pairwise[pair]))
        matrix.add_row(row, *cells)
    console.print(matrix, highlight=False)
    if report.reveal:
        console.print(
            "each node now lists its own shared records: fedtrace node shared NODE_DIR "
            f"--case {case}"
        )
    return text_of(console)


def _count(count: int | str) -> str:
    return f"{count:,}" if isinstance(count, int) else count
