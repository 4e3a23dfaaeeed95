"""The policy in plain words, its last change, and the budgets left under it, per partner.

Explanations are those of `fedtrace policy explain` (node.policy.explain), one per
partner the policy names. The last change is the latest `policy-loaded` audit
entry; its field-by-field diff is shown when both versions are still files in
the node directory (matched by SHA-256). Budgets: the usage ledger
(`policy_usage`, node/budget.py) counted in the sliding windows of each limit of
each grant in force, per partner and dataset, as the gate counts them. Read-only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.errors import FedtraceError
from node.audit import entries
from node.console.data import ConsoleNode, has_table, iso
from node.policy import Grant, Policy, load_policy, utc_now
from node.policy.diff import diff
from node.policy.explain import explain


@dataclass(frozen=True)
class Explanation:
    partner: str  # a jurisdiction code, or "*" for any member
    text: str

    @property
    def label(self) -> str:
        return 'any member ("*")' if self.partner == "*" else self.partner


@dataclass(frozen=True)
class PolicyChange:
    """The last `policy-loaded` audit entry, and the diff when both files can be found."""

    time: str
    previous_version: str
    previous_sha256: str
    version: str
    sha256: str
    warnings: tuple[str, ...]
    diff: str  # "" when the earlier file is no longer in the node directory


@dataclass(frozen=True)
class PolicyView:
    path: Path
    version: str
    sha256: str
    problem: str  # the file's first error when it cannot be loaded; "" otherwise
    explanations: tuple[Explanation, ...]
    last_change: PolicyChange | None

    def as_json(self) -> dict[str, Any]:
        change = self.last_change
        return {
            "path": str(self.path),
            "version": self.version,
            "sha256": self.sha256,
            "problem": self.problem,
            "explanations": [{"partner": e.partner, "text": e.text} for e in self.explanations],
            "last_change": None
            if change is None
            else {
                "time": change.time,
                "previous_version": change.previous_version,
                "previous_sha256": change.previous_sha256,
                "version": change.version,
                "sha256": change.sha256,
                "warnings": list(change.warnings),
                "diff": change.diff or None,
            },
        }


def _policy_files(node: ConsoleNode) -> list[Path]:
    """Policy files an officer keeps in the node directory: the one in force and older copies."""
    found = [node.config.policy]
    for pattern in ("*.toml*", "policies/*.toml*", "policy/*.toml*"):
        found += sorted(p for p in node.node_dir.glob(pattern) if p.is_file())
    return [p for p in dict.fromkeys(found) if p.name != "node.toml"]


def _policy_with_sha256(node: ConsoleNode, sha256: str) -> Policy | None:
    for path in _policy_files(node):
        try:
            if hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
                return load_policy(path)
        except (OSError, FedtraceError):
            continue
    return None


def _last_change(node: ConsoleNode) -> PolicyChange | None:
    loaded = [e for e in entries(node.audit_dir) if e.get("event") == "policy-loaded"]
    if not loaded:
        return None
    last = loaded[-1]
    before_sha = str(last.get("previous_sha256", ""))
    after_sha = str(last.get("policy_sha256", ""))
    before = _policy_with_sha256(node, before_sha) if before_sha else None
    after = _policy_with_sha256(node, after_sha) if after_sha and before else None
    warnings = last.get("warnings")
    return PolicyChange(
        time=str(last.get("time", "")),
        previous_version=str(last.get("previous_version", "")),
        previous_sha256=before_sha,
        version=str(last.get("policy_version", "")),
        sha256=after_sha,
        warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
        diff=diff(before, after) if before and after else "",
    )


def policy_view(node: ConsoleNode, now: dt.datetime | None = None) -> PolicyView:
    moment = now or utc_now()
    path = node.config.policy
    change = _last_change(node)
    try:
        policy = load_policy(path)
    except FedtraceError as exc:
        return PolicyView(path, "", "", str(exc), (), change)
    datasets = tuple(d.name for d in node.config.datasets)
    partners = policy.partners() or ("*",)
    explanations = tuple(
        Explanation(p, explain(policy, p, None, datasets, moment)) for p in partners
    )
    return PolicyView(path, policy.version, policy.sha256, "", explanations, change)


# --- budgets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetLine:
    """One limit of one grant in force for a partner and dataset, and its use right now."""

    partner: str
    dataset: str
    grant: int
    disclosure: str
    limit_name: str  # "queries" | "items" | "epsilon"
    used: float
    limit: float
    per: str
    frees_at: dt.datetime | None  # when the oldest charge in the window leaves it

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    def show(self, value: float) -> str:
        return f"{value:g}" if self.limit_name == "epsilon" else f"{int(round(value)):,}"

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 1e-9

    def as_json(self) -> dict[str, Any]:
        def number(value: float) -> float | int:
            return round(value, 6) if self.limit_name == "epsilon" else int(round(value))

        return {
            "partner": self.partner,
            "dataset": self.dataset,
            "grant": self.grant,
            "disclosure": self.disclosure,
            "limit": self.limit_name,
            "used": number(self.used),
            "of": number(self.limit),
            "remaining": number(self.remaining),
            "per": self.per,
            "frees_at": iso(self.frees_at) or None,
        }


def _grant_limits(grant: Grant) -> list[tuple[str, float, int, str]]:
    """(name, amount, window seconds, window label) for each limit the grant sets."""
    limits: list[tuple[str, float, int, str]] = []
    if grant.rate_limit is not None:
        rate = grant.rate_limit
        limits.append(("queries", rate.queries, rate.per.seconds, rate.per.label))
    if grant.item_budget is not None:
        items = grant.item_budget
        limits.append(("items", items.items, items.per.seconds, items.per.label))
    if grant.epsilon_budget is not None:
        eps = grant.epsilon_budget
        limits.append(("epsilon", eps.epsilon, eps.per.seconds, eps.per.label))
    return limits


def _usage(node: ConsoleNode, since_ms: int) -> list[tuple[str, str, int, int, float]]:
    """(partner, dataset, charged_at_ms, items, epsilon) charged after `since_ms`."""
    with node.database().session() as con:
        if not has_table(con, "policy_usage"):
            return []
        rows = con.execute(
            "SELECT partner, dataset, charged_at_ms, items, epsilon FROM policy_usage "
            "WHERE charged_at_ms > ? ORDER BY charged_at_ms",
            [since_ms],
        ).fetchall()
    return [(str(p), str(d), int(t), int(i), float(e)) for p, d, t, i, e in rows]


def budgets(node: ConsoleNode, now: dt.datetime | None = None) -> list[BudgetLine]:
    """Every limit in force, per partner named in the policy or seen in the ledger, and dataset.

    Usage counts per partner and dataset whatever grant admitted it (node.budget),
    in sliding windows. A grant naming "*" limits every partner; its lines appear for
    the partners named elsewhere in the policy or that have used it.
    """
    moment = now or utc_now()
    policy = load_policy(node.config.policy)
    now_ms = int(moment.timestamp() * 1000)
    in_force = [g for g in policy.grants if g.valid_at(moment) and _grant_limits(g)]
    longest = max((w for g in in_force for _, _, w, _ in _grant_limits(g)), default=0)
    usage = _usage(node, now_ms - longest * 1000) if in_force else []
    named = {p for g in in_force for p in g.partners if p != "*"}
    partners = sorted(named | {u[0] for u in usage})
    datasets = sorted(
        {d for g in in_force for d in g.datasets} | {d.name for d in node.config.datasets}
    )
    lines: list[BudgetLine] = []
    for partner in partners:
        for dataset in datasets:
            charges = [(t, i, e) for p, d, t, i, e in usage if p == partner and d == dataset]
            for grant in in_force:
                if not grant.applies(partner, dataset):
                    continue
                for name, amount, window, per in _grant_limits(grant):
                    start = now_ms - window * 1000
                    inside = [c for c in charges if c[0] > start]
                    column = {"queries": None, "items": 1, "epsilon": 2}[name]
                    used = sum(1.0 if column is None else float(c[column]) for c in inside)
                    frees = (
                        dt.datetime.fromtimestamp((inside[0][0] + window * 1000) / 1000, dt.UTC)
                        if inside
                        else None
                    )
                    lines.append(
                        BudgetLine(
                            partner,
                            dataset,
                            grant.index,
                            grant.disclosure.label,
                            name,
                            used,
                            float(amount),
                            per,
                            frees,
                        )
                    )
    return lines
