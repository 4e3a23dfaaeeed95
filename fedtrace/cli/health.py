"""`fedtrace node health`: is a node serving? For operators, container health checks and systemd.

Two forms, one answer (exit 0 when every node checked is serving, 3 otherwise):

    fedtrace node health --federation FED.toml [--node NAME] [--format table|json]
    fedtrace node health NODE_DIR [--address HOST:PORT]

The first asks every node of FED.toml (or one) with the investigator's
certificate; the second is a node checking itself with its own certificate at
the address in its node.toml, as a HEALTHCHECK or a monitoring probe does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtrace.errors import ExitCode, FedtraceError

if TYPE_CHECKING:  # the library is imported in the handlers, so `fedtrace --help` stays fast
    from fedtrace.health import NodeHealth


def _federation_health(args: argparse.Namespace, timeout: float) -> tuple[NodeHealth, ...]:
    from coordinator.federation import load_federation
    from fedtrace.health import MemberCredentials, check_nodes

    federation = load_federation(Path(args.federation))
    entries = federation.select((args.node,) if args.node else None)
    credentials = MemberCredentials.from_files(federation.ca, federation.cert, federation.key)
    return check_nodes(
        [(entry.name, entry.address) for entry in entries], credentials, timeout=timeout
    )


def _own_health(args: argparse.Namespace, timeout: float) -> tuple[NodeHealth, ...]:
    from fedtrace.health import MemberCredentials, check_node, dial_address
    from node.config import load_node_config, parse_listen

    config = load_node_config(Path(args.node_dir))
    address = args.address or dial_address(config.listen)
    parse_listen(address, "--address" if args.address else str(config.node_dir / "node.toml"))
    credentials = MemberCredentials.from_files(config.tls.ca, config.tls.cert, config.tls.key)
    return (check_node(config.jurisdiction, address, credentials, timeout=timeout),)


def _table(results: tuple[NodeHealth, ...]) -> str:
    rows = [("NODE", "ADDRESS", "STATUS", "REASON")]
    rows += [(r.node, r.address, r.state.value, r.reason) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)).rstrip()
        + (f"  {row[3]}" if row[3] else "")
        + "\n"
        for row in rows
    )


def _node_health(args: argparse.Namespace) -> int:
    from fedtrace.health import DEFAULT_TIMEOUT_SECONDS

    timeout = DEFAULT_TIMEOUT_SECONDS if args.timeout is None else args.timeout
    if (args.node_dir is None) == (args.federation is None):
        raise FedtraceError("give either NODE_DIR (a node checks itself) or --federation FED.toml")
    if args.node and args.federation is None:
        raise FedtraceError("--node selects a node of --federation FED.toml; give --federation")
    if args.address and args.node_dir is None:
        raise FedtraceError("--address overrides NODE_DIR's listen address; give NODE_DIR")
    if timeout <= 0:
        raise FedtraceError(f"--timeout must be positive, not {timeout:g}")
    results = _federation_health(args, timeout) if args.federation else _own_health(args, timeout)
    if args.format == "json":
        print(json.dumps({"nodes": [r.as_json() for r in results]}, indent=2))
    else:
        print(_table(results), end="")
    return ExitCode.OK if all(r.serving for r in results) else ExitCode.PARTIAL


def add_node_health(node_actions: Any) -> None:
    """Add `health` to the `fedtrace node` sub-commands (`node_actions` is their sub-parsers)."""
    p = node_actions.add_parser(
        "health",
        help="is a node serving? (exit 0 when every node checked serves, 3 otherwise)",
        description="Ask nodes' gRPC health service over mutual TLS. Exit 0 when every "
        "node checked is serving, 3 when any is not serving or unreachable.",
    )
    p.add_argument(
        "node_dir",
        nargs="?",
        metavar="NODE_DIR",
        help="check this node with its own certificate, at the listen address in its node.toml",
    )
    p.add_argument("--federation", metavar="FED.toml", help="check the nodes of this roster")
    p.add_argument("--node", metavar="NAME", help="only this node of FED.toml")
    p.add_argument(
        "--address", metavar="HOST:PORT", help="with NODE_DIR: dial this instead of node.toml's"
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for each node's answer (default 5)",
    )
    p.set_defaults(run=_node_health)
