"""Build an epoch's table and filters from a dataset streamed out of DuckDB in record batches.

The key column is read in Arrow record batches (`open_item_stream`), each batch
packed into one items blob and a lengths array without a per-item Python object,
and handed as a `BlindChunk` to a blinder: this process for small datasets, the
node's process pool (`fedtrace.parallel.stream_chunks`) for larger ones, or a Dask
cluster (`node.epochs.cluster`) when ``[compute] scheduler`` is set. A bounded
number of chunks is in flight; results come back in order as points and filter
hashes and land in two preallocated numpy arrays, so memory is the table itself
(32 bytes an item) plus its hashes (8), never a list of a million point objects.

The filter hashes then split the epoch into ``2**P`` partitions by their top P
bits (`fedtrace.partitions.partition_of`), each with its own Golomb filter built
from its share of the hashes (`fedtrace.gcs.filter_from_hashes`); P is 0, one
filter as before, up to ``[compute] partition_items`` items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from fedtrace import gcs, group, parallel
from fedtrace.identifiers import InvalidIdentifier, person_keys
from fedtrace.items import item_bytes
from fedtrace.partitions import MAX_PARTITION_BITS, partition_of
from node.config import ComputeConfig, DatasetConfig
from node.epochs import EpochBuildError
from node.epochs.tasks import RESULT_BYTES, BlindChunk, blind_and_hash
from node.table_order import table_permutation

log = logging.getLogger(__name__)

#: Items per chunk at most, and at least (unless the dataset is smaller).
MAX_CHUNK = 65_536
MIN_CHUNK = 512
#: Aim for this many chunks, so every worker of a pool or cluster has several.
TARGET_CHUNKS = 64
#: Blinding progress is reported at most this many times per build (and at the end).
PROGRESS_STEPS = 50

# Blinds chunks, in order: `in_process`, a process pool, or a Dask cluster.
Blinder = Callable[[Iterable[BlindChunk]], Iterator[bytes]]
# Items blinded so far, items in all.
ItemsBlinded = Callable[[int, int], None]


class DatasetError(Exception):
    """The dataset's SQL failed or yielded unusable rows; a message for the operator."""


@dataclass(frozen=True)
class ItemStream:
    """A dataset's distinct items, sorted, as (items blob, native uint32 lengths) batches."""

    count: int
    batches: Iterator[tuple[bytes, bytes]]


