"""`fedtrace request disclose|preserve|status|export`: follow-ups after a hit."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from fedtrace.cli.args import parse_fields, parse_request_id
from fedtrace.errors import ExitCode, FedtraceError


def _federation(path: str, node: str | None) -> tuple[Any, Any, bytes]:
    from coordinator.federation import load_federation
    from coordinator.match import ensure_investigator_certificate

    federation = load_federation(Path(path))
    try:
        ca_pem = federation.ca.read_bytes()
        cert_pem = federation.cert.read_bytes()
    except OSError as exc:
        raise FedtraceError(f"{path}: cannot read a certificate it names: {exc}") from None
    ensure_investigator_certificate(cert_pem, ca_pem, federation.cert)
    entries = federation.select((node,) if node else None)
    return federation, entries, ca_pem


def _submit(args: argparse.Namespace) -> int:
    from coordinator.followup import (
        FollowUpAsk,
        grpc_transports,
        report_json,
        report_table,
        submit_request,
    )

    if args.request_command == "preserve" and args.days is not None and args.days < 1:
        raise FedtraceError(f"--days {args.days}: a preservation period is at least 1 day")
    federation, entries, ca_pem = _federation(args.federation, args.node)
    ask = FollowUpAsk(
        kind=args.request_command,
        dataset=args.dataset,
        item=args.item,
        case_ref=args.case,
        legal_basis=args.legal_basis,
        reason=args.reason or "",
        fields=parse_fields(getattr(args, "fields", None)),
        preservation_days=getattr(args, "days", None) or 0,
        identifier_kind=args.kind,
    )
    result = submit_request(federation, entries[0], ask, grpc_transports(federation), ca_pem)
    if args.format == "json":
        sys.stdout.write(report_json(args.case, args.request_command, args.dataset, [result]))
    else:
        sys.stdout.write(report_table(args.case, args.request_command, [result]))
    return ExitCode.OK if result.status == "ok" else ExitCode.PARTIAL


def _status(args: argparse.Namespace) -> int:
    from coordinator.followup import grpc_transports, report_json, report_table, request_status

    federation, entries, ca_pem = _federation(args.federation, args.node)
    results = request_status(federation, entries, args.case, grpc_transports(federation), ca_pem)
    if args.format == "json":
        sys.stdout.write(report_json(args.case, "request-status", "", results))
    else:
        sys.stdout.write(report_table(args.case, "request status", results))
    return ExitCode.OK if all(r.status == "ok" for r in results) else ExitCode.PARTIAL


def _export(args: argparse.Namespace) -> int:
    from coordinator.followup import (
        case_record,
        case_record_html,
        grpc_transports,
        request_status,
    )
    from coordinator.verify import sign_report
    from fedtrace.pki import read_key_pem

    request_id = parse_request_id(args.id)
    federation, entries, ca_pem = _federation(args.federation, args.node)
    [result] = request_status(
        federation, entries, args.case, grpc_transports(federation), ca_pem, request_id
    )
    if result.status != "ok" or not result.requests:
        print(f"fedtrace: error: {result.node}: {result.status}: {result.reason}", file=sys.stderr)
        return ExitCode.PARTIAL
    document = case_record(result.requests[0], federation.investigator, dt.datetime.now(dt.UTC))
    document = sign_report(document, read_key_pem(federation.key), federation.cert.read_bytes())
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.case}-{result.node}-{request_id}".replace("/", "_")
        json_path, html_path = out / f"{stem}.json", out / f"{stem}.html"
        json_path.write_text(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        html_path.write_text(case_record_html(document), encoding="utf-8")
    except OSError as exc:
        raise FedtraceError(f"{out}: cannot write the case record: {exc.strerror}") from None
    print(
        f"case record written: {json_path} (verify with `fedtrace report verify`) and {html_path}"
    )
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    request = commands.add_parser(
        "request", help="follow-up requests after a hit: disclosure and preservation"
    ).add_subparsers(dest="request_command", required=True, metavar="ACTION")
    for name, text in (
        ("disclose", "ask a node for the fields it holds on one item"),
        ("preserve", "ask a node to preserve (freeze) its record of one item"),
    ):
        p = request.add_parser(name, help=text)
        p.add_argument("--federation", required=True, metavar="FED.toml")
        p.add_argument("--node", required=True, metavar="CODE")
        p.add_argument("--dataset", required=True, metavar="D")
        p.add_argument(
            "--item",
            required=True,
            metavar="ID",
            help="wallet address, or NAME|DATE OF BIRTH[|DOCUMENT] for persons",
        )
        p.add_argument("--case", required=True, metavar="REF")
        p.add_argument("--legal-basis", required=True, metavar="B")
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
        else:
            p.add_argument(
                "--days",
                type=int,
                metavar="N",
                help="preservation period (default: the longest the policy allows)",
            )
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(run=_submit)
    p = request.add_parser("status", help="the state of your requests under a case")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--node", metavar="CODE", help="only this node (default: every node)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=_status)
    p = request.add_parser("export", help="write a signed case record (JSON and HTML)")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--node", required=True, metavar="CODE")
    p.add_argument("--id", required=True, metavar="ID")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(run=_export)
