"""`fedtrace node ingest` for operators: the schema in --help, separators, rejects, progress."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.pki import init_ca
from node.exchange import TABLE_COLUMNS
from node.setup import init_node

HEADER = "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp"
ETH = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
P2PKH = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"


@pytest.fixture()
def node_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    return tmp_path / "EE"


def _rows(good: int, bad: int) -> str:
    lines = [HEADER]
    lines += [f"g{i},eth,{ETH},{ETH},ETH,1,{i}.00,2026-01-02T00:00:00Z" for i in range(good)]
    lines += [f"b{i},btc,{ETH},{P2PKH},BTC,1,1.00,2026-01-02T00:00:00Z" for i in range(bad)]
    return "\n".join(lines) + "\n"


def _ingest(node_dir: Path, file: Path, *more: str) -> int:
    return main(["node", "ingest", str(node_dir), str(file), "--table", "transactions", *more])


def _loaded(node_dir: Path) -> int:
    from node.store import NodeDatabase, first_row

    with NodeDatabase(node_dir / "node.duckdb").session() as con:
        row = first_row(con, "SELECT count(*) FROM transactions")
    return int(row[0]) if row else 0


def test_help_names_the_schema_document_and_every_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["node", "ingest", "--help"])
    out = capsys.readouterr().out
    assert "The exchange schema (docs/ingest.md); * marks a required column:" in out
    assert (
        "  transactions: tx_hash*, chain*, from_address*, to_address*, asset, amount, "
        "amount_eur*, timestamp*"
    ) in out
    for table, columns in TABLE_COLUMNS.items():
        line = next(x for x in out.splitlines() if x.startswith(f"  {table}: "))
        assert [c.rstrip("*") for c in line.split(": ", 1)[1].split(", ")] == list(columns)
    assert "--max-rejects N" in out


def test_a_semicolon_separated_file_loads(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "semi.csv"
    file.write_text(_rows(3, 0).replace(",", ";"))
    assert _ingest(node_dir, file) == 0
    out = capsys.readouterr().out
    assert "3 of 3 rows loaded into transactions; 0 rejected" in out
    assert "  the file is semicolon-separated; read it as such\n" in out
    assert _loaded(node_dir) == 3


def test_a_semicolon_file_with_an_unknown_header_says_it_looks_semicolon_separated(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "odd.csv"
    file.write_text("hash;net;sender\nx;y;z\n")
    assert _ingest(node_dir, file) == 2
    err = capsys.readouterr().err
    assert "the file looks semicolon-separated but its header names none of the columns" in err


def test_an_address_that_does_not_fit_its_chain_says_so(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "mixed.csv"
    file.write_text(_rows(1, 1))
    assert _ingest(node_dir, file, "--max-rejects", "1") == 0
    out = capsys.readouterr().out
    assert (
        f"  line 3: from_address: address {ETH} is not a valid btc address (chain column says "
        "btc): invalid base58 character '0'; it is a valid eth address\n"
    ) in out


def test_rejected_rows_load_nothing_and_exit_1_unless_allowed(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "five-of-nine.csv"
    file.write_text(_rows(4, 5))
    assert _ingest(node_dir, file) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"fedtrace: error: {file}: 5 of 9 rows rejected, more than --max-rejects 0 allows; "
        "nothing was loaded (fix the rows, or pass --max-rejects 5 to load the other rows)\n"
    )
    assert captured.out.count("is not a valid btc address") == 5
    assert _loaded(node_dir) == 0
    assert _ingest(node_dir, file, "--max-rejects", "4") == 1
    assert _loaded(node_dir) == 0
    capsys.readouterr()
    assert _ingest(node_dir, file, "--max-rejects", "5") == 0
    out = capsys.readouterr().out
    assert "4 of 9 rows loaded into transactions; 5 rejected" in out
    assert _loaded(node_dir) == 4


def test_node_rejects_lists_the_rejected_rows(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.csv"
    file.write_text(_rows(1, 7))
    assert _ingest(node_dir, file, "--max-rejects", "10") == 0
    out = capsys.readouterr().out
    assert f"  … list them all with `fedtrace node rejects {node_dir}`\n" in out
    assert main(["node", "rejects", str(node_dir), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["line"] for r in rows] == [3, 4, 5, 6, 7, 8, 9]
    assert rows[0]["file"] == "bad.csv" and rows[0]["table"] == "transactions"
    assert "is not a valid btc address" in rows[0]["reason"]
    assert json.loads(rows[0]["raw"])["tx_hash"] == "b0"
    assert main(["node", "rejects", str(node_dir)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("7 rejected rows") and "bad.csv" in table


def test_progress_is_plain_lines_when_not_a_terminal(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "big.csv"
    file.write_text(_rows(50_001, 0))
    assert _ingest(node_dir, file) == 0
    err = capsys.readouterr().err
    assert err == "big.csv → transactions: 50,000 rows read\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_bar_on_a_terminal(
    node_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "big.csv"
    file.write_text(_rows(50_001, 0))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _ingest(node_dir, file) == 0
    assert "big.csv → transactions" in terminal.getvalue()
