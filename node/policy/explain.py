"""`fedtrace policy explain`: a policy in plain language.

`explain` says, for one partner, what it may learn from each dataset, under
which limits and legal bases, until when, and what it may not. `node.policy.diff`
compares two versions of a policy in the same words.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fedtrace.wire import Level
from node.policy.model import Grant, Policy, QueryKind, utc_now

_LEARNS = {
    Level.CARDINALITY: "only how many of its watchlist items {j} holds, never which (the node "
    "shuffles its answer)",
    Level.AGGREGATE: "how many of its watchlist items {j} holds, and sums of numeric columns over "
    "the matched records; never which items",
    Level.MEMBERSHIP: "which of its watchlist items {j} holds (and so how many)",
    Level.DISCLOSURE_REQUEST: "which of its watchlist items {j} holds, and it may follow a hit up "
    "with a disclosure or preservation request by case reference",
    Level.OVERLAP: "in the overlap query, how many items {j} shares with each group of "
    "jurisdictions, never which",
}


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def _limits(grant: Grant) -> list[str]:
    out = []
    if grant.disclosure is not Level.OVERLAP:
        out.append(f"at most {_number(grant.max_items_per_query)} items per query")
    if grant.rate_limit:
        out.append(
            f"{_number(grant.rate_limit.queries)} queries per {grant.rate_limit.per.describe()}"
        )
    if grant.item_budget:
        out.append(
            f"{_number(grant.item_budget.items)} items per "
            f"{grant.item_budget.per.describe()} in all"
        )
    return out


def _aggregate_lines(grant: Grant) -> list[str]:
    if not grant.aggregate_columns or grant.disclosure not in (
        Level.AGGREGATE,
        Level.MEMBERSHIP,
        Level.DISCLOSURE_REQUEST,
    ):
        return []
    clip = ", ".join(
        f"{name} clipped to [{_number(lo)}, {_number(hi)}]" for name, lo, hi in grant.clip
    )
    lines = [
        f"Aggregates: sums of {', '.join(grant.aggregate_columns)}"
        + (f" ({clip})" if clip else "")
        + f" over at least {grant.min_cohort} matched records."
    ]
    if grant.noise:
        budget = (
            f"; at most {grant.epsilon_budget.epsilon:g} per {grant.epsilon_budget.per.describe()}"
            if grant.epsilon_budget
            else ""
        )
        if grant.epsilon_lifetime is not None:
            budget += f"; at most {grant.epsilon_lifetime:g} over the grant's lifetime"
        lines.append(f"Noise: on, epsilon {grant.epsilon_per_query:g} per query{budget}.")
    else:
        lines.append("Noise: OFF — aggregates are exact, not protected by differential privacy.")
    if grant.total_only:
        lines.append("Only the federation-wide total: this node's own share is never revealed.")
    return lines


def _request_lines(grant: Grant) -> list[str]:
    if grant.disclosure is not Level.DISCLOSURE_REQUEST:
        return []
    fields = ", ".join(grant.disclosable_fields) or "no attribute (hits are confirmed only)"
    approval = (
        "answered at once"
        if grant.approval == "automatic"
        else "queued for the privacy officer's approval"
    )
    due = f", answered within {grant.answer_within_days} days" if grant.answer_within_days else ""
    return [
        f"Disclosure requests: {fields}; {approval}{due}.",
        f"Preservation requests: up to {grant.preservation_days_max} days.",
        grant.freeze_terms(),
    ]


def _items_bound(grant: Grant) -> str:
    """How many items the partner can test, in numbers, over the grant's windows."""
    if grant.item_budget is not None:
        return (
            f"up to {_number(grant.item_budget.items)} tested items per "
            f"{grant.item_budget.per.describe()}"
        )
    if grant.rate_limit is not None:
        total = grant.rate_limit.queries * grant.max_items_per_query
        return (
            f"up to {_number(total)} tested items per {grant.rate_limit.per.describe()} "
            f"({_number(grant.rate_limit.queries)} queries of "
            f"{_number(grant.max_items_per_query)})"
        )
    return (
        f"any number of tested items: {_number(grant.max_items_per_query)} per query and no "
        "limit on queries (set an item_budget)"
    )


