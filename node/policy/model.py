"""What a disclosure policy says, as frozen values: grants, periods, limits and query kinds.

Deny by default: a partner learns nothing from a dataset unless a valid grant
names both. `node.policy.parse` builds these values from the privacy officer's
file; `node.policy.decide` answers one request with them. Disclosure levels are
`fedtrace.wire.Level`, the proto's own enum.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from pathlib import Path

from fedtrace.wire import MATCH_LEVELS, Level


class QueryKind(enum.StrEnum):
    """What a request asks for; each kind is served by grants of particular levels."""

    MATCH = "match"
    AGGREGATE = "aggregate"
    OVERLAP = "overlap"
    DISCLOSE = "disclose"
    PRESERVE = "preserve"
    FREEZE = "freeze"


# Levels whose grants may also answer aggregates (with aggregate_columns).
AGGREGATE_LEVELS = (Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)

DEFAULT_MIN_COHORT = 1
DEFAULT_EPSILON_PER_QUERY = 1.0
DEFAULT_APPROVAL = "officer"
DEFAULT_PRESERVATION_DAYS_MAX = 90

_PERIOD = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_NAMED_PERIODS = {"hour": 3600, "day": 86_400, "week": 7 * 86_400}


@dataclass(frozen=True)
class Period:
    """A sliding window: usage in the last `seconds` counts against a limit."""

    seconds: int
    label: str  # as written in the policy: "day", "30d" …

    @classmethod
    def parse(cls, text: str) -> Period | None:
        if text in _NAMED_PERIODS:
            return cls(_NAMED_PERIODS[text], text)
        match = _PERIOD.match(text)
        if not match:
            return None
        unit = 3600 if match.group(2) == "h" else 86_400
        return cls(int(match.group(1)) * unit, text)

    def describe(self) -> str:
        match = _PERIOD.match(self.label)
        if match:
            unit = "hours" if match.group(2) == "h" else "days"
            return f"{match.group(1)} {unit}"
        return self.label


@dataclass(frozen=True)
class RateLimit:
    queries: int
    per: Period


@dataclass(frozen=True)
class ItemBudget:
    items: int
    per: Period


@dataclass(frozen=True)
class EpsilonBudget:
    epsilon: float
    per: Period


@dataclass(frozen=True)
class Grant:
    """One grant after [defaults] were applied; every key has its final value."""

    partners: tuple[str, ...]
    datasets: tuple[str, ...]
    disclosure: Level
    max_items_per_query: int
    aggregate_columns: tuple[str, ...] = ()
    min_cohort: int = DEFAULT_MIN_COHORT
    epsilon_per_query: float = DEFAULT_EPSILON_PER_QUERY
    noise: bool = True
    line: int = 0  # line of the [[grant]] header in the file, for messages
    index: int = 0  # 1-based position among the file's grants
    rate_limit: RateLimit | None = None
    item_budget: ItemBudget | None = None
    clip: tuple[tuple[str, float, float], ...] = ()
    epsilon_budget: EpsilonBudget | None = None
    epsilon_lifetime: float | None = None  # total privacy loss over the grant's whole life
    legal_bases: tuple[str, ...] = ()  # empty: any legal basis, including none
    require_case: bool = True
    valid_from: dt.datetime | None = None
    expires: dt.datetime | None = None
    total_only: bool = False
    reveal_to_owner: bool = False
    disclosable_fields: tuple[str, ...] = ()
    approval: str = DEFAULT_APPROVAL
    answer_within_days: int | None = None
    preservation_days_max: int = DEFAULT_PRESERVATION_DAYS_MAX
    freeze_days_max: int | None = None  # None: freeze orders are refused
    freeze_approval: str = DEFAULT_APPROVAL
    monitor: str = ""  # a monitor whose sealed opening each match/aggregate answer needs

    def applies(self, partner: str, dataset: str) -> bool:
        return (partner in self.partners or "*" in self.partners) and dataset in self.datasets

    def valid_at(self, now: dt.datetime) -> bool:
        if self.valid_from is not None and now < self.valid_from:
            return False
        return self.expires is None or now < self.expires

    def serves(self, kind: QueryKind) -> bool:
        """Whether this grant can answer a request of `kind` at all."""
        if kind is QueryKind.MATCH:
            return self.disclosure in MATCH_LEVELS
        if kind is QueryKind.AGGREGATE:
            return self.disclosure in AGGREGATE_LEVELS and bool(self.aggregate_columns)
        if kind is QueryKind.OVERLAP:
            return self.disclosure is Level.OVERLAP
        if kind is QueryKind.FREEZE:
            return self.disclosure is Level.DISCLOSURE_REQUEST and self.freeze_days_max is not None
        return self.disclosure is Level.DISCLOSURE_REQUEST

    def freeze_terms(self) -> str:
        """How this grant treats freeze (restraint) orders, in one sentence."""
        if self.freeze_days_max is None:
            return "Freeze (restraint) orders: refused (no 'freeze_days_max')."
        who = (
            "in force at once"
            if self.freeze_approval == "automatic"
            else "queued for the privacy officer's approval"
        )
        return f"Freeze (restraint) orders: up to {self.freeze_days_max} days; {who}."

    def clip_bounds(self, column: str) -> tuple[float, float] | None:
        return next(((lo, hi) for name, lo, hi in self.clip if name == column), None)

    def where(self) -> str:
        return f"grant #{self.index} (line {self.line})"


@dataclass(frozen=True)
class Policy:
    jurisdiction: str
    version: str
    sha256: str
    grants: tuple[Grant, ...]
    path: Path

    def grant_for(
        self,
        partner: str,
        dataset: str,
        kind: QueryKind = QueryKind.MATCH,
        now: dt.datetime | None = None,
    ) -> Grant | None:
        """The most permissive grant valid now that serves `kind` for this partner and dataset."""
        moment = now or utc_now()
        candidates = [
            g
            for g in self.grants
            if g.applies(partner, dataset) and g.serves(kind) and g.valid_at(moment)
        ]
        return max(candidates, key=preference, default=None)

    def partners(self) -> tuple[str, ...]:
        names = sorted({p for g in self.grants for p in g.partners})
        return tuple(names)

    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({d for g in self.grants for d in g.datasets}))


def preference(grant: Grant) -> tuple[int, int, int]:
    """Order grants by what they disclose, then by their item limit, then by file position."""
    return (int(grant.disclosure), grant.max_items_per_query, -grant.index)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
