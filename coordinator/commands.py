"""Investigator commands: read the federation and watchlist, run the query, write the report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.status import Status

from coordinator.federation import Federation, load_federation
from coordinator.match import (
    FilterCache,
    MatchQuery,
    Progress,
    ensure_investigator_certificate,
    run_match,
)
from coordinator.report import WatchlistSummary, render
from coordinator.transport import GrpcTransports, read_federation_file
from coordinator.verify import sign_report
from fedtrace.errors import ExitCode, FedtraceError
from fedtrace.identifiers import InvalidIdentifier, Watchlist, load_watchlist
from fedtrace.pki import read_key_pem
from fedtrace.revocation import load_revocations

MAX_PROBLEMS_SHOWN = 20


class WatchlistError(FedtraceError):
    """The watchlist has invalid lines and --skip-invalid was not given."""


@contextmanager
def progress_display(enabled: bool) -> Iterator[Progress]:
    """A live status line on stderr when it is a terminal; silent otherwise."""
    if not enabled:
        yield lambda node, what: None
        return
    console = Console(file=sys.stderr)
    states: dict[str, str] = {}
    with Status("starting", console=console) as status:

        def update(node: str, what: str) -> None:
            states[node] = what
            status.update(" · ".join(f"{n}: {w}" for n, w in states.items()))

        yield update


def signed_report_text(text: str, key: Path, cert: Path) -> str:
    """The JSON report `text` with the investigator's signature over all of it."""
    report = sign_report(json.loads(text), read_key_pem(key), cert.read_bytes())
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def checked_watchlist(path: Path, kind: str, column: str | None, skip_invalid: bool) -> Watchlist:
    """Canonical watchlist items; invalid lines are listed and stop the query unless skipped."""
    try:
        watchlist = load_watchlist(path, kind, column)
    except (InvalidIdentifier, ValueError, OSError) as exc:
        raise WatchlistError(f"{path}: {getattr(exc, 'reason', exc)}") from None
    if watchlist.problems:
        for problem in watchlist.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"{path}:{problem.line}: {problem.reason}", file=sys.stderr)
        if len(watchlist.problems) > MAX_PROBLEMS_SHOWN:
            print(f"… and {len(watchlist.problems) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)
        if not skip_invalid:
            raise WatchlistError(
                f"{path}: {len(watchlist.problems)} invalid line(s); fix them or pass "
                "--skip-invalid to query the valid ones"
            )
    if not watchlist.items:
        raise WatchlistError(f"{path}: no valid identifiers to query")
    return watchlist


def investigator_jurisdiction(federation: Federation, ca_pem: bytes) -> str:
    """Our own jurisdiction, after checking our certificate against the federation CA."""
    cert = read_federation_file(federation.cert, "investigator certificate")
    return ensure_investigator_certificate(cert, ca_pem, federation.cert)


def query_match(args: argparse.Namespace) -> int:
    federation = load_federation(Path(args.federation))
    nodes = federation.select(tuple(args.nodes.split(",")) if args.nodes else None)
    kind = args.kind or ("person" if args.dataset == "subjects" else "wallet")
    watchlist_path = Path(args.watchlist)
    watchlist = checked_watchlist(watchlist_path, kind, args.column, args.skip_invalid)
    transports = GrpcTransports(federation)
    investigator = investigator_jurisdiction(federation, transports.ca_pem)
    dataset_kind = "person" if kind == "person" else "wallet"
    query = MatchQuery(
        dataset=args.dataset,
        case_ref=args.case,
        legal_basis=args.legal_basis,
        kind=dataset_kind,
        items=watchlist.items,
        investigator=investigator,
        disclosure=1 if args.cardinality else 3,
    )
    with progress_display(sys.stderr.isatty()) as progress:
        results = run_match(
            federation,
            query,
            transports,
            transports.ca_pem,
            nodes=nodes,
            cache=FilterCache.default(),
            progress=progress,
            revoked=load_revocations(federation.revoked) if federation.revoked else None,
        )
    summary = WatchlistSummary(
        file=str(watchlist_path),
        kind=kind,
        lines=watchlist.lines,
        items=len(watchlist.items),
        duplicates=watchlist.duplicates,
        skipped_invalid=len(watchlist.problems),
    )
    text = render(args.format, args.case, "match", args.dataset, results, summary, args.legal_basis)
    if args.format == "json":  # signed by the investigator: see coordinator/verify.py
        text = signed_report_text(text, federation.key, federation.cert)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK if all(r.status == "ok" for r in results) else ExitCode.PARTIAL
