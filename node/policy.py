"""Disclosure policies: the privacy officer's file, parsed strictly, and the decision per request.

Deny by default: a partner learns nothing from a dataset unless a grant names
both. The decision functions are plain so that tests call them without gRPC.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fedtrace.errors import ConfigError
from fedtrace.tomlconfig import TableReader, load_toml


class Level(enum.IntEnum):
    """Disclosure levels, lowest first (DESIGN.md); values match fedtrace.v1.Disclosure."""

    CARDINALITY = 1
    AGGREGATE = 2
    MEMBERSHIP = 3
    DISCLOSURE_REQUEST = 4
    OVERLAP = 5

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str, where: str) -> Level:
        for level in cls:
            if level.label == text:
                return level
        labels = ", ".join(level.label for level in cls)
        raise ConfigError(f"{where}: unknown disclosure level {text!r}; use one of {labels}")


# The levels that answer a match query, and what each implies for the answer.
MATCH_LEVELS = (Level.CARDINALITY, Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)
GRANT_KEYS = (
    "partners", "datasets", "disclosure", "max_items_per_query", "aggregate_columns",
    "min_cohort", "epsilon_per_query", "noise",
)


@dataclass(frozen=True)
class Grant:
    partners: tuple[str, ...]
    datasets: tuple[str, ...]
    disclosure: Level
    max_items_per_query: int
    aggregate_columns: tuple[str, ...]
    min_cohort: int
    epsilon_per_query: float
    noise: bool
    line: int  # index of the [[grant]] table in the file, 1-based, for messages

    def applies(self, partner: str, dataset: str) -> bool:
        return (partner in self.partners or "*" in self.partners) and dataset in self.datasets


@dataclass(frozen=True)
class Policy:
    jurisdiction: str
    version: str
    sha256: str
    grants: tuple[Grant, ...]
    path: Path

    def grant_for(self, partner: str, dataset: str) -> Grant | None:
        """The most permissive grant naming this partner and dataset."""
        candidates = [g for g in self.grants if g.applies(partner, dataset)]
        return max(candidates, key=lambda g: (g.disclosure, g.max_items_per_query), default=None)


def deny_all_policy_text(jurisdiction: str, version: str) -> str:
    return (
        f'# Disclosure policy of {jurisdiction}. Deny by default: no partner learns anything\n'
        "# until a [[grant]] below names it. See policies/README.md for every key.\n"
        f'jurisdiction = "{jurisdiction}"\n'
        f'version = "{version}"\n'
    )


def load_policy(path: Path) -> Policy:
    raw = path.read_bytes() if path.exists() else b""
    data = load_toml(path, "disclosure policy")
    top = TableReader(data, str(path), ("jurisdiction", "version", "grant"))
    jurisdiction = top.required("jurisdiction", str)
    version = top.required("version", str)
    grants = tuple(
        _grant(table, f"{path} [[grant]] #{i + 1}", i + 1)
        for i, table in enumerate(top.tables("grant"))
    )
    top.finish()
    return Policy(
        jurisdiction=jurisdiction,
        version=version,
        sha256=hashlib.sha256(raw).hexdigest(),
        grants=grants,
        path=path,
    )


def _grant(table: dict[str, object], where: str, index: int) -> Grant:
    reader = TableReader(dict(table), where, GRANT_KEYS)
    partners = reader.string_list("partners")
    datasets = reader.string_list("datasets")
    if not partners or not datasets:
        raise ConfigError(f"{where}: a grant must name at least one partner and one dataset")
    max_items = reader.required("max_items_per_query", int)
    if max_items < 1:
        raise ConfigError(f"{where}: 'max_items_per_query' must be at least 1")
    noise_text = reader.optional("noise", str, "on")
    if noise_text not in ("on", "off"):
        raise ConfigError(f"{where}: 'noise' must be \"on\" or \"off\", not {noise_text!r}")
    grant = Grant(
        partners=partners,
        datasets=datasets,
        disclosure=Level.parse(reader.required("disclosure", str), where),
        max_items_per_query=max_items,
        aggregate_columns=reader.string_list("aggregate_columns"),
        min_cohort=reader.optional("min_cohort", int, 1),
        epsilon_per_query=reader.optional("epsilon_per_query", float, 1.0),
        noise=noise_text == "on",
        line=index,
    )
    reader.finish()
    return grant


@dataclass(frozen=True)
class Decision:
    allowed: bool
    level: Level | None  # the level granted, possibly lower than asked
    reason: str
    code: str  # "ok" | "PERMISSION_DENIED" | "INVALID_ARGUMENT"


def decide_match(
    policy: Policy, partner: str, role: str, dataset: str, asked: Level, item_count: int
) -> Decision:
    """May `partner` run a match of `item_count` items on `dataset`, and at which level?"""
    who = f"{partner} ({role})"
    if role != "investigator":
        return Decision(False, None, f"{policy.jurisdiction} answers match queries only from "
                        f"investigator certificates, not from {who}", "PERMISSION_DENIED")
    grant = policy.grant_for(partner, dataset)
    if grant is None or grant.disclosure not in MATCH_LEVELS:
        return Decision(
            False, None,
            f"{policy.jurisdiction}'s policy {policy.version} grants {partner} no match access to "
            f"dataset {dataset!r}; ask {policy.jurisdiction}'s privacy officer for a grant",
            "PERMISSION_DENIED",
        )
    if item_count > grant.max_items_per_query:
        return Decision(
            False, None,
            f"{item_count} items exceed {policy.jurisdiction}'s limit of "
            f"{grant.max_items_per_query} items per query for {partner} on {dataset!r}; "
            "split the watchlist",
            "PERMISSION_DENIED",
        )
    # Membership-type answers need the membership grant; a lower grant answers at its level.
    level = min(asked, grant.disclosure) if asked in MATCH_LEVELS else grant.disclosure
    if level == Level.AGGREGATE:  # aggregates need their own exchange; a match gives a count
        level = Level.CARDINALITY
    if level == Level.DISCLOSURE_REQUEST:
        level = Level.MEMBERSHIP
    return Decision(True, level, "", "ok")
