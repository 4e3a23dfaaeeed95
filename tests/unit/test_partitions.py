"""Partition math and membership across partitions (fedtrace.partitions)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedtrace import gcs
from fedtrace.partitions import (
    MAX_PARTITION_BITS,
    PartitionedFilter,
    partition_count,
    partition_of,
    partitioned_filter_sha256,
    point_hashes,
)


def _points(count: int, tag: bytes = b"m") -> list[bytes]:
    return [hashlib.sha256(tag + i.to_bytes(4, "big")).digest() for i in range(count)]


def _split(points: list[bytes], bits: int) -> list[gcs.GolombFilter]:
    parts = partition_of(point_hashes(points), bits)
    return [
        gcs.build_filter([pt for pt, q in zip(points, parts, strict=True) if q == p], 20)
        for p in range(partition_count(bits))
    ]


def test_partition_is_the_top_bits_of_the_hash() -> None:
    hashes = np.array([0, 1, 2**63, 2**64 - 1, 0x8001_0000_0000_0000], dtype=np.uint64)
    assert partition_of(hashes, 0).tolist() == [0, 0, 0, 0, 0]
    assert partition_of(hashes, 1).tolist() == [0, 0, 1, 1, 1]
    assert partition_of(hashes, 4).tolist() == [0, 0, 8, 15, 8]
    assert partition_of(hashes, 16).tolist() == [0, 0, 0x8000, 0xFFFF, 0x8001]
    assert partition_of(hashes, 4).dtype == np.intp
    assert partition_of(np.zeros(0, dtype=np.uint64), 3).tolist() == []


@pytest.mark.parametrize("bits", [-1, MAX_PARTITION_BITS + 1, 64])
def test_partition_bits_out_of_range_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="partition bits"):
        partition_of(np.zeros(1, dtype=np.uint64), bits)


def test_point_hashes_are_the_filters_hashes() -> None:
    points = _points(50)
    filter_ = gcs.build_filter(points, 20)
    reduced = np.sort(point_hashes(points) % np.uint64(filter_.modulus))
    assert reduced.tolist() == filter_._sorted_hashes.tolist()


@pytest.mark.parametrize("bits", [0, 1, 3])
def test_partitioned_membership_equals_one_filter(bits: int) -> None:
    members, others = _points(400), _points(400, b"o")
    partitioned = PartitionedFilter.of(bits, _split(members, bits))
    queries = members[::3] + others
    hits = partitioned.contains(queries)
    assert hits[: len(members[::3])] == [True] * len(members[::3])
    assert sum(hits[len(members[::3]) :]) <= 2  # false positives at 2^-20
    assert partitioned.contains([]) == []
    assert partitioned.false_positive_rate == 2.0**-20


def test_only_the_needed_partitions_are_loaded() -> None:
    members = _points(300)
    filters = _split(members, 4)
    loaded: list[int] = []

    def load(p: int) -> gcs.GolombFilter:
        loaded.append(p)
        return filters[p]

    partitioned = PartitionedFilter(4, 20, load)
    queries = members[:5]
    assert partitioned.contains(queries) == [True] * 5
    expected = sorted({int(p) for p in partition_of(point_hashes(queries), 4)})
    assert loaded == expected == partitioned.needed(queries)


def test_a_partition_of_another_width_is_refused() -> None:
    filters = _split(_points(20), 1)
    partitioned = PartitionedFilter(1, 21, filters.__getitem__)
    with pytest.raises(ValueError, match="remainder"):
        partitioned.contains(_points(20))
    with pytest.raises(ValueError, match="each of 4"):
        PartitionedFilter.of(2, filters)


def test_partitioned_digest_binds_count_and_order() -> None:
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    root = partitioned_filter_sha256(1, [a, b])
    assert len(root) == 32
    assert root != partitioned_filter_sha256(1, [b, a])
    assert partitioned_filter_sha256(0, [a]) != a
    with pytest.raises(ValueError):
        partitioned_filter_sha256(2, [a, b])
