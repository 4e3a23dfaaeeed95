"""`fedtrace demo`: a three-jurisdiction federation on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from fedtrace.demo import run_demo

    return run_demo(keep=Path(args.keep) if args.keep else None)


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    p = commands.add_parser("demo", help="run a three-jurisdiction demo federation")
    p.add_argument("--keep", metavar="DIR", help="build the federation here and keep it")
    p.set_defaults(run=_demo)
