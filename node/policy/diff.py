"""`fedtrace policy diff`: what changes between two versions of a policy, in plain words.

For every partner, dataset and query kind it compares the grant that would answer
(the most permissive one), key by key, and says whether each change widens or
narrows the partner's access and by how much.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from fedtrace.wire import Level
from node.policy.model import (
    EpsilonBudget,
    Grant,
    ItemBudget,
    Period,
    Policy,
    QueryKind,
    RateLimit,
    preference,
)


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


# The keys compared per query kind; each kind is answered by its own most permissive grant.
_COMMON_KEYS = (
    "max_items_per_query",
    "rate_limit",
    "item_budget",
    "legal_bases",
    "require_case",
    "valid_from",
    "expires",
)
_KIND_KEYS: dict[QueryKind, tuple[str, ...]] = {
    QueryKind.MATCH: (*_COMMON_KEYS, "monitor"),
    QueryKind.AGGREGATE: (
        *_COMMON_KEYS,
        "monitor",
        "aggregate_columns",
        "noise",
        "min_cohort",
        "epsilon_per_query",
        "epsilon_budget",
        "epsilon_lifetime",
        "clip",
        "total_only",
    ),
    QueryKind.OVERLAP: (*_COMMON_KEYS, "reveal_to_owner"),
    QueryKind.DISCLOSE: (
        *_COMMON_KEYS,
        "disclosable_fields",
        "approval",
        "answer_within_days",
        "preservation_days_max",
    ),
}
_DIFF_KINDS = (QueryKind.MATCH, QueryKind.AGGREGATE, QueryKind.OVERLAP, QueryKind.DISCLOSE)
_WHAT = {
    "max_items_per_query": "items per query",
    "rate_limit": "queries per unit of time",
    "item_budget": "items per unit of time",
    "epsilon_per_query": "privacy-loss budget (epsilon) per query: less noise in each answer",
    "epsilon_budget": "privacy-loss budget (epsilon) per unit of time",
    "epsilon_lifetime": "privacy-loss budget (epsilon) over the grant's lifetime",
    "preservation_days_max": "days a preservation may last",
}


@dataclass(frozen=True)
class Access:
    """What one partner may get from one dataset, summarised for comparison."""

    level: Level | None
    facts: dict[str, object]


def _fact(grant: Grant, key: str) -> object:
    value = getattr(grant, key)
    if isinstance(value, RateLimit):
        return (value.queries, value.per.label)
    if isinstance(value, ItemBudget):
        return (value.items, value.per.label)
    if isinstance(value, EpsilonBudget):
        return (value.epsilon, value.per.label)
    if key == "monitor":
        return value or None
    if key == "clip":
        return tuple(f"{name} [{_number(lo)}, {_number(hi)}]" for name, lo, hi in sorted(value))
    if isinstance(value, tuple):
        return tuple(sorted(value))
    return value


def _access(policy: Policy, partner: str, dataset: str) -> Access:
    grants = [g for g in policy.grants if g.applies(partner, dataset)]
    if not grants:
        return Access(None, {})
    facts: dict[str, object] = {}
    for kind in _DIFF_KINDS:
        serving = [g for g in grants if g.serves(kind)]
        if not serving:
            facts[kind.value] = False
            continue
        grant = max(serving, key=preference)
        facts[kind.value] = grant.disclosure.label if kind is QueryKind.MATCH else True
        for key in _KIND_KEYS[kind]:
            facts[f"{kind.value} {key}"] = _fact(grant, key)
    tops = [g for g in grants if g.disclosure is not Level.OVERLAP]
    best = max(tops, key=preference) if tops else None
    return Access(best.disclosure if best else None, facts)


def _show(value: object) -> str:
    if value is None:
        return "none"
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], str)
        and isinstance(value[0], int | float)
    ):
        return f"{_number(value[0])} per {value[1]}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "any"
    if isinstance(value, dt.datetime):
        return _when(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else f"{value:.1f}"
    return str(value)


def _amount(value: object) -> float | None:
    if isinstance(value, tuple) and value and isinstance(value[0], int | float):
        return float(value[0])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _per_seconds(label: object) -> float:
    period = Period.parse(str(label))
    return float(period.seconds) if period else 1.0


def _rate(value: object) -> float:
    assert isinstance(value, tuple)
    return float(value[0]) / _per_seconds(value[1])


def _times(old: float, new: float) -> str:
    if old <= 0 or new <= 0:
        return ""
    ratio = new / old if new > old else old / new
    return f"{ratio:.3g}×"


def _compare(key: str, old: object, new: object) -> tuple[str, str]:
    """('looser' | 'tighter' | '', plain words on what the change does to access)."""
    if key in ("rate_limit", "item_budget", "epsilon_budget"):
        what = _WHAT[key]
        if old is None:
            return "tighter", f"a limit of {_show(new)} where there was none"
        if new is None:
            return "looser", f"the limit of {_show(old)} is lifted"
        a, b = _rate(old), _rate(new)
        if a == b:
            return "", "same rate"
        more = b > a
        return ("looser" if more else "tighter"), (
            f"{_times(a, b)} {'more' if more else 'fewer'} {what}"
        )
    if key in ("max_items_per_query", "epsilon_per_query", "epsilon_lifetime"):
        before, after = _amount(old), _amount(new)
        if before is None or after is None:
            if after is None and before is not None and key == "epsilon_lifetime":
                return "looser", "no lifetime cap any more"
            return (
                ("tighter", "a lifetime cap where there was none") if before is None else ("", "")
            )
        more = after > before
        return ("looser" if more else "tighter"), (
            f"{_times(before, after)} {'more' if more else 'less'} {_WHAT[key]}"
            if key != "max_items_per_query"
            else f"{_times(before, after)} {'more' if more else 'fewer'} items per query"
        )
    if key == "min_cohort":
        bigger = float(new) > float(old)  # type: ignore[arg-type]
        return (
            ("tighter", "only bigger cohorts are answered")
            if bigger
            else (
                "looser",
                "smaller cohorts are answered, down to " + str(new),
            )
        )
    if key in ("legal_bases", "aggregate_columns", "disclosable_fields"):
        old_set, new_set = set(old), set(new)  # type: ignore[call-overload]
        added, removed = sorted(new_set - old_set), sorted(old_set - new_set)
        if key == "legal_bases":
            if not new_set:
                return "looser", "any legal basis is accepted now"
            if not old_set:
                return "tighter", f"only {', '.join(sorted(new_set))} accepted now"
        words = "; ".join(
            part
            for part in (
                f"adds {', '.join(added)}" if added else "",
                f"removes {', '.join(removed)}" if removed else "",
            )
            if part
        )
        if added and not removed:
            return "looser", words
        if removed and not added:
            return "tighter", words
        return "", words
    if key == "require_case":
        return (
            ("tighter", "a case reference is required")
            if new
            else (
                "looser",
                "no case reference needed",
            )
        )
    if key == "monitor":
        if not new:
            return "looser", "answers no longer carry a sealed opening for a monitor"
        return "tighter", f"every answer carries a sealed opening for monitor {new}"
    if key == "noise":
        return (
            ("tighter", "answers carry noise")
            if new
            else (
                "looser",
                "exact answers, no noise",
            )
        )
    if key == "total_only":
        return (
            ("tighter", "the federation total only")
            if new
            else (
                "looser",
                "this node's own figure, not only the total",
            )
        )
    if key == "reveal_to_owner":
        return ("looser", "shared records revealed to their owner") if new else ("tighter", "")
    if key in _DIFF_KINDS_VALUES:
        if old is False:
            return "looser", f"{key} queries allowed where they were refused"
        if new is False:
            return "tighter", f"{key} queries refused"
        return "", ""
    if key in ("expires", "valid_from"):
        if new is None:
            return "looser", "no end date any more" if key == "expires" else "valid at once"
        if old is None:
            return "tighter", "now ends" if key == "expires" else "now starts later"
        later = new > old  # type: ignore[operator]
        widens = later if key == "expires" else not later
        return ("looser" if widens else "tighter"), (
            "valid for longer" if widens else "valid for less time"
        )
    if key == "approval":
        return (
            ("looser", "answered without the officer")
            if new == "automatic"
            else (
                "tighter",
                "the officer decides",
            )
        )
    if key == "preservation_days_max":
        a, b = float(old), float(new)  # type: ignore[arg-type]
        return ("looser" if b > a else "tighter"), f"{_times(a, b)} {_WHAT[key]}"
    return "", "changes"


# Every key of a grant but those that identify it or say where it is in the file.
_GRANT_KEYS = tuple(
    f.name
    for f in dataclasses.fields(Grant)
    if f.name not in ("partners", "datasets", "disclosure", "line", "index")
)


def _grant_name(grant: Grant) -> str:
    return f"{', '.join(grant.partners)} · {', '.join(grant.datasets)} · {grant.disclosure.label}"


def _grant_lines(old: Policy, new: Policy) -> list[str]:
    """Grants paired by partners, datasets and level; every key that differs, in order."""

    def identity(grant: Grant) -> tuple[tuple[str, ...], tuple[str, ...], Level]:
        return tuple(sorted(grant.partners)), tuple(sorted(grant.datasets)), grant.disclosure

    remaining = list(new.grants)
    lines = []
    for before in old.grants:
        after = next((g for g in remaining if identity(g) == identity(before)), None)
        if after is None:
            lines.append(f"  removed: grant #{before.index} ({_grant_name(before)})")
            continue
        remaining.remove(after)
        changes = [
            f"{key} {_show(_fact(before, key))} → {_show(_fact(after, key))}"
            for key in _GRANT_KEYS
            if _fact(before, key) != _fact(after, key)
        ]
        if changes:
            lines.append(
                f"  grant #{before.index} → #{after.index} ({_grant_name(after)}): "
                + "; ".join(changes)
            )
    lines += [f"  added: grant #{g.index} ({_grant_name(g)})" for g in remaining]
    return lines


_DIFF_KINDS_VALUES = tuple(kind.value for kind in _DIFF_KINDS)
_NOTE = {"looser": "looser: widens access", "tighter": "tighter: narrows access"}


def diff(old: Policy, new: Policy) -> str:
    """Per partner and dataset, what changes between two versions of a policy, key by key."""
    partners = sorted(set(old.partners()) | set(new.partners()))
    datasets = sorted(set(old.datasets()) | set(new.datasets()))
    lines = [f"{old.jurisdiction} policy {old.version} ({old.path}) → {new.version} ({new.path})"]
    if old.jurisdiction != new.jurisdiction:
        lines.append(
            f"WARNING: the files are for different jurisdictions ({old.jurisdiction} → "
            f"{new.jurisdiction})"
        )
    changed = 0
    widens = 0
    for partner in partners:
        for dataset in datasets:
            before, after = _access(old, partner, dataset), _access(new, partner, dataset)
            if before == after:
                continue
            changed += 1
            who = 'any member ("*")' if partner == "*" else partner
            lines.append("")
            lines.append(f"{who} · {dataset}: {_level_change(before, after)}")
            if not before.facts or not after.facts:
                widens += not before.facts
                continue
            for key in dict.fromkeys([*before.facts, *after.facts]):
                a, b = before.facts.get(key), after.facts.get(key)
                if a == b:
                    continue
                kind, _, name = key.partition(" ")
                if name and (before.facts.get(kind) is False or after.facts.get(kind) is False):
                    continue  # the kind itself appears or goes: its line says so
                direction, words = _compare(name or kind, a, b)
                widens += direction == "looser"
                note = ", ".join(p for p in (_NOTE.get(direction, ""), words) if p)
                lines.append(
                    f"  {who} {dataset} {kind}: {name or 'allowed'}: {_show(a)} → {_show(b)}"
                    + (f" ({note})" if note else "")
                )
    by_grant = _grant_lines(old, new)
    if by_grant:
        lines.append("")
        lines.append(
            "Grant by grant (every grant that admits a query applies its limits, so a change "
            "to a shadowed grant counts too):"
        )
        lines += by_grant
    if not changed:
        lines.append("")
        lines.append("No partner's access changes.")
    elif widens:
        lines.append("")
        lines.append(f"{widens} change(s) widen access: review them before deploying.")
    return "\n".join(lines) + "\n"


def _level_change(before: Access, after: Access) -> str:
    def name(access: Access) -> str:
        if access.level is None:
            return "overlap query only" if access.facts.get("overlap") else "nothing"
        return access.level.label

    if not before.facts:
        return f"nothing → {name(after)} (MORE disclosed: new access)"
    if not after.facts:
        return f"{name(before)} → nothing (LESS disclosed: access removed)"
    a = int(before.level) if before.level else 0
    b = int(after.level) if after.level else 0
    if a == b:
        return f"{name(after)} (level unchanged; limits change)"
    word = "MORE disclosed" if b > a else "LESS disclosed"
    return f"{name(before)} → {name(after)} ({word})"
