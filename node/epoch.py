"""Per-dataset epochs: a secret scalar, the shuffled blinded table T = {H(y)^b} and its filter.

An epoch lasts `epoch_hours` or until the data or the dataset's definition
changes. Its public parts (table, filter) are persisted in the node database so a
restart reuses it; its secret scalar is not: it lives in its own key file,
``NODE_DIR/keys/<dataset>-<epoch>.key`` (0600, in a 0700 directory), so a copy of
``node.duckdb`` (a backup, an export for the console) holds no secret. When a
new epoch starts, the old key file is overwritten and deleted with the old
table. A database from an older version that still holds a scalar is migrated
when the epoch is loaded: the scalar moves to its key file, the column is
cleared and the database checkpointed (said in the log).

For additive blinding (``fedtrace.blinding``) each epoch also derives, from its
scalar ``b``, the public ``C = b⁻¹·G`` and ``B = b·G`` (when built and again when
loaded: two base multiplications, so nothing new is stored), and proves once per
node name that one ``b`` gives both, bound to (node, dataset, epoch id).

A new epoch is built by `node.epochs.builder`: the items streamed from DuckDB in
record batches, blinded on every core (or a Dask cluster, ``[compute] scheduler``)
and, above ``[compute] partition_items`` items, split into ``2**P`` partitions each
with its own filter (`Epoch.partition_filter`, loaded lazily from
``epoch_partitions``; see `node.epochs.storage`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from fedtrace import blinding, gcs, group
from fedtrace.partitions import partition_count, partitioned_filter_sha256
from node.config import ComputeConfig, DatasetConfig
from node.epochs import builder
from node.epochs.builder import DatasetError as DatasetError
from node.epochs.builder import dataset_items as dataset_items
from node.epochs.storage import (
    EPOCHS_DDL,
    EpochRecord,
    PartitionIndex,
    PartitionStore,
    read_partition_index,
    write_epoch,
)
from node.store import NodeDatabase, data_version, first_row
from node.table_order import table_order

log = logging.getLogger(__name__)

FILTER_REMAINDER_BITS = 30  # false-positive rate 2^-30 ≈ 9.3e-10 per tested item
KEYS_DIR = "keys"
KEY_SUFFIX = ".key"
# The in-memory reference build (`_ordered_table`) blinds in chunks of at least BLIND_CHUNK,
# large enough that `group.blind_items` still spreads each over every worker, at most
# BLIND_STEPS of them. A new epoch streams instead (`node.epochs.builder`).
BLIND_CHUNK = 4 * group.PARALLEL_THRESHOLD
BLIND_STEPS = 50

# Blinding progress of a new epoch: (dataset, items blinded so far, items in all).
BlindingProgress = Callable[[str, int, int], None]


def keys_dir(database: NodeDatabase) -> Path:
    """Where the epochs' secret scalars live: ``keys/`` beside the node database."""
    return database.path.parent / KEYS_DIR


def key_path(directory: Path, dataset: str, epoch_id: str) -> Path:
    return directory / f"{dataset}-{epoch_id}{KEY_SUFFIX}"


def write_key(directory: Path, dataset: str, epoch_id: str, key: bytes) -> Path:
    """Write an epoch's scalar to its own 0600 file in the 0700 keys directory (fsynced)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = key_path(directory, dataset, epoch_id)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_key(directory: Path, dataset: str, epoch_id: str) -> bytes | None:
    try:
        key = key_path(directory, dataset, epoch_id).read_bytes()
    except OSError:
        return None
    return key if len(key) == group.SCALAR_BYTES else None


def destroy_keys(directory: Path, dataset: str, keep: str = "") -> None:
    """Overwrite with zeros and delete every key file of `dataset` but epoch `keep`'s."""
    if not directory.is_dir():
        return
    for path in directory.glob(f"{dataset}-*{KEY_SUFFIX}*"):
        if keep and path.name == f"{dataset}-{keep}{KEY_SUFFIX}":
            continue
        try:
            size = path.stat().st_size
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"\x00" * size)
                os.fsync(fd)
            finally:
                os.close(fd)
            path.unlink()
        except OSError as exc:
            log.error("could not destroy the old epoch key %s: %s", path, exc.strerror)


