"""The unit of work an epoch build hands to a worker: blind a chunk of items, hash the points.

The same function runs in this process, on the node's process pool or on a Dask
worker. Its one argument, `BlindChunk`, carries the items, their lengths and the
epoch's secret scalar; its ``repr`` (what Dask writes into a "Compute Failed" log
line or a task's description) shows only the chunk's index and size, never the
scalar or the items. The result is bytes: the chunk's points, then their 64-bit
filter hashes, so nothing but two numpy views is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedtrace import gcs, group

HASH_BYTES = 8
#: Bytes per item in a chunk's result: its point, then (after all points) its hash.
RESULT_BYTES = group.POINT_BYTES + HASH_BYTES


@dataclass(frozen=True)
class BlindChunk:
    """Batch ``index`` of a build: ``count`` packed items, their native ``uint32`` lengths,
    and the epoch scalar."""

    index: int
    count: int
    items: bytes = field(repr=False)
    lengths: bytes = field(repr=False)
    scalar: bytes = field(repr=False)  # the epoch's secret: never in a repr, a key or a log

    def __str__(self) -> str:
        return repr(self)


def blind_and_hash(chunk: BlindChunk) -> bytes:
    """``H(y)^b`` for every item of the chunk, in order, then each point's filter hash."""
    points = group.blind_blob(chunk.items, chunk.lengths, chunk.scalar)
    if len(points) != chunk.count * group.POINT_BYTES:
        raise ValueError(f"chunk {chunk.index}: {len(points) // 32} points for {chunk.count} items")
    hashes = gcs.point_blob_hashes(points, group.POINT_BYTES)
    return points + hashes.astype("<u8").tobytes()
