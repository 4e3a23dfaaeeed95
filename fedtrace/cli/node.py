"""`fedtrace node …`: an operator's and officer's commands on one node directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedtrace.cli.args import parse_fields, parse_request_id
from fedtrace.cli.health import add_node_health
from fedtrace.errors import ExitCode


def _node_init(args: argparse.Namespace) -> int:
    from node.setup import init_node

    result = init_node(Path(args.node_dir), args.jurisdiction, Path(args.ca), args.listen)
    print(f"node {args.jurisdiction} created in {result.node_dir}")
    if not result.certificate_issued:
        print(
            f"  {args.ca} holds no CA key: have the secretariat issue a node certificate into "
            f"{result.node_dir / 'tls'} (cert.pem, key.pem)"
        )
    print(f"  policy: {result.node_dir / 'policy.toml'} denies everything until a grant is added")
    return ExitCode.OK


def _node_ingest(args: argparse.Namespace) -> int:
    from node import store
    from node.config import load_node_config

    config = load_node_config(Path(args.node_dir))
    with store.NodeDatabase(config.database).session() as con:
        summary = store.ingest(
            con, Path(args.file), args.table, allow_duplicate=args.allow_duplicate
        )
    print(
        f"{summary.file}: {summary.rows_loaded:,} of {summary.rows_read:,} rows loaded into "
        f"{summary.table}; {summary.rows_rejected:,} rejected (data version "
        f"{summary.data_version})"
    )
    if summary.extra_columns:
        print(f"  extra columns kept: {', '.join(summary.extra_columns)}")
    for rejection in summary.first_rejections:
        print(f"  line {rejection.line}: {rejection.reason}")
    if summary.rows_rejected > len(summary.first_rejections):
        print("  … all rejections are in the node database's rejected_rows table")
    return ExitCode.OK


def _node_serve(args: argparse.Namespace) -> int:
    from node.server import serve

    return serve(
        Path(args.node_dir), args.listen, log_format=args.log_format, metrics_listen=args.metrics
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
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--pending", action="store_true", help="only requests awaiting a decision")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=_node_requests)
    p = node.add_parser("approve", help="approve a pending follow-up request")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("id", metavar="ID")
    p.add_argument("--fields", metavar="a,b", help="disclose only these (default: all asked)")
    p.add_argument("--reason", metavar="TEXT")
    p.set_defaults(run=_node_approve)
    p = node.add_parser("refuse", help="refuse a pending follow-up request")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", required=True, metavar="TEXT")
    p.set_defaults(run=_node_refuse)


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    node = commands.add_parser("node", help="run a jurisdiction's node").add_subparsers(
        dest="node_command", required=True, metavar="ACTION"
    )
    p = node.add_parser("init", help="create a node directory")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--jurisdiction", required=True)
    p.add_argument("--ca", required=True, metavar="CA_DIR")
    p.add_argument("--listen", default="127.0.0.1:7001", metavar="HOST:PORT")
    p.set_defaults(run=_node_init)
    p = node.add_parser("ingest", help="load a CSV or Parquet file into a standard table")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--table", required=True, choices=("transactions", "subjects", "subject_wallets")
    )
    p.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="load a file even if the same file was ingested before",
    )
    p.set_defaults(run=_node_ingest)
    p = node.add_parser("serve", help="serve the node over mutual TLS")
    p.add_argument("node_dir", metavar="NODE_DIR")
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
    p.set_defaults(run=_node_serve)
    _add_officer_request_commands(node)
    p = node.add_parser("shared", help="this node's records an overlap query found shared")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(run=_node_shared)
    add_node_health(node)