@dataclass(frozen=True)
class Epoch:
    dataset: str
    epoch_id: str
    created: datetime
    data_version: int
    definition_sha256: str
    item_count: int
    filter: gcs.GolombFilter
    filter_sha256: bytes
    # The secret scalar b: never leaves the node, never logged, not in repr.
    secret_key: bytes = field(repr=False)
    # P > 0: 2**P partitions loaded on demand (`filter` is then empty: use partition_filter).
    partitions: PartitionStore | None = field(default=None, repr=False, compare=False)
    # Derived from b, never passed in: C = b⁻¹·G and B = b·G (public, additive blinding).
    blinding_point: bytes = field(init=False)
    key_commitment: bytes = field(init=False)
    _proofs: dict[str, bytes] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blinding_point", blinding.blinding_point(self.secret_key))
        object.__setattr__(self, "key_commitment", group.multiply_base(self.secret_key))

    @property
    def partition_bits(self) -> int:
        """P: the epoch has ``2**P`` partitions (0: one, the `filter` itself)."""
        return self.partitions.index.bits if self.partitions is not None else 0

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < partition_count(self.partition_bits):
            raise ValueError(
                f"epoch {self.epoch_id} has {partition_count(self.partition_bits)} "
                f"partition(s), not a partition {partition}"
            )

    def partition_filter(self, partition: int) -> gcs.GolombFilter:
        """Partition ``partition``'s filter (loaded from the database when P > 0, LRU-cached)."""
        self._check_partition(partition)
        if self.partitions is None:
            return self.filter
        return self.partitions.filter(partition)

    def partition_sha256(self, partition: int) -> bytes:
        """SHA-256 of partition ``partition``'s filter data, without loading it."""
        self._check_partition(partition)
        if self.partitions is None:
            return self.filter_sha256
        return self.partitions.index.digests[partition]

    def blinding_proof(self, node: str) -> bytes:
        """The Chaum–Pedersen proof that ``C = b⁻¹·G`` for ``B = b·G``, bound to this epoch."""
        proof = self._proofs.get(node)
        if proof is None:
            context = blinding.blinding_context(node, self.dataset, self.epoch_id)
            _, _, proof = blinding.prove_blinding_point(self.secret_key, context)
            self._proofs[node] = proof  # two threads may both prove: either proof is valid
        return proof

    def is_current(self, version: int, definition: str, now: datetime, hours: float) -> bool:
        return (
            self.data_version == version
            and self.definition_sha256 == definition
            and now - self.created < timedelta(hours=hours)
        )


def definition_sha256(dataset: DatasetConfig) -> str:
    text = "\x00".join((dataset.kind, dataset.key_column, dataset.sql))
    return hashlib.sha256(text.encode()).hexdigest()


