"""Loading watchlists from text and CSV files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedtrace.identifiers import WatchlistProblem, load_watchlist
from fedtrace.identifiers import watchlist as watchlist_module

ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
ETH_CANONICAL = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
BECH32 = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_text_watchlist(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "list.txt",
        f"# case 42\n{ETH}\n\n{ETH_CANONICAL}\n  {BECH32.upper()}  \nnot-an-address\n{BECH32}\n",
    )
    result = load_watchlist(path, "wallet")
    assert result.kind == "wallet"
    assert result.items == (ETH_CANONICAL, BECH32)
    assert result.lines == 5
    assert result.duplicates == 2
    assert result.owners == {ETH_CANONICAL: (2, 4), BECH32: (5, 7)}
    assert result.problems == (
        WatchlistProblem(
            6,
            "not-an-address",
            "not a wallet address of any known chain (btc: invalid base58 character '-'; "
            "eth: EVM address must start with 0x; trx: invalid base58 character '-'; "
            "ltc: invalid base58 character '-')",
        ),
    )


def test_csv_watchlist_picks_the_address_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "list.csv",
        f'note,address\nfirst,{ETH}\n"multi\nline",{BECH32}\nbad,0x12\n',
    )
    result = load_watchlist(path, "wallet")
    assert result.items == (ETH_CANONICAL, BECH32)
    assert result.owners == {ETH_CANONICAL: (2,), BECH32: (3,)}
    assert result.problems == (
        WatchlistProblem(5, "0x12", "not a wallet address of any known chain (btc: "
                         "invalid base58 character '0'; eth: expected 40 hex digits after 0x, "
                         "got 2; trx: invalid base58 character '0'; ltc: invalid base58 "
                         "character '0')"),
    )  # fmt: skip
    assert result.lines == 3


def test_csv_named_column_and_single_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "list.txt", f"Account,Other\n{ETH},x\n")
    assert load_watchlist(path, "eth", column="account").items == (ETH_CANONICAL,)
    single = _write(tmp_path, "single.csv", f"wallets_of_interest\n{ETH}\n")
    assert load_watchlist(single, "eth").items == (ETH_CANONICAL,)


def test_iban_csv(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "ibans.csv", "iban\nDE89 3704 0044 0532 0130 00\nde89370400440532013000\n"
    )
    result = load_watchlist(path, "iban")
    assert result.items == ("DE89370400440532013000",)
    assert result.duplicates == 1


def test_person_text_and_csv(tmp_path: Path) -> None:
    text = _write(
        tmp_path,
        "persons.txt",
        "MÜLLER, Hans-Peter|31.12.1980\nhans peter muller|1980-12-31|X 123\nNobody|03/04/1980\n",
    )
    result = load_watchlist(text, "person")
    assert result.items == (
        "name_dob:hans muller peter|1980-12-31",
        "phonetic_dob:HNS MLR PTR|1980-12-31",
        "document:X123",
    )
    assert result.duplicates == 0
    assert result.owners["name_dob:hans muller peter|1980-12-31"] == (1, 2)
    assert result.problems == (
        WatchlistProblem(
            3,
            "Nobody|03/04/1980",
            "ambiguous date '03/04/1980' (1980-04-03 or 1980-03-04): write it as YYYY-MM-DD",
        ),
    )
    csv_path = _write(
        tmp_path,
        "persons.csv",
        "full_name,date_of_birth\nСергей Иванов,1979-04-17\nSergey Ivanov,17.04.1979\n",
    )
    persons = load_watchlist(csv_path, "person")
    assert persons.items == (
        "name_dob:ivanov sergey|1979-04-17",
        "phonetic_dob:IFNF SRJ|1979-04-17",
    )
    assert persons.duplicates == 1


@pytest.mark.parametrize(
    ("name", "content", "kind", "column", "message"),
    [
        ("a.csv", "x,y\n1,2\n", "eth", None, "has no column named address/wallet/identifier/iban"),
        ("a.csv", "address\n", "eth", "wallet", "has no column 'wallet'"),
        ("a.csv", "", "eth", None, "is empty (no CSV header)"),
        ("p.csv", "name,dob\n", "person", None, "lacks column(s) full_name, date_of_birth"),
    ],
)
def test_unusable_files_raise_one_line_errors(
    tmp_path: Path, name: str, content: str, kind: str, column: str | None, message: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        load_watchlist(path, kind, column)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match="cannot read watchlist .*missing.txt"):
        load_watchlist(missing, "btc")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Müller|1980-12-31\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_watchlist(latin1, "person")


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown identifier kind 'doge'"):
        load_watchlist(_write(tmp_path, "a.txt", ""), "doge")


def test_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_line = _write(tmp_path, "long.txt", "x" * 10_001 + "\n")
    with pytest.raises(ValueError, match="line 1 is longer than 10,000 characters"):
        load_watchlist(long_line, "btc")
    monkeypatch.setattr(watchlist_module, "MAX_ROWS", 3)
    many = _write(tmp_path, "many.txt", f"{ETH}\n" * 5)
    with pytest.raises(ValueError, match="has more than 3 rows; split it"):
        load_watchlist(many, "eth")
    rows = _write(tmp_path, "rows.csv", "address\n" + f"{ETH}\n" * 4)
    with pytest.raises(ValueError, match="more than 3"):
        load_watchlist(rows, "eth")


def test_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeffaddress\n" + ETH + "\n").encode("utf-8"))
    assert load_watchlist(path, "eth").items == (ETH_CANONICAL,)
