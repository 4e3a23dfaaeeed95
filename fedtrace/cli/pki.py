"""`fedtrace pki init|issue|revoke`: the secretariat's federation CA."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode


def _pki_init(args: argparse.Namespace) -> int:
    from fedtrace.pki import init_ca

    path = init_ca(Path(args.ca_dir))
    print(f"federation CA created: {path} (keep {Path(args.ca_dir) / 'ca.key'} offline)")
    return ExitCode.OK


def _pki_issue(args: argparse.Namespace) -> int:
    from fedtrace.pki import issue

    path = issue(
        Path(args.ca_dir), Path(args.out_dir), name=args.name, role=args.role, days=args.days
    )
    print(f"{args.role} certificate for {args.name} issued: {path}")
    return ExitCode.OK


def _pki_revoke(args: argparse.Namespace) -> int:
    from fedtrace.revocation import revoke, signature_path

    path, entry = revoke(
        Path(args.ca_dir),
        serial=args.serial or "",
        cert=Path(args.cert) if args.cert else None,
        reason=args.reason,
    )
    print(
        f"certificate serial {entry.serial} revoked in {path}; distribute it to every member"
        f" with its CA signature {signature_path(path).name}"
    )
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    pki = commands.add_parser("pki", help="federation CA and certificates").add_subparsers(
        dest="pki_command", required=True, metavar="ACTION"
    )
    p = pki.add_parser("init", help="create the federation CA")
    p.add_argument("ca_dir", metavar="CA_DIR", help="the CA directory to create")
    p.set_defaults(run=_pki_init)
    p = pki.add_parser("issue", help="issue a node, investigator or monitor certificate")
    p.add_argument("ca_dir", metavar="CA_DIR", help="the federation CA directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the key and certificate")
    p.add_argument("--name", required=True, help="jurisdiction code, e.g. EE")
    p.add_argument(
        "--role",
        required=True,
        choices=("node", "investigator", "monitor"),
        help="a node serves data; an investigator queries; a monitor opens sealed openings",
    )
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.set_defaults(run=_pki_issue)
    p = pki.add_parser(
        "revoke",
        help="revoke a member certificate (writes CA_DIR/revoked.toml and its CA signature)",
    )
    p.add_argument("ca_dir", metavar="CA_DIR", help="the federation CA directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="the certificate's serial number")
    which.add_argument("--cert", metavar="PEM", help="the certificate file itself")
    p.add_argument("--reason", default="", help="e.g. 'key compromise'")
    p.set_defaults(run=_pki_revoke)
