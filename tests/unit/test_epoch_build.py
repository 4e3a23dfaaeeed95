"""Epoch builds: streamed from DuckDB, blinded in chunks, split into partitions, stored whole."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fedtrace import gcs, group
from fedtrace.errors import ConfigError
from fedtrace.partitions import PartitionedFilter, partition_of, partitioned_filter_sha256
from node import epoch as epochs
from node.aggregate import load_aggregate_table
from node.config import ComputeConfig, DatasetConfig, check_compute
from node.epochs import EpochBuildError, builder
from node.epochs.tasks import RESULT_BYTES, BlindChunk, blind_and_hash
from node.store import NodeDatabase
from node.table_order import ordered_table

WALLETS = DatasetConfig(
    name="wallets",
    kind="wallet",
    sql="SELECT address, amount FROM wallet_rows",
    key_column="address",
    aggregate_columns=("amount",),
    disclosable_columns=(),
)


def _database(tmp_path: Path, count: int) -> NodeDatabase:
    database = NodeDatabase(tmp_path / "node.duckdb")
    with database.session() as con:
        con.execute("CREATE TABLE wallet_rows (address VARCHAR, amount BIGINT)")
        # Duplicates, NULLs and non-ASCII keys: the stream must see what dataset_items sees.
        con.execute(
            "INSERT INTO wallet_rows SELECT '0xw' || lpad(CAST(i * 7919 % ? AS VARCHAR), 8, '0'), "
            "i FROM range(?) t(i)",
            [count, count],
        )
        con.execute("INSERT INTO wallet_rows VALUES (NULL, 5), ('0xw00000001', 9), ('0xé', 1)")
    return database


def _items(database: NodeDatabase, dataset: DatasetConfig = WALLETS) -> list[bytes]:
    with database.session() as con:
        return epochs.dataset_items(con, dataset)


def _stored_table(database: NodeDatabase, epoch: epochs.Epoch) -> bytes:
    with database.session() as con:
        rows = con.execute(
            "SELECT table_points, filter_data FROM epochs WHERE epoch_id = ?", [epoch.epoch_id]
        ).fetchall()
    return bytes(rows[0][0])


def test_the_stream_yields_dataset_items_in_their_order(tmp_path: Path) -> None:
    database = _database(tmp_path, 3000)
    with database.session() as con:
        stream = builder.open_item_stream(con, WALLETS)
        streamed: list[bytes] = []
        for blob, lengths in stream.batches:
            sizes = np.frombuffer(lengths, dtype=np.uint32)
            ends = np.cumsum(sizes).tolist()
            streamed.extend(
                blob[end - size : end] for end, size in zip(ends, sizes.tolist(), strict=True)
            )
    assert streamed == _items(database)
    assert stream.count == len(streamed) == 3001


def test_an_unpartitioned_build_equals_the_old_build(tmp_path: Path) -> None:
    database = _database(tmp_path, 2000)
    epoch = epochs.current_epoch(database, WALLETS, 24)
    items = _items(database)
    old_table = ordered_table(items, epoch.secret_key, workers=1)
    assert _stored_table(database, epoch) == b"".join(old_table)
    old_filter = gcs.build_filter(old_table, remainder_bits=epochs.FILTER_REMAINDER_BITS)
    assert epoch.partition_bits == 0 and epoch.partitions is None
    assert epoch.filter.data == old_filter.data and epoch.item_count == len(items)
    assert epoch.filter_sha256 == hashlib.sha256(old_filter.data).digest()
    assert epoch.partition_filter(0) is epoch.filter
    # Same items, same key: the same membership answers.
    others = [b"fedtrace:v1:wallet:0xnot-held-%d" % i for i in range(200)]
    queried = group.blind_items(items[:300] + others, epoch.secret_key, workers=1)
    assert epoch.filter.contains_many(queried) == old_filter.contains_many(queried)
    assert all(epoch.filter.contains_many(queried[:300]))
    # A restart reuses it, unchanged.
    again = epochs.current_epoch(database, WALLETS, 24)
    assert again.epoch_id == epoch.epoch_id and again.filter.data == epoch.filter.data


@pytest.mark.slow  # seconds: sixteen filters rebuilt point by point
def test_a_partitioned_build_splits_by_the_top_hash_bits(tmp_path: Path) -> None:
    database = _database(tmp_path, 1000)
    compute = ComputeConfig(partition_items=100)  # 1002 items → 2**ceil(log2(10.02)) = 16
    epoch = epochs.current_epoch(database, WALLETS, 24, compute=compute)
    assert epoch.partition_bits == 4 and epoch.filter.item_count == 0
    table = group.split_points(_stored_table(database, epoch))
    assert table == ordered_table(_items(database), epoch.secret_key, workers=1)
    parts = partition_of(gcs.point_hashes(table), 4)
    digests = []
    for partition in range(16):
        subset = [p for p, q in zip(table, parts.tolist(), strict=True) if q == partition]
        expected = gcs.build_filter(subset, remainder_bits=epochs.FILTER_REMAINDER_BITS)
        stored = epoch.partition_filter(partition)
        assert stored.data == expected.data and stored.item_count == len(subset)
        assert epoch.partition_sha256(partition) == hashlib.sha256(stored.data).digest()
        digests.append(hashlib.sha256(stored.data).digest())
    assert epoch.filter_sha256 == partitioned_filter_sha256(4, digests)
    assert epoch.partitions is not None and len(epoch.partitions.cached()) <= 4  # an LRU
    with pytest.raises(ValueError, match="16 partition"):
        epoch.partition_filter(16)
    # Reloaded from the database: the same partitions, loaded lazily.
    again = epochs.current_epoch(database, WALLETS, 24, compute=compute)
    assert again.epoch_id == epoch.epoch_id and again.filter_sha256 == epoch.filter_sha256
    assert again.partitions is not None and again.partitions.cached() == ()
    members = PartitionedFilter(4, epochs.FILTER_REMAINDER_BITS, again.partition_filter)
    assert all(members.contains(table[:400]))
    # The aggregate table (row order re-derived from the key) works on a partitioned epoch.
    aggregate = load_aggregate_table(database, WALLETS, again)
    assert aggregate.row_count == len(table)


def test_partition_bits_follow_the_size() -> None:
    assert builder.partition_bits_for(0, 1_000_000) == 0
    assert builder.partition_bits_for(1_000_000, 1_000_000) == 0
    assert builder.partition_bits_for(1_000_001, 1_000_000) == 1
    assert builder.partition_bits_for(10_000_000, 1_000_000) == 4
    assert builder.partition_bits_for(100_000_000, 1_000_000) == 7
    assert builder.partition_bits_for(10**12, 1) == 16  # at most 2**16 partitions


@pytest.mark.slow  # seconds: starts a process pool
def test_the_process_pool_blinds_as_this_process_does(tmp_path: Path) -> None:
    database = _database(tmp_path, 3000)
    key = group.random_scalar()
    built = []
    for blinder in (builder.in_process, builder.process_pool(2)):
        with database.session() as con:
            stream = builder.open_item_stream(con, WALLETS)
            built.append(
                builder.build_table(stream, key, blinder, remainder_bits=30, partition_items=1000)
            )
    assert np.array_equal(built[0].table, built[1].table)
    assert [f.data for f in built[0].filters] == [f.data for f in built[1].filters]
    assert built[0].partition_bits == 2


def test_progress_reports_items_done_of_all(tmp_path: Path) -> None:
    database = _database(tmp_path, 5000)
    heard: list[tuple[str, int, int]] = []
    epochs.current_epoch(database, WALLETS, 24, blinded=lambda *done: heard.append(done))
    assert heard[-1] == ("wallets", 5001, 5001)
    assert [done for _, done, _ in heard] == sorted(done for _, done, _ in heard)
    assert 1 < len(heard) <= builder.PROGRESS_STEPS + 1


def test_a_failed_build_stores_nothing_and_keeps_the_old_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = _database(tmp_path, 1000)
    old = epochs.current_epoch(database, WALLETS, 24)
    with database.session() as con:
        con.execute("INSERT INTO wallet_rows VALUES ('0xnew', 1)")
        con.execute(
            "UPDATE meta SET value = CAST(value::BIGINT + 1 AS VARCHAR) WHERE key = 'data_version'"
        )

    def short(chunks: Iterable[BlindChunk]) -> Iterator[bytes]:
        for chunk in list(chunks)[:-1]:  # the last chunk never comes back
            yield blind_and_hash(chunk)

    def failing(*args: object) -> Iterator[builder.Blinder]:
        yield short

    monkeypatch.setattr(builder, "blinder_for", contextmanager(failing))
    with pytest.raises(EpochBuildError, match="came back"):
        epochs.current_epoch(database, WALLETS, 24, compute=ComputeConfig(partition_items=100))
    with database.session() as con:
        assert con.execute("SELECT epoch_id FROM epochs").fetchall() == [(old.epoch_id,)]
        assert con.execute("SELECT count(*) FROM epoch_partitions").fetchall() == [(0,)]
    keys = sorted(p.name for p in epochs.keys_dir(database).iterdir())
    assert keys == [f"wallets-{old.epoch_id}.key"]


def test_a_chunk_hides_the_scalar_and_items_in_its_repr() -> None:
    key = group.random_scalar()
    chunk = BlindChunk(3, 1, b"fedtrace:v1:wallet:0xsecret", b"\x1b\x00\x00\x00", key)
    for text in (repr(chunk), str(chunk)):
        assert key.hex() not in text and repr(key) not in text and "0xsecret" not in text
    result = blind_and_hash(chunk)
    assert len(result) == RESULT_BYTES
    point = group.blind_items([b"fedtrace:v1:wallet:0xsecret"], key, workers=1)[0]
    assert result[:32] == point
    assert result[32:] == gcs.point_hashes([point]).astype("<u8").tobytes()


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ("tcp://10.1.2.3:8786", "use tls://"),
        ("tls://cluster.example:8786", "needs tls_ca"),
        ("http://cluster:8786", "must be"),
    ],
)
def test_a_scheduler_that_would_expose_the_scalar_is_refused(scheduler: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_compute(ComputeConfig(scheduler=scheduler), "node.toml [compute]")
    for fine in ("", "local", "tcp://127.0.0.1:8786", "tcp://localhost:8786"):
        assert check_compute(ComputeConfig(scheduler=fine), "x").scheduler == fine


def _fake_blinder(chunks: Iterable[BlindChunk]) -> Iterator[bytes]:
    """Random points and hashes of the right shape: the builder's memory, not the crypto."""
    rng = np.random.default_rng(7)
    for chunk in chunks:
        yield rng.bytes(chunk.count * RESULT_BYTES)


