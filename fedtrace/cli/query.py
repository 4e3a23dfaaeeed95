"""`fedtrace query match|aggregate|overlap|prepare`: investigator queries, over the Python API.

Each handler checks the case reference and legal basis first (coordinator.checks;
the client then checks the dataset against what the nodes announced), turns its
arguments into a call of `fedtrace.api.FederationClient`, so the CLI's `--format
json` output is the report's `to_dict()`, and writes the report to stdout, or to
`--out` with a one-line summary on stdout. `query prepare` stores additive blinding
entries for later matches and prints how many each node now has.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedtrace.cli.args import (
    add_case,
    add_dataset,
    add_federation,
    add_format,
    add_legal_basis,
    add_out,
)
from fedtrace.errors import ExitCode, FedtraceError

if TYPE_CHECKING:
    from coordinator.federation import Federation
    from coordinator.watchlist import CheckedWatchlist
    from fedtrace.identifiers import WatchlistProblem

MAX_PROBLEMS_SHOWN = 20
WATCHLIST_HELP = "watchlist: one identifier per line (# starts a comment), or CSV with a header row"


class AggregateUsageError(FedtraceError):
    """Bad aggregate arguments (columns, epsilon)."""


class _Report(Protocol):
    @property
    def complete(self) -> bool: ...

    def render(self, fmt: str, width: int | None = None) -> str: ...

    def summary(self) -> str: ...


def _emit(report: _Report, args: argparse.Namespace) -> int:
    """Print the report, or write it to --out and print its summary; the exit status."""
    text = report.render(args.format)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise FedtraceError(f"{args.out}: cannot write the report: {exc.strerror}") from None
        print(f"report written to {args.out}: {report.summary()}")
    else:
        sys.stdout.write(text)
    return ExitCode.OK if report.complete else ExitCode.PARTIAL


def _federation(args: argparse.Namespace) -> Federation:
    """FED.toml with the nodes checked, once the case and legal basis are known to be valid.

    The client normalises the legal basis again and checks the dataset; checking here
    first stops a bad case or legal basis before the watchlist is read.
    """
    from coordinator.checks import check_case, legal_basis_code
    from coordinator.federation import load_federation

    federation = load_federation(Path(args.federation))
    federation.select(_nodes(args))
    check_case(args.case)
    legal_basis_code(args.legal_basis, federation.legal_bases)
    return federation


def _watchlist(args: argparse.Namespace, kind: str) -> CheckedWatchlist:
    """The watchlist file's canonical items; its invalid lines are listed on stderr."""
    from coordinator.watchlist import InvalidLines, watchlist_file

    path = Path(args.watchlist)
    try:
        checked = watchlist_file(path, kind, args.column, skip_invalid=args.skip_invalid)
    except InvalidLines as exc:
        _show_problems(path, exc.watchlist.problems)
        raise
    _show_problems(path, checked.problems)
    return checked


