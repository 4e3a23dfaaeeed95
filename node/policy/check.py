"""`fedtrace policy check`: every problem in policy files as ``file:line:column: message``.

Parsing already reports typos (with the nearest valid key), wrong types, unknown
levels, grants that can never apply and expired or not-yet-valid grants
(`node.policy.parse_policy`). When the policy sits next to a node's
``node.toml`` (or `--node` names one) the check also compares it with the
node: its jurisdiction, the datasets it defines and their aggregate and
disclosable columns.

It also warns about what a partner running modified software could do
(`probing_warnings`): a cardinality or aggregate grant without an item budget
(one-item queries turn a count into a yes/no answer, without end), and a
permissive grant that shadows a strict one for the same partner and dataset
(the node applies every such grant's limits, so the looser ones do not hold).

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
from fedtrace.wire import Level
from node.config import NODE_FILE, NodeConfig, load_node_config
from node.policy.model import Grant, Policy, QueryKind, utc_now
from node.policy.parse import read_policy
from node.policy.source import Diagnostic, KeyPath, SourceMap


@dataclass(frozen=True)
class CheckReport:
    diagnostics: tuple[Diagnostic, ...]
    files: int
    nodes: tuple[Path, ...] = ()  # the node.toml files the policies were checked against

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


def _node_for(path: Path, node_dir: Path | None, jurisdiction: str = "") -> NodeConfig | None:
    """`node_dir`'s node, or the one a policy sits in or next to.

    Found: the node.toml beside the file when it names the file or is the policy's
    jurisdiction (a draft in the node directory); else the one node directory
    beside the file (e.g. `EE/` next to `EE.toml`) of the policy's jurisdiction.
    """
    if node_dir is not None:
        return load_node_config(node_dir)
    beside = _quiet_config(path.parent)
    if beside is not None and (
        beside.policy.resolve() == path.resolve() or beside.jurisdiction == jurisdiction
    ):
        return beside
    if not jurisdiction:
        return None
    try:
        candidates = sorted(d for d in path.parent.iterdir() if (d / NODE_FILE).is_file())
    except OSError:
        return None
    found = [c for c in map(_quiet_config, candidates) if c and c.jurisdiction == jurisdiction]
    return found[0] if len(found) == 1 else None


def _quiet_config(directory: Path) -> NodeConfig | None:
    if not (directory / NODE_FILE).is_file():
        return None
    try:
        return load_node_config(directory)
    except ConfigError:
        return None


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


def _limit_names(grant: Grant) -> dict[str, tuple[float, int]]:
    """A grant's limits as comparable rates: name → (amount, window seconds)."""
    out: dict[str, tuple[float, int]] = {"max_items_per_query": (grant.max_items_per_query, 1)}
    if grant.rate_limit:
        out["rate_limit"] = (grant.rate_limit.queries, grant.rate_limit.per.seconds)
    if grant.item_budget:
        out["item_budget"] = (grant.item_budget.items, grant.item_budget.per.seconds)
    if grant.epsilon_budget:
        out["epsilon_budget"] = (grant.epsilon_budget.epsilon, grant.epsilon_budget.per.seconds)
    return out


def _stricter(strict: Grant, loose: Grant, kinds: Sequence[QueryKind]) -> list[str]:
    """The limits of `strict` that `loose` lacks or sets looser, for queries of `kinds`."""
    mine, theirs = _limit_names(strict), _limit_names(loose)
    names = []
    for name, (amount, seconds) in mine.items():
        if name == "epsilon_budget" and QueryKind.AGGREGATE not in kinds:
            continue
        other = theirs.get(name)
        if other is None or other[0] / other[1] > amount / seconds:
            names.append(name)
    return names


def probing_warnings(policy: Policy, text: str) -> list[Diagnostic]:
    """Warnings about what a probing partner (modified software) could learn under `policy`."""
    source = SourceMap(text)
    name = str(policy.path)
    out: list[Diagnostic] = []

    def warn(grant: Grant, key: str | None, message: str) -> None:
        where: KeyPath = ("grant", grant.index - 1) + ((key,) if key else ())
        line, column = source.position(where, value=key is not None)
        out.append(Diagnostic(name, line, column, "warning", message))

    for grant in policy.grants:
        counts = grant.disclosure is Level.CARDINALITY or grant.serves(QueryKind.AGGREGATE)
        if counts and grant.item_budget is None:
            warn(
                grant,
                None,
                f"grant #{grant.index}: {grant.disclosure.label} answers without an "
                "'item_budget': a partner running modified software can send one-item "
                "queries and learn which items this node holds, with no limit over time "
                '(add item_budget = { items = N, per = "30d" })',
            )
    for loose in policy.grants:
        for strict in policy.grants:
            if loose is strict or not strict.valid_at(utc_now()):
                continue
            shared = [
                (p, d)
                for p in loose.partners
                for d in loose.datasets
                if strict.applies(p, d) or (p == "*" and d in strict.datasets)
            ]
            kinds = [k for k in QueryKind if loose.serves(k) and strict.serves(k)]
            stricter = _stricter(strict, loose, kinds)
            if not shared or not kinds or not stricter:
                continue
            partner, dataset = shared[0]
            warn(
                loose,
                None,
                f"grant #{loose.index} shadows the stricter grant #{strict.index} for "
                f"{partner} on {dataset!r}: both admit {', '.join(k.value for k in kinds)} "
                f"queries, and grant #{strict.index}'s {', '.join(stricter)} "
                f"{'is' if len(stricter) == 1 else 'are'} stricter; the node applies the "
                f"strictest to both, so grant #{loose.index}'s looser limits do not hold there",
            )
    return out


def check_policies(
    paths: Sequence[Path], *, node_dir: Path | None = None, now: dt.datetime | None = None
) -> CheckReport:
    """Check each file; cross-check with its node when one is found or given."""
    found: list[Diagnostic] = []
    nodes: list[Path] = []
    for path in paths:
        outcome = read_policy(path, now=now)
        found.extend(outcome.diagnostics)
        if outcome.policy is None:
            continue
        found.extend(probing_warnings(outcome.policy, path.read_text(encoding="utf-8")))
        config = _node_for(path, node_dir, outcome.policy.jurisdiction)
        if config is not None:
            text = path.read_text(encoding="utf-8")
            found.extend(against_node(outcome.policy, text, config))
            nodes.append(config.node_dir / NODE_FILE)
    ordered = sorted(found, key=lambda d: (d.path, d.line, d.column))
    return CheckReport(tuple(ordered), len(paths), tuple(dict.fromkeys(nodes)))