def test_a_million_item_build_holds_arrays_not_lists_of_points(tmp_path: Path) -> None:
    count = 1_000_000
    database = NodeDatabase(tmp_path / "node.duckdb")
    with database.session() as con:
        con.execute(
            "CREATE TABLE wallet_rows AS SELECT '0x' || lpad(CAST(i AS VARCHAR), 40, '0') "
            "AS address, 1 AS amount FROM range(?) t(i)",
            [count],
        )
    tracemalloc.start()
    try:
        with database.session() as con:
            stream = builder.open_item_stream(con, WALLETS)
            built = builder.build_table(
                stream,
                group.random_scalar(),
                _fake_blinder,
                remainder_bits=30,
                partition_items=250_000,
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert built.item_count == count and built.partition_bits == 2
    # Points (32 MB), their hashes (8 MB) and the ordered table (32 MB), plus a chunk or two.
    # A list of a million 32-byte points alone would add about 73 MB; of the items, 90 MB.
    assert peak < 110 * 2**20, f"peak {peak / 2**20:.0f} MiB"


class _LostFuture:
    """A Dask future whose chunk never finishes, or whose workers all died running it."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def result(self, timeout: float) -> bytes:
        raise self.error or TimeoutError(f"timed out after {timeout} s")

    def release(self) -> None:
        raise AssertionError("nothing to release")


class _EmptyCluster:
    def scheduler_info(self, n_workers: int) -> dict[str, object]:
        return {"workers": {}}


def test_a_cluster_that_loses_its_workers_fails_the_build_readably(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import KilledWorker

    from node.epochs import cluster

    blinder = cluster.DaskBlinder(_EmptyCluster())
    with pytest.raises(EpochBuildError, match="killed every Dask worker"):
        blinder._result(3, _LostFuture(KilledWorker("fedtrace-blind-x-3", None, 3)))  # type: ignore[arg-type]
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(cluster, "NO_WORKER_SECONDS", 0.03)
    with pytest.raises(EpochBuildError, match="no Dask worker"):
        blinder._result(4, _LostFuture(None))


def test_an_empty_dataset_builds_an_empty_epoch(tmp_path: Path) -> None:
    database = _database(tmp_path, 0)
    with database.session() as con:
        con.execute("DELETE FROM wallet_rows")
    epoch = epochs.current_epoch(database, WALLETS, 24)
    assert epoch.item_count == 0 and epoch.filter.item_count == 0
    assert _stored_table(database, epoch) == b""
    assert epochs.current_epoch(database, WALLETS, 24).epoch_id == epoch.epoch_id


def test_an_unreachable_scheduler_is_a_readable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.epochs import cluster

    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 0.5)
    unreachable = ComputeConfig(scheduler="tcp://127.0.0.1:1")
    with pytest.raises(EpochBuildError, match="cannot build the epoch on the Dask cluster at tcp"):
        with cluster.dask_blinder(unreachable, tmp_path):
            pass
