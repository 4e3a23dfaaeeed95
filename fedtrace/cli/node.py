"""`fedtrace node …`: an operator's and officer's commands on one node directory."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtrace.cli.args import parse_fields, parse_moment, parse_request_id
from fedtrace.cli.freeze import add_freeze_commands
from fedtrace.cli.health import add_node_health
from fedtrace.errors import ExitCode, FedtraceError
from node.exchange import SCHEMA_DOC, describe_tables

if TYPE_CHECKING:
    from node.store import IngestSummary, RejectedRow


def _node_init(args: argparse.Namespace) -> int:
    from node.setup import init_node, missing_certificate_advice

    result = init_node(Path(args.node_dir), args.jurisdiction, Path(args.ca), args.listen)
    print(f"node {args.jurisdiction} created in {result.node_dir}")
    tls_dir = result.node_dir / "tls"
    if result.installed_from is not None:
        print(f"  certificate and key from {result.installed_from} installed into {tls_dir}")
    elif not result.certificate_issued:
        print(f"  {missing_certificate_advice(Path(args.ca), tls_dir, args.jurisdiction)}")
    print(f"  policy: {result.node_dir / 'policy.toml'} denies everything until a grant is added")
    return ExitCode.OK


@contextmanager
def _row_progress(what: str) -> Iterator[Callable[[int], None]]:
    """Rows read so far: a live bar on a terminal, a plain line on stderr otherwise."""
    if not sys.stderr.isatty():
        yield lambda rows: print(f"{what}: {rows:,} rows read", file=sys.stderr, flush=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn(what, markup=False),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda rows: bar.update(task, completed=rows)


def _print_rejections(summary: IngestSummary) -> None:
    for rejection in summary.first_rejections:
        print(f"  line {rejection.line}: {rejection.reason}")


def _node_ingest(args: argparse.Namespace) -> int:
    from node import store
    from node.config import load_node_config

    if args.max_rejects is not None and args.max_rejects < 0:
        raise FedtraceError(f"--max-rejects {args.max_rejects}: give 0 or more rows")
    config = load_node_config(Path(args.node_dir))
    file = Path(args.file)
    try:
        with (
            store.NodeDatabase(config.database).session() as con,
            _row_progress(f"{file.name} → {args.table}") as progress,
        ):
            summary = store.ingest(
                con,
                file,
                args.table,
                allow_duplicate=args.allow_duplicate,
                progress=progress,
                max_rejects=args.max_rejects if args.max_rejects is not None else 0,
            )
    except store.TooManyRejects as refused:
        _print_rejections(refused.summary)
        raise
    separated = store.DELIMITERS.get(summary.delimiter, "comma")
    print(
        f"{summary.file}: {summary.rows_loaded:,} of {summary.rows_read:,} rows loaded into "
        f"{summary.table}; {summary.rows_rejected:,} rejected (data version "
        f"{summary.data_version})"
    )
    if summary.delimiter not in (",", ""):
        print(f"  the file is {separated}-separated; read it as such")
    if summary.extra_columns:
        print(f"  extra columns kept: {', '.join(summary.extra_columns)}")
    _print_rejections(summary)
    if summary.rows_rejected > len(summary.first_rejections):
        print(f"  … list them all with `fedtrace node rejects {args.node_dir}`")
    return ExitCode.OK


def _node_rejects(args: argparse.Namespace) -> int:
    from node import store
    from node.config import load_node_config

    config = load_node_config(Path(args.node_dir))
    with store.NodeDatabase(config.database).session() as con:
        rows = store.rejected_rows(con, limit=args.limit)
    sys.stdout.write(render_rejects(rows, args.format))
    return ExitCode.OK


def render_rejects(rows: Sequence[RejectedRow], fmt: str) -> str:
    """The rejected rows as JSON, or a table that fits the terminal."""
    if fmt == "json":
        import dataclasses  # not at the top: `fedtrace --help` does not need it (with inspect)

        return (
            json.dumps([dataclasses.asdict(r) for r in rows], indent=2, ensure_ascii=False) + "\n"
        )
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from node.audit.show import terminal_console

    console = terminal_console()
    table = Table(box=box.SIMPLE_HEAVY, title=f"{len(rows)} rejected rows", title_justify="left")
    for column in ("ingest", "table", "file", "line", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            *(Text(str(v)) for v in (row.ingest_id, row.table, row.file, row.line, row.reason))
        )
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def _node_serve(args: argparse.Namespace) -> int:
    from node.server import serve

    return serve(
        Path(args.node_dir),
        args.listen,
        log_format=args.log_format,
        metrics_listen=args.metrics,
        scheduler=args.scheduler,
    )


def _node_shared(args: argparse.Namespace) -> int:
    from node.shared import list_for_case

    sys.stdout.write(list_for_case(Path(args.node_dir), args.case, args.format))
    return ExitCode.OK


def _node_requests(args: argparse.Namespace) -> int:
    from node.officer_requests import list_requests

    sys.stdout.write(list_requests(Path(args.node_dir), pending_only=args.pending, fmt=args.format))
    return ExitCode.OK


def _node_approve(args: argparse.Namespace) -> int:
    from node.officer_requests import approve_request, decision_line

    fields = parse_fields(args.fields) if args.fields is not None else None
    row = approve_request(Path(args.node_dir), parse_request_id(args.id), fields, args.reason or "")
    print(decision_line(row))
    return ExitCode.OK


def _node_refuse(args: argparse.Namespace) -> int:
    from node.officer_requests import decision_line, refuse_request

    row = refuse_request(Path(args.node_dir), parse_request_id(args.id), args.reason)
    print(decision_line(row))
    return ExitCode.OK


def _add_officer_request_commands(node: Any) -> None:
    """`fedtrace node requests|approve|refuse NODE_DIR …`."""
    p = node.add_parser("requests", help="list follow-up requests (expired ones are flagged)")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--pending", action="store_true", help="only requests awaiting a decision")
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    p.set_defaults(run=_node_requests)
    p = node.add_parser("approve", help="approve a pending follow-up request")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("id", metavar="ID", help="the request id (RQ-…)")
    p.add_argument("--fields", metavar="a,b", help="disclose only these (default: all asked)")
    p.add_argument(
        "--reason", metavar="TEXT", help="why it is approved (recorded with the decision)"
    )
    p.set_defaults(run=_node_approve)
    p = node.add_parser("refuse", help="refuse a pending follow-up request")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("id", metavar="ID", help="the request id (RQ-…)")
    p.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help="why it is refused (recorded with the decision)",
    )
    p.set_defaults(run=_node_refuse)


def _node_monitor_export(args: argparse.Namespace) -> int:
    from node.audit import AUDIT_DIR
    from node.audit.show import entries
    from node.config import load_node_config
    from node.openings import export
    from node.store import NodeDatabase

    node_dir = Path(args.node_dir)
    config = load_node_config(node_dir)
    summary = export(
        NodeDatabase(config.database),
        entries(node_dir / AUDIT_DIR),
        config.jurisdiction,
        args.monitor,
        Path(args.out),
        parse_moment("--since", args.since),
    )
    if args.json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        print(summary.line())
    return ExitCode.OK


def _add_monitor_export(node: Any) -> None:
    p = node.add_parser(
        "monitor-export",
        help="write one monitor's share of the sealed openings this node kept",
        description="Write the sealed openings kept for MONITOR (with the points received, "
        "the node's answers and the epochs' position tags) to a new directory, for the "
        "monitor's 'fedtrace monitor verify'. DIR must not exist or be empty.",
    )
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--monitor", required=True, metavar="NAME", help="the monitor, e.g. OVS")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--since", metavar="ISO", help="only queries received since this time")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=_node_monitor_export)


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    node = commands.add_parser("node", help="run a jurisdiction's node").add_subparsers(
        dest="node_command", required=True, metavar="ACTION"
    )
    p = node.add_parser("init", help="create a node directory")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory to create")
    p.add_argument("--jurisdiction", required=True, help="this node's code, e.g. EE")
    p.add_argument(
        "--ca",
        required=True,
        metavar="DIR",
        help="the directory `fedtrace pki issue` wrote for this node (cert.pem, key.pem, "
        "ca.pem: installed into tls/), or the federation CA's own directory (with ca.key: "
        "a certificate is issued here)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:7001",
        metavar="HOST:PORT",
        help="where the node will listen (default 127.0.0.1:7001)",
    )
    p.set_defaults(run=_node_init)
    p = node.add_parser(
        "ingest",
        help="load a CSV or Parquet file into a standard table",
        description=textwrap.fill(
            "Load a CSV (comma-, semicolon-, tab- or pipe-separated, UTF-8, one header line) "
            "or Parquet file into one table of the exchange schema. Rejected rows load "
            "nothing and exit 1 unless --max-rejects allows them.",
            width=78,
        )
        + "\n\n"
        + describe_tables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("file", metavar="FILE", help="the CSV or Parquet (.parquet, .pq) file")
    p.add_argument(
        "--table",
        required=True,
        choices=("transactions", "subjects", "subject_wallets"),
        help=f"the exchange-schema table to load (its columns are listed above; {SCHEMA_DOC})",
    )
    p.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="load a file even if the same file was ingested before",
    )
    p.add_argument(
        "--max-rejects",
        type=int,
        metavar="N",
        help="load the valid rows when at most N rows are rejected (default 0: any rejected "
        "row loads nothing and exits 1)",
    )
    p.set_defaults(run=_node_ingest)
    p = node.add_parser("rejects", help="list the rows ingests rejected, with line and reason")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    p.add_argument("--limit", type=int, metavar="N", help="at most N rows (newest ingest first)")
    p.set_defaults(run=_node_rejects)
    p = node.add_parser("serve", help="serve the node over mutual TLS")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--listen", metavar="HOST:PORT", help="override node.toml (port 0: any free)")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here, e.g. 127.0.0.1:9464 (default: off)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines on stderr: text, or one JSON object per line "
        "(default: text on a terminal, json otherwise)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="build epochs on this Dask cluster: tls://HOST:PORT, tcp://127.0.0.1:PORT or "
        "'local' (overrides node.toml [compute] scheduler; default: this machine's cores)",
    )
    p.set_defaults(run=_node_serve)
    _add_officer_request_commands(node)
    add_freeze_commands(node)
    p = node.add_parser("shared", help="this node's records an overlap query found shared")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--case", required=True, metavar="REF", help="the case reference")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="default: table"
    )
    p.set_defaults(run=_node_shared)
    add_node_health(node)
    _add_monitor_export(node)
