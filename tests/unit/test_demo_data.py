"""The synthetic federation data: valid addresses and the planted overlaps."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.identifiers import canonical_address, canonicalize, person_keys

# Generates and canonicalises thousands of addresses: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    data = generate_federation_data(out)
    assert time.perf_counter() - start < 5
    return data


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_files_and_columns(demo: DemoData) -> None:
    for code in ("EE", "FR", "SG"):
        directory = demo.out_dir / code
        with (directory / "transactions.csv").open(encoding="utf-8") as handle:
            assert handle.readline().strip() == (
                "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp"
            )
        assert len(_rows(directory / "transactions.csv")) == 20000
        subjects = _rows(directory / "subjects.csv")
        assert len(subjects) == 200
        assert list(subjects[0]) == [
            "subject_id", "full_name", "date_of_birth", "nationality", "document_number",
        ]  # fmt: skip
        assert any(not row["full_name"].isascii() for row in subjects)
        assert list(_rows(directory / "subject_wallets.csv")[0]) == [
            "subject_id",
            "address",
            "chain",
        ]


def test_every_address_canonicalises_and_sets_are_as_claimed(demo: DemoData) -> None:
    seen: dict[str, set[str]] = {}
    for code in demo.jurisdictions:
        directory = demo.out_dir / code
        wallets: set[str] = set()
        for row in _rows(directory / "transactions.csv"):
            assert row["chain"] in ("btc", "eth")
            assert row["timestamp"].endswith("Z")
            for column in ("from_address", "to_address"):
                wallets.add(canonical_address(row[column], row["chain"]))
        for row in _rows(directory / "subject_wallets.csv"):
            assert canonical_address(row["address"], row["chain"]) in wallets
        for row in _rows(directory / "subjects.csv"):
            person_keys(row["full_name"], row["date_of_birth"], row["document_number"])
        assert wallets == demo.wallets[code]
        seen[code] = wallets
    # Plain-Python oracle for the planted network.
    holders: dict[str, set[str]] = {}
    for code, wallets in seen.items():
        for wallet in wallets:
            holders.setdefault(wallet, set()).add(code)
    shared = {wallet for wallet, codes in holders.items() if len(codes) >= 2}
    assert shared == set(demo.planted)
    assert 55 <= len(demo.planted) <= 65
    for wallet in demo.planted:
        assert holders[wallet] == set(demo.planted_in[wallet])
    assert any(len(codes) == 3 for codes in demo.planted_in.values())
    assert any(len(codes) == 2 for codes in demo.planted_in.values())


def test_mixed_address_forms_are_present(demo: DemoData) -> None:
    addresses = [
        row[column]
        for row in _rows(demo.out_dir / "EE" / "transactions.csv")
        for column in ("from_address", "to_address")
    ]
    assert any(a.startswith("1") for a in addresses)
    assert any(a.startswith("3") for a in addresses)
    assert any(a.startswith("bc1q") for a in addresses)
    assert any(a.startswith("bc1p") for a in addresses)
    assert any(a.startswith("0x") and a != a.lower() for a in addresses)
    assert any(a.startswith("0x") and a == a.lower() for a in addresses)


def test_watchlist(demo: DemoData) -> None:
    entries = demo.watchlist()
    assert entries == demo.watchlist()
    assert len(entries) == 200
    canonical = [canonicalize("wallet", entry) for entry in entries]
    held = set().union(*demo.wallets.values())
    planted_hits = [c for c in canonical if c in demo.planted]
    assert len(planted_hits) == len(set(demo.planted)) == 60
    assert all(c not in held for c in canonical if c not in demo.planted)
    assert any(entry != c for entry, c in zip(entries, canonical, strict=True))
    assert len(demo.watchlist(size=10)) == 10


def test_shared_persons_match(demo: DemoData) -> None:
    for native, latin, dob in demo.shared_persons:
        a = {str(k) for k in person_keys(native, dob)}
        b = {str(k) for k in person_keys(latin, dob)}
        assert a & b


def test_deterministic(tmp_path: Path) -> None:
    first = generate_federation_data(tmp_path / "a", transactions_per_jurisdiction=500, seed=3)
    second = generate_federation_data(tmp_path / "b", transactions_per_jurisdiction=500, seed=3)
    for code in first.jurisdictions:
        for name in ("transactions.csv", "subjects.csv", "subject_wallets.csv"):
            assert (tmp_path / "a" / code / name).read_bytes() == (
                tmp_path / "b" / code / name
            ).read_bytes()
    assert first.planted == second.planted
