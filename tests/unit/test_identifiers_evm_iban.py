"""EVM (EIP-55) and IBAN rules against published examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtrace.identifiers import InvalidIdentifier, canonicalize
from fedtrace.identifiers.evm import to_checksum_address

VECTORS = Path(__file__).parents[1] / "vectors"
EIP55 = json.loads((VECTORS / "eip55.json").read_text(encoding="utf-8"))
IBANS = json.loads((VECTORS / "iban_registry_examples.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("address", EIP55["all_caps"] + EIP55["all_lower"] + EIP55["normal"])
def test_eip55_examples_canonicalise_to_lower_case(address: str) -> None:
    assert canonicalize("eth", address) == "0x" + address[2:].lower()


@pytest.mark.parametrize("address", EIP55["normal"])
def test_checksum_encoding_reproduces_eip55(address: str) -> None:
    assert to_checksum_address(address[2:].lower()) == address


@pytest.mark.parametrize("address", EIP55["normal"])
def test_one_flipped_letter_breaks_eip55(address: str) -> None:
    position = next(i for i, ch in enumerate(address) if i > 1 and ch.isalpha())
    flipped = address[:position] + address[position].swapcase() + address[position + 1 :]
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("eth", flipped)
    assert caught.value.reason == "EIP-55 checksum mismatch"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "missing 0x prefix"),
        ("eth:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "EVM address must start with 0x"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA", "expected 40 hex digits after 0x, got 38"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedff", "expected 40 hex digits after 0x, got 42"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "invalid hex character 'g'"),
    ],
)
def test_eth_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("eth", value)
    assert caught.value.reason == reason
    assert caught.value.value == value


def test_upper_case_prefix_is_accepted() -> None:
    assert canonicalize("eth", "0X52908400098527886E0F7030069857D2E4169EE7") == (
        "0x52908400098527886e0f7030069857d2e4169ee7"
    )


@pytest.mark.parametrize(("country", "paper"), IBANS["valid"])
def test_iban_registry_examples(country: str, paper: str) -> None:
    compact = paper.replace(" ", "")
    assert canonicalize("iban", paper) == compact
    assert canonicalize("iban", compact.lower()) == compact
    assert compact.startswith(country)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("DE89 3704 0044 0532 0130 01", "IBAN checksum (mod 97) mismatch"),
        ("DE88 3704 0044 0532 0130 00", "IBAN checksum (mod 97) mismatch"),
        ("DE89 3704 0044 0532 0130 0", "IBAN for DE must be 22 characters, got 21"),
        ("XX89 3704 0044 0532 0130 00", "unknown IBAN country code 'XX'"),
        ("GB29 NWB1 6016 1331 9268 19", "account part does not match the IBAN format for GB"),
        ("DE89-3704-0044-0532-0130-00", "invalid character '-' in IBAN"),
        ("8937 0400 4405 3201 3000", "IBAN must start with a country code and two check digits"),
        ("  ", "empty value"),
    ],
)
def test_iban_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        canonicalize("iban", value)
    assert caught.value.reason == reason
