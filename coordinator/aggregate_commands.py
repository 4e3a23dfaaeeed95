"""`fedtrace query aggregate`: its arguments, and the command over coordinator.aggregate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError


class AggregateUsageError(FedtraceError):
    """Bad aggregate arguments (columns, epsilon)."""


def add_aggregate_parser(query: Any) -> None:
    """Add `query aggregate` to the `query` subcommands."""
    p = query.add_parser(
        "aggregate", help="how much the watchlisted wallets moved at each node, not which ones"
    )
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--watchlist", required=True, metavar="FILE")
    p.add_argument("--dataset", required=True)
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--legal-basis", default="", metavar="B")
    p.add_argument(
        "--sum",
        action="append",
        required=True,
        metavar="COL",
        dest="sum",
        help="a column to sum over the matched records (repeat for several)",
    )
    p.add_argument(
        "--total-only",
        action="store_true",
        help="one federation total; no party learns any single node's figures",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=0.0,
        help="privacy loss to spend per node (default: each grant's epsilon_per_query)",
    )
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.add_argument("--column", help="CSV watchlist column holding the identifiers")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run even if some watchlist lines are invalid (they are counted)",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(run=query_aggregate)


def query_aggregate(args: argparse.Namespace) -> int:
    from coordinator.aggregate import (
        AggregateQuery,
        GrpcAggregateTransports,
        TagCache,
        run_aggregate,
    )
    from coordinator.aggregate_report import render_aggregate
    from coordinator.commands import (
        checked_watchlist,
        investigator_jurisdiction,
        progress_display,
        signed_report_text,
    )
    from coordinator.federation import load_federation
    from coordinator.report import WatchlistSummary
    from fedtrace.aggregate import COUNT_COLUMN

    columns = tuple(args.sum)
    if len(set(columns)) != len(columns):
        raise AggregateUsageError("--sum names a column twice")
    if COUNT_COLUMN in columns:
        raise AggregateUsageError(f"--sum {COUNT_COLUMN}: the match count is always reported")
    if args.epsilon < 0 or args.epsilon != args.epsilon:
        raise AggregateUsageError("--epsilon must be a positive number")
    federation = load_federation(Path(args.federation))
    nodes = federation.select(tuple(args.nodes.split(",")) if args.nodes else None)
    watchlist_path = Path(args.watchlist)
    watchlist = checked_watchlist(watchlist_path, "wallet", args.column, args.skip_invalid)
    transports = GrpcAggregateTransports(federation)
    investigator = investigator_jurisdiction(federation, transports.ca_pem)
    query = AggregateQuery(
        dataset=args.dataset,
        case_ref=args.case,
        legal_basis=args.legal_basis,
        items=watchlist.items,
        investigator=investigator,
        columns=columns,
        total_only=args.total_only,
        epsilon=args.epsilon,
    )
    with progress_display(sys.stderr.isatty()) as progress:
        outcome = run_aggregate(
            federation,
            query,
            transports,
            transports.ca_pem,
            nodes=nodes,
            cache=TagCache.default(),
            progress=progress,
        )
    summary = WatchlistSummary(
        file=str(watchlist_path),
        kind="wallet",
        lines=watchlist.lines,
        items=len(watchlist.items),
        duplicates=watchlist.duplicates,
        skipped_invalid=len(watchlist.problems),
    )
    text = render_aggregate(
        args.format, args.case, args.dataset, outcome, summary, args.legal_basis, columns
    )
    if args.format == "json":
        text = signed_report_text(text, federation.key, federation.cert)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    ok = all(r.result.status == "ok" for r in outcome.results)
    if outcome.total is not None and outcome.total.status != "ok":
        ok = False
    return ExitCode.OK if ok else ExitCode.PARTIAL
