"""`fedtrace query overlap`: run the overlap and report it as a table and matrix, JSON or CSV.

JSON extends the report shape of docs/reports.md: ``{"case", "query": "overlap", "dataset",
"overlap", "groups", "pairwise", "results": [...]}``, one result per node asked
(``ok``, ``denied``, ``unavailable`` or ``error``, with ``reason``). Counts under
the minimum cohort are the string ``"< k"``; a pair hiding a suppressed group is
``"suppressed"`` (docs/overlap.md, "Minimum cohort").
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from coordinator.commands import progress_display, signed_report_text
from coordinator.federation import load_federation
from coordinator.match import ensure_investigator_certificate
from coordinator.overlap import (
    OverlapChannels,
    OverlapNodeResult,
    OverlapQuery,
    OverlapReport,
    run_overlap,
)
from fedtrace.errors import ExitCode


def result_json(result: OverlapNodeResult) -> dict[str, Any]:
    out: dict[str, Any] = {"node": result.node, "status": result.status}
    if result.status != "ok":
        out["reason"] = result.reason
    if result.disclosure:
        out["disclosure"] = result.disclosure
    for name in ("set_size", "reveal_to_owner", "min_cohort", "shared_records"):
        value = getattr(result, name)
        if value is not None:
            out[name] = value
    if result.policy_version:
        out["policy_version"] = result.policy_version
    out["signature"] = result.signature
    out["seconds"] = result.seconds
    return out


def report_json(
    case: str, dataset: str, report: OverlapReport, legal_basis: str = ""
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


def render(fmt: str, case: str, dataset: str, report: OverlapReport, legal_basis: str = "") -> str:
    if fmt == "json":
        return (
            json.dumps(
                report_json(case, dataset, report, legal_basis), indent=2, ensure_ascii=False
            )
            + "\n"
        )
    if fmt == "csv":
        return _csv(report)
    return _table(case, dataset, report)


def _csv(report: OverlapReport) -> str:
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
                r.reason if r.status != "ok" else "",
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


def _table(case: str, dataset: str, report: OverlapReport) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    nodes = Table(
        title=f"overlap · dataset {dataset} · case {case}",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for column in ("node", "status", "items", "reveal", "min cohort", "policy", "note"):
        nodes.add_column(column, overflow="fold")
    for r in report.results:
        nodes.add_row(
            r.node,
            r.status,
            "-" if r.set_size is None else f"{r.set_size:,}",
            "-" if r.reveal_to_owner is None else ("yes" if r.reveal_to_owner else "no"),
            "-" if r.min_cohort is None else str(r.min_cohort),
            r.policy_version or "-",
            r.reason if r.status != "ok" else f"{r.seconds:.2f} s",
        )
    console.print(nodes, highlight=False)
    if report.groups is None or report.pairwise is None:
        console.print("no overlap: fewer than two nodes took part, or it stopped (see above)")
        return str(console.file.getvalue())  # type: ignore[attr-defined]
    cohort = (
        f'; counts below {report.min_cohort} shown as "< {report.min_cohort}"'
        if report.min_cohort > 1
        else ""
    )
    console.print(f"\nitems held by exactly these jurisdictions{cohort}:", highlight=False)
    groups = Table(box=box.SIMPLE_HEAVY)
    groups.add_column("jurisdictions")
    groups.add_column("items", justify="right")
    for group, count in report.groups.items():
        groups.add_row(" + ".join(c for c in report.roster if c in group), _count(count))
    console.print(groups, highlight=False)
    console.print("pairwise: items both hold, whoever else holds them too:", highlight=False)
    matrix = Table(box=box.SIMPLE_HEAVY)
    matrix.add_column("")
    for code in report.roster:
        matrix.add_column(code, justify="right")
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
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def _count(count: int | str) -> str:
    return f"{count:,}" if isinstance(count, int) else count


def query_overlap(args: argparse.Namespace) -> int:
    federation = load_federation(Path(args.federation))
    nodes = federation.select(tuple(args.nodes.split(",")) if args.nodes else None)
    channels = OverlapChannels(federation)
    investigator = ensure_investigator_certificate(channels.cert, channels.root, federation.cert)
    query = OverlapQuery(
        dataset=args.dataset,
        case_ref=args.case,
        legal_basis=args.legal_basis,
        investigator=investigator,
    )
    with progress_display(sys.stderr.isatty()) as progress:
        report = run_overlap(
            federation, query, channels, channels.root, nodes=nodes, progress=progress
        )
    text = render(args.format, args.case, args.dataset, report, args.legal_basis)
    if args.format == "json":  # signed by the investigator: see coordinator/verify.py
        text = signed_report_text(text, federation.key, federation.cert)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    ok = report.groups is not None and all(r.status == "ok" for r in report.results)
    return ExitCode.OK if ok else ExitCode.PARTIAL
