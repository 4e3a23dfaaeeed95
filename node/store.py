"""The node's DuckDB file: the standard exchange tables, ingest, and small metadata.

Ingest is one transaction: either every accepted row and its rejections are
written and the data version moves on, or nothing changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from fedtrace.errors import ExitCode, FedtraceError
from fedtrace.identifiers import (
    InvalidIdentifier,
    canonical_address,
    detect_wallet,
    normalize_date,
    person_keys,
)
from node.exchange import REQUIRED_COLUMNS, TABLE_COLUMNS

__all__ = ["REQUIRED_COLUMNS", "TABLE_COLUMNS"]

SCHEMA_VERSION = "1"
MAX_FIELD_BYTES = 1 << 20  # a CSV field longer than this is hostile or broken
MAX_REJECTIONS_SHOWN = 5
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}

_DDL = """
SET TimeZone = 'UTC';
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS ingests (
    ingest_id BIGINT PRIMARY KEY, table_name VARCHAR NOT NULL, file_name VARCHAR NOT NULL,
    file_sha256 VARCHAR NOT NULL, rows_loaded BIGINT NOT NULL, rows_rejected BIGINT NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS transactions (
    tx_hash VARCHAR NOT NULL, chain VARCHAR NOT NULL, from_address VARCHAR NOT NULL,
    to_address VARCHAR NOT NULL, asset VARCHAR, amount DECIMAL(38, 18),
    amount_eur DECIMAL(18, 2) NOT NULL, "timestamp" TIMESTAMPTZ NOT NULL, extra JSON,
    ingest_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    subject_id VARCHAR NOT NULL, full_name VARCHAR NOT NULL, date_of_birth DATE NOT NULL,
    nationality VARCHAR, document_number VARCHAR, extra JSON, ingest_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS subject_wallets (
    subject_id VARCHAR NOT NULL, address VARCHAR NOT NULL, chain VARCHAR, extra JSON,
    ingest_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected_rows (
    ingest_id BIGINT NOT NULL, table_name VARCHAR NOT NULL, line BIGINT NOT NULL,
    reason VARCHAR NOT NULL, raw JSON);
"""

# Type checks done in SQL: (column, DuckDB type, reason when the cast fails).
_TYPED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "transactions": (
        ("amount", "DECIMAL(38, 18)", "amount is not a decimal number"),
        (
            "amount_eur",
            "DECIMAL(18, 2)",
            "amount_eur is not a decimal number with at most 2 decimals",
        ),
        ("timestamp", "TIMESTAMPTZ", "timestamp is not an ISO 8601 date-time"),
    ),
    "subjects": (("date_of_birth", "DATE", "date_of_birth is not a date"),),
    "subject_wallets": (),
}


class IngestError(FedtraceError):
    """The file could not be ingested; the node's data is unchanged."""


class TooManyRejects(IngestError):
    """More rows were rejected than the operator allowed; nothing was loaded."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, summary: IngestSummary) -> None:
        super().__init__(message)
        self.summary = summary


class DatabaseBusy(FedtraceError):
    """Another process (usually a running `node serve`) holds the database."""


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass(frozen=True)
class IngestSummary:
    table: str
    file: Path
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    first_rejections: tuple[Rejection, ...]
    data_version: int
    extra_columns: tuple[str, ...]
    delimiter: str = ","  # the CSV field separator found in the header line


@dataclass(frozen=True)
class RejectedRow:
    """A row an ingest did not load, as `fedtrace node rejects` lists it."""

    ingest_id: int
    table: str
    file: str
    line: int
    reason: str
    raw: str | None


class NodeDatabase:
    """The node's DuckDB file, opened per unit of work so several processes can take turns.

    DuckDB admits one process at a time. The server, `node ingest` and the officer's
    commands therefore hold the file only for the work at hand, and wait (up to
    `busy_seconds`) while another process has it, instead of failing at once.
    """

    def __init__(self, path: Path, *, busy_seconds: float = 60.0) -> None:
        self.path = path
        self.busy_seconds = busy_seconds

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.busy_seconds
        pause = 0.02
        while True:
            try:
                con = connect(self.path)
                break
            except DatabaseBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        try:
            yield con
        finally:
            con.close()


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the node database, creating the schema; a lock held elsewhere is a clear error."""
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DatabaseBusy(
                f"{path}: the node database stayed in use by another process (a long ingest "
                "or epoch build?); retry when it has finished"
            ) from None
        raise FedtraceError(f"{path}: cannot open the node database: {exc}") from None
    if not read_only:
        _private(path)
        con.execute(_DDL)
        con.execute(
            "INSERT INTO meta VALUES ('schema_version', ?), ('data_version', '0') "
            "ON CONFLICT DO NOTHING",
            [SCHEMA_VERSION],
        )
    else:
        con.execute("SET TimeZone = 'UTC'")
    return con


def _private(path: Path) -> None:
    """The database (and its write-ahead log) readable by the node's account only."""
    for each in (path, path.with_name(path.name + ".wal")):
        try:
            if each.exists() and each.stat().st_mode & 0o077:
                os.chmod(each, 0o600)
        except OSError:
            pass  # not ours to change (a shared test fixture); the directory still guards it


def first_row(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> tuple[Any, ...] | None:
    """The first row of a query, with the result fully consumed (DuckDB requires it)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def data_version(con: duckdb.DuckDBPyConnection) -> int:
    row = first_row(con, "SELECT value FROM meta WHERE key = 'data_version'")
    return int(row[0]) if row else 0


def ingest(
    con: duckdb.DuckDBPyConnection,
    file: Path,
    table: str,
    *,
    allow_duplicate: bool = False,
    progress: Callable[[int], None] | None = None,
    max_rejects: int | None = None,
) -> IngestSummary:
    """Load a CSV or Parquet file into a standard table, canonicalising identifiers.

    With `max_rejects`, an ingest that rejects more rows than that loads nothing
    and raises `TooManyRejects` (its summary names the first rejections).
    """
    if table not in TABLE_COLUMNS:
        raise IngestError(f"unknown table {table!r}; use one of {', '.join(TABLE_COLUMNS)}")
    digest = _sha256(file)
    earlier = first_row(
        con,
        "SELECT ingested_at FROM ingests WHERE file_sha256 = ? AND table_name = ?",
        [digest, table],
    )
    if earlier and not allow_duplicate:
        raise IngestError(
            f"{file}: this exact file was already ingested into {table} at "
            f"{earlier[0]:%Y-%m-%d %H:%M} UTC; pass --allow-duplicate to load it again"
        )
    with _open_rows(file, TABLE_COLUMNS[table]) as (header, rows, delimiter):
        missing = [c for c in REQUIRED_COLUMNS[table] if c not in header]
        if missing:
            looks = _other_delimiter(header)
            hint = (
                f"; the file looks {DELIMITERS[looks]}-separated but its header names none of "
                f"the columns: check the header line"
                if looks
                else ""
            )
            raise IngestError(
                f"{file}: missing column(s) {', '.join(missing)} for table {table}; "
                f"expected {', '.join(TABLE_COLUMNS[table])}{hint}"
            )
        standard = TABLE_COLUMNS[table]
        extras = tuple(c for c in header if c not in standard)
        staged = _stage(table, header, standard, extras, rows, progress)

    con.execute("BEGIN TRANSACTION")
    try:
        ingest_id = (first_row(con, "SELECT coalesce(max(ingest_id), 0) + 1 FROM ingests") or (1,))[
            0
        ]
        con.register("staged", staged)
        reason_sql = _reason_sql(table)
        con.execute(f"CREATE TEMP TABLE checked AS SELECT *, {reason_sql} AS _why FROM staged")
        con.execute(
            "INSERT INTO rejected_rows SELECT ?, ?, _line, _why, _raw::JSON FROM checked "
            "WHERE _why IS NOT NULL",
            [ingest_id, table],
        )
        casts = ", ".join(_cast(table, c) for c in standard)
        con.execute(
            f"INSERT INTO {table} ({', '.join(_quote(c) for c in standard)}, extra, ingest_id) "
            f"SELECT {casts}, _extra::JSON, ? FROM checked WHERE _why IS NULL",
            [ingest_id],
        )
        counts = first_row(
            con,
            "SELECT count(*) FILTER (WHERE _why IS NULL), count(*) FILTER (WHERE _why IS NOT NULL)"
            " FROM checked",
        )
        loaded, rejected = (int(counts[0]), int(counts[1])) if counts else (0, 0)
        first = con.execute(
            "SELECT _line, _why FROM checked WHERE _why IS NOT NULL ORDER BY _line LIMIT ?",
            [MAX_REJECTIONS_SHOWN],
        ).fetchall()
        con.execute(
            "INSERT INTO ingests (ingest_id, table_name, file_name, file_sha256, rows_loaded, "
            "rows_rejected) VALUES (?, ?, ?, ?, ?, ?)",
            [ingest_id, table, file.name, digest, loaded, rejected],
        )
        first_rejections = tuple(Rejection(int(line), str(why)) for line, why in first)
        if max_rejects is not None and rejected > max_rejects:
            refused = IngestSummary(
                table=table,
                file=file,
                rows_read=staged.num_rows,
                rows_loaded=0,
                rows_rejected=rejected,
                first_rejections=first_rejections,
                data_version=data_version(con),
                extra_columns=extras,
                delimiter=delimiter,
            )
            raise TooManyRejects(
                f"{file}: {rejected:,} of {staged.num_rows:,} rows rejected, more than "
                f"--max-rejects {max_rejects} allows; nothing was loaded (fix the rows, or "
                f"pass --max-rejects {rejected} to load the other rows)",
                refused,
            )
        version = data_version(con) + (1 if loaded else 0)
        con.execute("UPDATE meta SET value = ? WHERE key = 'data_version'", [str(version)])
        con.execute("DROP TABLE checked")
        con.unregister("staged")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return IngestSummary(
        table=table,
        file=file,
        rows_read=staged.num_rows,
        rows_loaded=loaded,
        rows_rejected=rejected,
        first_rejections=first_rejections,
        data_version=version,
        extra_columns=extras,
        delimiter=delimiter,
    )


def rejected_rows(con: duckdb.DuckDBPyConnection, *, limit: int | None = None) -> list[RejectedRow]:
    """Rows earlier ingests rejected, newest ingest first, in file order within each."""
    rows = con.execute(
        "SELECT r.ingest_id, r.table_name, coalesce(i.file_name, ''), r.line, r.reason, "
        "r.raw::VARCHAR FROM rejected_rows r LEFT JOIN ingests i USING (ingest_id) "
        "ORDER BY r.ingest_id DESC, r.line" + (" LIMIT ?" if limit is not None else ""),
        [limit] if limit is not None else [],
    ).fetchall()
    return [
        RejectedRow(int(i), str(t), str(f), int(line), str(why), None if raw is None else str(raw))
        for i, t, f, line, why, raw in rows
    ]


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _cast(table: str, column: str) -> str:
    for name, sql_type, _ in _TYPED[table]:
        if name == column:
            return f"TRY_CAST({_quote(column)} AS {sql_type})"
    return _quote(column)


def _reason_sql(table: str) -> str:
    clauses = ["WHEN _reason IS NOT NULL THEN _reason"]
    for column in REQUIRED_COLUMNS[table]:
        clauses.append(
            f"WHEN {_quote(column)} IS NULL OR trim({_quote(column)}) = '' THEN 'missing {column}'"
        )
    for column, sql_type, reason in _TYPED[table]:
        clauses.append(
            f"WHEN {_quote(column)} IS NOT NULL AND TRY_CAST({_quote(column)} AS {sql_type}) "
            f"IS NULL THEN '{reason}'"
        )
    return "CASE " + " ".join(clauses) + " END"


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    try:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise IngestError(f"{file}: no such file") from None
    except OSError as exc:
        raise IngestError(f"{file}: cannot read: {exc.strerror}") from None
    return digest.hexdigest()


def _sniff_delimiter(file: Path, known: tuple[str, ...]) -> str:
    """The separator that splits the header line into the most known column names."""
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            first = handle.readline(64 * 1024)
    except (OSError, UnicodeDecodeError):
        return ","  # the reader below reports the problem with its line number

    def hits(delimiter: str) -> int:
        return sum(c.strip().strip('"').strip() in known for c in first.split(delimiter))

    best = max(DELIMITERS, key=hits)  # ties keep the comma, the first
    return best if hits(best) > 0 else ","


def _other_delimiter(header: list[str]) -> str:
    """A separator other than the comma that the lone header cell seems to use."""
    if len(header) != 1:
        return ""
    return next((d for d in DELIMITERS if d != "," and d in header[0]), "")


@contextmanager
def _open_rows(
    file: Path, known: tuple[str, ...]
) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str | None]]], str]]:
    """Header, (line number, fields) rows and the separator; CSV lines exact, Parquet by row."""
    if file.suffix.lower() in (".parquet", ".pq"):
        yield (*_read_parquet(file), "")
        return
    csv.field_size_limit(MAX_FIELD_BYTES)
    delimiter = _sniff_delimiter(file, known)
    with open(file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise IngestError(f"{file}: empty file, expected a CSV header line") from None
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"{file}: line {_first_bad_utf8_line(file)}: not UTF-8 text ({exc.reason}); "
                "nothing was loaded"
            ) from None
        except csv.Error as exc:
            raise IngestError(f"{file}: line 1: broken CSV: {exc}") from None
        if len(set(header)) != len(header) or any(not h for h in header):
            raise IngestError(f"{file}: line 1: header has empty or repeated column names")
        yield header, _csv_rows(file, reader), delimiter


def _csv_rows(file: Path, reader: Any) -> Iterator[tuple[int, list[str | None]]]:
    line = reader.line_num
    try:
        for fields in reader:
            if fields:
                yield line + 1, list(fields)
            line = reader.line_num
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{file}: line {_first_bad_utf8_line(file)}: not UTF-8 text ({exc.reason}); "
            "nothing was loaded"
        ) from None
    except csv.Error as exc:
        raise IngestError(
            f"{file}: line {reader.line_num}: broken CSV ({exc}); nothing was loaded"
        ) from None


def _first_bad_utf8_line(file: Path) -> int:
    """Text is decoded in blocks, so the decoder's position is not the line: find it."""
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _read_parquet(file: Path) -> tuple[list[str], Iterator[tuple[int, list[str | None]]]]:
    try:
        relation = duckdb.sql(f"SELECT * FROM read_parquet('{_sql_string(str(file))}')")
        assert relation is not None  # a SELECT always yields a relation
        header = list(relation.columns)
        table = relation.to_arrow_table()
    except duckdb.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise IngestError(f"{file}: not a readable Parquet file: {first_line}") from None
    columns = [
        [None if v is None else str(v) for v in table.column(i).to_pylist()]
        for i in range(len(header))
    ]

    def rows() -> Iterator[tuple[int, list[str | None]]]:
        for index in range(table.num_rows):
            yield index + 1, [col[index] for col in columns]

    return header, rows()


def _sql_string(text: str) -> str:
    return text.replace("'", "''")


def _stage(
    table: str,
    header: list[str],
    standard: tuple[str, ...],
    extras: tuple[str, ...],
    rows: Iterator[tuple[int, list[str | None]]],
    progress: Callable[[int], None] | None,
) -> pa.Table:
    """Strings per standard column plus line, canonicalisation failure, raw row and extras."""
    position = {name: i for i, name in enumerate(header)}
    canonicalise = _CANONICALISERS[table]
    out: dict[str, list[Any]] = {c: [] for c in (*standard, "_line", "_reason", "_raw", "_extra")}
    for count, (line, fields) in enumerate(rows, 1):
        record: dict[str, str | None] = {}
        reason: str | None = None
        if len(fields) != len(header):
            reason = f"expected {len(header)} fields, found {len(fields)}"
        for name in standard:
            index = position.get(name)
            value = fields[index] if index is not None and index < len(fields) else None
            record[name] = value.strip() if value is not None and value.strip() else None
        if reason is None:
            try:
                canonicalise(record)
            except InvalidIdentifier as exc:
                reason = exc.reason
        for name in standard:
            out[name].append(record[name])
        out["_line"].append(line)
        out["_reason"].append(reason)
        out["_raw"].append(
            json.dumps(dict(zip(header, fields, strict=False)), ensure_ascii=False)
            if reason
            else None
        )
        out["_extra"].append(
            json.dumps(
                {e: fields[position[e]] for e in extras if position[e] < len(fields)},
                ensure_ascii=False,
            )
            if extras
            else None
        )
        if progress and count % 50_000 == 0:
            progress(count)
    schema = pa.schema(
        [(c, pa.string()) for c in standard]
        + [
            ("_line", pa.int64()),
            ("_reason", pa.string()),
            ("_raw", pa.string()),
            ("_extra", pa.string()),
        ]
    )
    return pa.table(out, schema=schema)


def _address_on_chain(value: str, chain: str | None) -> str:
    """The canonical address; a failure against the chain column says so, as such."""
    try:
        return canonical_address(value, chain)
    except InvalidIdentifier as exc:
        if chain is None or exc.reason.startswith("unknown chain"):
            raise
        try:
            other = f"; it is a valid {detect_wallet(value)[0]} address"
        except InvalidIdentifier:
            other = ""
        raise InvalidIdentifier(
            exc.value,
            f"address {value} is not a valid {chain} address (chain column says {chain}): "
            f"{exc.reason}{other}",
        ) from None


def _canonicalise_transaction(record: dict[str, str | None]) -> None:
    chain = (record["chain"] or "").lower()
    record["chain"] = chain or None
    for column in ("from_address", "to_address"):
        value = record[column]
        if value is not None:
            try:
                record[column] = _address_on_chain(value, chain or None)
            except InvalidIdentifier as exc:
                raise InvalidIdentifier(exc.value, f"{column}: {exc.reason}") from None


def _canonicalise_subject(record: dict[str, str | None]) -> None:
    if record["full_name"] and record["date_of_birth"]:
        person_keys(record["full_name"], record["date_of_birth"], record["document_number"])
        record["date_of_birth"] = normalize_date(record["date_of_birth"])


def _canonicalise_subject_wallet(record: dict[str, str | None]) -> None:
    chain = (record["chain"] or "").lower()
    record["chain"] = chain or None
    if record["address"] is not None:
        record["address"] = _address_on_chain(record["address"], chain or None)


_CANONICALISERS: dict[str, Callable[[dict[str, str | None]], None]] = {
    "transactions": _canonicalise_transaction,
    "subjects": _canonicalise_subject,
    "subject_wallets": _canonicalise_subject_wallet,
}
