"""Partitioned epoch filters: which partition a point falls in, and membership across partitions.

A node whose epoch outgrows one machine splits it into ``2**bits`` partitions by
the top ``bits`` bits of each point's 64-bit filter hash (the same BLAKE2b hash
`fedtrace.gcs` reduces into a filter). Each partition has its own Golomb filter
over its own points, so node and coordinator hold one partition at a time: a
query's points are grouped by partition and each group is tested against that
partition's filter alone. ``bits == 0`` is one partition holding every point,
exactly the unpartitioned filter.

The digest a match transcript names as ``filter_sha256`` is, for an
unpartitioned epoch, the SHA-256 of its one filter's data, and for a partitioned
epoch `partitioned_filter_sha256(bits, digests)`: SHA-256 over a domain tag, the
partition bits and every partition's own data SHA-256 in partition order. The
node (``Epoch.filter_sha256``) and the coordinator both compute it from the
per-partition digests, without holding the partitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedtrace import gcs

MAX_PARTITION_BITS = 16
_HASH_BITS = 64
_DIGEST_DOMAIN = b"fedtrace-partitioned-filter-v1\x00"

HashArray = npt.NDArray[np.uint64]
PartitionArray = npt.NDArray[np.intp]


def check_partition_bits(bits: int) -> int:
    """``bits`` when it is a valid partition width (0 to 16), else ``ValueError``."""
    if not 0 <= bits <= MAX_PARTITION_BITS:
        raise ValueError(f"partition bits must be between 0 and {MAX_PARTITION_BITS}, got {bits}")
    return bits


def partition_count(bits: int) -> int:
    """How many partitions an epoch with ``bits`` partition bits has."""
    return 1 << check_partition_bits(bits)


def point_hashes(points: Sequence[bytes]) -> HashArray:
    """The 64-bit filter hash of each point (the hash `fedtrace.gcs` builds filters from)."""
    return gcs.point_hashes(points)


def partition_of(hashes: HashArray, bits: int) -> PartitionArray:
    """The partition of each filter hash: its top ``bits`` bits (all zero for ``bits == 0``)."""
    check_partition_bits(bits)
    values = np.asarray(hashes, dtype=np.uint64)
    if bits == 0:
        return np.zeros(len(values), dtype=np.intp)
    return (values >> np.uint64(_HASH_BITS - bits)).astype(np.intp)


def partitioned_filter_sha256(bits: int, partition_digests: Sequence[bytes]) -> bytes:
    """The digest that stands for a partitioned epoch's whole filter in transcripts."""
    if len(partition_digests) != partition_count(bits):
        raise ValueError(
            f"{len(partition_digests)} partition digests for {partition_count(bits)} partitions"
        )
    digest = hashlib.sha256(_DIGEST_DOMAIN + bits.to_bytes(1, "big"))
    for partition_digest in partition_digests:
        if len(partition_digest) != hashlib.sha256().digest_size:
            raise ValueError("a partition digest is not a SHA-256 digest")
        digest.update(partition_digest)
    return digest.digest()


def hashes_in_filter(filter_: gcs.GolombFilter, hashes: HashArray) -> npt.NDArray[np.bool_]:
    """Membership of points given by their filter hashes (vectorised, as `GolombFilter`'s own)."""
    found = np.zeros(len(hashes), dtype=bool)
    if filter_.item_count == 0 or not len(hashes):
        return found
    # The filter's decoded values; decoding is cached on the filter itself.
    stored = filter_._sorted_hashes
    queries = hashes % np.uint64(filter_.modulus)
    slots = np.searchsorted(stored, queries)
    inside = slots < len(stored)
    found[inside] = stored[slots[inside]] == queries[inside]
    return found


PartitionLoader = Callable[[int], gcs.GolombFilter]


@dataclass(frozen=True)
class PartitionedFilter:
    """An epoch's filter as ``2**bits`` partitions, each loaded only when a query needs it.

    ``load(p)`` returns partition ``p``'s filter (from memory, disk or the network);
    a test loads each partition its points fall into once, one at a time.
    """

    bits: int
    remainder_bits: int
    load: PartitionLoader

    def __post_init__(self) -> None:
        check_partition_bits(self.bits)

    @classmethod
    def of(
        cls, bits: int, filters: Mapping[int, gcs.GolombFilter] | Sequence[gcs.GolombFilter]
    ) -> PartitionedFilter:
        """A partitioned filter over filters already in memory (one per partition)."""
        table = dict(enumerate(filters)) if isinstance(filters, Sequence) else dict(filters)
        if sorted(table) != list(range(partition_count(bits))):
            raise ValueError(f"expected one filter for each of {partition_count(bits)} partitions")
        widths = {filter_.remainder_bits for filter_ in table.values()}
        if len(widths) != 1:
            raise ValueError("the partitions' filters differ in remainder bits")
        return cls(bits, widths.pop(), table.__getitem__)

    @property
    def partitions(self) -> int:
        return partition_count(self.bits)

    @property
    def false_positive_rate(self) -> float:
        """The chance that one tested non-member tests positive: 2^-remainder_bits."""
        return 2.0**-self.remainder_bits

    def needed(self, points: Sequence[bytes]) -> list[int]:
        """The partitions the points fall into, ascending."""
        return [int(p) for p in np.unique(partition_of(point_hashes(points), self.bits))]

    def contains(self, points: Sequence[bytes]) -> list[bool]:
        """Membership of each point, in order: each partition's points against its filter."""
        if not points:
            return []
        hashes = point_hashes(points)
        partitions = partition_of(hashes, self.bits)
        order = np.argsort(partitions, kind="stable")
        ordered = partitions[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=-1))
        ends = np.append(starts[1:], len(ordered))
        found = np.zeros(len(points), dtype=bool)
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            indices = order[start:end]
            filter_ = self.load(int(ordered[start]))
            if filter_.remainder_bits != self.remainder_bits:
                raise ValueError(
                    f"partition {int(ordered[start])} has {filter_.remainder_bits} remainder "
                    f"bits, not {self.remainder_bits}"
                )
            found[indices] = hashes_in_filter(filter_, hashes[indices])
        return [bool(hit) for hit in found]
