"""Kind dispatch, chain hints and wallet detection."""

from __future__ import annotations

import pytest

from fedtrace.identifiers import (
    KINDS,
    InvalidIdentifier,
    base58,
    canonical_address,
    canonicalize,
    detect_wallet,
)

ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
ETH_CANONICAL = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
P2SH = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
TRX = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


def test_kinds() -> None:
    assert KINDS == ("btc", "eth", "trx", "ltc", "iban", "wallet", "person")


def test_unknown_kind_is_a_value_error_not_an_invalid_identifier() -> None:
    with pytest.raises(ValueError, match="unknown identifier kind 'doge'") as caught:
        canonicalize("doge", "x")
    assert not isinstance(caught.value, InvalidIdentifier)
    with pytest.raises(ValueError, match="person_keys"):
        canonicalize("person", "A B|1980-01-01")


@pytest.mark.parametrize(
    ("chain", "value", "expected"),
    [
        ("ETH", ETH, ETH_CANONICAL),
        ("ethereum", ETH, ETH_CANONICAL),
        ("Polygon", ETH, ETH_CANONICAL),
        ("BSC", ETH, ETH_CANONICAL),
        ("arbitrum", ETH, ETH_CANONICAL),
        ("optimism", ETH, ETH_CANONICAL),
        ("base", ETH, ETH_CANONICAL),
        ("Avalanche", ETH, ETH_CANONICAL),
        ("bitcoin", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
         "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        ("btc", P2SH, P2SH),
        ("Tron", TRX, TRX),
        ("litecoin", P2SH, P2SH),
        (None, ETH, ETH_CANONICAL),
        ("", TRX, TRX),
        ("  ", TRX, TRX),
    ],
)  # fmt: skip
def test_canonical_address_with_chain_hint(chain: str | None, value: str, expected: str) -> None:
    assert canonical_address(value, chain) == expected


def test_unknown_chain_is_named() -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonical_address(ETH, "dogecoin")
    assert caught.value.reason == "unknown chain 'dogecoin'"


def test_chain_hint_is_enforced() -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonical_address(TRX, "eth")
    assert caught.value.reason == "EVM address must start with 0x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ETH, ("eth", ETH_CANONICAL)),
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", ("btc", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2")),
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
         ("btc", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0")),
        (TRX, ("trx", TRX)),
        ("LM2WMpR1Rp6j3Sa59cMXMs1SPzj9eXpGc1", ("ltc", "LM2WMpR1Rp6j3Sa59cMXMs1SPzj9eXpGc1")),
        (P2SH, ("btc", P2SH)),
    ],
)  # fmt: skip
def test_detect_wallet(value: str, expected: tuple[str, str]) -> None:
    assert detect_wallet(value) == expected
    assert canonicalize("wallet", value) == expected[1]


def test_p2sh_shared_by_bitcoin_and_litecoin_is_reported_as_btc() -> None:
    assert canonicalize("btc", P2SH) == canonicalize("ltc", P2SH) == P2SH
    assert detect_wallet(P2SH) == ("btc", P2SH)


def test_detection_failure_lists_every_candidate() -> None:
    value = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"
    with pytest.raises(InvalidIdentifier) as caught:
        detect_wallet(value)
    assert caught.value.reason == (
        "not a wallet address of any known chain ("
        "btc: invalid base58 character '0'; eth: EIP-55 checksum mismatch; "
        "trx: invalid base58 character '0'; ltc: invalid base58 character '0')"
    )


def test_detection_of_a_foreign_base58_version() -> None:
    dogecoin_like = base58.encode_check(b"\x1e" + bytes(20))
    with pytest.raises(InvalidIdentifier) as caught:
        detect_wallet(dogecoin_like)
    assert caught.value.reason == (
        "not a wallet address of any known chain ("
        "btc: version byte 0x1e is not a Bitcoin address (expected 0x00, 0x05, 0x6f or 0xc4); "
        "eth: EVM address must start with 0x; "
        "trx: version byte 0x1e is not a Tron address (expected 0x41); "
        "ltc: version byte 0x1e is not a Litecoin address (expected 0x05, 0x30 or 0x32))"
    )


def test_empty_wallet() -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        detect_wallet("")
    assert caught.value.reason == "empty value"


def test_invalid_identifier_is_a_value_error_with_value_and_reason() -> None:
    error = InvalidIdentifier("abc", "bech32 checksum mismatch")
    assert isinstance(error, ValueError)
    assert (error.value, error.reason) == ("abc", "bech32 checksum mismatch")
    assert str(error) == "bech32 checksum mismatch: 'abc'"
