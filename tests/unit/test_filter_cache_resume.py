"""Partitioned filters on the wire: the coordinator's partition cache and the node's GetFilter.

A fake node connection serves a partitioned epoch's filters the way GetFilter
does (header, then data from the asked offset) and can break a stream after some
bytes or send damaged data, so the cache's recovery paths (parallel fetches,
resumed downloads, digest checks, file modes) run without a node. Then a real
node's servicers, in memory, serve a partitioned epoch built with a low
``[compute] partition_items``, and a whole match runs through them.
"""

from __future__ import annotations

import hashlib
import random
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from coordinator.epoch_cache import (
    PARTITION_FETCHES,
    PARTITIONS_IN_MEMORY,
    FilterCache,
    cache_file_name,
    fetch_partitions,
    partition_file_name,
)
from coordinator.federation import NodeEntry
from coordinator.match import MatchQuery, run_match
from coordinator.results import NodeFailure
from fedtrace import gcs
from fedtrace.partitions import (
    PartitionedFilter,
    partition_count,
    partition_of,
    partitioned_filter_sha256,
    point_hashes,
)
from fedtrace.v1 import node_pb2
from fedtrace.wire import CHUNK_BYTES, NodeStatus
from node import store
from node.config import load_node_config
from node.server import load_state
from node.setup import init_node
from tests.unit.test_match_in_memory import (
    MATCH_POLICY,
    InMemoryFederation,
    NodeServicers,
    eth,
    transactions_csv,
)

KEY = ("EE", "wallets", "00aa11bb22cc33dd")
BITS = 3
CHUNK = 32


