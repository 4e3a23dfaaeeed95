"""Base58 and Base58Check as used by Bitcoin, Litecoin and Tron addresses.

Decoding is strict: the string must be the unique Base58 encoding of its bytes
(leading ``1`` characters stand for leading zero bytes) and the 4-byte double
SHA-256 checksum must match.
"""

from __future__ import annotations

import hashlib

from fedtrace.identifiers.errors import InvalidIdentifier

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {ch: i for i, ch in enumerate(ALPHABET)}


def is_base58(text: str) -> bool:
    """True when every character of ``text`` is in the Base58 alphabet."""
    return all(ch in _INDEX for ch in text)


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def decode_check(value: str, text: str) -> bytes:
    """Decode Base58Check ``text`` and return the payload (version byte included).

    ``value`` is the raw input, kept for the error.
    """
    number = 0
    for ch in text:
        digit = _INDEX.get(ch)
        if digit is None:
            raise InvalidIdentifier(value, f"invalid base58 character {ch!r}")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    raw = b"\x00" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(raw) < 5:
        raise InvalidIdentifier(value, "base58check string too short")
    payload, checksum = raw[:-4], raw[-4:]
    if _checksum(payload) != checksum:
        raise InvalidIdentifier(value, "base58check checksum mismatch")
    return payload


def encode_check(payload: bytes) -> str:
    """Base58Check-encode ``payload`` (version byte included)."""
    raw = payload + _checksum(payload)
    number = int.from_bytes(raw, "big")
    chars: list[str] = []
    while number:
        number, digit = divmod(number, 58)
        chars.append(ALPHABET[digit])
    zeros = len(raw) - len(raw.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(chars))
