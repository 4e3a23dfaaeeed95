"""Where an epoch's public parts live in the node database, and lazy loads of its partitions.

``epochs`` keeps one row per epoch: its metadata, the blinded table in the secret
row order (one BLOB: the aggregate query reads it whole, `node.aggregate`) and,
for an unpartitioned epoch, its one filter. A partitioned epoch (``2**P``
partitions, P > 0) leaves that filter empty and keeps one ``epoch_partitions`` row
per partition; P is the number of partition rows' base-2 logarithm, so the
``epochs`` table keeps the layout older versions wrote. Both are written in one
transaction, after every partition of the build is back and counted
(`write_epoch`), so a failed build leaves the previous epoch in place.

`PartitionStore` loads a partition's filter when asked, checks it against its
stored digest and keeps the last few in memory (an LRU), never all of them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

from fedtrace import gcs
from node.store import NodeDatabase, first_row

EPOCHS_DDL = """
CREATE TABLE IF NOT EXISTS epochs (
    dataset VARCHAR NOT NULL, epoch_id VARCHAR NOT NULL, created TIMESTAMPTZ NOT NULL,
    data_version BIGINT NOT NULL, definition_sha256 VARCHAR NOT NULL, secret_key BLOB NOT NULL,
    item_count BIGINT NOT NULL, table_points BLOB NOT NULL, filter_data BLOB NOT NULL,
    remainder_bits INTEGER NOT NULL, PRIMARY KEY (dataset, epoch_id));
CREATE TABLE IF NOT EXISTS epoch_partitions (
    dataset VARCHAR NOT NULL, epoch_id VARCHAR NOT NULL, partition INTEGER NOT NULL,
    item_count BIGINT NOT NULL, filter_data BLOB NOT NULL, filter_sha256 BLOB NOT NULL,
    PRIMARY KEY (dataset, epoch_id, partition));
"""
#: Partition filters a node keeps decoded in memory at once.
PARTITION_CACHE = 4


class StoredEpochError(Exception):
    """An epoch's stored partitions are incomplete or do not match their digests."""


@dataclass(frozen=True)
class EpochRecord:
    """Everything `write_epoch` stores for a new epoch (the scalar is not among it)."""

    dataset: str
    epoch_id: str
    created: datetime
    data_version: int
    definition_sha256: str
    item_count: int
    table_points: bytes | memoryview  # the table in its secret row order, 32 bytes a row
    remainder_bits: int
    filters: tuple[gcs.GolombFilter, ...]  # one per partition; one in all when unpartitioned

    @property
    def partition_bits(self) -> int:
        return (len(self.filters) - 1).bit_length()


def write_epoch(con: duckdb.DuckDBPyConnection, record: EpochRecord) -> None:
    """Replace the dataset's epoch by ``record`` in one transaction (all or nothing)."""
    partitioned = record.partition_bits > 0
    con.execute(EPOCHS_DDL)
    con.execute("BEGIN TRANSACTION")
    try:
        # The old epoch goes with its partitions: answers under it can no longer be produced.
        con.execute("DELETE FROM epoch_partitions WHERE dataset = ?", [record.dataset])
        con.execute("DELETE FROM epochs WHERE dataset = ?", [record.dataset])
        con.execute(
            "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.dataset,
                record.epoch_id,
                record.created,
                record.data_version,
                record.definition_sha256,
                b"",  # the scalar is in its key file, never in the database
                record.item_count,
                record.table_points,
                b"" if partitioned else record.filters[0].data,
                record.remainder_bits,
            ],
        )
        if partitioned:
            for partition, filter_ in enumerate(record.filters):
                con.execute(
                    "INSERT INTO epoch_partitions VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        record.dataset,
                        record.epoch_id,
                        partition,
                        filter_.item_count,
                        filter_.data,
                        hashlib.sha256(filter_.data).digest(),
                    ],
                )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class PartitionIndex:
    """What an epoch's partitions are without their filters: counts and digests."""

    item_counts: tuple[int, ...]
    digests: tuple[bytes, ...]

    @property
    def bits(self) -> int:
        return (len(self.item_counts) - 1).bit_length()


def read_partition_index(
    con: duckdb.DuckDBPyConnection, dataset: str, epoch_id: str
) -> PartitionIndex | None:
    """The epoch's partition index, or None when it is unpartitioned (no partition rows)."""
    rows = con.execute(
        "SELECT partition, item_count, filter_sha256 FROM epoch_partitions "
        "WHERE dataset = ? AND epoch_id = ? ORDER BY partition",
        [dataset, epoch_id],
    ).fetchall()
    if not rows:
        return None
    count = len(rows)
    if count & (count - 1) or [int(row[0]) for row in rows] != list(range(count)):
        raise StoredEpochError(
            f"dataset {dataset}: epoch {epoch_id} has {count} partition rows, "
            "not one for each of a power of two"
        )
    return PartitionIndex(
        item_counts=tuple(int(row[1]) for row in rows),
        digests=tuple(bytes(row[2]) for row in rows),
    )


class PartitionStore:
    """Loads an epoch's partition filters from the database on demand (a small LRU)."""

    def __init__(
        self,
        database: NodeDatabase,
        dataset: str,
        epoch_id: str,
        remainder_bits: int,
        index: PartitionIndex,
        *,
        cache_size: int = PARTITION_CACHE,
    ) -> None:
        self._database = database
        self._dataset = dataset
        self._epoch_id = epoch_id
        self._remainder_bits = remainder_bits
        self.index = index
        self._cache: OrderedDict[int, gcs.GolombFilter] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PartitionStore({self._dataset!r}, {self._epoch_id!r}, bits={self.index.bits})"

    def filter(self, partition: int) -> gcs.GolombFilter:
        """Partition ``partition``'s filter, checked against its stored SHA-256."""
        with self._lock:
            cached = self._cache.get(partition)
            if cached is not None:
                self._cache.move_to_end(partition)
                return cached
        with self._database.session() as con:
            row = first_row(
                con,
                "SELECT item_count, filter_data FROM epoch_partitions "
                "WHERE dataset = ? AND epoch_id = ? AND partition = ?",
                [self._dataset, self._epoch_id, partition],
            )
        if row is None:
            raise StoredEpochError(
                f"dataset {self._dataset}: epoch {self._epoch_id} has no partition {partition} "
                "(a newer epoch replaced it?)"
            )
        data = bytes(row[1])
        if hashlib.sha256(data).digest() != self.index.digests[partition]:
            raise StoredEpochError(
                f"dataset {self._dataset}: epoch {self._epoch_id}'s partition {partition} "
                "does not match its digest"
            )
        loaded = gcs.GolombFilter.from_bytes(int(row[0]), self._remainder_bits, data)
        with self._lock:
            self._cache[partition] = loaded
            self._cache.move_to_end(partition)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    def cached(self) -> Sequence[int]:
        """The partitions held decoded in memory now (oldest first)."""
        with self._lock:
            return tuple(self._cache)
