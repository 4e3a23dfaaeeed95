"""Bech32 (BIP-173) and Bech32m (BIP-350) segwit address decoding and encoding.

Witness version 0 must carry a Bech32 checksum and versions 1 to 16 a Bech32m
checksum; programs are 2 to 40 bytes, and 20 or 32 bytes for version 0. Mixed
case is refused; the canonical form is lower case.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from fedtrace.identifiers.errors import InvalidIdentifier

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_INDEX = {ch: i for i, ch in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90


class Variant(Enum):
    """Which checksum constant a string verifies under."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def _make_table() -> tuple[int, ...]:
    table = []
    for top in range(32):
        mixed = 0
        for bit in range(5):
            if (top >> bit) & 1:
                mixed ^= _GENERATOR[bit]
        table.append(mixed)
    return tuple(table)


# One lookup per character instead of five conditional XORs: the checksum is
# on the hot path of ingest.
_TABLE = _make_table()


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    table = _TABLE
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ v ^ table[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def split_hrp(text: str) -> str | None:
    """Return the human-readable part of ``text`` lower-cased, or None.

    None also when the part is in mixed case ("Ltc"), which a Base58 string can
    start with but a Bech32 one cannot.
    """
    pos = text.rfind("1")
    if pos < 1:
        return None
    hrp = text[:pos]
    if hrp != hrp.lower() and hrp != hrp.upper():
        return None
    return hrp.lower()


def looks_like_bech32(text: str) -> bool:
    """True when ``text`` has the shape of Bech32 (alphabetic prefix, ``1``, data).

    Used to route a value to the Bech32 rules (and their precise errors) rather
    than the Base58 ones when its prefix is not one the kind accepts.
    """
    pos = text.rfind("1")
    if pos < 1 or len(text) - pos - 1 < 6:
        return False
    data = text[pos + 1 :].lower()
    return text[:pos].isalpha() and all(ch in _INDEX for ch in data)


def decode_segwit(value: str, text: str, hrps: Sequence[str], label: str) -> tuple[str, int, bytes]:
    """Decode a segwit address ``text`` whose HRP must be one of ``hrps``.

    Returns ``(hrp, witness_version, witness_program)``. ``value`` is the raw
    input and ``label`` the identifier kind, both used in error reasons.
    """
    if len(text) > MAX_LENGTH:
        raise InvalidIdentifier(value, "bech32 address longer than 90 characters")
    if text.lower() != text and text.upper() != text:
        raise InvalidIdentifier(value, "bech32 address mixes upper and lower case")
    lower = text.lower()
    pos = lower.rfind("1")
    if pos < 1:
        raise InvalidIdentifier(value, "bech32 human-readable part missing")
    hrp = lower[:pos]
    if hrp not in hrps:
        expected = " or ".join(repr(h) for h in hrps)
        raise InvalidIdentifier(
            value, f"unknown bech32 prefix {hrp!r} for {label} (expected {expected})"
        )
    data_part = lower[pos + 1 :]
    data: list[int] = []
    for ch in data_part:
        digit = _INDEX.get(ch)
        if digit is None:
            raise InvalidIdentifier(value, f"invalid bech32 character {ch!r}")
        data.append(digit)
    if len(data) < 6:
        raise InvalidIdentifier(value, "bech32 checksum too short")
    residue = _polymod(_hrp_expand(hrp) + data)
    if residue == Variant.BECH32.value:
        variant = Variant.BECH32
    elif residue == Variant.BECH32M.value:
        variant = Variant.BECH32M
    else:
        raise InvalidIdentifier(value, "bech32 checksum mismatch")
    payload = data[:-6]
    if not payload:
        raise InvalidIdentifier(value, "bech32 data section is empty (no witness version)")
    version = payload[0]
    if version > 16:
        raise InvalidIdentifier(value, f"invalid witness version {version}")
    if version == 0 and variant is not Variant.BECH32:
        raise InvalidIdentifier(value, "witness version 0 needs a bech32 checksum, found bech32m")
    if version > 0 and variant is not Variant.BECH32M:
        raise InvalidIdentifier(
            value, f"witness version {version} needs a bech32m checksum, found bech32"
        )
    program = _convert_5_to_8(value, payload[1:])
    if not 2 <= len(program) <= 40:
        raise InvalidIdentifier(value, f"witness program is {len(program)} bytes (must be 2 to 40)")
    if version == 0 and len(program) not in (20, 32):
        raise InvalidIdentifier(
            value, f"witness version 0 program must be 20 or 32 bytes, got {len(program)}"
        )
    return hrp, version, program


def _convert_5_to_8(value: str, groups: Sequence[int]) -> bytes:
    acc = 0
    bits = 0
    out = bytearray()
    for g in groups:
        acc = ((acc << 5) | g) & 0xFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5:
        raise InvalidIdentifier(value, "witness program has more than 4 padding bits")
    if acc & ((1 << bits) - 1):
        raise InvalidIdentifier(value, "witness program has non-zero padding bits")
    return bytes(out)


def _convert_8_to_5(data: bytes) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    for byte in data:
        acc = ((acc << 8) | byte) & 0xFFF
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    """Encode a segwit address (lower case) with the checksum its version requires."""
    variant = Variant.BECH32 if version == 0 else Variant.BECH32M
    data = [version] + _convert_8_to_5(program)
    residue = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ variant.value
    checksum = [(residue >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum)
