"""Tron addresses: Base58Check with version byte 0x41 and a 21-byte payload.

Canonical form: exactly as written (Base58 encodings are unique).
"""

from __future__ import annotations

from fedtrace.identifiers import base58
from fedtrace.identifiers.errors import InvalidIdentifier, check_text

TRON_VERSION = 0x41


def canonical_trx(value: str) -> str:
    """Validate a Tron Base58Check address and return it unchanged."""
    text = check_text(value)
    payload = base58.decode_check(value, text)
    if len(payload) != 21:
        raise InvalidIdentifier(value, f"base58check payload is {len(payload)} bytes (expected 21)")
    if payload[0] != TRON_VERSION:
        raise InvalidIdentifier(
            value, f"version byte 0x{payload[0]:02x} is not a Tron address (expected 0x41)"
        )
    return text
