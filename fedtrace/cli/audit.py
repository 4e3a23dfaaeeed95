"""`fedtrace audit verify|show`: the node's signed audit trail."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError


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
    if not result.ok:
        print(f"{directory}: audit trail NOT intact: {result.problem}")
        return ExitCode.FAILED
    print(
        f"{directory}: audit trail intact: {result.entries} entries, hash chain, signatures "
        "and signed head verified"
    )
    return ExitCode.OK


def _moment(option: str, text: str | None, *, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO date or date-time (UTC unless given); a bare --until date includes that day."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FedtraceError(
            f"{option} {text!r} is not a date such as 2026-11-25 or 2026-11-25T08:00Z"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if end_of_day and len(text.strip()) == 10:
        moment += dt.timedelta(days=1, microseconds=-1)
    return moment


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
        since=_moment("--since", args.since),
        until=_moment("--until", args.until, end_of_day=True),
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
    p.set_defaults(run=_audit_verify)
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