def _show_problems(path: Path, problems: Sequence[WatchlistProblem]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"{path}:{problem.line}: {problem.reason}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"… and {len(problems) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)


def _nodes(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(args.nodes.split(",")) if args.nodes else None


def _query_match(args: argparse.Namespace) -> int:
    from coordinator.progress import progress_display
    from fedtrace.api import FederationClient

    federation = _federation(args)
    kind = args.kind or ("person" if args.dataset == "subjects" else "wallet")
    watchlist = _watchlist(args, kind)
    with (
        progress_display(sys.stderr.isatty()) as progress,
        FederationClient(federation, progress=progress) as client,
    ):
        report = client.match(
            watchlist,
            dataset=args.dataset,
            case=args.case,
            legal_basis=args.legal_basis,
            nodes=_nodes(args),
            kind=kind,
            cardinality=args.cardinality,
        )
    return _emit(report, args)


def _query_aggregate(args: argparse.Namespace) -> int:
    from coordinator.progress import progress_display
    from fedtrace.aggregate import COUNT_COLUMN
    from fedtrace.api import FederationClient

    columns = tuple(args.sum)
    if len(set(columns)) != len(columns):
        raise AggregateUsageError("--sum names a column twice")
    if COUNT_COLUMN in columns:
        raise AggregateUsageError(f"--sum {COUNT_COLUMN}: the match count is always reported")
    if args.epsilon < 0 or args.epsilon != args.epsilon:
        raise AggregateUsageError("--epsilon must be a positive number")
    federation = _federation(args)
    watchlist = _watchlist(args, "wallet")
    with (
        progress_display(sys.stderr.isatty()) as progress,
        FederationClient(federation, progress=progress) as client,
    ):
        report = client.aggregate(
            watchlist,
            dataset=args.dataset,
            case=args.case,
            sums=columns,
            legal_basis=args.legal_basis,
            total_only=args.total_only,
            epsilon=args.epsilon,
            nodes=_nodes(args),
        )
    return _emit(report, args)


def _query_overlap(args: argparse.Namespace) -> int:
    from coordinator.progress import progress_display
    from fedtrace.api import FederationClient

    federation = _federation(args)
    with (
        progress_display(sys.stderr.isatty()) as progress,
        FederationClient(federation, progress=progress) as client,
    ):
        report = client.overlap(
            dataset=args.dataset,
            case=args.case,
            legal_basis=args.legal_basis,
            nodes=_nodes(args),
        )
    return _emit(report, args)


def _query_prepare(args: argparse.Namespace) -> int:
    from coordinator.federation import load_federation
    from coordinator.progress import progress_display
    from fedtrace.api import FederationClient

    if args.items < 1:
        raise FedtraceError("--items must be at least 1")
    federation = load_federation(Path(args.federation))
    federation.select(_nodes(args))
    with (
        progress_display(sys.stderr.isatty()) as progress,
        FederationClient(federation, progress=progress) as client,
    ):
        prepared = client.prepare(dataset=args.dataset, items=args.items, nodes=_nodes(args))
    sys.stdout.write(prepared.render())
    return ExitCode.OK if prepared.complete else ExitCode.PARTIAL


def _add_prepare(query: Any) -> None:
    p = query.add_parser(
        "prepare",
        help="precompute additive blinding entries so later matches blind faster",
    )
    add_federation(p)
    add_dataset(p)
    p.add_argument(
        "--items",
        type=int,
        required=True,
        metavar="N",
        help="entries to hold per node: enough for matches of up to N items",
    )
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.set_defaults(run=_query_prepare)


def _add_match(query: Any) -> None:
    p = query.add_parser("match", help="which watchlist items each node holds")
    add_federation(p)
    p.add_argument("--watchlist", required=True, metavar="FILE", help=WATCHLIST_HELP)
    add_dataset(p)
    add_case(p)
    add_legal_basis(p)
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.add_argument(
        "--kind",
        choices=("wallet", "btc", "eth", "trx", "ltc", "iban", "person"),
        help="identifier kind of the watchlist (default: person for the subjects "
        "dataset, wallet otherwise)",
    )
    p.add_argument("--column", metavar="NAME", help="CSV watchlist column holding the identifiers")
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
    add_format(p, ("table", "json", "csv"))
    add_out(p)
    p.set_defaults(run=_query_match)


def _add_aggregate(query: Any) -> None:
    p = query.add_parser(
        "aggregate", help="how much the watchlisted wallets moved at each node, not which ones"
    )
    add_federation(p)
    p.add_argument("--watchlist", required=True, metavar="FILE", help=WATCHLIST_HELP)
    add_dataset(p)
    add_case(p)
    add_legal_basis(p)
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
        help="privacy loss per node: 0 (the default) takes each grant's epsilon_per_query; "
        "any other value must equal it, since the node sets epsilon from its policy",
    )
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.add_argument("--column", metavar="NAME", help="CSV watchlist column holding the identifiers")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run even if some watchlist lines are invalid (they are counted)",
    )
    add_format(p, ("table", "json", "csv"))
    add_out(p)
    p.set_defaults(run=_query_aggregate)


def _add_overlap(query: Any) -> None:
    p = query.add_parser("overlap", help="which groups of nodes share items (no watchlist)")
    add_federation(p)
    add_dataset(p)
    add_case(p)
    add_legal_basis(p)
    p.add_argument("--nodes", metavar="A,B,C", help="only these nodes of the federation")
    add_format(p, ("table", "json", "csv"))
    add_out(p)
    p.set_defaults(run=_query_overlap)


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    query = commands.add_parser("query", help="investigator queries").add_subparsers(
        dest="query_command", required=True, metavar="KIND"
    )
    _add_match(query)
    _add_aggregate(query)
    _add_overlap(query)
    _add_prepare(query)
