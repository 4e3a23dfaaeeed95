"""`fedtrace monitor verify`: a monitor judges the sealed queries a node exported to it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedtrace.cli.args import parse_moment
from fedtrace.errors import ExitCode


def _verify(args: argparse.Namespace) -> int:
    from fedtrace.monitor import CONSISTENT, load_monitor_key, read_export, verify_export
    from fedtrace.monitor.verify import check_monitor_key
    from fedtrace.pki import CERT_FILE, read_key_pem

    since = parse_moment("--since", args.since)
    key_path = Path(args.key)
    key = load_monitor_key(read_key_pem(key_path))
    export = read_export(Path(args.dir))
    beside = key_path.with_name(CERT_FILE)
    if beside.is_file():  # `pki issue` writes cert.pem next to key.pem
        check_monitor_key(key, beside.read_bytes(), export.monitor)
    report = verify_export(export, key, case=args.case, since=since)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for verdict in report.verdicts:
            if verdict.status != CONSISTENT:
                print(verdict.line())
        print(
            f"checked {len(report.verdicts)} queries: {report.consistent} consistent, "
            f"{report.misuse} misuse"
        )
    if report.misuse:
        if report.verdicts and not report.opened:
            print(
                f"note: no sealed opening opened under {key_path}: is it monitor "
                f"{export.monitor}'s key?",
                file=sys.stderr,
            )
        if not args.json:
            print("the signed statements are the evidence: --json prints them", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    monitor = commands.add_parser(
        "monitor", help="a monitor's checks of sealed openings"
    ).add_subparsers(dest="monitor_command", required=True, metavar="ACTION")
    p = monitor.add_parser(
        "verify",
        help="open every sealed query of a monitor export and recompute what was sent "
        "(exit 1 on provable misuse)",
    )
    p.add_argument("dir", metavar="DIR", help="a directory written by `node monitor-export`")
    p.add_argument(
        "--key", required=True, metavar="MONITOR_KEY", help="the monitor's key.pem (pki issue)"
    )
    p.add_argument("--case", metavar="REF", help="only this case reference")
    p.add_argument(
        "--since", metavar="ISO", help="only queries from this date or date-time (UTC unless given)"
    )
    p.add_argument("--json", action="store_true", help="JSON: counts and every query's verdict")
    p.set_defaults(run=_verify)