@dataclass(frozen=True)
class BuiltTable:
    """An epoch's public parts: the table in its secret row order and one filter per partition."""

    table: npt.NDArray[np.uint8]  # (items, 32): row j is point j of the epoch table
    filters: tuple[gcs.GolombFilter, ...]  # 2**partition_bits of them

    @property
    def item_count(self) -> int:
        return len(self.table)

    @property
    def partition_bits(self) -> int:
        return (len(self.filters) - 1).bit_length()


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def dataset_items(con: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> list[bytes]:
    """The distinct identifier items of a dataset, encoded for hashing to the group (in memory;
    an epoch build streams them with `open_item_stream` instead)."""
    try:
        relation = con.sql(dataset.sql)
        columns = relation.columns
        if dataset.kind == "wallet":
            _check_key_column(dataset, columns)
            return _wallet_items(relation, dataset.key_column)
        rows = relation.fetchall()
    except duckdb.Error as exc:
        raise _sql_failed(dataset, exc) from None
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


def _sql_failed(dataset: DatasetConfig, exc: duckdb.Error) -> DatasetError:
    return DatasetError(f"dataset {dataset.name!r}: its SQL failed: {str(exc).splitlines()[0]}")


def _check_key_column(dataset: DatasetConfig, columns: list[str]) -> None:
    if dataset.key_column not in columns:
        raise DatasetError(f"dataset {dataset.name!r}: SQL has no column {dataset.key_column!r}")


def _wallet_items(relation: duckdb.DuckDBPyRelation, key_column: str) -> list[bytes]:
    # Only the key column, deduplicated by DuckDB: fetching every column of a
    # million-row dataset into Python tuples took longer than hashing it. The
    # order does not matter (the table is shuffled) but is kept stable for tests.
    quoted = _quoted(key_column)
    keys = (
        relation.filter(f"{quoted} IS NOT NULL")
        .aggregate(quoted)  # GROUP BY the key: its distinct values
        .order(quoted)
        .fetchnumpy()[key_column]
    )
    prefix = item_bytes("wallet", "")
    return [prefix + str(key).encode("utf-8") for key in keys]


def chunk_rows(count: int) -> int:
    """Items per chunk for a build of ``count`` items."""
    return max(MIN_CHUNK, min(MAX_CHUNK, -(-count // TARGET_CHUNKS)))


def _packed(column: pa.Array) -> tuple[bytes, bytes]:
    """An Arrow string column as one items blob and native uint32 lengths (no Python list)."""
    binary = column.cast(pa.large_binary())
    if binary.null_count:
        raise DatasetError("a key came back NULL")  # excluded by the query; a bug if seen
    offsets_buffer, data_buffer = binary.buffers()[1:3]
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        binary.offset : binary.offset + len(binary) + 1
    ]
    start, stop = int(offsets[0]), int(offsets[-1])
    blob = b"" if data_buffer is None else bytes(memoryview(data_buffer)[start:stop])
    return blob, np.diff(offsets).astype(np.uint32).tobytes()


def open_item_stream(con: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> ItemStream:
    """The dataset's distinct items in `dataset_items`' order, read in Arrow record batches.

    A wallet dataset's keys are deduplicated, sorted and prefixed by DuckDB and read
    batch by batch; a person dataset (a few keys per subject, derived in Python) is
    read whole, as `dataset_items` does, then cut into the same batches.
    """
    if dataset.kind != "wallet":
        items = dataset_items(con, dataset)
        rows = chunk_rows(len(items))
        return ItemStream(len(items), _packed_list(items, rows))
    try:
        _check_key_column(dataset, con.sql(dataset.sql).columns)
        key = _quoted(dataset.key_column)
        distinct = (
            f"SELECT {key} AS item_key FROM ({dataset.sql}) AS dataset_rows "
            f"WHERE {key} IS NOT NULL GROUP BY {key}"
        )
        count = int(con.execute(f"SELECT count(*) FROM ({distinct})").fetchall()[0][0])
        reader = con.sql(
            f"SELECT ? || CAST(item_key AS VARCHAR) FROM ({distinct}) ORDER BY item_key",
            params=[item_bytes("wallet", "").decode("utf-8")],
        ).to_arrow_reader(chunk_rows(count))
    except duckdb.Error as exc:
        raise _sql_failed(dataset, exc) from None
    return ItemStream(count, _record_batches(reader))


def _record_batches(reader: pa.RecordBatchReader) -> Iterator[tuple[bytes, bytes]]:
    try:
        for batch in reader:
            if batch.num_rows:
                yield _packed(batch.column(0))
    finally:
        reader.close()


def _packed_list(items: list[bytes], rows: int) -> Iterator[tuple[bytes, bytes]]:
    for start in range(0, len(items), rows):
        chunk = items[start : start + rows]
        yield b"".join(chunk), np.array([len(i) for i in chunk], dtype=np.uint32).tobytes()


def in_process(chunks: Iterable[BlindChunk]) -> Iterator[bytes]:
    """Blind every chunk here, one after another (small datasets, one core)."""
    for chunk in chunks:
        yield blind_and_hash(chunk)


def process_pool(workers: int) -> Blinder:
    """Blind chunks on the node's own process pool, ``workers`` at once."""

    def blind(chunks: Iterable[BlindChunk]) -> Iterator[bytes]:
        try:
            yield from parallel.stream_chunks(
                blind_and_hash, ((chunk,) for chunk in chunks), workers
            )
        except BrokenProcessPool:
            raise EpochBuildError(
                "a worker process died while blinding the new epoch (out of memory?); "
                "the epoch was not built"
            ) from None

    return blind


@contextmanager
def blinder_for(compute: ComputeConfig, node_dir: Path, count: int) -> Iterator[Blinder]:
    """The blinder ``[compute]`` asks for; the node's own cores when no scheduler is set."""
    if compute.uses_dask:
        from node.epochs import cluster  # distributed is imported only when configured

        with cluster.dask_blinder(compute, node_dir) as blinder:
            yield blinder
        return
    workers = parallel.default_workers(None)
    if workers > 1 and count > group.PARALLEL_THRESHOLD:
        yield process_pool(workers)
    else:
        yield in_process


def partition_bits_for(count: int, partition_items: int) -> int:
    """P = ceil(log2(count / partition_items)), 0 up to ``partition_items`` items (at most 16)."""
    bits = 0
    while (partition_items << bits) < count and bits < MAX_PARTITION_BITS:
        bits += 1
    return bits


def partition_filters(
    hashes: npt.NDArray[np.uint64], bits: int, remainder_bits: int
) -> tuple[gcs.GolombFilter, ...]:
    """One filter per partition, each over the hashes whose top ``bits`` bits name it."""
    if bits == 0:
        return (gcs.filter_from_hashes(hashes, remainder_bits),)
    partitions = partition_of(hashes, bits)
    grouped = hashes[np.argsort(partitions, kind="stable")]
    ends = np.cumsum(np.bincount(partitions, minlength=1 << bits)).tolist()
    starts = [0, *ends[:-1]]
    return tuple(
        gcs.filter_from_hashes(grouped[start:end], remainder_bits)
        for start, end in zip(starts, ends, strict=True)
    )


def build_table(
    items: ItemStream,
    key: bytes,
    blinder: Blinder,
    *,
    remainder_bits: int,
    partition_items: int,
    blinded: ItemsBlinded | None = None,
) -> BuiltTable:
    """Blind every item of the stream, order the table by ``key``, build the partition filters.

    Raises `EpochBuildError` when the stream yields more or fewer items than it announced.
    """
    total = items.count
    points = np.empty((total, group.POINT_BYTES), dtype=np.uint8)
    hashes = np.empty(total, dtype=np.uint64)
    chunks = (
        BlindChunk(index, len(lengths) // 4, blob, lengths, key)
        for index, (blob, lengths) in enumerate(items.batches)
    )
    done = 0
    step = max(1, -(-total // PROGRESS_STEPS))
    reported = 0
    for chunk_result in blinder(chunks):
        count, spare = divmod(len(chunk_result), RESULT_BYTES)
        if spare or done + count > total:
            raise EpochBuildError(f"the dataset yielded more than the {total:,} items it counted")
        cut = count * group.POINT_BYTES
        points[done : done + count] = np.frombuffer(chunk_result, np.uint8, cut).reshape(
            count, group.POINT_BYTES
        )
        hashes[done : done + count] = np.frombuffer(chunk_result, "<u8", count, offset=cut)
        done += count
        if blinded and (done - reported >= step or done == total):
            reported = done
            blinded(done, total)
    if done != total:
        raise EpochBuildError(f"{done:,} items came back of the {total:,} counted")
    bits = partition_bits_for(total, partition_items)
    filters = partition_filters(hashes, bits, remainder_bits)
    del hashes
    # In a key-derived secret order, so aggregates can map rows back to items (node.table_order).
    table = points[table_permutation(total, key)]
    return BuiltTable(table=table, filters=filters)
