"""`fedtrace report verify`: re-check a saved report's signatures anywhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError


def _report_verify(args: argparse.Namespace) -> int:
    from coordinator.verify import load_report, verify_report

    if bool(args.ca) == bool(args.federation):
        raise FedtraceError(
            "report verify needs the federation CA: pass --ca CA.pem or "
            "--federation FED.toml (one of them)"
        )
    from fedtrace.revocation import load_revocations

    revoked_path = Path(args.revoked) if args.revoked else None
    if args.ca:
        ca_path = Path(args.ca)
    else:
        from coordinator.federation import load_federation

        federation = load_federation(Path(args.federation))
        ca_path = federation.ca
        revoked_path = revoked_path or federation.revoked
    try:
        ca_pem = ca_path.read_bytes()
    except OSError as exc:
        raise FedtraceError(f"{ca_path}: cannot read the federation CA: {exc.strerror}") from None
    # A revocation list is trusted only with the CA's signature beside it.
    revoked = load_revocations(revoked_path, ca_pem=ca_pem) if revoked_path else None
    outcome = verify_report(
        load_report(Path(args.file)),
        ca_pem,
        require_investigator_signature=not args.nodes_only,
        revoked=revoked,
    )
    for line in outcome.lines:
        print(line)
    if not outcome.ok:
        print(f"{args.file}: NOT valid: {outcome.failures[0]}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"{args.file}: valid")
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    report = commands.add_parser("report", help="saved query reports").add_subparsers(
        dest="report_command", required=True, metavar="ACTION"
    )
    p = report.add_parser("verify", help="re-check a saved JSON report's signatures")
    p.add_argument("file", metavar="REPORT.json", help="a report saved with --format json")
    p.add_argument("--ca", metavar="CA.pem", help="the federation CA certificate")
    p.add_argument(
        "--federation",
        metavar="FED.toml",
        help="take the CA (and the revocation list, if it names one) from this file",
    )
    p.add_argument(
        "--revoked",
        metavar="revoked.toml",
        help="the federation's signed revocation list: a signature by a revoked certificate "
        "fails (the CA's signature revoked.toml.sig must lie beside it)",
    )
    p.add_argument(
        "--nodes-only",
        action="store_true",
        help="check only the node signatures (a report without an investigator signature)",
    )
    p.set_defaults(run=_report_verify)
