"""Dispatch by identifier kind or chain name, and wallet-kind detection.

``wallet`` tries every chain (btc, eth, trx, ltc). A Base58 P2SH address with
version 0x05 ("3…") is valid for Bitcoin and for Litecoin's legacy P2SH and
has the same canonical string on both; it is reported as ``btc``. Any other
value valid for several chains with different canonical forms is refused,
listing the candidates.
"""

from __future__ import annotations

from collections.abc import Callable

from fedtrace.identifiers.bitcoin import canonical_btc, canonical_ltc
from fedtrace.identifiers.errors import InvalidIdentifier, check_text
from fedtrace.identifiers.evm import canonical_eth
from fedtrace.identifiers.iban import canonical_iban
from fedtrace.identifiers.tron import canonical_trx

KINDS: tuple[str, ...] = ("btc", "eth", "trx", "ltc", "iban", "wallet", "person")
WALLET_KINDS: tuple[str, ...] = ("btc", "eth", "trx", "ltc")

_CANONICALIZERS: dict[str, Callable[[str], str]] = {
    "btc": canonical_btc,
    "eth": canonical_eth,
    "trx": canonical_trx,
    "ltc": canonical_ltc,
    "iban": canonical_iban,
}

_EVM_CHAINS = (
    "eth", "ethereum", "evm", "erc20", "bsc", "bnb", "bep20", "binance-smart-chain",
    "bnb-smart-chain", "polygon", "matic", "arbitrum", "arbitrum-one", "arb", "optimism",
    "op", "base", "avalanche", "avax", "avalanche-c", "fantom", "ftm", "gnosis", "xdai",
    "linea", "zksync", "zksync-era", "scroll", "celo", "cronos", "moonbeam", "mantle",
    "blast", "sonic", "etc", "ethereum-classic",
)  # fmt: skip

CHAIN_KINDS: dict[str, str] = {
    "btc": "btc",
    "bitcoin": "btc",
    "xbt": "btc",
    "trx": "trx",
    "tron": "trx",
    "trc20": "trx",
    "ltc": "ltc",
    "litecoin": "ltc",
    **{name: "eth" for name in _EVM_CHAINS},
}

# Base58 version 0x05 P2SH is the same script-hash string for both chains.
_SAME_STRING_PREFERENCE = ("btc", "ltc")


def canonicalize(kind: str, value: str) -> str:
    """Canonical form of ``value`` for ``kind`` (btc, eth, trx, ltc, iban, wallet)."""
    if kind == "wallet":
        return detect_wallet(value)[1]
    canonicalizer = _CANONICALIZERS.get(kind)
    if canonicalizer is None:
        if kind == "person":
            raise ValueError(
                "kind 'person' has several keys per value: use person_keys() or parse_person()"
            )
        raise ValueError(f"unknown identifier kind {kind!r} (known: {', '.join(KINDS)})")
    return canonicalizer(value)


def _chain_kind(value: str, chain: str) -> str:
    name = "-".join(chain.strip().lower().replace("_", " ").split())
    kind = CHAIN_KINDS.get(name)
    if kind is None:
        raise InvalidIdentifier(value, f"unknown chain {chain!r}")
    return kind


def canonical_address(value: str, chain: str | None = None) -> str:
    """Canonical wallet address, using the ``chain`` column as hint when present."""
    if chain is None or not chain.strip():
        return detect_wallet(value)[1]
    return _CANONICALIZERS[_chain_kind(value, chain)](value)


def _candidate_kinds(text: str) -> tuple[str, ...]:
    """Chains worth trying first, judged by the prefix (a fast path for ingest)."""
    head = text[:4].lower()
    if head.startswith("0x"):
        return ("eth",)
    if head.startswith(("bc1", "tb1")):
        return ("btc",)
    if head.startswith("ltc1"):
        return ("ltc",)
    if text[0] in "1mn2":
        return ("btc",)
    if text[0] == "T":
        return ("trx",)
    if text[0] in "LM":
        return ("ltc",)
    return WALLET_KINDS


def detect_wallet(value: str) -> tuple[str, str]:
    """Return ``(kind, canonical)`` for a wallet address of any supported chain."""
    text = check_text(value)
    for kinds in (_candidate_kinds(text), WALLET_KINDS):
        found: dict[str, str] = {}
        failures: dict[str, str] = {}
        for kind in kinds:
            try:
                found[kind] = _CANONICALIZERS[kind](value)
            except InvalidIdentifier as exc:
                failures[kind] = exc.reason
        if found:
            break
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        tried = "; ".join(f"{kind}: {reason}" for kind, reason in failures.items())
        raise InvalidIdentifier(value, f"not a wallet address of any known chain ({tried})")
    canonicals = set(found.values())
    if len(canonicals) == 1:
        for kind in _SAME_STRING_PREFERENCE:
            if kind in found:
                return kind, found[kind]
    listed = "; ".join(f"{kind}: {canonical}" for kind, canonical in found.items())
    raise InvalidIdentifier(value, f"ambiguous wallet address, valid as ({listed})")
