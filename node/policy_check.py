"""`fedtrace policy check`: every problem in policy files as ``file:line:column: message``.

Parsing already reports typos (with the nearest valid key), wrong types, unknown
levels, grants that can never apply and expired or not-yet-valid grants
(`node.policy.parse_policy`). When the policy sits next to a node's
``node.toml`` (or `--node` names one) the check also compares it with the
node: its jurisdiction, the datasets it defines and their aggregate and
disclosable columns.

Exit status: 0 when no file has an error (warnings are printed but allowed, so
an expired grant left for the record does not fail a deployment), 1 when any
file has an error, or any warning with ``--strict``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedtrace.errors import ConfigError, ExitCode
from fedtrace.tomlconfig import suggest
from node.config import NODE_FILE, NodeConfig, load_node_config
from node.policy import Diagnostic, KeyPath, Policy, SourceMap, read_policy


@dataclass(frozen=True)
class CheckReport:
    diagnostics: tuple[Diagnostic, ...]
    files: int

    @property
    def errors(self) -> int:
        return sum(d.severity == "error" for d in self.diagnostics)

    @property
    def warnings(self) -> int:
        return sum(d.severity == "warning" for d in self.diagnostics)

    def exit_code(self, strict: bool = False) -> ExitCode:
        failed = self.errors or (strict and self.warnings)
        return ExitCode.FAILED if failed else ExitCode.OK

    def summary(self) -> str:
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        return (
            f"{plural(self.files, 'file')} checked: {plural(self.errors, 'error')}, "
            f"{plural(self.warnings, 'warning')}"
        )


def _node_for(path: Path, node_dir: Path | None) -> NodeConfig | None:
    """The node whose node.toml names this policy (or `node_dir`'s), if any."""
    directory = node_dir or path.parent
    if not (directory / NODE_FILE).exists():
        return None
    try:
        config = load_node_config(directory)
    except ConfigError:
        if node_dir is not None:
            raise
        return None
    if node_dir is None and config.policy.resolve() != path.resolve():
        return None
    return config


def against_node(policy: Policy, text: str, config: NodeConfig) -> list[Diagnostic]:
    """Problems that only show next to the node: unknown datasets and columns, wrong node."""
    source = SourceMap(text)
    name = str(policy.path)
    out: list[Diagnostic] = []

    def add(severity: str, where: KeyPath, message: str) -> None:
        line, column = source.position(where, value=True)
        out.append(Diagnostic(name, line, column, severity, message))

    node_toml = config.node_dir / NODE_FILE
    if policy.jurisdiction != config.jurisdiction:
        add(
            "error",
            ("jurisdiction",),
            f"the policy is for {policy.jurisdiction!r}, but "
            f"{node_toml} is node {config.jurisdiction!r}: the node would refuse to load it",
        )
    known = tuple(d.name for d in config.datasets)
    for grant in policy.grants:
        here: KeyPath = ("grant", grant.index - 1)
        for dataset_name in grant.datasets:
            dataset = config.dataset(dataset_name)
            if dataset is None:
                add(
                    "error",
                    (*here, "datasets"),
                    f"grant #{grant.index}: dataset "
                    f"{dataset_name!r} is not defined in {node_toml}{suggest(dataset_name, known)}"
                    f" (it has: {', '.join(known) or 'none'}); this grant can never apply to it",
                )
                continue
            for column in grant.aggregate_columns:
                if column not in dataset.aggregate_columns:
                    add(
                        "error",
                        (*here, "aggregate_columns"),
                        f"grant #{grant.index}: "
                        f"{column!r} is not an aggregate column of dataset {dataset_name!r} in "
                        f"{node_toml} (it has: {', '.join(dataset.aggregate_columns) or 'none'})",
                    )
            for column in grant.disclosable_fields:
                if column not in dataset.disclosable_columns:
                    add(
                        "error",
                        (*here, "disclosable_fields"),
                        f"grant #{grant.index}: "
                        f"{column!r} is not a disclosable column of dataset {dataset_name!r} in "
                        f"{node_toml} (it has: "
                        f"{', '.join(dataset.disclosable_columns) or 'none'})",
                    )
    return out


def check_policies(
    paths: Sequence[Path], *, node_dir: Path | None = None, now: dt.datetime | None = None
) -> CheckReport:
    """Check each file; cross-check with its node when one is found or given."""
    found: list[Diagnostic] = []
    for path in paths:
        outcome = read_policy(path, now=now)
        found.extend(outcome.diagnostics)
        if outcome.policy is None:
            continue
        config = _node_for(path, node_dir)
        if config is not None:
            text = path.read_text(encoding="utf-8")
            found.extend(against_node(outcome.policy, text, config))
    ordered = sorted(found, key=lambda d: (d.path, d.line, d.column))
    return CheckReport(tuple(ordered), len(paths))
