"""The one exception every identifier rule raises when it refuses a value."""

from __future__ import annotations

import re

# Exactly the characters ``str.isspace`` accepts, found in one C-level scan.
_WHITESPACE = re.compile(r"\s")


class InvalidIdentifier(ValueError):
    """A value that is not a valid identifier of the kind asked for.

    ``value`` is the raw input exactly as given; ``reason`` is a short human
    sentence saying why it was refused (for example "bech32 checksum mismatch").
    Nothing is ever corrected: a value either canonicalises or raises this.
    """

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{reason}: {value!r}")
        self.value = value
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidIdentifier], tuple[str, str]]:
        return (InvalidIdentifier, (self.value, self.reason))


def check_text(value: str) -> str:
    """Strip surrounding whitespace and refuse values no address can be.

    Leading and trailing whitespace is formatting (CSV cells, pasted lists), not
    content, so it is removed; anything inside the value is left to the rules.
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(repr(value), "not a string")
    text = value.strip()
    if not text:
        raise InvalidIdentifier(value, "empty value")
    if not text.isascii():
        raise InvalidIdentifier(value, "contains non-ASCII characters")
    if _WHITESPACE.search(text):
        raise InvalidIdentifier(value, "contains whitespace")
    return text
