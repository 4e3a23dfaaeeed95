"""`fedtrace query match|aggregate|overlap`: the investigator's queries."""

from __future__ import annotations

import argparse
from typing import Any


def _query_match(args: argparse.Namespace) -> int:
    from coordinator.commands import query_match

    return query_match(args)


def _query_overlap(args: argparse.Namespace) -> int:
    from coordinator.overlap_report import query_overlap

    return query_overlap(args)


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    query = commands.add_parser("query", help="investigator queries").add_subparsers(
        dest="query_command", required=True, metavar="KIND"
    )
    p = query.add_parser("match", help="which watchlist items each node holds")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--watchlist", required=True, metavar="FILE")
    p.add_argument("--dataset", required=True)
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--legal-basis", default="", metavar="B")
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.add_argument(
        "--kind",
        choices=("wallet", "btc", "eth", "trx", "ltc", "iban", "person"),
        help="identifier kind of the watchlist (default: person for the subjects "
        "dataset, wallet otherwise)",
    )
    p.add_argument("--column", help="CSV watchlist column holding the identifiers")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run even if some watchlist lines are invalid (they are counted)",
    )
    p.add_argument(
        "--cardinality",
        action="store_true",
        help="ask only for the number of matches, not which items",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(run=_query_match)
    from coordinator.aggregate_commands import add_aggregate_parser

    add_aggregate_parser(query)

    p = query.add_parser("overlap", help="which groups of nodes share items (no watchlist)")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--legal-basis", default="", metavar="B")
    p.add_argument("--nodes", metavar="A,B,C", help="only these nodes of the federation")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(run=_query_overlap)
