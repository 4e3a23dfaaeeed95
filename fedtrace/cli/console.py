"""`fedtrace console NODE_DIR`: the privacy officer's web console for one node (docs/console.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode


def _console(args: argparse.Namespace) -> int:
    from node.console.launch import plan_listen, serve

    plan = plan_listen(
        args.listen,
        Path(args.tls_cert) if args.tls_cert else None,
        Path(args.tls_key) if args.tls_key else None,
    )
    serve(Path(args.node_dir), plan)
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    p = commands.add_parser(
        "console", help="the privacy officer's web console (requests, audit, policy, budgets)"
    )
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080; port 0 picks a free port); any "
        "non-loopback address needs --tls-cert and --tls-key",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve over HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.set_defaults(run=_console)
