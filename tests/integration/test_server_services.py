"""A serving node also answers the standard health and reflection services, over mTLS only."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedtrace.pki import server_name

from .conftest import Federation

pytestmark = pytest.mark.slow


def _channel(federation: Federation) -> grpc.Channel:
    root = federation.root
    credentials = grpc.ssl_channel_credentials(
        (root / "ca/ca.pem").read_bytes(),
        (root / "investigator/key.pem").read_bytes(),
        (root / "investigator/cert.pem").read_bytes(),
    )
    return grpc.secure_channel(
        federation.nodes["EE"].address,
        credentials,
        options=[("grpc.ssl_target_name_override", server_name("EE"))],
    )


def test_health_reports_serving(federation: Federation) -> None:
    with _channel(federation) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fedtrace.v1.NodeService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_node_service(federation: Federation) -> None:
    with _channel(federation) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in reply.list_services_response.service}
    assert "fedtrace.v1.NodeService" in names and "grpc.health.v1.Health" in names


def test_plaintext_clients_are_refused(federation: Federation) -> None:
    with grpc.insecure_channel(federation.nodes["EE"].address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
