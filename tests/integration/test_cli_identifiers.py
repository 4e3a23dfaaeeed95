"""`fedtrace id normalize` as a user runs it: a canonical form per input, exit 1 naming bad ones."""

from __future__ import annotations

from .conftest import fedtrace


def test_normalize_wallets_of_every_chain() -> None:
    done = fedtrace(
        "id",
        "normalize",
        "--kind",
        "wallet",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
    ]


def test_invalid_values_are_named_with_their_reason_and_exit_1() -> None:
    done = fedtrace(
        "id",
        "normalize",
        "--kind",
        "eth",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",
        "5aaeb6053f3e",
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"]
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in done.stderr
    assert "'0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD'" in errors[0]
    assert "EIP-55 checksum mismatch" in errors[0]
    assert "'5aaeb6053f3e'" in errors[1] and "must start with 0x" in errors[1]


def test_person_keys_are_tab_separated_and_agree_across_spellings() -> None:
    done = fedtrace(
        "id",
        "normalize",
        "--kind",
        "person",
        "MÜLLER, Hans-Peter|1980-12-31",
        "hans peter muller|31.12.1980|C01X00T47",
    )
    assert done.returncode == 0, done.stderr
    first, second = (line.split("\t") for line in done.stdout.splitlines())
    assert first[0].startswith("name_dob:") and first[0] == second[0]
    assert first[1].startswith("phonetic_dob:") and first[1] == second[1]
    assert second[2] == "document:C01X00T47" and len(first) == 2


def test_ambiguous_date_is_an_error_not_a_guess() -> None:
    done = fedtrace("id", "normalize", "--kind", "person", "Jean Dupont|03/04/1975")
    assert done.returncode == 1 and "ambiguous" in done.stderr
