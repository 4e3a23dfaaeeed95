"""The epoch filter GetFilter serves: one partition of the epoch, from a resume offset, in chunks.

An unpartitioned epoch (``partition_bits == 0``) has one filter, partition 0,
served as it always was. A partitioned epoch (`fedtrace.partitions`) serves the
partition asked for, loaded from the node database on its own, so the node holds
one partition per call. The header carries the partition, the epoch's partition
bits, the offset the data starts at, and the size and SHA-256 of the WHOLE
partition, so a download resumed at ``offset`` is checked end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from fedtrace import gcs
from fedtrace.partitions import partition_count
from fedtrace.v1 import node_pb2
from fedtrace.wire import CHUNK_BYTES
from node.gate import QueryRefused
from node.state import NodeState, serving_epoch

FILTER_KIND = "gcs-v1"


@dataclass(frozen=True)
class ServedPartition:
    """One partition of an epoch's filter and the digest of its whole data."""

    dataset: str
    epoch_id: str
    partition: int
    partition_bits: int
    filter: gcs.GolombFilter
    sha256: bytes


def served_partition(state: NodeState, request: node_pb2.GetFilterRequest) -> ServedPartition:
    """The partition the request names; QueryRefused (INVALID_ARGUMENT) for one the epoch
    does not have, and the refusals of `serving_epoch` for the dataset and epoch."""
    epoch = serving_epoch(state, request.dataset, request.epoch_id)
    bits = epoch.partition_bits
    if request.partition >= partition_count(bits):
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"epoch {epoch.epoch_id} of {epoch.dataset!r} has {partition_count(bits)} filter "
            f"partition(s); there is no partition {request.partition}",
        )
    return ServedPartition(
        epoch.dataset,
        epoch.epoch_id,
        request.partition,
        bits,
        epoch.partition_filter(request.partition),
        epoch.partition_sha256(request.partition),
    )


def filter_chunks(
    state: NodeState, request: node_pb2.GetFilterRequest
) -> Iterator[node_pb2.FilterChunk]:
    """The header, then the partition's data from ``request.offset`` in chunks of
    CHUNK_BYTES at most; QueryRefused (OUT_OF_RANGE) for an offset past its end."""
    served = served_partition(state, request)
    data = served.filter.data
    if request.offset > len(data):
        raise QueryRefused(
            grpc.StatusCode.OUT_OF_RANGE,
            f"partition {served.partition} of epoch {served.epoch_id} holds {len(data)} bytes; "
            f"offset {request.offset} is past its end",
        )
    yield node_pb2.FilterChunk(
        header=node_pb2.FilterHeader(
            dataset=served.dataset,
            epoch_id=served.epoch_id,
            filter_kind=FILTER_KIND,
            item_count=served.filter.item_count,
            remainder_bits=served.filter.remainder_bits,
            total_bytes=len(data),
            sha256=served.sha256,
            partition=served.partition,
            partition_bits=served.partition_bits,
            offset=request.offset,
        )
    )
    view = memoryview(data)
    for start in range(request.offset, len(data), CHUNK_BYTES):
        yield node_pb2.FilterChunk(data=bytes(view[start : start + CHUNK_BYTES]))
