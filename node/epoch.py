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
from fedtrace.identifiers import InvalidIdentifier, person_keys
from fedtrace.items import item_bytes
from node.config import DatasetConfig
from node.store import NodeDatabase, data_version, first_row
from node.table_order import table_order

log = logging.getLogger(__name__)

FILTER_REMAINDER_BITS = 30  # false-positive rate 2^-30 ≈ 9.3e-10 per tested item
KEYS_DIR = "keys"
KEY_SUFFIX = ".key"
# A new epoch blinds its items in chunks so start-up can show items done / total. Each chunk
# is large enough that `group.blind_items` still spreads it over every worker, and there are
# at most BLIND_STEPS of them, so the progress costs the build nothing measurable.
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


_DDL = """
CREATE TABLE IF NOT EXISTS epochs (
    dataset VARCHAR NOT NULL, epoch_id VARCHAR NOT NULL, created TIMESTAMPTZ NOT NULL,
    data_version BIGINT NOT NULL, definition_sha256 VARCHAR NOT NULL, secret_key BLOB NOT NULL,
    item_count BIGINT NOT NULL, table_points BLOB NOT NULL, filter_data BLOB NOT NULL,
    remainder_bits INTEGER NOT NULL, PRIMARY KEY (dataset, epoch_id));
"""


class DatasetError(Exception):
    """The dataset's SQL failed or yielded unusable rows; a message for the operator."""


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
    # Derived from b, never passed in: C = b⁻¹·G and B = b·G (public, additive blinding).
    blinding_point: bytes = field(init=False)
    key_commitment: bytes = field(init=False)
    _proofs: dict[str, bytes] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blinding_point", blinding.blinding_point(self.secret_key))
        object.__setattr__(self, "key_commitment", group.multiply_base(self.secret_key))

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


def dataset_items(con: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> list[bytes]:
    """The distinct identifier items of a dataset, encoded for hashing to the group."""
    try:
        relation = con.sql(dataset.sql)
        columns = relation.columns
        if dataset.kind == "wallet":
            if dataset.key_column not in columns:
                raise DatasetError(
                    f"dataset {dataset.name!r}: SQL has no column {dataset.key_column!r}"
                )
            return _wallet_items(relation, dataset.key_column)
        rows = relation.fetchall()
    except duckdb.Error as exc:
        raise DatasetError(
            f"dataset {dataset.name!r}: its SQL failed: {str(exc).splitlines()[0]}"
        ) from None
    needed = ("full_name", "date_of_birth", "document_number")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DatasetError(f"dataset {dataset.name!r}: SQL lacks column(s) {', '.join(missing)}")
    name_i, dob_i, doc_i = (columns.index(c) for c in needed)
    person_items: set[bytes] = set()
    for row in rows:
        try:
            keys = person_keys(str(row[name_i]), str(row[dob_i]), row[doc_i] or None)
        except InvalidIdentifier:
            continue  # cannot happen for ingested rows; ingest validated them
        person_items.update(item_bytes("person", str(key)) for key in keys)
    return sorted(person_items)


def _wallet_items(relation: duckdb.DuckDBPyRelation, key_column: str) -> list[bytes]:
    # Only the key column, deduplicated by DuckDB: fetching every column of a
    # million-row dataset into Python tuples took longer than hashing it. The
    # order does not matter (the table is shuffled) but is kept stable for tests.
    quoted = '"' + key_column.replace('"', '""') + '"'
    keys = (
        relation.filter(f"{quoted} IS NOT NULL")
        .aggregate(quoted)  # GROUP BY the key: its distinct values
        .order(quoted)
        .fetchnumpy()[key_column]
    )
    prefix = item_bytes("wallet", "")
    return [prefix + str(key).encode("utf-8") for key in keys]


def _ordered_table(
    dataset: str, items: list[bytes], key: bytes, blinded: BlindingProgress | None
) -> list[bytes]:
    """The epoch table {H(y)^key} in its key-derived secret order (`node.table_order`),
    blinded chunk by chunk, each chunk reported to ``blinded``."""
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
) -> Epoch:
    """The dataset's epoch in force now, reusing the persisted one while it is current.

    ``progress`` hears what is being done; ``blinded`` hears, chunk by chunk, how many
    of a new epoch's items are blinded.
    """
    now = now or datetime.now(UTC)
    definition = definition_sha256(dataset)
    directory = keys_dir(database)
    with database.session() as con:
        con.execute(_DDL)
        version = data_version(con)
        stored = _load_latest(con, dataset.name, directory)
        if stored is not None and stored.is_current(version, definition, now, epoch_hours):
            return stored
        items = dataset_items(con, dataset)
    # Blinding takes long on big datasets: it runs with the database released.
    if progress:
        progress(f"dataset {dataset.name}: blinding {len(items):,} items for a new epoch")
    key = group.random_scalar()
    # In a key-derived secret order, so aggregates can map rows back to items (node.table_order).
    table = _ordered_table(dataset.name, items, key, blinded)
    filter_ = gcs.build_filter(table, remainder_bits=FILTER_REMAINDER_BITS)
    epoch = Epoch(
        dataset=dataset.name,
        epoch_id=secrets.token_hex(8),
        created=now,
        data_version=version,
        definition_sha256=definition,
        item_count=len(items),
        filter=filter_,
        filter_sha256=hashlib.sha256(filter_.data).digest(),
        secret_key=key,
    )
    write_key(directory, dataset.name, epoch.epoch_id, key)
    with database.session() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            # The old epoch's scalar goes with it: answers under it can no longer be produced.
            con.execute("DELETE FROM epochs WHERE dataset = ?", [dataset.name])
            con.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    dataset.name,
                    epoch.epoch_id,
                    now,
                    version,
                    definition,
                    b"",  # the scalar is in its key file, never in the database
                    len(items),
                    b"".join(table),
                    filter_.data,
                    filter_.remainder_bits,
                ],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            destroy_keys(directory, dataset.name, keep=stored.epoch_id if stored else "")
            raise
    # The old epoch's scalar goes with it: answers under it can no longer be produced.
    destroy_keys(directory, dataset.name, keep=epoch.epoch_id)
    log.info("dataset %s: new epoch %s over %d items", dataset.name, epoch.epoch_id, len(items))
    return epoch


def epoch_is_current(
    database: NodeDatabase, epoch: Epoch, dataset: DatasetConfig, epoch_hours: float
) -> bool:
    """Cheap check for the server's refresher: same data, same definition, not expired."""
    with database.session() as con:
        version = data_version(con)
    return epoch.is_current(version, definition_sha256(dataset), datetime.now(UTC), epoch_hours)


def _load_latest(con: duckdb.DuckDBPyConnection, dataset: str, directory: Path) -> Epoch | None:
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
    filter_ = gcs.GolombFilter.from_bytes(int(count), int(bits), bytes(filter_data))
    return Epoch(
        dataset=dataset,
        epoch_id=str(epoch_id),
        created=created,
        data_version=int(version),
        definition_sha256=str(definition),
        item_count=int(count),
        filter=filter_,
        filter_sha256=hashlib.sha256(filter_.data).digest(),
        secret_key=key,
    )
