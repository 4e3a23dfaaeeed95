"""`fedtrace request disclose|preserve|freeze|status|export`: follow-ups after a hit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedtrace.cli.args import (
    add_case,
    add_dataset,
    add_federation,
    add_format,
    add_legal_basis,
    parse_fields,
    parse_request_id,
)
from fedtrace.errors import ExitCode, FedtraceError


def _client(path: str, node: str | None) -> Any:
    """A client of the federation, after checking our certificate and the node's name."""
    from coordinator.federation import load_federation
    from fedtrace.api import FederationClient

    federation = load_federation(Path(path))
    client = FederationClient(federation)
    federation.select((node,) if node else None)
    return client


def _submit(args: argparse.Namespace) -> int:
    if args.request_command == "preserve" and args.days is not None and args.days < 1:
        raise FedtraceError(f"--days {args.days}: a preservation period is at least 1 day")
    if args.request_command == "freeze" and (args.days < 1 or args.amount_eur < 1):
        raise FedtraceError("a freeze order needs --days and --amount-eur of at least 1")
    with _client(args.federation, args.node) as client:
        if args.request_command == "disclose":
            report = client.request_disclose(
                node=args.node,
                dataset=args.dataset,
                item=args.item,
                case=args.case,
                legal_basis=args.legal_basis,
                fields=parse_fields(args.fields),
                reason=args.reason,
                kind=args.kind,
            )
        elif args.request_command == "freeze":
            report = client.request_freeze(
                node=args.node,
                dataset=args.dataset,
                item=args.item,
                case=args.case,
                legal_basis=args.legal_basis,
                amount_eur=args.amount_eur,
                days=args.days,
                reason=args.reason,
                kind=args.kind,
            )
        else:
            report = client.request_preserve(
                node=args.node,
                dataset=args.dataset,
                item=args.item,
                case=args.case,
                legal_basis=args.legal_basis,
                days=args.days,
                reason=args.reason,
                kind=args.kind,
            )
    sys.stdout.write(report.render(args.format))
    return ExitCode.OK if report.complete else ExitCode.PARTIAL


def _status(args: argparse.Namespace) -> int:
    with _client(args.federation, args.node) as client:
        report = client.request_status(case=args.case, node=args.node)
    sys.stdout.write(report.render(args.format))
    return ExitCode.OK if report.complete else ExitCode.PARTIAL


def _export(args: argparse.Namespace) -> int:
    request_id = parse_request_id(args.id)
    with _client(args.federation, args.node) as client:
        export = client.request_export(case=args.case, node=args.node, id=request_id, out=args.out)
    print(
        f"case record written: {export.json_path} (verify with `fedtrace report verify`) "
        f"and {export.html_path}"
    )
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    request = commands.add_parser(
        "request", help="follow-up requests after a hit: disclosure, preservation and freeze"
    ).add_subparsers(dest="request_command", required=True, metavar="ACTION")
    for name, text in (
        ("disclose", "ask a node for the fields it holds on one item"),
        ("preserve", "ask a node to preserve its record of one item"),
        ("freeze", "ask a node to freeze (restrain) the assets behind one item"),
    ):
        p = request.add_parser(name, help=text)
        add_federation(p)
        p.add_argument("--node", required=True, metavar="CODE", help="the node to ask")
        add_dataset(p, "D")
        p.add_argument(
            "--item",
            required=True,
            metavar="ID",
            help="wallet address, or NAME|DATE OF BIRTH[|DOCUMENT] for persons",
        )
        add_case(p)
        add_legal_basis(p, required=True)
        p.add_argument("--reason", metavar="TEXT", help="for the partner's officer")
        p.add_argument(
            "--kind",
            choices=("wallet", "person"),
            help="identifier kind (default: the node's dataset kind)",
        )
        if name == "disclose":
            p.add_argument(
                "--fields",
                metavar="a,b",
                help="fields asked (default: every field the policy allows)",
            )
        elif name == "preserve":
            p.add_argument(
                "--days",
                type=int,
                metavar="N",
                help="preservation period (default: the longest the policy allows)",
            )
        else:
            p.add_argument(
                "--amount-eur",
                required=True,
                type=int,
                metavar="N",
                help="the amount to restrain, in whole euros",
            )
            p.add_argument(
                "--days",
                required=True,
                type=int,
                metavar="D",
                help="how long the freeze holds once approved (at most the policy's limit)",
            )
        add_format(p, ("table", "json"))
        p.set_defaults(run=_submit)
    p = request.add_parser("status", help="the state of your requests under a case")
    add_federation(p)
    add_case(p)
    p.add_argument("--node", metavar="CODE", help="only this node (default: every node)")
    add_format(p, ("table", "json"))
    p.set_defaults(run=_status)
    p = request.add_parser("export", help="write a signed case record (JSON and HTML)")
    add_federation(p)
    add_case(p)
    p.add_argument("--node", required=True, metavar="CODE", help="the node holding the request")
    p.add_argument(
        "--id", required=True, metavar="ID", help="the request id (RQ-…, as `status` lists it)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="directory to write the JSON and HTML into"
    )
    p.set_defaults(run=_export)
