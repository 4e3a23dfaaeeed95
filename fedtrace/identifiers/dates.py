"""Dates of birth: ISO 8601 and the common day-first and month-first forms.

Everything becomes ISO ``YYYY-MM-DD``. Numeric dates whose year comes last are
read day-first or month-first only when one reading is impossible (a field
above 12) or both readings agree (day equals month); otherwise the date is
refused as ambiguous. Two-digit years are refused.
"""

from __future__ import annotations

import datetime as dt
import re

from fedtrace.identifiers.errors import InvalidIdentifier

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}

_YEAR_FIRST = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_YEAR_LAST = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})")
_SHORT_YEAR = re.compile(r"\d{1,2}[-/.]\d{1,2}[-/.]\d{2}|\d{2}[-/.]\d{1,2}[-/.]\d{1,2}")
_DAY_MONTH_NAME = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?[\s\-/.]*([a-z]+)\.?[\s\-/.,]*(\d{4})")
_MONTH_NAME_DAY = re.compile(r"([a-z]+)\.?[\s\-/.]*(\d{1,2})(?:st|nd|rd|th)?[\s,]*(\d{4})")


def _build(text: str, year: int, month: int, day: int) -> str:
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError as exc:
        raise InvalidIdentifier(text, f"invalid date {text.strip()!r}: {exc}") from None


def _month(text: str, name: str) -> int:
    number = _MONTHS.get(name)
    if number is None:
        raise InvalidIdentifier(text, f"unknown month name {name!r}")
    return number


def normalize_date(text: str) -> str:
    """Return ``text`` as an ISO ``YYYY-MM-DD`` date, or raise InvalidIdentifier."""
    if not isinstance(text, str):
        raise InvalidIdentifier(repr(text), "not a string")
    cleaned = " ".join(text.split()).lower()
    if not cleaned:
        raise InvalidIdentifier(text, "empty date")
    if m := _YEAR_FIRST.fullmatch(cleaned):
        return _build(text, int(m[1]), int(m[3]), int(m[4]))
    if m := _COMPACT.fullmatch(cleaned):
        return _build(text, int(m[1]), int(m[2]), int(m[3]))
    if m := _YEAR_LAST.fullmatch(cleaned):
        first, second, year = int(m[1]), int(m[3]), int(m[4])
        if first > 12 >= second or first == second:
            return _build(text, year, second, first)
        if second > 12 >= first:
            return _build(text, year, first, second)
        if first > 12 and second > 12:
            raise InvalidIdentifier(text, f"invalid date {text.strip()!r}: no month field")
        day_first = _build(text, year, second, first)
        month_first = _build(text, year, first, second)
        raise InvalidIdentifier(
            text,
            f"ambiguous date {text.strip()!r} ({day_first} or {month_first}): "
            "write it as YYYY-MM-DD",
        )
    if _SHORT_YEAR.fullmatch(cleaned):
        raise InvalidIdentifier(text, f"two-digit year in {text.strip()!r}: write it as YYYY-MM-DD")
    if m := _DAY_MONTH_NAME.fullmatch(cleaned):
        return _build(text, int(m[3]), _month(text, m[2]), int(m[1]))
    if m := _MONTH_NAME_DAY.fullmatch(cleaned):
        return _build(text, int(m[3]), _month(text, m[1]), int(m[2]))
    raise InvalidIdentifier(text, f"unparseable date {text.strip()!r}")
