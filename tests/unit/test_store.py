"""Node ingest: canonical identifiers in, bad rows kept with line and reason, nothing half-done."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from node.store import IngestError, NodeDatabase, data_version, ingest

HEADER = "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
ETH_MIXED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55 example
BECH32_UPPER = "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"  # BIP-173 example
P2PKH = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"


@pytest.fixture
def database(tmp_path: Path) -> NodeDatabase:
    return NodeDatabase(tmp_path / "node.duckdb", busy_seconds=1)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_identifiers_are_canonical_and_bad_rows_rejected_with_line(
    database: NodeDatabase, tmp_path: Path
) -> None:
    csv_file = _write(
        tmp_path,
        "tx.csv",
        HEADER
        + f"t1,eth,{ETH_MIXED},{ETH_MIXED.lower()},ETH,1.5,100.25,2026-01-02T03:04:05Z\n"
        + f"t2,btc,{BECH32_UPPER},{P2PKH},BTC,0.1,2500,2026-01-02T00:00:00Z\n"
        + "t3,eth,0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeE,"
        + f"{ETH_MIXED},ETH,1,1,2026-01-02T00:00:00Z\n"
        + f"t4,btc,{P2PKH},{P2PKH},BTC,abc,1,2026-01-02T00:00:00Z\n"
        + f"t5,btc,{P2PKH}\n"
        + f"t6,btc,{P2PKH},{P2PKH},BTC,1,1,yesterday\n",
    )
    with database.session() as con:
        summary = ingest(con, csv_file, "transactions")
        rows = con.execute(
            "SELECT tx_hash, from_address, to_address, amount_eur FROM transactions ORDER BY 1"
        ).fetchall()
        rejected = con.execute("SELECT line, reason FROM rejected_rows ORDER BY line").fetchall()
    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (6, 2, 4)
    assert rows[0][1:3] == (ETH_MIXED.lower(), ETH_MIXED.lower())
    assert rows[1][1] == BECH32_UPPER.lower() and rows[1][2] == P2PKH
    assert str(rows[0][3]) == "100.25"
    assert [line for line, _ in rejected] == [4, 5, 6, 7]
    reasons = dict(rejected)
    assert reasons[4].startswith("from_address:") and "EIP-55" in reasons[4]
    assert reasons[5] == "amount is not a decimal number"
    assert reasons[6] == "expected 8 fields, found 3"
    assert reasons[7] == "timestamp is not an ISO 8601 date-time"
    assert [r.line for r in summary.first_rejections] == [4, 5, 6, 7]


def test_line_numbers_count_physical_lines_with_quoted_newlines(
    database: NodeDatabase, tmp_path: Path
) -> None:
    csv_file = _write(
        tmp_path,
        "tx.csv",
        HEADER
        + f't1,eth,{ETH_MIXED},{P2PKH},"multi\nline",1,1,2026-01-01T00:00:00Z\n'
        + f"t2,eth,{ETH_MIXED},bogus,ETH,1,1,2026-01-01T00:00:00Z\n",
    )
    with database.session() as con:
        summary = ingest(con, csv_file, "transactions")
    assert summary.rows_loaded == 0  # t1 mixes chains: a btc address on eth
    assert [r.line for r in summary.first_rejections] == [2, 4]


def test_broken_file_changes_nothing(database: NodeDatabase, tmp_path: Path) -> None:
    good = _write(
        tmp_path, "good.csv", HEADER + f"t1,btc,{P2PKH},{P2PKH},BTC,1,1,2026-01-01T00:00:00Z\n"
    )
    with database.session() as con:
        ingest(con, good, "transactions")
        version = data_version(con)
    broken = _write(
        tmp_path,
        "broken.csv",
        HEADER
        + f"t2,btc,{P2PKH},{P2PKH},BTC,1,1,2026-01-01T00:00:00Z\n"
        + 't3,btc,"unterminated\n',
    )
    not_utf8 = _write(
        tmp_path, "latin1.csv", (HEADER + "t4,btc,\xe9,x,y,1,1,z\n").encode("latin-1")
    )
    with database.session() as con:
        with pytest.raises(IngestError, match=r"line 3: broken CSV .*nothing was loaded"):
            ingest(con, broken, "transactions")
        with pytest.raises(IngestError, match=r"line 2: not UTF-8 text"):
            ingest(con, not_utf8, "transactions")
        assert data_version(con) == version
        assert con.execute("SELECT count(*) FROM transactions").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM rejected_rows").fetchall() == [(0,)]


def test_missing_columns_and_repeated_files(database: NodeDatabase, tmp_path: Path) -> None:
    short = _write(tmp_path, "short.csv", "tx_hash,chain\nt1,btc\n")
    with database.session() as con:
        with pytest.raises(IngestError, match="missing column.*from_address, to_address"):
            ingest(con, short, "transactions")
    good = _write(
        tmp_path, "good.csv", HEADER + f"t1,btc,{P2PKH},{P2PKH},BTC,1,1,2026-01-01T00:00:00Z\n"
    )
    with database.session() as con:
        ingest(con, good, "transactions")
        with pytest.raises(IngestError, match="already ingested.*--allow-duplicate"):
            ingest(con, good, "transactions")
        again = ingest(con, good, "transactions", allow_duplicate=True)
        assert again.rows_loaded == 1


def test_extra_columns_are_kept_and_parquet_is_read(database: NodeDatabase, tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        "src.csv",
        "subject_id,address,chain,source\n"
        f"s1,{ETH_MIXED},eth,registry\ns2,{BECH32_UPPER},btc,osint\n",
    )
    parquet = tmp_path / "wallets.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM read_csv('{source}', all_varchar=true)) "
        f"TO '{parquet}' (FORMAT parquet)"
    )
    with database.session() as con:
        summary = ingest(con, parquet, "subject_wallets")
        rows = con.execute(
            "SELECT subject_id, address, extra->>'source' FROM subject_wallets ORDER BY 1"
        ).fetchall()
    assert summary.extra_columns == ("source",)
    assert rows == [("s1", ETH_MIXED.lower(), "registry"), ("s2", BECH32_UPPER.lower(), "osint")]


def test_subjects_with_ambiguous_dates_are_rejected(database: NodeDatabase, tmp_path: Path) -> None:
    subjects = _write(
        tmp_path,
        "subjects.csv",
        "subject_id,full_name,date_of_birth,nationality,document_number\n"
        's1,"MÜLLER, Hans-Peter",31.12.1980,DE,C01X00T47\n'
        "s2,Jean Dupont,03/04/1975,FR,\n",
    )
    with database.session() as con:
        summary = ingest(con, subjects, "subjects")
        dob = con.execute("SELECT date_of_birth::VARCHAR FROM subjects").fetchall()
    assert summary.rows_loaded == 1 and dob == [("1980-12-31",)]
    assert summary.first_rejections[0].line == 3
    assert "ambiguous" in summary.first_rejections[0].reason
