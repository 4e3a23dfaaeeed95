"""Bitcoin and Litecoin addresses: Base58Check P2PKH/P2SH and segwit Bech32/Bech32m.

Bitcoin accepts mainnet and testnet (testnet Base58 versions are shared with
signet and regtest); the regtest Bech32 prefix ``bcrt`` is refused because
regtest coins carry no value and never appear in real casework. Litecoin accepts
mainnet only. Canonical form: Base58 exactly as written (its encoding is
unique), Bech32/Bech32m in lower case.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedtrace.identifiers import base58, bech32
from fedtrace.identifiers.errors import InvalidIdentifier, check_text


@dataclass(frozen=True)
class UtxoChain:
    """The address rules of one UTXO chain."""

    kind: str
    name: str
    base58_versions: dict[int, str]
    hrps: tuple[str, ...]


BITCOIN = UtxoChain(
    kind="btc",
    name="Bitcoin",
    base58_versions={
        0x00: "P2PKH",
        0x05: "P2SH",
        0x6F: "testnet P2PKH",
        0xC4: "testnet P2SH",
    },
    hrps=("bc", "tb"),
)

LITECOIN = UtxoChain(
    kind="ltc",
    name="Litecoin",
    base58_versions={0x30: "P2PKH", 0x32: "P2SH", 0x05: "legacy P2SH"},
    hrps=("ltc",),
)


def _version_list(versions: dict[int, str]) -> str:
    names = [f"0x{v:02x}" for v in sorted(versions)]
    return ", ".join(names[:-1]) + " or " + names[-1]


def canonical_utxo(chain: UtxoChain, value: str) -> str:
    """Validate ``value`` as an address of ``chain`` and return its canonical form."""
    text = check_text(value)
    hrp = bech32.split_hrp(text)
    # A Base58 string can look like Bech32 (letters, "1", data); only strings
    # that cannot be Base58 are sent to the Bech32 rules for a foreign prefix.
    foreign_bech32 = bech32.looks_like_bech32(text) and not base58.is_base58(text)
    if chain.kind == "btc" and hrp == "bcrt":
        raise InvalidIdentifier(value, "regtest address (prefix 'bcrt') not accepted")
    if hrp in chain.hrps or foreign_bech32:
        bech32.decode_segwit(value, text, chain.hrps, chain.kind)
        return text.lower()
    payload = base58.decode_check(value, text)
    if len(payload) != 21:
        raise InvalidIdentifier(value, f"base58check payload is {len(payload)} bytes (expected 21)")
    version = payload[0]
    if version not in chain.base58_versions:
        raise InvalidIdentifier(
            value,
            f"version byte 0x{version:02x} is not a {chain.name} address "
            f"(expected {_version_list(chain.base58_versions)})",
        )
    return text


def canonical_btc(value: str) -> str:
    """Canonical Bitcoin address (Base58 as is, segwit lower case)."""
    return canonical_utxo(BITCOIN, value)


def canonical_ltc(value: str) -> str:
    """Canonical Litecoin address (Base58 as is, segwit lower case)."""
    return canonical_utxo(LITECOIN, value)