def _query_bounds(grant: Grant) -> str:
    bounds = []
    if grant.rate_limit is not None:
        bounds.append(f"{_number(grant.rate_limit.queries)} per {grant.rate_limit.per.describe()}")
    if grant.item_budget is not None:
        bounds.append(
            f"{_number(grant.item_budget.items)} one-record queries per "
            f"{grant.item_budget.per.describe()}"
        )
    if grant.noise and grant.epsilon_budget is not None:
        queries = grant.epsilon_budget.epsilon / grant.epsilon_per_query
        bounds.append(
            f"{_number(int(queries))} full-epsilon queries per "
            f"{grant.epsilon_budget.per.describe()}"
        )
    if grant.noise and grant.epsilon_lifetime is not None:
        lifetime = grant.epsilon_lifetime / grant.epsilon_per_query
        bounds.append(f"{_number(int(lifetime))} full-epsilon queries over the grant's lifetime")
    if not bounds:
        return "with no limit on the number of queries (set an item_budget or epsilon_budget)"
    return "up to " + ", and ".join(bounds)


def _sensitivity(lo: float, hi: float) -> float:
    """One record's largest effect on a sum clipped to [lo, hi] (as `fedtrace.dp`)."""
    return max(hi - lo, abs(lo), abs(hi), 1)


def worst_case(grant: Grant, jurisdiction: str) -> str:
    """What a partner who probes or runs modified software can learn under `grant`, in numbers."""
    j = jurisdiction
    prefix = "Worst case (a partner running modified software): "
    if grant.disclosure is Level.OVERLAP:
        queries = (
            f"up to {_number(grant.rate_limit.queries)} overlap queries per "
            f"{grant.rate_limit.per.describe()}"
            if grant.rate_limit
            else "with no limit on overlap queries (set a rate_limit)"
        )
        return (
            prefix + f"by entering a one-item set it can learn whether {j} holds that item, "
            f"{queries}."
        )
    if grant.disclosure is Level.AGGREGATE or (
        grant.aggregate_columns and grant.disclosure in (Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)
    ):
        share = len(grant.aggregate_columns) + 1
        if grant.noise:
            values = "; ".join(
                f"{name} in [{_number(lo)}, {_number(hi)}] plus noise of scale "
                f"{_number(round(_sensitivity(lo, hi) * share / grant.epsilon_per_query, 2))}"
                for name, lo, hi in grant.clip
            )
            what = f"single records' values up to the clip bounds plus noise per query ({values})"
        else:
            values = ", ".join(
                f"{name} in [{_number(lo)}, {_number(hi)}]" for name, lo, hi in grant.clip
            )
            what = f"single records' exact values up to the clip bounds ({values or 'unclipped'})"
        match = (
            ""
            if grant.disclosure is not Level.AGGREGATE
            else f"; its match answers reveal which items {j} holds, {_items_bound(grant)}"
        )
        return prefix + f"with one-item queries it can learn {what}, {_query_bounds(grant)}{match}."
    return (
        prefix
        + f"it can learn which of {_items_bound(grant)} {j} holds"
        + (
            " (one item per query makes a count a yes/no answer)."
            if grant.disclosure is Level.CARDINALITY
            else "."
        )
    )


