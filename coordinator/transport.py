"""How the coordinator reaches a node: one connection protocol for all four services, over gRPC.

`NodeConnection` is everything the coordinator asks of one node — NodeService
(info, filter, evaluate), AggregateService, OverlapService and RequestService.
`GrpcConnection` is one mutual-TLS channel to the node FED.toml names, with a stub
per service; `GrpcConnections` opens that channel once per node and hands the same
connection to every query until it is closed, so a client pays one TLS handshake
per node, not one per query. Unit tests pass in-memory connections that call the
node's servicers in process. With `FEDTRACE_OTEL=1` and the `otel` extra installed,
each channel's RPCs are OpenTelemetry spans (coordinator.tracing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import grpc

from coordinator.federation import Federation, NodeEntry
from coordinator.tracing import traced_channel
from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_NODE, read_key_pem, server_name
from fedtrace.v1 import (
    aggregate_pb2,
    aggregate_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    overlap_pb2,
    overlap_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
)
from fedtrace.wire import MAX_MESSAGE_BYTES

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Connections",
    "GrpcConnection",
    "GrpcConnections",
    "NodeConnection",
    "node_channel",
    "read_federation_file",
]


class NodeConnection(Protocol):
    """A connection to one node, covering every service the coordinator calls."""

    # NodeService: the match query.
    def info(self, timeout: float) -> node_pb2.NodeInfo: ...

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]: ...

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]: ...

    # AggregateService: both rounds of the aggregate query.
    def position_tags(
        self, request: aggregate_pb2.GetPositionTagsRequest, timeout: float
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]: ...

    def aggregate_evaluate(
        self, requests: Iterator[aggregate_pb2.AggregateEvaluateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateEvaluateResponse]: ...

    def aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateResponse]: ...

    # OverlapService: join, open, relay around the ring, close.
    def overlap_join(
        self, request: overlap_pb2.OverlapJoinRequest, timeout: float
    ) -> overlap_pb2.OverlapJoinResponse: ...

    def overlap_open(
        self, request: overlap_pb2.OverlapOpenRequest, timeout: float
    ) -> overlap_pb2.OverlapOpenResponse: ...

    def overlap_initial(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> Iterator[node_pb2.PointBatch]: ...

    def overlap_relay(
        self, requests: Iterator[overlap_pb2.OverlapRelayRequest], timeout: float
    ) -> Iterator[node_pb2.PointBatch]: ...

    def overlap_shared(
        self, requests: Iterator[overlap_pb2.OverlapSharedRequest], timeout: float
    ) -> overlap_pb2.OverlapSharedResponse: ...

    def overlap_close(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> overlap_pb2.OverlapCloseResponse: ...

    # RequestService: follow-up requests.
    def submit(
        self, request: requests_pb2.SubmitFollowUpRequest, timeout: float
    ) -> requests_pb2.FollowUpRecord: ...

    def status(
        self, request: requests_pb2.FollowUpStatusRequest, timeout: float
    ) -> Iterator[requests_pb2.FollowUpRecord]: ...

    def close(self) -> None: ...


# Gives the connection to a roster entry; GrpcConnections is one, tests pass in-memory ones.
Connections = Callable[[NodeEntry], NodeConnection]


def node_channel(entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> grpc.Channel:
    """Mutual TLS to `entry.address` that accepts only the certificate of node `entry.name`;
    every RPC on it is an OpenTelemetry span when tracing is on (coordinator.tracing)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    channel = grpc.secure_channel(
        entry.address,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", server_name(entry.name, ROLE_NODE)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    return traced_channel(channel, entry.name)


def read_federation_file(path: Path, what: str) -> bytes:
    """A certificate named in FED.toml, or one clear line saying why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the {what} named in FED.toml: {exc.strerror}"
        ) from None


class GrpcConnection:
    """One mutual-TLS channel to the node named in FED.toml, with a stub for each service."""

    def __init__(self, entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> None:
        self._channel = node_channel(entry, root, key, cert)
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)
        self._aggregate = aggregate_pb2_grpc.AggregateServiceStub(self._channel)
        self._overlap = overlap_pb2_grpc.OverlapServiceStub(self._channel)
        self._requests = requests_pb2_grpc.RequestServiceStub(self._channel)

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        reply: node_pb2.NodeInfo = self._node.GetInfo(
            node_pb2.GetInfoRequest(), timeout=timeout, wait_for_ready=False
        )
        return reply

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]:
        return iter(self._node.GetFilter(request, timeout=timeout))

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]:
        return iter(self._node.Evaluate(requests, timeout=timeout))

    def position_tags(
        self, request: aggregate_pb2.GetPositionTagsRequest, timeout: float
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]:
        return iter(self._aggregate.GetPositionTags(request, timeout=timeout))

    def aggregate_evaluate(
        self, requests: Iterator[aggregate_pb2.AggregateEvaluateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateEvaluateResponse]:
        return iter(self._aggregate.Evaluate(requests, timeout=timeout))

    def aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateResponse]:
        return iter(self._aggregate.Aggregate(requests, timeout=timeout))

    def overlap_join(
        self, request: overlap_pb2.OverlapJoinRequest, timeout: float
    ) -> overlap_pb2.OverlapJoinResponse:
        reply: overlap_pb2.OverlapJoinResponse = self._overlap.Join(request, timeout=timeout)
        return reply

    def overlap_open(
        self, request: overlap_pb2.OverlapOpenRequest, timeout: float
    ) -> overlap_pb2.OverlapOpenResponse:
        reply: overlap_pb2.OverlapOpenResponse = self._overlap.Open(request, timeout=timeout)
        return reply

    def overlap_initial(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> Iterator[node_pb2.PointBatch]:
        # The call itself, not iter(call): it can be cancelled when the overlap fails.
        call: Iterator[node_pb2.PointBatch] = self._overlap.Initial(request, timeout=timeout)
        return call

    def overlap_relay(
        self, requests: Iterator[overlap_pb2.OverlapRelayRequest], timeout: float
    ) -> Iterator[node_pb2.PointBatch]:
        call: Iterator[node_pb2.PointBatch] = self._overlap.Relay(requests, timeout=timeout)
        return call

    def overlap_shared(
        self, requests: Iterator[overlap_pb2.OverlapSharedRequest], timeout: float
    ) -> overlap_pb2.OverlapSharedResponse:
        reply: overlap_pb2.OverlapSharedResponse = self._overlap.Shared(requests, timeout=timeout)
        return reply

    def overlap_close(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> overlap_pb2.OverlapCloseResponse:
        reply: overlap_pb2.OverlapCloseResponse = self._overlap.Close(request, timeout=timeout)
        return reply

    def submit(
        self, request: requests_pb2.SubmitFollowUpRequest, timeout: float
    ) -> requests_pb2.FollowUpRecord:
        record: requests_pb2.FollowUpRecord = self._requests.Submit(request, timeout=timeout)
        return record

    def status(
        self, request: requests_pb2.FollowUpStatusRequest, timeout: float
    ) -> Iterator[requests_pb2.FollowUpRecord]:
        return iter(self._requests.Status(request, timeout=timeout))

    def close(self) -> None:
        self._channel.close()


class GrpcConnections:
    """One GrpcConnection per roster entry, opened on first use and reused until `close()`."""

    def __init__(self, federation: Federation) -> None:
        self._root = read_federation_file(federation.ca, "federation CA certificate")
        self._cert = read_federation_file(federation.cert, "investigator certificate")
        self._key = read_key_pem(federation.key)
        self._open: dict[NodeEntry, GrpcConnection] = {}
        self._lock = threading.Lock()

    def __call__(self, entry: NodeEntry) -> NodeConnection:
        with self._lock:
            connection = self._open.get(entry)
            if connection is None:
                connection = GrpcConnection(entry, self._root, self._key, self._cert)
                self._open[entry] = connection
            return connection

    @property
    def ca_pem(self) -> bytes:
        return self._root

    @property
    def cert_pem(self) -> bytes:
        return self._cert

    @property
    def key_pem(self) -> bytes:
        return self._key

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for connection in opened:
            connection.close()
