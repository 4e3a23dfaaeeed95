"""The one policy decision every query kind goes through: which grant answers, at which level.

`decide` is a plain function so tests call it without gRPC. Budgets (rate limits,
item and epsilon budgets) are counted in `node.budget`; the admission API that
ties the decision, the budgets and the audit trail together is `node.gate`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from fedtrace.wire import MATCH_LEVELS, Level
from node.policy.model import Grant, Policy, QueryKind, preference, utc_now


@dataclass(frozen=True)
class RequestFacts:
    """What the node knows about a request when it decides: all from the certificate or header."""

    partner: str
    role: str
    kind: QueryKind
    dataset: str
    asked: Level
    item_count: int
    case_ref: str = ""
    legal_basis: str = ""
    columns: tuple[str, ...] = ()
    epsilon: float = 0.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    level: Level | None  # the level granted, possibly lower than asked
    reason: str
    code: str  # "ok" | "PERMISSION_DENIED" | "INVALID_ARGUMENT"
    grant: Grant | None = field(default=None)
    # Every grant in force that could admit this request: all their limits apply.
    limiting: tuple[Grant, ...] = ()


def _answer_level(kind: QueryKind, grant: Grant, asked: Level) -> Level:
    if kind is QueryKind.MATCH:
        level = min(asked, grant.disclosure) if asked in MATCH_LEVELS else grant.disclosure
        if level == Level.AGGREGATE:  # aggregates need their own exchange; a match gives a count
            level = Level.CARDINALITY
        if level == Level.DISCLOSURE_REQUEST:
            level = Level.MEMBERSHIP
        return level
    if kind is QueryKind.AGGREGATE:
        return Level.AGGREGATE
    if kind is QueryKind.OVERLAP:
        return Level.OVERLAP
    return Level.DISCLOSURE_REQUEST


def _refusal(policy: Policy, facts: RequestFacts, grant: Grant) -> Decision | None:
    """Why `grant` cannot answer this request, or None when it can."""
    j = policy.jurisdiction
    if grant.require_case and not facts.case_ref:
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} requires a case reference "
            f"for {facts.partner} on {facts.dataset!r}; pass --case",
            "INVALID_ARGUMENT",
        )
    if grant.legal_bases and facts.legal_basis not in grant.legal_bases:
        named = repr(facts.legal_basis) if facts.legal_basis else "no legal basis"
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} does not accept {named} for "
            f"{facts.partner} on {facts.dataset!r}; accepted: "
            f"{', '.join(grant.legal_bases)} (pass --legal-basis)",
            "PERMISSION_DENIED",
        )
    if facts.kind is not QueryKind.OVERLAP and facts.item_count > grant.max_items_per_query:
        return Decision(
            False,
            None,
            f"{facts.item_count} items exceed {j}'s limit of "
            f"{grant.max_items_per_query} items per query for {facts.partner} on "
            f"{facts.dataset!r}; split the watchlist",
            "PERMISSION_DENIED",
        )
    extra = [c for c in facts.columns if c not in grant.aggregate_columns]
    if extra:
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} does not let "
            f"{facts.partner} aggregate {', '.join(extra)} of {facts.dataset!r}; "
            f"allowed: {', '.join(grant.aggregate_columns) or 'none'}",
            "PERMISSION_DENIED",
        )
    if facts.epsilon > grant.epsilon_per_query + 1e-12:
        return Decision(
            False,
            None,
            f"epsilon {facts.epsilon:g} exceeds {j}'s limit of "
            f"{grant.epsilon_per_query:g} per query for {facts.partner} on "
            f"{facts.dataset!r}",
            "PERMISSION_DENIED",
        )
    return None


def decide(policy: Policy, facts: RequestFacts, now: dt.datetime | None = None) -> Decision:
    """The policy's answer to one request: which grant applies and at which level, or why not."""
    moment = now or utc_now()
    j = policy.jurisdiction
    who = f"{facts.partner} ({facts.role})"
    if facts.role != "investigator":
        return Decision(
            False,
            None,
            f"{j} answers {facts.kind.value} queries only from "
            f"investigator certificates, not from {who}",
            "PERMISSION_DENIED",
        )
    naming = [
        g for g in policy.grants if g.applies(facts.partner, facts.dataset) and g.serves(facts.kind)
    ]
    current = [g for g in naming if g.valid_at(moment)]
    if not current:
        reason = (
            f"{j}'s policy {policy.version} grants {facts.partner} no "
            f"{facts.kind.value} access to dataset {facts.dataset!r}"
        )
        if naming:
            reason += "; " + _validity_note(naming, moment)
        return Decision(
            False, None, reason + f"; ask {j}'s privacy officer for a grant", "PERMISSION_DENIED"
        )
    ranked = sorted(current, key=preference, reverse=True)
    refusals = [(g, _refusal(policy, facts, g)) for g in ranked]
    usable = [g for g, refusal in refusals if refusal is None]
    if not usable:
        first = refusals[0][1]
        assert first is not None
        return first
    grant = usable[0]
    # A permissive grant never lifts a stricter one's limits: every grant in force that
    # could admit this request contributes its limits, and the strictest apply
    # (the per-query item limit here, the windowed budgets in node.budget).
    # "Could admit": every condition but the item count holds (the legal basis, the
    # case reference, the columns, epsilon), so a grant for another legal basis
    # does not bind this request.
    unsized = replace(facts, item_count=0)
    limiting = tuple(g for g in ranked if _refusal(policy, unsized, g) is None)
    if facts.kind is not QueryKind.OVERLAP:
        strictest = min(limiting, key=lambda g: (g.max_items_per_query, g.index))
        if facts.item_count > strictest.max_items_per_query:
            return Decision(
                False,
                None,
                f"{facts.item_count} items exceed {j}'s limit of "
                f"{strictest.max_items_per_query} items per query for {facts.partner} on "
                f"{facts.dataset!r} ({strictest.where()} also applies to "
                f"{facts.kind.value} queries); split the watchlist",
                "PERMISSION_DENIED",
            )
    return Decision(True, _answer_level(facts.kind, grant, facts.asked), "", "ok", grant, limiting)


def _validity_note(grants: Iterable[Grant], now: dt.datetime) -> str:
    notes = []
    for grant in grants:
        if grant.expires is not None and now >= grant.expires:
            notes.append(f"{grant.where()} expired on {grant.expires:%Y-%m-%d %H:%M} UTC")
        elif grant.valid_from is not None and now < grant.valid_from:
            notes.append(f"{grant.where()} applies from {grant.valid_from:%Y-%m-%d %H:%M} UTC")
    return "; ".join(notes)


def decide_match(
    policy: Policy, partner: str, role: str, dataset: str, asked: Level, item_count: int
) -> Decision:
    """May `partner` run a match of `item_count` items on `dataset`, and at which level?

    Kept for callers that know no case or legal basis; the node itself goes through
    `node.gate.Gate.admit`, which passes both.
    """
    return decide(
        policy,
        RequestFacts(partner, role, QueryKind.MATCH, dataset, asked, item_count, case_ref="-"),
    )
