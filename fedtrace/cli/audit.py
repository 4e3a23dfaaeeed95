"""`fedtrace audit verify|show`: the node's signed audit trail."""

from __future__ import annotations

import argparse
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


def _audit_show(args: argparse.Namespace) -> int:
    import datetime as dt

    from node.audit import entries, render_entries, select

    directory, _, _ = _audit_dir(Path(args.node_dir))
    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise FedtraceError(
                f"--since {args.since!r} is not a date such as 2026-11-25 or 2026-11-25T08:00Z"
            ) from None
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    chosen = select(entries(directory), partner=args.partner, case=args.case, since=since)
    sys.stdout.write(render_entries(chosen, args.format))
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    audit = commands.add_parser("audit", help="the node's audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    p = audit.add_parser("verify", help="check the hash chain, signatures and signed head")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.set_defaults(run=_audit_verify)
    p = audit.add_parser("show", help="list audit entries")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--partner", metavar="CODE")
    p.add_argument("--case", metavar="REF")
    p.add_argument("--since", metavar="DATE", help="ISO date or date-time (UTC unless given)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(run=_audit_show)
