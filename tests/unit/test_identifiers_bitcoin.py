"""Bitcoin, Litecoin and Tron address rules against published test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedtrace.identifiers import InvalidIdentifier, base58, bech32, canonicalize

VECTORS = Path(__file__).parents[1] / "vectors"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


BIP = _load("bip173_bip350_addresses.json")
CORE = _load("bitcoin_core_key_io.json")


def _script(address: str) -> str:
    hrp = address[:2].lower()
    _, version, program = bech32.decode_segwit(address, address, (hrp,), "btc")
    return (bytes([version + 0x50 if version else 0, len(program)]) + program).hex()


@pytest.mark.parametrize("vector", BIP["valid"], ids=lambda v: v["address"][:20])
def test_bip_valid_addresses_decode_to_their_script(vector: dict[str, str]) -> None:
    assert canonicalize("btc", vector["address"]) == vector["address"].lower()
    assert _script(vector["address"]) == vector["script"]


@pytest.mark.parametrize(
    "vector",
    BIP["invalid"] + BIP["bip173_superseded_by_bip350"],
    ids=lambda v: v["address"][:24],
)
def test_bip_invalid_addresses_are_refused_with_reason(vector: dict[str, str]) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("btc", vector["address"])
    assert caught.value.reason == vector["reason"]
    assert caught.value.value == vector["address"]


@pytest.mark.parametrize("vector", CORE["valid"], ids=lambda v: v["address"][:20])
def test_bitcoin_core_valid(vector: dict[str, str]) -> None:
    assert canonicalize("btc", vector["address"]) == vector["canonical"]
    if vector["address"][:3].lower() in ("bc1", "tb1"):
        flipped = vector["address"].upper()
        assert canonicalize("btc", flipped) == vector["canonical"]


@pytest.mark.parametrize("vector", CORE["invalid"], ids=lambda v: v["address"][:24])
def test_bitcoin_core_invalid(vector: dict[str, str]) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("btc", vector["address"])
    assert caught.value.reason == vector["reason"]


def test_base58_canonical_form_is_unchanged_and_bech32_is_lowered() -> None:
    assert canonicalize("btc", " 3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy ") == (
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
    )
    assert canonicalize("btc", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2") == (
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", "base58check checksum mismatch"),
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN0", "invalid base58 character '0'"),
        ("11BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "base58check checksum mismatch"),
        ("1BvBMSEYst WetqTFn5Au4m4GFg7xJaNVN2", "contains whitespace"),
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN２", "contains non-ASCII characters"),
        ("   ", "empty value"),
        (
            "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",
            "version byte 0x41 is not a Bitcoin address (expected 0x00, 0x05, 0x6f or 0xc4)",
        ),
        (
            "ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kgmn4n9",
            "unknown bech32 prefix 'ltc' for btc (expected 'bc' or 'tb')",
        ),
        (
            "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9",
            "regtest address (prefix 'bcrt') not accepted",
        ),
        ("bc1" + "q" * 88, "bech32 address longer than 90 characters"),
        ("bc1qw5", "bech32 checksum too short"),
    ],
)
def test_btc_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("btc", value)
    assert caught.value.reason == reason
    assert caught.value.value == value


PROGRAM = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")


def test_litecoin_base58_and_segwit() -> None:
    p2pkh = base58.encode_check(b"\x30" + PROGRAM)
    p2sh = base58.encode_check(b"\x32" + PROGRAM)
    legacy = base58.encode_check(b"\x05" + PROGRAM)
    assert p2pkh[0] == "L" and p2sh[0] == "M" and legacy[0] == "3"
    for address in (p2pkh, p2sh, legacy, "LM2WMpR1Rp6j3Sa59cMXMs1SPzj9eXpGc1"):
        assert canonicalize("ltc", address) == address
    segwit = bech32.encode_segwit("ltc", 0, PROGRAM)
    taproot = bech32.encode_segwit("ltc", 1, PROGRAM + PROGRAM[:12])
    assert canonicalize("ltc", segwit.upper()) == segwit
    assert canonicalize("ltc", taproot) == taproot


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            "version byte 0x00 is not a Litecoin address (expected 0x05, 0x30 or 0x32)",
        ),
        (
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
            "unknown bech32 prefix 'bc' for ltc (expected 'ltc')",
        ),
    ],
)
def test_litecoin_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("ltc", value)
    assert caught.value.reason == reason


def test_tron() -> None:
    usdt_contract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
    assert canonicalize("trx", usdt_contract) == usdt_contract
    generated = base58.encode_check(b"\x41" + PROGRAM)
    assert generated.startswith("T")
    assert canonicalize("trx", generated) == generated


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T", "base58check checksum mismatch"),
        ("tr7nhqjekqxgtci8q8zy4pl8otszgjlj6t", "invalid base58 character 'l'"),
        (
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            "version byte 0x00 is not a Tron address (expected 0x41)",
        ),
        (
            base58.encode_check(b"\x41" + PROGRAM[:19]),
            "base58check payload is 20 bytes (expected 21)",
        ),
    ],
)
def test_tron_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("trx", value)
    assert caught.value.reason == reason


def test_segwit_round_trip_encoding() -> None:
    for version, size in ((0, 20), (0, 32), (1, 32), (16, 2), (2, 40)):
        address = bech32.encode_segwit("bc", version, bytes(range(size)))
        assert canonicalize("btc", address) == address
        assert canonicalize("btc", address.upper()) == address