def _ordered_table(
    dataset: str, items: list[bytes], key: bytes, blinded: BlindingProgress | None
) -> list[bytes]:
    """The epoch table {H(y)^key} in its key-derived secret order (`node.table_order`),
    blinded chunk by chunk, each chunk reported to ``blinded``: the whole table as a list,
    the reference a streamed build (`node.epochs.builder.build_table`) must equal."""
    step = max(BLIND_CHUNK, -(-len(items) // BLIND_STEPS))
    points: list[bytes] = []
    for start in range(0, len(items), step):
        points.extend(group.blind_items(items[start : start + step], key))
        if blinded:
            blinded(dataset, len(points), len(items))
    return [points[index] for index in table_order(len(points), key)]


def current_epoch(
    database: NodeDatabase,
    dataset: DatasetConfig,
    epoch_hours: float,
    *,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    blinded: BlindingProgress | None = None,
    compute: ComputeConfig | None = None,
) -> Epoch:
    """The dataset's epoch in force now, reusing the persisted one while it is current.

    ``progress`` hears what is being done; ``blinded`` hears, chunk by chunk, how many
    of a new epoch's items are blinded. ``compute`` says where a new epoch is built
    (default: this machine's cores) and from what size it is partitioned.
    """
    now = now or datetime.now(UTC)
    compute = compute or ComputeConfig()
    definition = definition_sha256(dataset)
    directory = keys_dir(database)
    key = group.random_scalar()
    with database.session() as con:
        con.execute(EPOCHS_DDL)
        version = data_version(con)
        stored = _load_latest(con, database, dataset.name, directory)
        if stored is not None and stored.is_current(version, definition, now, epoch_hours):
            return stored
        # The items stream from this session while they are blinded: the database is
        # held for the build (another process waits, as it waits for an ingest).
        items = builder.open_item_stream(con, dataset)
        if progress:
            progress(f"dataset {dataset.name}: blinding {items.count:,} items for a new epoch")
        with builder.blinder_for(compute, database.path.parent, items.count) as blinder:
            built = builder.build_table(
                items,
                key,
                blinder,
                remainder_bits=FILTER_REMAINDER_BITS,
                partition_items=compute.partition_items,
                blinded=(lambda done, total: blinded(dataset.name, done, total))
                if blinded
                else None,
            )
    record = EpochRecord(
        dataset=dataset.name,
        epoch_id=secrets.token_hex(8),
        created=now,
        data_version=version,
        definition_sha256=definition,
        item_count=built.item_count,
        # No copy: DuckDB reads the array itself (an empty view cannot be cast: plain bytes).
        table_points=built.table.reshape(-1).data if built.table.size else b"",
        remainder_bits=FILTER_REMAINDER_BITS,
        filters=built.filters,
    )
    write_key(directory, dataset.name, record.epoch_id, key)
    try:
        with database.session() as con:
            write_epoch(con, record)
    except BaseException:
        destroy_keys(directory, dataset.name, keep=stored.epoch_id if stored else "")
        raise
    # The old epoch's scalar goes with it: answers under it can no longer be produced.
    destroy_keys(directory, dataset.name, keep=record.epoch_id)
    log.info(
        "dataset %s: new epoch %s over %d items in %d partition(s)",
        dataset.name,
        record.epoch_id,
        record.item_count,
        len(record.filters),
    )
    return _epoch(database, record, key)


def _epoch(database: NodeDatabase, record: EpochRecord, key: bytes) -> Epoch:
    index = None
    if record.partition_bits:
        index = PartitionIndex(
            item_counts=tuple(f.item_count for f in record.filters),
            digests=tuple(hashlib.sha256(f.data).digest() for f in record.filters),
        )
    filter_ = record.filters[0] if index is None else _empty_filter(record.remainder_bits)
    return _assemble(database, record.dataset, record.epoch_id, index, filter_, key, record)


def _empty_filter(remainder_bits: int) -> gcs.GolombFilter:
    return gcs.GolombFilter(0, remainder_bits, b"")


def _assemble(
    database: NodeDatabase,
    dataset: str,
    epoch_id: str,
    index: PartitionIndex | None,
    filter_: gcs.GolombFilter,
    key: bytes,
    record: EpochRecord | _StoredRow,
) -> Epoch:
    partitions = None
    digest = hashlib.sha256(filter_.data).digest()
    if index is not None:
        partitions = PartitionStore(database, dataset, epoch_id, filter_.remainder_bits, index)
        digest = partitioned_filter_sha256(index.bits, index.digests)
    return Epoch(
        dataset=dataset,
        epoch_id=epoch_id,
        created=record.created,
        data_version=record.data_version,
        definition_sha256=record.definition_sha256,
        item_count=record.item_count,
        filter=filter_,
        filter_sha256=digest,
        secret_key=key,
        partitions=partitions,
    )


def epoch_is_current(
    database: NodeDatabase, epoch: Epoch, dataset: DatasetConfig, epoch_hours: float
) -> bool:
    """Cheap check for the server's refresher: same data, same definition, not expired."""
    with database.session() as con:
        version = data_version(con)
    return epoch.is_current(version, definition_sha256(dataset), datetime.now(UTC), epoch_hours)


@dataclass(frozen=True)
class _StoredRow:
    created: datetime
    data_version: int
    definition_sha256: str
    item_count: int


def _load_latest(
    con: duckdb.DuckDBPyConnection, database: NodeDatabase, dataset: str, directory: Path
) -> Epoch | None:
    row = first_row(
        con,
        "SELECT epoch_id, created, data_version, definition_sha256, secret_key, item_count, "
        "filter_data, remainder_bits FROM epochs WHERE dataset = ? ORDER BY created DESC LIMIT 1",
        [dataset],
    )
    if row is None:
        return None
    epoch_id, created, version, definition, stored_key, count, filter_data, bits = row
    key = bytes(stored_key)
    if key:  # written by an older version: move the scalar out of the database
        write_key(directory, dataset, str(epoch_id), key)
        con.execute(
            "UPDATE epochs SET secret_key = ? WHERE dataset = ? AND epoch_id = ?",
            [b"", dataset, str(epoch_id)],
        )
        con.execute("CHECKPOINT")
        log.warning(
            "dataset %s: epoch %s's secret scalar moved out of the database to %s "
            "(database checkpointed; older copies of node.duckdb still hold it)",
            dataset,
            epoch_id,
            key_path(directory, dataset, str(epoch_id)),
        )
    else:
        found = read_key(directory, dataset, str(epoch_id))
        if found is None:
            log.warning(
                "dataset %s: epoch %s has no key file in %s; starting a new epoch",
                dataset,
                epoch_id,
                directory,
            )
            return None
        key = found
    index = read_partition_index(con, dataset, str(epoch_id))
    if index is None:
        filter_ = gcs.GolombFilter.from_bytes(int(count), int(bits), bytes(filter_data))
    else:
        filter_ = _empty_filter(int(bits))
    row_values = _StoredRow(created, int(version), str(definition), int(count))
    return _assemble(database, dataset, str(epoch_id), index, filter_, key, row_values)
