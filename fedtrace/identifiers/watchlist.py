"""Investigator watchlists: load a text or CSV file into canonical identifiers.

Text files hold one identifier per line (persons as
``FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]``); blank lines and lines starting
with ``#`` are ignored, and so is a trailing comment: a ``#`` after white space
(``ADDR  # suspect``). A file is read as CSV when its name ends in ``.csv`` or
a column is named; it has a header row, and rows whose first cell starts with
``#`` are ignored. Invalid rows become problems (line, value, reason), never
silently dropped. Line numbers are 1-based physical lines of the file.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedtrace.identifiers.detect import KINDS, canonicalize
from fedtrace.identifiers.errors import InvalidIdentifier
from fedtrace.identifiers.person import person_keys

MAX_ROWS = 1_000_000
MAX_LINE_CHARS = 10_000
ADDRESS_COLUMNS = ("address", "wallet", "identifier", "iban")
PERSON_COLUMNS = ("full_name", "date_of_birth", "document_number")
_TRAILING_COMMENT = re.compile(r"\s#.*$")


class WatchlistError(ValueError):
    """The watchlist file as a whole cannot be used; the message names the file."""


@dataclass(frozen=True)
class WatchlistProblem:
    """One input row that was refused."""

    line: int
    value: str
    reason: str


@dataclass(frozen=True)
class Watchlist:
    """Canonical identifiers of a watchlist with the problems found on the way."""

    kind: str
    items: tuple[str, ...]
    problems: tuple[WatchlistProblem, ...]
    duplicates: int
    lines: int
    owners: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _physical_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without newline), enforcing the size caps."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise WatchlistError(f"cannot read watchlist {path}: {exc.strerror or exc}") from None
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if number > MAX_ROWS + 1:
                    raise WatchlistError(
                        f"watchlist {path} has more than {MAX_ROWS:,} lines; split it"
                    )
                stripped = line.rstrip("\r\n")
                if len(stripped) > MAX_LINE_CHARS:
                    raise WatchlistError(
                        f"watchlist {path} line {number} is longer than "
                        f"{MAX_LINE_CHARS:,} characters"
                    )
                yield number, stripped
        except UnicodeDecodeError as exc:
            raise WatchlistError(
                f"watchlist {path} is not UTF-8 text (bad byte after line {number})"
            ) from exc
        except OSError as exc:
            raise WatchlistError(f"cannot read watchlist {path}: {exc.strerror or exc}") from None


def without_comment(line: str) -> str:
    """A text watchlist line without its comment and surrounding white space ("" if none left)."""
    content = line.strip()
    if content.startswith("#"):
        return ""
    return _TRAILING_COMMENT.sub("", content).strip()


def _text_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    for number, line in _physical_lines(path):
        content = without_comment(line)
        if content:
            yield number, [content]


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line, cells) for every CSV record."""
    numbers: list[int] = []

    def feed() -> Iterator[str]:
        for number, line in _physical_lines(path):
            numbers.append(number)
            yield line + "\n"

    reader = csv.reader(feed())
    consumed = 0
    try:
        for cells in reader:
            start = numbers[consumed] if consumed < len(numbers) else len(numbers)
            consumed = len(numbers)
            yield start, cells
    except csv.Error as exc:
        raise WatchlistError(f"watchlist {path} line {len(numbers)}: bad CSV ({exc})") from None


def _pick_column(path: Path, header: list[str], kind: str, column: str | None) -> int:
    names = [name.strip().lower() for name in header]
    if column is not None:
        wanted = column.strip().lower()
        if wanted not in names:
            raise WatchlistError(
                f"watchlist {path} has no column {column!r} (columns: {', '.join(header)})"
            )
        return names.index(wanted)
    preference = ("iban", *ADDRESS_COLUMNS) if kind == "iban" else ADDRESS_COLUMNS
    for name in preference:
        if name in names:
            return names.index(name)
    if len(names) == 1:
        return 0
    raise WatchlistError(
        f"watchlist {path} has no column named {'/'.join(ADDRESS_COLUMNS)}; "
        f"name one with column= (columns: {', '.join(header)})"
    )


def _csv_rows(path: Path, kind: str, column: str | None) -> Iterator[tuple[int, list[str]]]:
    records = _csv_records(path)
    header: list[str] | None = None
    for _, cells in records:
        if cells and any(cell.strip() for cell in cells) and not cells[0].startswith("#"):
            header = cells
            break
    if header is None:
        raise WatchlistError(f"watchlist {path} is empty (no CSV header)")
    if kind == "person":
        names = [name.strip().lower() for name in header]
        missing = [name for name in PERSON_COLUMNS[:2] if name not in names]
        if missing:
            raise WatchlistError(
                f"watchlist {path} lacks column(s) {', '.join(missing)} "
                f"(columns: {', '.join(header)})"
            )
        positions = [names.index(name) if name in names else -1 for name in PERSON_COLUMNS]
    else:
        positions = [_pick_column(path, header, kind, column)]
    for number, cells in records:
        if not any(cell.strip() for cell in cells) or cells[0].lstrip().startswith("#"):
            continue
        yield number, [cells[p] if 0 <= p < len(cells) else "" for p in positions]


def _canonical_items(kind: str, cells: list[str]) -> tuple[str, ...]:
    if kind != "person":
        return (canonicalize(kind, cells[0]),)
    if len(cells) == 1:
        parts = cells[0].split("|")
        if len(parts) not in (2, 3):
            raise InvalidIdentifier(cells[0], "expected FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]")
        cells = parts
    document = cells[2] if len(cells) > 2 else None
    return tuple(str(key) for key in person_keys(cells[0], cells[1], document))


def load_watchlist(path: Path, kind: str, column: str | None = None) -> Watchlist:
    """Read ``path`` and canonicalise each row as ``kind``.

    Raises ``ValueError`` (``WatchlistError``) with a one-line message naming the
    file when the file as a whole is unusable; per-row failures are returned as
    ``problems``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r} (known: {', '.join(KINDS)})")
    path = Path(path)
    if column is not None and kind == "person":
        raise WatchlistError(
            f"watchlist {path}: person watchlists use the columns "
            f"{', '.join(PERSON_COLUMNS)}; column= does not apply"
        )
    is_csv = column is not None or path.suffix.lower() == ".csv"
    rows = _csv_rows(path, kind, column) if is_csv else _text_rows(path)
    owners: dict[str, list[int]] = {}
    problems: list[WatchlistProblem] = []
    duplicates = 0
    lines = 0
    for number, cells in rows:
        lines += 1
        if lines > MAX_ROWS:
            raise WatchlistError(f"watchlist {path} has more than {MAX_ROWS:,} rows; split it")
        try:
            items = _canonical_items(kind, cells)
        except InvalidIdentifier as exc:
            shown = "|".join(cells) if kind == "person" and len(cells) > 1 else cells[0]
            problems.append(WatchlistProblem(number, shown.strip(), exc.reason))
            continue
        if all(item in owners for item in items):
            duplicates += 1
        for item in items:
            owners.setdefault(item, []).append(number)
    return Watchlist(
        kind=kind,
        items=tuple(owners),
        problems=tuple(problems),
        duplicates=duplicates,
        lines=lines,
        owners={item: tuple(numbers) for item, numbers in owners.items()},
    )
