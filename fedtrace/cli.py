"""The `fedtrace` command: a thin layer that parses arguments and calls the library.

Every failure the user can act on reaches them as one line on stderr and a
named exit code; nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedtrace.errors import ExitCode, FedtraceError
from fedtrace.followup_cli import add_officer_request_commands, add_request_commands

Command = Callable[[argparse.Namespace], int]


def _pki_init(args: argparse.Namespace) -> int:
    from fedtrace.pki import init_ca

    path = init_ca(Path(args.ca_dir))
    print(f"federation CA created: {path} (keep {Path(args.ca_dir) / 'ca.key'} offline)")
    return ExitCode.OK


def _pki_issue(args: argparse.Namespace) -> int:
    from fedtrace.pki import issue

    path = issue(
        Path(args.ca_dir), Path(args.out_dir), name=args.name, role=args.role, days=args.days
    )
    print(f"{args.role} certificate for {args.name} issued: {path}")
    return ExitCode.OK


def _pki_revoke(args: argparse.Namespace) -> int:
    from fedtrace.revocation import revoke

    path, entry = revoke(
        Path(args.ca_dir),
        serial=args.serial or "",
        cert=Path(args.cert) if args.cert else None,
        reason=args.reason,
    )
    print(f"certificate serial {entry.serial} revoked in {path}; distribute it to every member")
    return ExitCode.OK


def _node_init(args: argparse.Namespace) -> int:
    from node.setup import init_node

    result = init_node(Path(args.node_dir), args.jurisdiction, Path(args.ca), args.listen)
    print(f"node {args.jurisdiction} created in {result.node_dir}")
    if not result.certificate_issued:
        print(
            f"  {args.ca} holds no CA key: have the secretariat issue a node certificate into "
            f"{result.node_dir / 'tls'} (cert.pem, key.pem)"
        )
    print(f"  policy: {result.node_dir / 'policy.toml'} denies everything until a grant is added")
    return ExitCode.OK


def _node_ingest(args: argparse.Namespace) -> int:
    from node import store
    from node.config import load_node_config

    config = load_node_config(Path(args.node_dir))
    with store.NodeDatabase(config.database).session() as con:
        summary = store.ingest(
            con, Path(args.file), args.table, allow_duplicate=args.allow_duplicate
        )
    print(
        f"{summary.file}: {summary.rows_loaded:,} of {summary.rows_read:,} rows loaded into "
        f"{summary.table}; {summary.rows_rejected:,} rejected (data version "
        f"{summary.data_version})"
    )
    if summary.extra_columns:
        print(f"  extra columns kept: {', '.join(summary.extra_columns)}")
    for rejection in summary.first_rejections:
        print(f"  line {rejection.line}: {rejection.reason}")
    if summary.rows_rejected > len(summary.first_rejections):
        print("  … all rejections are in the node database's rejected_rows table")
    return ExitCode.OK


def _node_serve(args: argparse.Namespace) -> int:
    from node.server import serve

    return serve(Path(args.node_dir), args.listen)


def _query_overlap(args: argparse.Namespace) -> int:
    from coordinator.overlap_report import query_overlap

    return query_overlap(args)


def _node_shared(args: argparse.Namespace) -> int:
    from node.shared import list_for_case

    sys.stdout.write(list_for_case(Path(args.node_dir), args.case, args.format))
    return ExitCode.OK


def _query_match(args: argparse.Namespace) -> int:
    from coordinator.commands import query_match

    return query_match(args)


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


def _demo(args: argparse.Namespace) -> int:
    from fedtrace.demo import run_demo

    return run_demo(keep=Path(args.keep) if args.keep else None)


def _policy_check(args: argparse.Namespace) -> int:
    from node.policy_check import check_policies

    report = check_policies(
        [Path(f) for f in args.files], node_dir=Path(args.node) if args.node else None
    )
    for diagnostic in report.diagnostics:
        print(diagnostic.format())
    print(report.summary(), file=sys.stderr)
    return report.exit_code(strict=args.strict)


def _policy_explain(args: argparse.Namespace) -> int:
    from node.policy import load_policy
    from node.policy_explain import explain

    path = Path(args.file)
    policy = load_policy(path)
    datasets: tuple[str, ...] = ()
    if (path.parent / "node.toml").exists():
        from node.config import load_node_config

        try:
            datasets = tuple(d.name for d in load_node_config(path.parent).datasets)
        except FedtraceError:
            datasets = ()
    sys.stdout.write(explain(policy, args.partner, args.dataset, datasets))
    return ExitCode.OK


def _policy_diff(args: argparse.Namespace) -> int:
    from node.policy import load_policy
    from node.policy_explain import diff

    sys.stdout.write(diff(load_policy(Path(args.old)), load_policy(Path(args.new))))
    return ExitCode.OK


def _audit_dir(node_dir: Path) -> tuple[Path, bytes | None, str | None]:
    from node.audit import AUDIT_DIR
    from node.config import load_node_config

    config = load_node_config(node_dir)
    ca_pem = config.tls.ca.read_bytes() if config.tls.ca.exists() else None
    return node_dir / AUDIT_DIR, ca_pem, config.jurisdiction


def _audit_verify(args: argparse.Namespace) -> int:
    from node.audit import verify_trail

    directory, ca_pem, jurisdiction = _audit_dir(Path(args.node_dir))
    result = verify_trail(directory, ca_pem=ca_pem, jurisdiction=jurisdiction)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if not result.ok:
        print(f"{directory}: audit trail NOT intact: {result.problem}")
        return ExitCode.FAILED
    print(
        f"{directory}: audit trail intact: {result.entries} entries, hash chain, signatures "
        "and signed head verified"
    )
    return ExitCode.OK


def _audit_show(args: argparse.Namespace) -> int:
    import datetime as dt

    from node.audit import entries, render_entries, select

    directory, _, _ = _audit_dir(Path(args.node_dir))
    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise FedtraceError(
                f"--since {args.since!r} is not a date such as 2026-11-25 or 2026-11-25T08:00Z"
            ) from None
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    chosen = select(entries(directory), partner=args.partner, case=args.case, since=since)
    sys.stdout.write(render_entries(chosen, args.format))
    return ExitCode.OK


def _report_verify(args: argparse.Namespace) -> int:
    from coordinator.verify import load_report, verify_report

    if bool(args.ca) == bool(args.federation):
        raise FedtraceError(
            "report verify needs the federation CA: pass --ca CA.pem or "
            "--federation FED.toml (one of them)"
        )
    if args.ca:
        ca_path = Path(args.ca)
    else:
        from coordinator.federation import load_federation

        ca_path = load_federation(Path(args.federation)).ca
    try:
        ca_pem = ca_path.read_bytes()
    except OSError as exc:
        raise FedtraceError(f"{ca_path}: cannot read the federation CA: {exc.strerror}") from None
    outcome = verify_report(
        load_report(Path(args.file)), ca_pem, require_investigator_signature=not args.nodes_only
    )
    for line in outcome.lines:
        print(line)
    if not outcome.ok:
        print(f"{args.file}: NOT valid: {outcome.failures[0]}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"{args.file}: valid")
    return ExitCode.OK


def _add_officer_commands(commands: Any) -> None:
    """policy check|explain|diff, audit verify|show, report verify."""
    policy = commands.add_parser(
        "policy", help="check and explain disclosure policies"
    ).add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    p = policy.add_parser("check", help="report every problem as file:line:column")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--node",
        metavar="NODE_DIR",
        help="also check datasets and columns against this node's node.toml "
        "(default: the node.toml beside FILE, if it names FILE)",
    )
    p.add_argument("--strict", action="store_true", help="fail (exit 1) on warnings too")
    p.set_defaults(run=_policy_check)
    p = policy.add_parser("explain", help="what a partner may learn, in plain language")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--partner", required=True, metavar="CODE")
    p.add_argument("--dataset", metavar="D")
    p.set_defaults(run=_policy_explain)
    p = policy.add_parser("diff", help="what changes for each partner between two policies")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(run=_policy_diff)

    audit = commands.add_parser("audit", help="the node's audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    p = audit.add_parser("verify", help="check the hash chain, signatures and signed head")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.set_defaults(run=_audit_verify)
    p = audit.add_parser("show", help="list audit entries")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--partner", metavar="CODE")
    p.add_argument("--case", metavar="REF")
    p.add_argument("--since", metavar="DATE", help="ISO date or date-time (UTC unless given)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(run=_audit_show)

    report = commands.add_parser("report", help="saved query reports").add_subparsers(
        dest="report_command", required=True, metavar="ACTION"
    )
    p = report.add_parser("verify", help="re-check a saved JSON report's signatures")
    p.add_argument("file", metavar="REPORT.json")
    p.add_argument("--ca", metavar="CA.pem", help="the federation CA certificate")
    p.add_argument("--federation", metavar="FED.toml", help="take the CA from this file")
    p.add_argument(
        "--nodes-only",
        action="store_true",
        help="check only the node signatures (a report without an investigator signature)",
    )
    p.set_defaults(run=_report_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtrace",
        description="Privacy-preserving federated queries for cross-border asset tracing.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pki = commands.add_parser("pki", help="federation CA and certificates").add_subparsers(
        dest="pki_command", required=True, metavar="ACTION"
    )
    p = pki.add_parser("init", help="create the federation CA")
    p.add_argument("ca_dir", metavar="CA_DIR")
    p.set_defaults(run=_pki_init)
    p = pki.add_parser("issue", help="issue a node or investigator certificate")
    p.add_argument("ca_dir", metavar="CA_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--name", required=True, help="jurisdiction code, e.g. EE")
    p.add_argument("--role", required=True, choices=("node", "investigator"))
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.set_defaults(run=_pki_issue)
    p = pki.add_parser("revoke", help="revoke a member certificate (writes CA_DIR/revoked.toml)")
    p.add_argument("ca_dir", metavar="CA_DIR")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="the certificate's serial number")
    which.add_argument("--cert", metavar="PEM", help="the certificate file itself")
    p.add_argument("--reason", default="", help="e.g. 'key compromise'")
    p.set_defaults(run=_pki_revoke)

    node = commands.add_parser("node", help="run a jurisdiction's node").add_subparsers(
        dest="node_command", required=True, metavar="ACTION"
    )
    p = node.add_parser("init", help="create a node directory")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--jurisdiction", required=True)
    p.add_argument("--ca", required=True, metavar="CA_DIR")
    p.add_argument("--listen", default="127.0.0.1:7001", metavar="HOST:PORT")
    p.set_defaults(run=_node_init)
    p = node.add_parser("ingest", help="load a CSV or Parquet file into a standard table")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--table", required=True, choices=("transactions", "subjects", "subject_wallets")
    )
    p.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="load a file even if the same file was ingested before",
    )
    p.set_defaults(run=_node_ingest)
    p = node.add_parser("serve", help="serve the node over mutual TLS")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--listen", metavar="HOST:PORT", help="override node.toml (port 0: any free)")
    p.set_defaults(run=_node_serve)
    add_officer_request_commands(node)
    p = node.add_parser("shared", help="this node's records an overlap census found shared")
    p.add_argument("node_dir", metavar="NODE_DIR")
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(run=_node_shared)

    query = commands.add_parser("query", help="investigator queries").add_subparsers(
        dest="query_command", required=True, metavar="KIND"
    )
    p = query.add_parser("match", help="which watchlist items each node holds")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--watchlist", required=True, metavar="FILE")
    p.add_argument("--dataset", required=True)
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--legal-basis", default="", metavar="B")
    p.add_argument("--nodes", metavar="A,B", help="only these nodes of the federation")
    p.add_argument(
        "--kind",
        choices=("wallet", "btc", "eth", "trx", "ltc", "iban", "person"),
        help="identifier kind of the watchlist (default: person for the subjects "
        "dataset, wallet otherwise)",
    )
    p.add_argument("--column", help="CSV watchlist column holding the identifiers")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="run even if some watchlist lines are invalid (they are counted)",
    )
    p.add_argument(
        "--cardinality",
        action="store_true",
        help="ask only for the number of matches, not which items",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(run=_query_match)
    from coordinator.aggregate_commands import add_aggregate_parser

    add_aggregate_parser(query)

    p = query.add_parser("overlap", help="which groups of nodes share items (no watchlist)")
    p.add_argument("--federation", required=True, metavar="FED.toml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--case", required=True, metavar="REF")
    p.add_argument("--legal-basis", default="", metavar="B")
    p.add_argument("--nodes", metavar="A,B,C", help="only these nodes of the federation")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(run=_query_overlap)

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

    p = commands.add_parser("demo", help="run a three-jurisdiction demo federation")
    p.add_argument("--keep", metavar="DIR", help="build the federation here and keep it")
    p.set_defaults(run=_demo)
    _add_officer_commands(commands)
    add_request_commands(commands)
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


if __name__ == "__main__":
    sys.exit(main())
