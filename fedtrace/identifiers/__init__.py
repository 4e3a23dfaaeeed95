"""Identifier canonicalisation and validation shared by node ingest and watchlists.

Both sides hash the canonical form, so an identifier matches across
jurisdictions exactly when the canonical strings agree. Every rule validates
checksums and never corrects a value; see ``docs/identifiers.md``.
"""

from __future__ import annotations

from fedtrace.identifiers.dates import normalize_date
from fedtrace.identifiers.detect import (
    CHAIN_KINDS,
    KINDS,
    WALLET_KINDS,
    canonical_address,
    canonicalize,
    detect_wallet,
)
from fedtrace.identifiers.errors import InvalidIdentifier
from fedtrace.identifiers.person import PERSON_KEY_TYPES, PersonKey, parse_person, person_keys
from fedtrace.identifiers.watchlist import (
    Watchlist,
    WatchlistError,
    WatchlistProblem,
    load_watchlist,
)

__all__ = [
    "CHAIN_KINDS",
    "KINDS",
    "PERSON_KEY_TYPES",
    "WALLET_KINDS",
    "InvalidIdentifier",
    "PersonKey",
    "Watchlist",
    "WatchlistError",
    "WatchlistProblem",
    "canonical_address",
    "canonicalize",
    "detect_wallet",
    "load_watchlist",
    "normalize_date",
    "parse_person",
    "person_keys",
]
