"""`fedtrace node release NODE_DIR ID --reason TEXT`: the officer lifts a freeze order.

Approving a freeze is `fedtrace node approve` (as for every follow-up); this module
adds the one command only freezes have. `add_freeze_commands` is called with the
`node` command group's sub-parsers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedtrace.cli.args import parse_request_id
from fedtrace.errors import ExitCode


def _node_release(args: argparse.Namespace) -> int:
    from node.officer_requests import decision_line, release_request

    row = release_request(Path(args.node_dir), parse_request_id(args.id), args.reason)
    print(decision_line(row))
    return ExitCode.OK


def add_freeze_commands(node_actions: Any) -> None:
    """Add `release` to the `fedtrace node` command group."""
    p = node_actions.add_parser("release", help="lift a freeze (restraint) order in force")
    p.add_argument("node_dir", metavar="NODE_DIR", help="the node directory")
    p.add_argument("id", metavar="ID", help="the request id (RQ-…)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why the freeze is lifted")
    p.set_defaults(run=_node_release)
