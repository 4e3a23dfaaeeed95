"""Ethereum and EVM-chain addresses with EIP-55 mixed-case checksums.

``0x`` followed by 40 hex digits. All-lower and all-upper hex carry no checksum
and are accepted as written; mixed case must match EIP-55 (Keccak-256 of the
lower-case hex). The ``0x`` prefix itself is case-insensitive (``0X`` is
accepted: it carries no checksum information); a missing prefix is refused.
Canonical form: ``0x`` + lower-case hex.
"""

from __future__ import annotations

import re

from Crypto.Hash import keccak

from fedtrace.identifiers.errors import InvalidIdentifier, check_text

_HEX = frozenset("0123456789abcdefABCDEF")
# The common case in one match; anything else goes through the checks that say why.
_LOWER_ADDRESS = re.compile(r"0[xX][0-9a-f]{40}")


def _keccak_hex(text: str) -> str:
    digest = keccak.new(digest_bits=256)
    digest.update(text.encode("ascii"))
    return digest.hexdigest()


def to_checksum_address(hex40: str) -> str:
    """EIP-55 mixed-case form of a 40-hex-digit address body (with ``0x``)."""
    lower = hex40.lower()
    hashed = _keccak_hex(lower)
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(h, 16) >= 8 else ch
        for ch, h in zip(lower, hashed[:40], strict=True)
    )


def canonical_eth(value: str) -> str:
    """Validate an EVM address and return ``0x`` + lower-case hex."""
    text = check_text(value)
    if _LOWER_ADDRESS.fullmatch(text):
        return "0x" + text[2:]
    if text[:2] not in ("0x", "0X"):
        if len(text) == 40 and all(ch in _HEX for ch in text):
            raise InvalidIdentifier(value, "missing 0x prefix")
        raise InvalidIdentifier(value, "EVM address must start with 0x")
    body = text[2:]
    for ch in body:
        if ch not in _HEX:
            raise InvalidIdentifier(value, f"invalid hex character {ch!r}")
    if len(body) != 40:
        raise InvalidIdentifier(value, f"expected 40 hex digits after 0x, got {len(body)}")
    lower = body.lower()
    if body != lower and body != body.upper():
        if to_checksum_address(body)[2:] != body:
            raise InvalidIdentifier(value, "EIP-55 checksum mismatch")
    return "0x" + lower
