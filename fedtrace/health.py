"""Is a node serving? Its standard gRPC health service, asked over mutual TLS.

Every node registers `grpc.health.v1.Health`. Any holder of a federation
certificate may call it (a node checking itself uses its own certificate), and
the node is recognised by its TLS name (`fedtrace.pki.server_name`), not by the
address dialled: the same check works through a container port or a load
balancer. The answer is a typed `NodeHealth`; nothing here raises for a node that
is down.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_NODE, read_key_pem, server_name

DEFAULT_TIMEOUT_SECONDS = 5.0
# A server bound to every interface is reached, from the same host, on loopback.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]", "": "127.0.0.1"}


class HealthState(enum.StrEnum):
    """How a node answered, as the table and the JSON output say it."""

    SERVING = "serving"
    NOT_SERVING = "not_serving"  # it answered, but says it is not serving (or unknown service)
    UNREACHABLE = "unreachable"  # no answer: down, wrong address, TLS refused, timed out


@dataclass(frozen=True)
class NodeHealth:
    """One node's health: its name, the address dialled, the state, and why when not serving."""

    node: str
    address: str
    state: HealthState
    reason: str = ""

    @property
    def serving(self) -> bool:
        return self.state is HealthState.SERVING

    def as_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "address": self.address,
            "status": self.state.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MemberCredentials:
    """A federation member's TLS material: the CA to trust, and the certificate to present."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_files(cls, ca: Path, cert: Path, key: Path) -> MemberCredentials:
        return cls(
            ca_pem=_read(ca, "CA certificate"),
            cert_pem=_read(cert, "certificate"),
            key_pem=read_key_pem(key),
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def dial_address(listen: str) -> str:
    """Where a process on the same host reaches a server listening on `listen`.

    ``0.0.0.0:7001`` (every interface) is dialled as ``127.0.0.1:7001``; other
    addresses are dialled as written.
    """
    host, sep, port = listen.rpartition(":")
    if not sep:
        return listen
    return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"


def check_node(
    node: str,
    address: str,
    credentials: MemberCredentials,
    *,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> NodeHealth:
    """Ask node `node` (a jurisdiction code) at `address` whether it serves `service`.

    The empty service name is the node as a whole. The node must present the
    certificate of `node`; a different one is reported as unreachable.
    """
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(
            root_certificates=credentials.ca_pem,
            private_key=credentials.key_pem,
            certificate_chain=credentials.cert_pem,
        ),
        options=[("grpc.ssl_target_name_override", server_name(node, ROLE_NODE))],
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        return _failure(node, address, exc, service)
    finally:
        channel.close()
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return NodeHealth(node, address, HealthState.SERVING)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return NodeHealth(node, address, HealthState.NOT_SERVING, f"the node reports {status}")


def _failure(node: str, address: str, error: grpc.RpcError, service: str) -> NodeHealth:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else "") or ""
    if code is grpc.StatusCode.NOT_FOUND:
        return NodeHealth(
            node, address, HealthState.NOT_SERVING, f"the node does not know service {service!r}"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        reason = "no answer before the deadline"
    elif code is grpc.StatusCode.UNAVAILABLE:
        reason = f"cannot connect: {_first_line(details) or 'connection refused'}"
    else:
        name = code.name if code is not None else "unknown error"
        reason = f"{name}: {_first_line(details)}".rstrip(": ")
    return NodeHealth(node, address, HealthState.UNREACHABLE, reason)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def check_nodes(
    nodes: Iterable[tuple[str, str]],
    credentials: MemberCredentials,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> tuple[NodeHealth, ...]:
    """Check (name, address) pairs at the same time; results in the order given."""
    pairs = list(nodes)
    if not pairs:
        return ()
    with ThreadPoolExecutor(max_workers=min(8, len(pairs))) as pool:
        futures = [
            pool.submit(check_node, name, address, credentials, timeout=timeout)
            for name, address in pairs
        ]
        return tuple(future.result() for future in futures)
