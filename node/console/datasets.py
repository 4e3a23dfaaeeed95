"""The node's datasets (node.toml) and their epochs (the `epochs` table), for the console.

Only an epoch's id, start, item count and data version are read: never its secret
scalar or blinded table. Table sizes and the latest ingests come from the node
database, taken in turns with a serving node. Read-only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from node.config import DatasetConfig
from node.console.data import ConsoleNode, has_table, iso


@dataclass(frozen=True)
class EpochInfo:
    """The latest epoch of a dataset: when it began and how many items it blinded."""

    epoch_id: str
    created: dt.datetime
    item_count: int
    data_version: int

    def state(self, data_version: int, epoch_hours: float, now: dt.datetime) -> str:
        if now - self.created >= dt.timedelta(hours=epoch_hours):
            return "ended (a new epoch starts with the next query)"
        if self.data_version != data_version:
            return "stale (the data changed; a new epoch starts with the next query)"
        return "current"


@dataclass(frozen=True)
class DatasetView:
    config: DatasetConfig
    epoch: EpochInfo | None


@dataclass(frozen=True)
class Ingest:
    table: str
    file: str
    rows_loaded: int
    rows_rejected: int
    at: dt.datetime


@dataclass(frozen=True)
class NodeData:
    jurisdiction: str
    epoch_hours: float
    data_version: int
    tables: tuple[tuple[str, int], ...]
    datasets: tuple[DatasetView, ...]
    ingests: tuple[Ingest, ...]  # newest first

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "node": self.jurisdiction,
            "epoch_hours": self.epoch_hours,
            "data_version": self.data_version,
            "tables": dict(self.tables),
            "datasets": [
                {
                    "name": d.config.name,
                    "kind": d.config.kind,
                    "key_column": d.config.key_column,
                    "aggregate_columns": list(d.config.aggregate_columns),
                    "disclosable_columns": list(d.config.disclosable_columns),
                    "epoch": None
                    if d.epoch is None
                    else {
                        "epoch_id": d.epoch.epoch_id,
                        "created": iso(d.epoch.created),
                        "item_count": d.epoch.item_count,
                        "data_version": d.epoch.data_version,
                        "state": d.epoch.state(self.data_version, self.epoch_hours, now),
                    },
                }
                for d in self.datasets
            ],
            "ingests": [
                {
                    "table": i.table,
                    "file": i.file,
                    "rows_loaded": i.rows_loaded,
                    "rows_rejected": i.rows_rejected,
                    "at": iso(i.at),
                }
                for i in self.ingests
            ],
        }


def _utc(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(0, dt.UTC)


def _latest_epochs(con: duckdb.DuckDBPyConnection) -> dict[str, EpochInfo]:
    if not has_table(con, "epochs"):
        return {}
    rows = con.execute(  # never the secret_key column
        "SELECT dataset, arg_max(epoch_id, created), max(created), arg_max(item_count, created), "
        "arg_max(data_version, created) FROM epochs GROUP BY dataset"
    ).fetchall()
    return {
        str(name): EpochInfo(str(epoch_id), _utc(created), int(count), int(version))
        for name, epoch_id, created, count, version in rows
    }


def node_data(node: ConsoleNode, tables: Sequence[str] = ()) -> NodeData:
    names = tables or ("transactions", "subjects", "subject_wallets")
    with node.database().session() as con:
        version_row = con.execute("SELECT value FROM meta WHERE key = 'data_version'").fetchall()
        counts = tuple(
            (name, int(con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]))
            for name in names
            if has_table(con, name)
        )
        epochs = _latest_epochs(con)
        ingests = con.execute(
            "SELECT table_name, file_name, rows_loaded, rows_rejected, ingested_at FROM ingests "
            "ORDER BY ingest_id DESC LIMIT 20"
        ).fetchall()
    return NodeData(
        jurisdiction=node.jurisdiction,
        epoch_hours=node.config.epoch_hours,
        data_version=int(version_row[0][0]) if version_row else 0,
        tables=counts,
        datasets=tuple(DatasetView(d, epochs.get(d.name)) for d in node.config.datasets),
        ingests=tuple(
            Ingest(str(t), str(f), int(loaded), int(rejected), _utc(at))
            for t, f, loaded, rejected, at in ingests
        ),
    )
