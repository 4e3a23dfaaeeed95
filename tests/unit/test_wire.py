"""No message of the exchange exceeds the 4 MiB gRPC limit, whatever the set sizes."""

from __future__ import annotations

from coordinator.match import _requests
from fedtrace.v1 import node_pb2
from fedtrace.wire import CHUNK_BYTES, POINTS_PER_BATCH

LIMIT = 4 * 1024 * 1024


def test_a_million_item_request_streams_in_messages_under_4_mib() -> None:
    count = 1_000_000
    header = node_pb2.EvaluateHeader(dataset="wallets", item_count=count)
    messages = list(_requests(header, bytes(32 * count)))
    assert sum(len(m.points.points) for m in messages) == 32 * count
    assert max(m.ByteSize() for m in messages) < LIMIT
    assert len(messages) == 1 + -(-count // 65_536)


def test_node_answer_and_filter_chunks_stay_under_4_mib() -> None:
    answer = node_pb2.EvaluateResponse(
        points=node_pb2.PointBatch(points=bytes(32 * POINTS_PER_BATCH))
    )
    assert answer.ByteSize() < LIMIT
    chunk = node_pb2.FilterChunk(data=bytes(CHUNK_BYTES))
    assert chunk.ByteSize() < LIMIT
