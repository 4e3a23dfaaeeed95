"""OpenTelemetry spans around the coordinator's RPCs (coordinator.tracing), against a real server.

Skipped unless the `otel` extra is installed. The server is an in-process gRPC
server on a loopback port with the standard health service and one server-streaming
method, so both a unary and a streaming call are traced.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.federation import NodeEntry
from coordinator.tracing import NODE_ATTRIBUTE, TRACING_VARIABLE, traced_channel
from coordinator.transport import node_channel

OTEL_MISSING = any(
    importlib.util.find_spec(name) is None
    for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.instrumentation.grpc")
)
pytestmark = pytest.mark.skipif(
    OTEL_MISSING,
    reason="the otel extra is not installed (pip install 'fedtrace[otel]')",
)

_STREAM = "/fedtrace.test.Countdown/Count"


def _count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for n in range(int(request.decode()), 0, -1):
        yield str(n).encode()


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    countdown = grpc.unary_stream_rpc_method_handler(_count)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("fedtrace.test.Countdown", {"Count": countdown}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def exporter() -> Any:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


def _provider(exporter: Any) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _calls(channel: grpc.Channel) -> list[bytes]:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    count = channel.unary_stream(_STREAM)
    return list(count(b"3", timeout=10))


def test_every_rpc_is_a_span_naming_the_node(
    address: str, exporter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRACING_VARIABLE, "1")
    with traced_channel(grpc.insecure_channel(address), "EE", _provider(exporter)) as channel:
        assert _calls(channel) == [b"3", b"2", b"1"]
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == [
        "/fedtrace.test.Countdown/Count",
        "/grpc.health.v1.Health/Check",
    ]
    for span in spans:
        assert span.kind.name == "CLIENT"
        assert span.attributes[NODE_ATTRIBUTE] == "EE"
        assert span.attributes["rpc.system"] == "grpc"


def test_without_the_variable_the_channel_is_untouched(
    address: str, exporter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRACING_VARIABLE, raising=False)
    raw = grpc.insecure_channel(address)
    with traced_channel(raw, "EE", _provider(exporter)) as channel:
        assert channel is raw
        assert _calls(channel) == [b"3", b"2", b"1"]
    assert exporter.get_finished_spans() == ()


def test_a_failed_rpc_is_an_error_span(exporter: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACING_VARIABLE, "1")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # no services at all
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        raw = grpc.insecure_channel(f"127.0.0.1:{port}")
        with traced_channel(raw, "LT", _provider(exporter)) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
    finally:
        server.stop(None)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    [span] = exporter.get_finished_spans()
    assert span.attributes[NODE_ATTRIBUTE] == "LT"
    assert span.status.status_code.name == "ERROR"


def test_the_coordinator_node_channel_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = NodeEntry(name="EE", address="127.0.0.1:1")
    monkeypatch.setenv(TRACING_VARIABLE, "1")
    traced = node_channel(entry, b"", b"", b"")
    monkeypatch.setenv(TRACING_VARIABLE, "0")
    plain = node_channel(entry, b"", b"", b"")
    try:
        assert type(traced).__module__.startswith("opentelemetry.")
        assert not type(plain).__module__.startswith("opentelemetry.")
    finally:
        traced.close()
        plain.close()


def test_tracing_imports_nothing_when_off() -> None:
    """The check for the variable comes before any OpenTelemetry import."""
    source = Path(__file__).parents[2] / "coordinator" / "tracing.py"
    text = source.read_text()
    assert "\nimport opentelemetry" not in text and "\nfrom opentelemetry" not in text
    assert text.index("if not tracing_enabled()") < text.index("import_module(")
