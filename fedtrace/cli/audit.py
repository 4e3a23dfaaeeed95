"""`fedtrace audit verify|show|heads`: the node's signed audit trail, and partners' evidence of it.

`audit verify NODE_DIR [--heads HEADS.json]` checks the trail (and, with
``--heads``, that it still holds every signed head partners collected);
`audit heads --federation FED.toml --out HEADS.json` is the investigator's side:
it collects every node's signed head into a file of evidence (docs/audit-heads.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtrace.cli.args import parse_moment
from fedtrace.errors import ExitCode, FedtraceError

if TYPE_CHECKING:
    from coordinator.heads import CollectedHead
    from node.audit.heads import HeldHead


def _audit_dir(node_dir: Path) -> tuple[Path, bytes | None, str | None]:
    from node.audit import AUDIT_DIR
    from node.config import load_node_config

    config = load_node_config(node_dir)
    ca_pem = config.tls.ca.read_bytes() if config.tls.ca.exists() else None
    return node_dir / AUDIT_DIR, ca_pem, config.jurisdiction


def _audit_verify(args: argparse.Namespace) -> int:
    from fedtrace.revocation import load_revocations
    from node.audit import verify_trail
    from node.audit.anchor import load_anchor
    from node.audit.heads import check_heads
    from node.config import load_node_config

    node_dir = Path(args.node_dir)
    directory, ca_pem, jurisdiction = _audit_dir(node_dir)
    config = load_node_config(node_dir)
    # A list that is unsigned or badly signed is refused here too (ConfigError, one line).
    revoked = load_revocations(config.tls.revoked, ca_pem=ca_pem) if ca_pem else None
    result = verify_trail(
        directory,
        ca_pem=ca_pem,
        jurisdiction=jurisdiction,
        anchor=load_anchor(config.database),
        revoked=revoked,
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    problems = [result.problem] if not result.ok else []
    covered = ""
    if args.heads:
        held = _held_heads(Path(args.heads))
        checked = check_heads(directory, held, jurisdiction=config.jurisdiction, ca_pem=ca_pem)
        for note in checked.notes:
            print(f"note: {note}", file=sys.stderr)
        problems.extend(checked.problems)
        covered = f"; {checked.covered} signed heads from {args.heads} held"
    if problems:
        for problem in problems:
            print(f"{directory}: audit trail NOT intact: {problem}")
        return ExitCode.FAILED
    print(
        f"{directory}: audit trail intact: {result.entries} entries, hash chain, signatures "
        f"and signed head verified{covered}"
    )
    return ExitCode.OK


def _held_heads(path: Path) -> list[HeldHead]:
    from node.audit.heads import load_held_heads

    try:
        return load_held_heads(path)
    except ValueError as exc:
        raise FedtraceError(str(exc)) from None


def _audit_heads(args: argparse.Namespace) -> int:
    """Collect every node's signed head (or a report's) into HEADS.json; exit 1 if one is bad."""
    from coordinator.heads import (
        CollectedHead,
        head_entry,
        heads_document,
        heads_from_report,
        load_heads,
        merge_heads,
    )
    from fedtrace.wire import NodeStatus

    if not args.federation and not args.from_report:
        raise FedtraceError("give --federation FED.toml, --from-report REPORT.json, or both")
    out = Path(args.out)
    earlier = load_heads(out)
    collected: list[CollectedHead] = []
    fresh: list[dict[str, Any]] = []
    for report in args.from_report or ():
        found, problems = heads_from_report(_read_report(Path(report)))
        fresh.extend(found)
        collected.extend(CollectedHead(report, NodeStatus.ERROR, p, bad=True) for p in problems)
    if args.federation:
        collected += _collect(args)
        fresh.extend(
            head_entry(c.head, c.certificate_pem)
            for c in collected
            if c.verified and c.head is not None
        )
    bad = [c for c in collected if c.bad]
    unreachable = [c for c in collected if not c.verified and not c.bad]
    merged = merge_heads(earlier, fresh)
    document = heads_document(merged, unreachable)
    try:
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise FedtraceError(f"{out}: cannot write the heads file: {exc.strerror}") from None
    if args.json:
        collection = {**document, "heads": fresh}
        if bad:
            collection["failed"] = [{"node": c.node, "reason": c.reason} for c in bad]
        sys.stdout.write(json.dumps(collection, indent=2) + "\n")
    else:
        for c in collected:
            if c.verified and c.head is not None:
                print(f"{c.node}: ok, {c.head.describe()}")
            elif c.bad:
                print(f"{c.node}: FAILED, {c.reason}")
            else:
                print(f"{c.node}: unreachable, {c.reason}")
        print(f"{out}: {len(merged)} signed heads kept ({len(merged) - len(earlier)} new)")
    if bad:
        return ExitCode.FAILED
    return ExitCode.PARTIAL if unreachable else ExitCode.OK


def _read_report(path: Path) -> dict[str, Any]:
    from coordinator.verify import load_report

    return load_report(path)


def _collect(args: argparse.Namespace) -> list[CollectedHead]:
    from coordinator.fanout import NodeTrust
    from coordinator.federation import load_federation
    from coordinator.heads import collect_heads
    from coordinator.transport import GrpcConnections
    from fedtrace.revocation import load_revocations

    federation = load_federation(Path(args.federation))
    connections = GrpcConnections(federation)
    try:
        revoked = (
            load_revocations(federation.revoked, ca_pem=connections.ca_pem)
            if federation.revoked
            else None
        )
        trust = NodeTrust(connections.ca_pem, revoked)
        return collect_heads(federation.nodes, connections, trust, federation.deadline_seconds)
    finally:
        connections.close()


def _audit_show(args: argparse.Namespace) -> int:
    import threading

    from node.audit import entries, render_entries, select
    from node.audit.show import Filters, follow, partner_hint

    if args.limit is not None and args.limit < 0:
        raise FedtraceError(f"--limit {args.limit}: give 0 or more entries")
    directory, _, _ = _audit_dir(Path(args.node_dir))
    filters = Filters(
        partner=args.partner,
        case=args.case,
        since=parse_moment("--since", args.since),
        until=parse_moment("--until", args.until, end_of_day=True),
    )
    everything = entries(directory)
    chosen = select(
        everything,
        partner=filters.partner,
        case=filters.case,
        since=filters.since,
        until=filters.until,
        limit=args.limit,
    )
    if args.partner and not chosen:
        hint = partner_hint(everything, args.partner)
        if hint:
            print(f"note: {hint}", file=sys.stderr)
    sys.stdout.write(render_entries(chosen, args.format))
    sys.stdout.flush()
    if not args.follow:
        return ExitCode.OK

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        follow(directory, filters, args.format, write, threading.Event(), after=len(everything))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how following ends
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    audit = commands.add_parser("audit", help="the node's audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    p = audit.add_parser("verify", help="check the hash chain, signatures and signed head")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument(
        "--heads",
        metavar="HEADS.json",
        help="also check that the trail holds every signed head partners collected "
        "(`fedtrace audit heads`)",
    )
    p.set_defaults(run=_audit_verify)
    p = audit.add_parser(
        "heads", help="collect every node's signed audit head into a file of evidence"
    )
    p.add_argument(
        "--federation", metavar="FED.toml", help="ask every node of this federation (GetInfo)"
    )
    p.add_argument(
        "--from-report",
        action="append",
        metavar="REPORT.json",
        help="take the heads a JSON report's results carry (repeatable)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="HEADS.json",
        help="the heads file; an existing one is kept and added to",
    )
    p.add_argument("--json", action="store_true", help="print this collection as JSON")
    p.set_defaults(run=_audit_heads)
    p = audit.add_parser("show", help="list audit entries")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("--partner", metavar="CODE", help="only this partner (any case)")
    p.add_argument("--case", metavar="REF", help="only this case reference")
    p.add_argument("--since", metavar="DATE", help="ISO date or date-time (UTC unless given)")
    p.add_argument(
        "--until", metavar="DATE", help="up to this date (the whole day) or date-time, UTC"
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N matching entries")
    p.add_argument(
        "--follow",
        action="store_true",
        help="then print new entries as they are appended, until Ctrl-C (JSON: one per line)",
    )
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="default: table"
    )
    p.set_defaults(run=_audit_show)
