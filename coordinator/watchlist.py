"""The watchlist a query sends: from a file or from a list of strings, checked and canonical.

A file is read by `fedtrace.identifiers.load_watchlist`; its invalid lines stop the
query unless the investigator chose to skip them. Items given as strings (the
Python API) are canonicalised the same way, and an invalid one stops the query
with an error that names it. Either way the query gets canonical, deduplicated
items and the report a `WatchlistSummary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.report import WatchlistSummary
from fedtrace.errors import FedtraceError
from fedtrace.identifiers import (
    InvalidIdentifier,
    Watchlist,
    WatchlistProblem,
    canonicalize,
    load_watchlist,
    person_keys,
)

# Shown in a report's watchlist summary when the items came as strings, not from a file.
ITEMS_GIVEN = "(items)"


class WatchlistError(FedtraceError):
    """The watchlist has invalid lines (and they were not to be skipped), or no valid item."""


@dataclass(frozen=True)
class CheckedWatchlist:
    """Canonical items ready to query, the summary the report shows, and the skipped lines."""

    kind: str  # as asked: wallet, btc, eth, trx, ltc, iban or person
    items: tuple[str, ...]
    summary: WatchlistSummary
    problems: tuple[WatchlistProblem, ...] = ()

    @property
    def dataset_kind(self) -> str:
        """The kind of dataset these items are matched against: person or wallet."""
        return "person" if self.kind == "person" else "wallet"


def _summary(source: str, kind: str, watchlist: Watchlist) -> WatchlistSummary:
    return WatchlistSummary(
        file=source,
        kind=kind,
        lines=watchlist.lines,
        items=len(watchlist.items),
        duplicates=watchlist.duplicates,
        skipped_invalid=len(watchlist.problems),
    )


def watchlist_file(
    path: Path, kind: str, column: str | None = None, *, skip_invalid: bool = False
) -> CheckedWatchlist:
    """A watchlist file's canonical items; invalid lines raise WatchlistError unless skipped.

    The error's `problems` (on the returned value when skipped) say which lines and why.
    """
    try:
        watchlist = load_watchlist(path, kind, column)
    except (InvalidIdentifier, ValueError, OSError) as exc:
        raise WatchlistError(f"{path}: {getattr(exc, 'reason', exc)}") from None
    summary = _summary(str(path), kind, watchlist)
    checked = CheckedWatchlist(kind, watchlist.items, summary, watchlist.problems)
    if watchlist.problems and not skip_invalid:
        raise InvalidLines(
            f"{path}: {len(watchlist.problems)} invalid line(s); fix them or pass "
            "--skip-invalid to query the valid ones",
            checked,
        )
    if not watchlist.items:
        raise WatchlistError(f"{path}: no valid identifiers to query")
    return checked


class InvalidLines(WatchlistError):
    """A watchlist file with invalid lines; `watchlist.problems` lists them."""

    def __init__(self, message: str, watchlist: CheckedWatchlist) -> None:
        super().__init__(message)
        self.watchlist = watchlist


def _canonical(kind: str, value: str) -> tuple[str, ...]:
    if kind != "person":
        return (canonicalize(kind, value),)
    parts = value.split("|")
    if len(parts) not in (2, 3):
        raise InvalidIdentifier(value, "expected FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]")
    document = parts[2] if len(parts) > 2 else None
    return tuple(str(key) for key in person_keys(parts[0], parts[1], document))


def watchlist_items(items: Sequence[str], kind: str) -> CheckedWatchlist:
    """Items given as strings, canonicalised like a watchlist file's lines.

    An invalid item raises WatchlistError naming it and saying why; nothing is skipped.
    """
    if isinstance(items, str):
        raise WatchlistError("items must be a list of identifiers, not one string")
    owners: dict[str, None] = {}
    duplicates = 0
    for number, value in enumerate(items, 1):
        try:
            canonical = _canonical(kind, value)
        except InvalidIdentifier as exc:
            raise WatchlistError(
                f"item {number} ({value!r}) is not a valid {kind}: {exc.reason}"
            ) from None
        except ValueError as exc:
            raise WatchlistError(str(exc)) from None
        if all(item in owners for item in canonical):
            duplicates += 1
        owners.update(dict.fromkeys(canonical))
    if not owners:
        raise WatchlistError("no items to query")
    watchlist = Watchlist(kind, tuple(owners), (), duplicates, len(items))
    return CheckedWatchlist(kind, watchlist.items, _summary(ITEMS_GIVEN, kind, watchlist))
