"""Where a query's time went: timings for the Python API's reports, optional OpenTelemetry spans.

`Stopwatch` measures one query from the client's side — the local preparation
(argument checks, watchlist, dataset announcements) and the whole call — and
`TimedReport` gives every report a `timings` mapping built from it and from the
seconds each node's result already carries. Timings are never part of a report's
signed JSON document.

`traced_channel` wraps every channel the coordinator opens to a node: when the
`otel` extra is installed and `FEDTRACE_OTEL=1` is set, each RPC becomes an
OpenTelemetry client span (opentelemetry-instrumentation-grpc's client
interceptor) carrying the node's code as `fedtrace.node`. Otherwise the channel is
returned unchanged and nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypedDict

import grpc

__all__ = [
    "NODE_ATTRIBUTE",
    "TRACING_VARIABLE",
    "QueryTimings",
    "Stopwatch",
    "TimedReport",
    "Timings",
    "traced_channel",
    "tracing_enabled",
]

# Set to 1 to trace the coordinator's RPCs (needs `pip install fedtrace[otel]`).
TRACING_VARIABLE = "FEDTRACE_OTEL"
# The span attribute that names the node an RPC went to.
NODE_ATTRIBUTE = "fedtrace.node"


class Timings(TypedDict):
    """A query's timings in seconds: the whole call, its local preparation, and each node."""

    total: float
    prepare: float
    per_node: dict[str, float]


@dataclass(frozen=True)
class QueryTimings:
    """How long one query took, measured by the client (seconds)."""

    total: float = 0.0
    prepare: float = 0.0
    per_node: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def as_timings(self) -> Timings:
        return {"total": self.total, "prepare": self.prepare, "per_node": dict(self.per_node)}


class Stopwatch:
    """Started when a query is asked; `prepared()` when the local checks are done; `stop()`."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._prepare: float | None = None
        self._answered: dict[str, float] = {}

    def prepared(self) -> None:
        """The local preparation is over; what follows is talking to the nodes."""
        if self._prepare is None:
            self._prepare = time.perf_counter() - self._started

    def answered(self, node: str) -> None:
        """`node`, the only one asked, has answered: its seconds are those since preparation."""
        self._answered[node] = time.perf_counter() - self._started - (self._prepare or 0.0)

    def stop(self, per_node: Iterable[tuple[str, float]] = ()) -> QueryTimings:
        """The timings so far, with each node's seconds as its result reports them."""
        total = time.perf_counter() - self._started
        prepare = total if self._prepare is None else self._prepare
        nodes = MappingProxyType({**self._answered, **dict(per_node)})
        return QueryTimings(total=total, prepare=prepare, per_node=nodes)


@dataclass(frozen=True)
class TimedReport:
    """A report of the Python API that knows how long its query took (outside `to_dict()`)."""

    elapsed: QueryTimings = field(
        default_factory=QueryTimings, kw_only=True, repr=False, compare=False
    )

    @property
    def timings(self) -> Timings:
        """``{"total": s, "prepare": s, "per_node": {"EE": s, …}}``, in seconds."""
        return self.elapsed.as_timings()


def tracing_enabled() -> bool:
    """`FEDTRACE_OTEL=1` is set (whether the extra is installed is checked on use)."""
    return os.environ.get(TRACING_VARIABLE, "").strip() == "1"


def traced_channel(channel: grpc.Channel, node: str, tracer_provider: Any = None) -> grpc.Channel:
    """`channel`, with every RPC an OpenTelemetry span naming `node`, when tracing is on.

    The spans go to `tracer_provider`, by default OpenTelemetry's global one (which
    the application, or `opentelemetry-instrument`, configures)."""
    if not tracing_enabled():
        return channel
    try:
        # Imported by name, on use: neither fedtrace nor mypy needs the optional extra.
        instrumentation = importlib.import_module("opentelemetry.instrumentation.grpc")
        grpcext = importlib.import_module("opentelemetry.instrumentation.grpc.grpcext")
        trace = importlib.import_module("opentelemetry.trace")
    except ImportError:
        return channel
    # The instrumentation's interceptor is the outer one: its span is current while the
    # inner one runs, so the inner one can name the node on it for every kind of RPC.
    named = grpc.intercept_channel(channel, NodeAttribute(node, trace.get_current_span))
    return grpcext.intercept_channel(named, instrumentation.client_interceptor(tracer_provider))


class NodeAttribute:
    """A client interceptor of every RPC kind: sets `NODE_ATTRIBUTE` on the span that is
    current when an RPC starts (registered with grpc's interceptor classes below)."""

    def __init__(self, node: str, current_span: Callable[[], Any]) -> None:
        self._node = node
        self._current_span = current_span

    def _named(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        self._current_span().set_attribute(NODE_ATTRIBUTE, self._node)
        return continuation(details, request)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._named(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._named(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._named(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._named(continuation, details, requests)


# Registered rather than subclassed: grpc ships no type information to subclass under mypy.
for _kind in (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    _kind.register(NodeAttribute)
