"""The `fedtrace` command: a thin layer that parses arguments and calls the library.

One module per command group (`pki`, `node`, `query`, `request`, `report`, `policy`,
`audit`, `id`, `demo`, `console`, `monitor`); each adds its sub-parser in `register` and imports the
library only inside its handlers, so `fedtrace --help` stays fast. Only this
package parses argv. Every failure the user can act on reaches them as one line on
stderr and a named exit code; nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedtrace import __version__
from fedtrace.cli import (
    audit,
    console,
    demo,
    ids,
    monitor,
    node,
    pki,
    policy,
    query,
    report,
    request,
)
from fedtrace.errors import FedtraceError

GROUPS = (pki, node, query, ids, demo, policy, audit, report, request, console, monitor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtrace",
        description="Privacy-preserving federated queries for cross-border asset tracing.",
    )
    parser.add_argument("--version", action="version", version=f"fedtrace {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except FedtraceError as exc:
        print(f"fedtrace: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("fedtrace: interrupted", file=sys.stderr)
        return 130
