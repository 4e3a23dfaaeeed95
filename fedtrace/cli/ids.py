"""`fedtrace id normalize`: canonical identifiers, as both sides hash them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fedtrace.errors import ExitCode


def _id_normalize(args: argparse.Namespace) -> int:
    from fedtrace.identifiers import InvalidIdentifier, canonicalize, parse_person

    status = ExitCode.OK
    for value in args.values:
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
        "--kind", required=True, choices=("btc", "eth", "trx", "ltc", "iban", "wallet", "person")
    )
    p.add_argument("values", nargs="+", metavar="VALUE")
    p.set_defaults(run=_id_normalize)
