"""`fedtrace id normalize`: canonical identifiers, as both sides hash them.

Values come from the command line or, when none is given, from stdin one per
line, read like a text watchlist (blank lines and ``#`` comments skipped).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError


def _stdin_values() -> Iterable[str]:
    from fedtrace.identifiers.watchlist import without_comment

    if sys.stdin.isatty():
        raise FedtraceError("give VALUE arguments, or pipe the values on stdin (one per line)")
    for line in sys.stdin:
        value = without_comment(line)
        if value:
            yield value


def _id_normalize(args: argparse.Namespace) -> int:
    from fedtrace.identifiers import InvalidIdentifier, canonicalize, parse_person

    status = ExitCode.OK
    for value in args.values or _stdin_values():
        try:
            if args.kind == "person":
                print("\t".join(str(key) for key in parse_person(value)))
            else:
                print(canonicalize(args.kind, value))
        except InvalidIdentifier as exc:
            print(f"invalid {args.kind} {value!r}: {exc.reason}", file=sys.stderr)
            status = ExitCode.FAILED
    return status


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    p = (
        commands.add_parser("id", help="identifier tools")
        .add_subparsers(dest="id_command", required=True, metavar="ACTION")
        .add_parser("normalize", help="print the canonical form of each identifier")
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=("btc", "eth", "trx", "ltc", "iban", "wallet", "person"),
        help="identifier kind (wallet: detect the chain; person: NAME|DATE OF BIRTH[|DOCUMENT])",
    )
    p.add_argument(
        "values",
        nargs="*",
        metavar="VALUE",
        help="identifiers to normalise (none: read them from stdin, one per line)",
    )
    p.set_defaults(run=_id_normalize)
