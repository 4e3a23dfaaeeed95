"""`fedtrace policy check|explain|diff`: the privacy officer's policy tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError


def _policy_check(args: argparse.Namespace) -> int:
    from node.policy.check import check_policies

    report = check_policies(
        [Path(f) for f in args.files], node_dir=Path(args.node) if args.node else None
    )
    for diagnostic in report.diagnostics:
        print(diagnostic.format())
    for node_toml in report.nodes:
        print(f"checked against {node_toml}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return report.exit_code(strict=args.strict)


def _policy_explain(args: argparse.Namespace) -> int:
    from node.policy import load_policy
    from node.policy.explain import explain

    path = Path(args.file)
    policy = load_policy(path)
    datasets: tuple[str, ...] = ()
    if (path.parent / "node.toml").exists():
        from node.config import load_node_config

        try:
            datasets = tuple(d.name for d in load_node_config(path.parent).datasets)
        except FedtraceError:
            datasets = ()
    partner = _partner(policy.partners(), args.partner)
    sys.stdout.write(explain(policy, partner, args.dataset, datasets))
    return ExitCode.OK


def _partner(known: Sequence[str], asked: str) -> str:
    """The partner code as the policy spells it (any case); a note when no grant names it."""
    import difflib

    named = [p for p in known if p != "*"]
    exact = next((p for p in named if p.upper() == asked.strip().upper()), None)
    if exact is not None:
        return exact
    code = asked.strip().upper()
    close = difflib.get_close_matches(code, named, n=1, cutoff=0.5)
    guess = f" (did you mean {close[0]}?)" if close else ""
    others = ", ".join(named) or "none"
    wildcard = '; grants to any member ("*") apply to it' if "*" in known else ""
    print(
        f"note: no grant names partner {code!r}{guess}; partners named: {others}{wildcard}",
        file=sys.stderr,
    )
    return code


def _policy_diff(args: argparse.Namespace) -> int:
    from node.policy import load_policy
    from node.policy.diff import diff

    sys.stdout.write(diff(load_policy(Path(args.old)), load_policy(Path(args.new))))
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add this command group to the root parser."""
    policy = commands.add_parser(
        "policy", help="check and explain disclosure policies"
    ).add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    p = policy.add_parser("check", help="report every problem as file:line:column")
    p.add_argument("files", nargs="+", metavar="FILE", help="the policy files to check")
    p.add_argument(
        "--node",
        metavar="NODE_DIR",
        help="also check datasets and columns against this node's node.toml "
        "(default: the node.toml beside FILE when it names FILE or is the policy's "
        "jurisdiction, else the one node directory of that jurisdiction beside FILE)",
    )
    p.add_argument("--strict", action="store_true", help="fail (exit 1) on warnings too")
    p.set_defaults(run=_policy_check)
    p = policy.add_parser("explain", help="what a partner may learn, in plain language")
    p.add_argument("file", metavar="FILE", help="the policy file")
    p.add_argument("--partner", required=True, metavar="CODE", help="partner code (any case)")
    p.add_argument("--dataset", metavar="D", help="only this dataset (default: all)")
    p.set_defaults(run=_policy_explain)
    p = policy.add_parser("diff", help="what changes for each partner between two policies")
    p.add_argument("old", metavar="OLD", help="the policy file in force")
    p.add_argument("new", metavar="NEW", help="the proposed policy file")
    p.set_defaults(run=_policy_diff)