class Broken(grpc.RpcError):  # type: ignore[misc]
    """The connection reset in the middle of a stream."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"


def _points(count: int, tag: bytes = b"m") -> list[bytes]:
    return [hashlib.sha256(tag + i.to_bytes(4, "big")).digest() for i in range(count)]


MEMBERS = _points(600)


def _filters(bits: int = BITS) -> list[gcs.GolombFilter]:
    parts = partition_of(point_hashes(MEMBERS), bits)
    return [
        gcs.build_filter([pt for pt, q in zip(MEMBERS, parts, strict=True) if q == p], 20)
        for p in range(partition_count(bits))
    ]


class FakeNode:
    """`NodeConnection.filter` over in-memory partitions, with faults on demand."""

    def __init__(self, filters: list[gcs.GolombFilter], bits: int = BITS) -> None:
        self.filters, self.bits = filters, bits
        self.requests: list[tuple[int, int]] = []  # (partition, offset)
        self.break_after: dict[int, int] = {}  # partition -> bytes sent before the reset
        self.damage: dict[int, int] = {}  # partition -> how many more streams to damage
        self.announce: dict[int, bytes] = {}  # partition -> a different digest to announce
        self.sent: dict[int, int] = {}
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]:
        assert timeout > 0
        self.requests.append((request.partition, request.offset))
        return self._stream(request)

    def _stream(self, request: node_pb2.GetFilterRequest) -> Iterator[node_pb2.FilterChunk]:
        p, offset = request.partition, request.offset
        data = self.filters[p].data
        digest = self.announce.get(p, hashlib.sha256(data).digest())
        if self.damage.get(p, 0) > 0:
            self.damage[p] -= 1
            data = bytes([data[0] ^ 1]) + data[1:]
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            yield node_pb2.FilterChunk(
                header=node_pb2.FilterHeader(
                    dataset=request.dataset,
                    epoch_id=request.epoch_id,
                    filter_kind="gcs-v1",
                    item_count=self.filters[p].item_count,
                    remainder_bits=self.filters[p].remainder_bits,
                    total_bytes=len(data),
                    sha256=digest,
                    partition=p,
                    partition_bits=self.bits,
                    offset=offset,
                )
            )
            limit = self.break_after.pop(p, None)
            for start in range(offset, len(data), CHUNK):
                if limit is not None and start - offset >= limit:
                    raise Broken("connection reset")
                time.sleep(self.delay)
                chunk = data[start : start + CHUNK]
                self.sent[p] = self.sent.get(p, 0) + len(chunk)
                yield node_pb2.FilterChunk(data=chunk)
        finally:
            with self._lock:
                self.in_flight -= 1


def _timeout() -> float:
    return 30.0


def _fetch(
    node: FakeNode, cache: FilterCache, reports: list[str] | None = None
) -> tuple[PartitionedFilter, str]:
    def report(name: str, what: str) -> None:
        if reports is not None:
            reports.append(what)

    return fetch_partitions("EE", node, KEY, node.bits, cache.partitions, _timeout, report)  # type: ignore[arg-type]


def _epoch_dir(base: Path) -> Path:
    return base / cache_file_name(KEY, "")


def test_every_partition_is_fetched_checked_and_kept_private(tmp_path: Path) -> None:
    filters = _filters()
    node = FakeNode(filters)
    reports: list[str] = []
    cache = FilterCache(tmp_path / "filters")
    partitioned, digest = _fetch(node, cache, reports)

    expected = partitioned_filter_sha256(BITS, [hashlib.sha256(f.data).digest() for f in filters])
    assert digest == expected.hex()
    assert sorted(p for p, _ in node.requests) == list(range(8))
    assert all(offset == 0 for _, offset in node.requests)
    directory = _epoch_dir(tmp_path / "filters")
    names = sorted(path.name for path in directory.iterdir())
    assert (
        names
        == [partition_file_name(p, ".gcs") for p in range(8)]
        == [f"p{p:04x}.gcs" for p in range(8)]
    )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()} == {0o600}
    assert "EE" not in directory.name and len(directory.name) == 64
    assert reports[0] == "fetching filter partitions: 0/8"
    assert reports[-1] == "fetching filter partitions: 8/8"

    others = _points(300, b"o")
    hits = partitioned.contains(MEMBERS[:200] + others)
    assert hits[:200] == [True] * 200 and sum(hits[200:]) <= 2

    # A second query and a new coordinator run find every partition on disk.
    node.requests.clear()
    again, again_digest = _fetch(node, FilterCache(tmp_path / "filters"))
    assert node.requests == [] and again_digest == digest
    assert again.contains(MEMBERS[:5]) == [True] * 5


def test_an_interrupted_download_resumes_from_the_part_file(tmp_path: Path) -> None:
    filters = _filters()
    assert len(filters[5].data) > 4 * CHUNK
    node = FakeNode(filters)
    node.break_after[5] = 2 * CHUNK
    cache = FilterCache(tmp_path / "filters")
    with pytest.raises(Broken):
        _fetch(node, cache)
    directory = _epoch_dir(tmp_path / "filters")
    part = directory / partition_file_name(5, ".part")
    assert part.exists() and not (directory / partition_file_name(5, ".gcs")).exists()
    assert stat.S_IMODE(part.stat().st_mode) == 0o600
    node.requests.clear()
    sent_before = node.sent[5]
    assert sent_before == 2 * CHUNK

    partitioned, _ = _fetch(node, FilterCache(tmp_path / "filters"))  # the next query
    asked = [(p, offset) for p, offset in node.requests if p == 5]
    assert asked == [(5, 2 * CHUNK)]
    assert node.sent[5] == len(filters[5].data)  # nothing sent twice
    assert not part.exists()
    stored = (directory / partition_file_name(5, ".gcs")).read_bytes()
    assert stored.endswith(filters[5].data)
    assert partitioned.contains(MEMBERS) == [True] * len(MEMBERS)


def test_in_memory_cache_resumes_too() -> None:
    filters = _filters()
    node = FakeNode(filters)
    node.break_after[2] = CHUNK
    cache = FilterCache(None)
    with pytest.raises(Broken):
        _fetch(node, cache)
    node.requests.clear()
    partitioned, _ = _fetch(node, cache)
    assert (2, CHUNK) in node.requests
    assert partitioned.contains(MEMBERS) == [True] * len(MEMBERS)


def test_a_wrong_digest_deletes_the_partition_and_refetches_once(tmp_path: Path) -> None:
    filters = _filters()
    node = FakeNode(filters)
    node.damage[3] = 1
    cache = FilterCache(tmp_path / "filters")
    partitioned, _ = _fetch(node, cache)
    assert [offset for p, offset in node.requests if p == 3] == [0, 0]
    assert partitioned.contains(MEMBERS) == [True] * len(MEMBERS)


def test_a_partition_damaged_twice_fails_the_node_and_leaves_nothing(tmp_path: Path) -> None:
    node = FakeNode(_filters())
    node.damage[3] = 2
    cache = FilterCache(tmp_path / "filters")
    with pytest.raises(NodeFailure, match="partition 3 arrived damaged"):
        _fetch(node, cache)
    directory = _epoch_dir(tmp_path / "filters")
    assert not list(directory.glob("p0003.*"))
    node.requests.clear()
    _fetch(node, cache)  # the next query fetches it whole
    assert [offset for p, offset in node.requests if p == 3] == [0]


def test_a_partial_download_announced_differently_starts_over(tmp_path: Path) -> None:
    filters = _filters()
    node = FakeNode(filters)
    node.break_after[1] = CHUNK
    cache = FilterCache(tmp_path / "filters")
    with pytest.raises(Broken):
        _fetch(node, cache)
    node.announce[1] = hashlib.sha256(b"another partition").digest()
    node.requests.clear()
    with pytest.raises(NodeFailure, match="partition 1 arrived damaged"):
        _fetch(node, cache)
    assert [offset for p, offset in node.requests if p == 1] == [CHUNK, 0]
    del node.announce[1]
    node.requests.clear()
    _fetch(node, cache)
    assert [offset for p, offset in node.requests if p == 1] == [0]


def test_partitions_are_fetched_in_parallel_but_at_most_four_at_once(tmp_path: Path) -> None:
    node = FakeNode(_filters(4), bits=4)
    node.delay = 0.002
    _fetch(node, FilterCache(tmp_path / "filters"))
    assert 1 < node.most_in_flight <= PARTITION_FETCHES == 4


def test_a_test_loads_only_the_partitions_its_points_fall_into(tmp_path: Path) -> None:
    node = FakeNode(_filters(4), bits=4)
    cache = FilterCache(tmp_path / "filters")
    partitioned, _ = _fetch(node, cache)
    loaded: list[int] = []
    load: Callable[[int], gcs.GolombFilter] = partitioned.load

    def counting(p: int) -> gcs.GolombFilter:
        loaded.append(p)
        return load(p)

    queries = MEMBERS[:3]
    counted = type(partitioned)(partitioned.bits, partitioned.remainder_bits, counting)
    assert counted.contains(queries) == [True] * 3
    assert loaded == partitioned.needed(queries) and len(loaded) <= 3
    counted.contains(MEMBERS)
    assert len(cache.partitions._decoded) <= PARTITIONS_IN_MEMORY


def test_a_malformed_partition_on_disk_is_deleted_and_fails_the_node(tmp_path: Path) -> None:
    node = FakeNode(_filters())
    cache = FilterCache(tmp_path / "filters")
    partitioned, _ = _fetch(node, cache)
    path = _epoch_dir(tmp_path / "filters") / partition_file_name(0, ".gcs")
    path.write_bytes(path.read_bytes()[:-3])
    fresh = FilterCache(tmp_path / "filters")
    partitioned, _ = _fetch(node, fresh)
    with pytest.raises(NodeFailure, match="partition 0 is unusable"):
        partitioned.load(0)
    assert not path.exists()


def test_a_malformed_partition_with_a_good_digest_fails_before_any_query(
    tmp_path: Path,
) -> None:
    filters = _filters()
    filters[6] = gcs.GolombFilter(filters[6].item_count, 20, filters[6].data[:-4])
    cache = FilterCache(tmp_path / "filters")
    with pytest.raises(NodeFailure, match="partition 6 is unusable"):
        _fetch(FakeNode(filters), cache)
    assert not list(_epoch_dir(tmp_path / "filters").glob("p0006.*"))


@pytest.mark.parametrize("bits", [17, 40])
def test_too_many_partition_bits_fail_the_node(tmp_path: Path, bits: int) -> None:
    node = FakeNode(_filters())
    with pytest.raises(NodeFailure, match="partition bits"):
        fetch_partitions("EE", node, KEY, bits, FilterCache(None).partitions, _timeout, print)  # type: ignore[arg-type]


def test_a_header_for_another_partition_fails_the_node() -> None:
    node = FakeNode(_filters(), bits=2)  # says 2 bits where the node info said 3
    with pytest.raises(NodeFailure, match="expected gcs-v1 partition"):
        fetch_partitions("EE", node, KEY, BITS, FilterCache(None).partitions, _timeout, print)  # type: ignore[arg-type]


# --- The node's GetFilter over a partitioned epoch, and a whole match through it ---------

PARTITIONED_ITEMS = 200  # 1,500 wallets → 2^3 partitions


@pytest.fixture(scope="module")
def partitioned_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[InMemoryFederation, set[str]]:
    root = tmp_path_factory.mktemp("partitioned")
    memory = InMemoryFederation.create(root)
    rng = random.Random(8)
    held = {eth(rng.randrange(1, 10_000)) for _ in range(1500)}
    init_node(root / "EE", "EE", root / "ca", "127.0.0.1:0")
    (root / "EE" / "policy.toml").write_text(MATCH_POLICY)
    with (root / "EE" / "node.toml").open("a") as toml:
        toml.write(f"\n[compute]\npartition_items = {PARTITIONED_ITEMS}\n")
    config = load_node_config(root / "EE")
    database = store.NodeDatabase(config.database)
    with database.session() as con:
        store.ingest(con, transactions_csv(root / "EE-tx.csv", sorted(held)), "transactions")
    memory.nodes["EE"] = NodeServicers(load_state(config, database, lambda message: None))
    memory.held["EE"] = held
    return memory, held


def _get_filter(
    memory: InMemoryFederation, partition: int, offset: int = 0
) -> list[node_pb2.FilterChunk]:
    connection = memory.connections("FR")(NodeEntry("EE", "memory"))
    epoch_id = memory.nodes["EE"].state.epochs["wallets"].epoch_id
    request = node_pb2.GetFilterRequest(
        dataset="wallets", epoch_id=epoch_id, partition=partition, offset=offset
    )
    return list(connection.filter(request, 10))


def test_get_filter_serves_one_partition_from_an_offset(
    partitioned_node: tuple[InMemoryFederation, set[str]],
) -> None:
    memory, held = partitioned_node
    epoch = memory.nodes["EE"].state.epochs["wallets"]
    assert epoch.partition_bits == 3
    info = memory.connections("FR")(NodeEntry("EE", "memory")).info(10)
    [dataset] = [d for d in info.datasets if d.name == "wallets"]
    assert dataset.filter_partition_bits == 3

    whole = _get_filter(memory, 5)
    header, data = whole[0].header, b"".join(c.data for c in whole[1:])
    assert (header.partition, header.partition_bits, header.offset) == (5, 3, 0)
    assert header.total_bytes == len(data) and header.sha256 == hashlib.sha256(data).digest()
    assert all(len(c.data) <= CHUNK_BYTES for c in whole[1:])
    assert header.item_count == epoch.partition_filter(5).item_count
    counts = [epoch.partition_filter(p).item_count for p in range(8)]
    assert sum(counts) == len(held) and min(counts) > 0

    resumed = _get_filter(memory, 5, offset=10)
    assert resumed[0].header.offset == 10
    assert resumed[0].header.sha256 == header.sha256  # of the WHOLE partition
    assert resumed[0].header.total_bytes == header.total_bytes
    assert b"".join(c.data for c in resumed[1:]) == data[10:]
    at_end = _get_filter(memory, 5, offset=len(data))
    assert len(at_end) == 1 and at_end[0].header.offset == len(data)

    with pytest.raises(grpc.RpcError) as past_end:
        _get_filter(memory, 5, offset=len(data) + 1)
    assert past_end.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as no_such:
        _get_filter(memory, 8)
    assert no_such.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_match_over_a_partitioned_epoch_equals_the_plain_intersection(
    partitioned_node: tuple[InMemoryFederation, set[str]], tmp_path: Path
) -> None:
    memory, held = partitioned_node
    rng = random.Random(3)
    items = list(dict.fromkeys(eth(rng.randrange(1, 12_000)) for _ in range(500)))
    query = MatchQuery(
        dataset="wallets",
        case_ref="C-P",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator="FR",
    )
    reports: list[str] = []
    cache = FilterCache(tmp_path / "filters")
    [result] = run_match(
        memory.federation("FR"),
        query,
        memory.connections("FR"),
        memory.ca_pem,
        cache=cache,
        progress=lambda node, what: reports.append(what),
    )
    assert result.status == NodeStatus.OK, result.reason
    assert result.matched == [item for item in items if item in held]
    assert result.false_positive_bits == 30
    epoch = memory.nodes["EE"].state.epochs["wallets"]
    assert result.signature is not None
    assert result.signature["transcript"]["filter_sha256"] == epoch.filter_sha256.hex()
    directory = tmp_path / "filters" / cache_file_name(("EE", "wallets", epoch.epoch_id), "")
    assert sorted(p.name for p in directory.iterdir()) == [f"p{p:04x}.gcs" for p in range(8)]
    assert "fetching filter partitions: 8/8" in reports
    assert not list((tmp_path / "filters").glob("*.gcs"))  # no single-filter file

    # A second query in the same run and one in a new run test against what is on disk.
    for again in (cache, FilterCache(tmp_path / "filters")):
        [second] = run_match(
            memory.federation("FR"), query, memory.connections("FR"), memory.ca_pem, cache=again
        )
        assert second.matched == result.matched


def test_an_unpartitioned_epoch_is_served_as_before(
    partitioned_node: tuple[InMemoryFederation, set[str]],
) -> None:
    memory, _ = partitioned_node
    if "NL" not in memory.nodes:
        policy = MATCH_POLICY.replace('jurisdiction = "EE"', 'jurisdiction = "NL"')
        memory.add_node("NL", policy, {eth(n) for n in range(1, 300)})
    connection = memory.connections("FR")(NodeEntry("NL", "memory"))
    epoch = memory.nodes["NL"].state.epochs["wallets"]
    assert epoch.partition_bits == 0
    request = node_pb2.GetFilterRequest(dataset="wallets", epoch_id=epoch.epoch_id)
    [first, *rest] = list(connection.filter(request, 10))
    fields = {field.name for field, _ in first.header.ListFields()}
    assert not fields & {"partition", "partition_bits", "offset"}  # on the wire as before
    assert first.header.sha256 == epoch.filter_sha256
    assert b"".join(c.data for c in rest) == epoch.filter.data
    request.partition = 1
    with pytest.raises(grpc.RpcError) as no_such:
        list(connection.filter(request, 10))
    assert no_such.value.code() == grpc.StatusCode.INVALID_ARGUMENT
