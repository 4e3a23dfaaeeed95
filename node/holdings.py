"""What the node holds on one item, read with the node's own fixed SQL (no gRPC).

`lookup` selects only declared disclosable columns, quoted as identifiers, with
the item as a bound parameter. `linked_subjects` (wallet datasets) is the one
derived field: the subject ids linked to the address in `subject_wallets`.
`canonical_item` puts an item in the canonical form of its dataset's kind;
`allowed_fields` are the fields a grant lets a partner receive.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from typing import Any

import duckdb

from fedtrace.identifiers import InvalidIdentifier, canonical_address, parse_person, person_keys
from node.config import DatasetConfig

LINKED_SUBJECTS = "linked_subjects"
MAX_RECORDS_PER_ITEM = 20  # a person may match several rows; more is a data problem


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_item(dataset: DatasetConfig, item: str) -> str:
    """The item in canonical form for the dataset's kind; InvalidIdentifier when it is not one."""
    if dataset.kind == "wallet":
        return canonical_address(item)
    keys = parse_person(item)
    name_dob = next(k.value for k in keys if k.type == "name_dob")
    document = next((k.value for k in keys if k.type == "document"), None)
    return name_dob if document is None else f"{name_dob}|{document}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return value
    if isinstance(value, dt.datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    return str(value)


def lookup(
    con: duckdb.DuckDBPyConnection, dataset: DatasetConfig, item: str, fields: Sequence[str]
) -> list[dict[str, Any]]:
    """The node's records for `item` (canonical), with `fields` only; [] when it holds none.

    Fixed SQL over the dataset definition: the fields are declared disclosable columns
    (checked by the caller against node.toml and the policy), quoted as identifiers,
    and the item is a bound parameter.
    """
    columns = [f for f in fields if f != LINKED_SUBJECTS]
    for name in columns:
        if name not in dataset.disclosable_columns:
            raise ValueError(f"{name!r} is not a disclosable column of {dataset.name!r}")
    if dataset.kind == "wallet":
        key = _quote(dataset.key_column)
        selected = ", ".join([key, *(_quote(c) for c in columns)])
        rows = con.execute(
            f"SELECT {selected} FROM ({dataset.sql}) AS dataset WHERE {key} = ? LIMIT ?",
            [item, MAX_RECORDS_PER_ITEM],
        ).fetchall()
        records = []
        for row in rows:
            record = {name: _value(v) for name, v in zip(columns, row[1:], strict=True)}
            if LINKED_SUBJECTS in fields:
                linked = con.execute(
                    "SELECT DISTINCT subject_id FROM subject_wallets WHERE address = ? "
                    "ORDER BY subject_id",
                    [item],
                ).fetchall()
                record[LINKED_SUBJECTS] = [str(r[0]) for r in linked]
            records.append(record)
        return records
    return _person_records(con, dataset, item, columns)


def _person_records(
    con: duckdb.DuckDBPyConnection, dataset: DatasetConfig, item: str, columns: list[str]
) -> list[dict[str, Any]]:
    """Rows whose name and date of birth, or document number, are the item's."""
    parts = item.split("|")
    wanted_name_dob = f"{parts[0]}|{parts[1]}"
    wanted_document = parts[2] if len(parts) > 2 else None
    needed = ("full_name", "date_of_birth", "document_number")
    relation = con.sql(dataset.sql)
    names = relation.columns
    selected = [c for c in needed if c in names] + columns
    rows = con.execute(
        f"SELECT {', '.join(_quote(c) for c in selected)} FROM ({dataset.sql}) AS dataset"
    ).fetchall()
    records = []
    for row in rows:
        values = dict(zip(selected, row, strict=True))
        try:
            keys = person_keys(
                str(values.get("full_name") or ""),
                str(values.get("date_of_birth") or ""),
                values.get("document_number") or None,
            )
        except InvalidIdentifier:
            continue
        hit = any(
            (k.type == "name_dob" and k.value == wanted_name_dob)
            or (k.type == "document" and wanted_document is not None and k.value == wanted_document)
            for k in keys
        )
        if hit:
            records.append({c: _value(values[c]) for c in columns})
            if len(records) >= MAX_RECORDS_PER_ITEM:
                break
    return records


def allowed_fields(dataset: DatasetConfig, grant_fields: Sequence[str]) -> list[str]:
    """Fields a grant lets a partner receive: the grant's, that the dataset declares disclosable."""
    return [f for f in grant_fields if f in dataset.disclosable_columns]