def describe_grant(grant: Grant, jurisdiction: str, now: dt.datetime) -> list[str]:
    lines = [
        f"{grant.where()}: {grant.disclosure.label} — it learns "
        + _LEARNS[grant.disclosure].format(j=jurisdiction)
        + "."
    ]
    limits = _limits(grant)
    if limits:
        lines.append("Limits: " + "; ".join(limits) + ".")
    lines += _aggregate_lines(grant)
    if grant.disclosure is Level.OVERLAP:
        lines.append(
            "It also learns which of its own items are shared, and with whom."
            if grant.reveal_to_owner
            else "Which items are shared stays hidden from the partner's own node."
        )
    lines += _request_lines(grant)
    if grant.monitor and grant.disclosure is not Level.OVERLAP:
        lines.append(
            f"Every answer carries a sealed opening for monitor {grant.monitor}; "
            "queries without one are refused."
        )
    lines.append(worst_case(grant, jurisdiction))
    bases = (
        "legal bases accepted: " + ", ".join(grant.legal_bases)
        if grant.legal_bases
        else "any legal basis (or none) accepted"
    )
    case = "a case reference is required" if grant.require_case else "no case reference needed"
    lines.append(f"{bases[0].upper()}{bases[1:]}; {case}.")
    start = f"from {_when(grant.valid_from)} " if grant.valid_from else ""
    until = f"until {_when(grant.expires)}" if grant.expires else "with no end date"
    state = ""
    if not grant.valid_at(now):
        state = (
            " — EXPIRED, not in force"
            if grant.expires and now >= grant.expires
            else " — NOT YET in force"
        )
    lines.append(f"Valid {start}{until}{state}.")
    return lines


def _may_not(grants: Sequence[Grant], jurisdiction: str) -> list[str]:
    levels = {g.disclosure for g in grants}
    top = max((g.disclosure for g in grants if g.disclosure is not Level.OVERLAP), default=None)
    out = []
    if top is None or top < Level.MEMBERSHIP:
        out.append(f"learn which items {jurisdiction} holds")
    if top is None or top < Level.DISCLOSURE_REQUEST:
        out.append("ask for any attribute of a record (no disclosure-request grant)")
    if not any(
        g.aggregate_columns
        and g.disclosure in (Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)
        for g in grants
    ):
        out.append("obtain sums or counts of any column (no aggregate grant)")
    if Level.OVERLAP not in levels:
        out.append("include this dataset in an overlap query")
    if top is None:
        out.insert(0, "run a match query at all")
    return out


def explain(
    policy: Policy,
    partner: str,
    dataset: str | None = None,
    datasets: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """Plain-language account of what `partner` may learn under `policy`."""
    moment = now or utc_now()
    j = policy.jurisdiction
    names = [dataset] if dataset else sorted(set(policy.datasets()) | set(datasets))
    lines = [
        f"{j}'s policy {policy.version} ({policy.path}, sha256 {policy.sha256[:16]}…):",
        f"what {partner} may learn, as of {_when(moment)}.",
        "",
    ]
    if not any(g.applies(partner, d) for g in policy.grants for d in policy.datasets()):
        lines.append(
            f"Nothing: no grant names {partner}; {j} refuses every query from it (deny by default)."
        )
        return "\n".join(lines) + "\n"
    for name in names:
        grants = sorted(
            (g for g in policy.grants if g.applies(partner, name)),
            key=lambda g: (-int(g.disclosure), g.index),
        )
        lines.append(f"Dataset {name}:")
        if not grants:
            lines.append(
                f"  Nothing: no grant names {partner} for {name}; every query on it is refused."
            )
            lines.append("")
            continue
        for grant in grants:
            first, *rest = describe_grant(grant, j, moment)
            lines.append(f"  • {first}")
            lines += [f"    {line}" for line in rest]
        in_force = [g for g in grants if g.valid_at(moment)]
        for kind in QueryKind:
            serving = [g for g in in_force if g.serves(kind)]
            if len(serving) > 1:
                lines.append(
                    f"  {kind.value.capitalize()} queries: "
                    + ", ".join(f"grant #{g.index}" for g in serving)
                    + " each admit them, so all their limits apply together (the strictest "
                    "binds; a permissive grant never lifts a stricter one's)."
                )
        not_allowed = _may_not(in_force, j)
        if not_allowed:
            lines.append(f"  {partner} may not: " + "; ".join(not_allowed) + ".")
        lines.append("")
    if any(g.rate_limit or g.item_budget or g.epsilon_budget for g in policy.grants):
        lines.append(
            "Limits count usage in sliding windows, per partner and dataset; a query "
            "over a limit is refused with the time it renews."
        )
    return "\n".join(lines).rstrip() + "\n"
