"""How the coordinator reaches a node: a transport protocol, and the mTLS gRPC implementation.

The fan-out takes any `NodeTransport`, so unit tests can answer in memory while
integration tests talk to real node processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc

from coordinator.federation import Federation, NodeEntry
from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_NODE, read_key_pem, server_name
from fedtrace.v1 import node_pb2, node_pb2_grpc

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class NodeTransport(Protocol):
    def info(self, timeout: float) -> node_pb2.NodeInfo: ...

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]: ...

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]: ...

    def close(self) -> None: ...


def node_channel(entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> grpc.Channel:
    """Mutual TLS to `entry.address` that accepts only the certificate of node `entry.name`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(
        entry.address,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", server_name(entry.name, ROLE_NODE)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )


def read_federation_file(path: Path, what: str) -> bytes:
    """A certificate named in FED.toml, or one clear line saying why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the {what} named in FED.toml: {exc.strerror}"
        ) from None


class GrpcTransport:
    """A mutual-TLS channel that accepts only the certificate of the node named in FED.toml."""

    def __init__(self, entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> None:
        self._channel = node_channel(entry, root, key, cert)
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        reply: node_pb2.NodeInfo = self._stub.GetInfo(
            node_pb2.GetInfoRequest(), timeout=timeout, wait_for_ready=False
        )
        return reply

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]:
        return iter(self._stub.GetFilter(request, timeout=timeout))

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]:
        return iter(self._stub.Evaluate(requests, timeout=timeout))

    def close(self) -> None:
        self._channel.close()


class GrpcTransports:
    """Makes a GrpcTransport per roster entry from the investigator's TLS material."""

    def __init__(self, federation: Federation) -> None:
        self._root = read_federation_file(federation.ca, "federation CA certificate")
        self._cert = read_federation_file(federation.cert, "investigator certificate")
        self._key = read_key_pem(federation.key)

    def __call__(self, entry: NodeEntry) -> NodeTransport:
        return GrpcTransport(entry, self._root, self._key, self._cert)

    @property
    def ca_pem(self) -> bytes:
        return self._root
