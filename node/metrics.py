"""What a node exposes to Prometheus: query outcomes, refusals, budgets, epoch ages, audit growth.

One `NodeMetrics` holds its own `CollectorRegistry` (no process-wide state, so
tests and several nodes in one process do not collide). `start_metrics_server`
serves that registry's text format over plain HTTP on HOST:PORT.

Labels are low-cardinality and carry no secret: a partner is a jurisdiction code,
a dataset is a dataset name from node.toml, a query kind, outcome, budget and
refusal reason come from fixed vocabularies. An identifier, a case reference or
free text never becomes a label; a value outside its vocabulary is recorded as
``other`` rather than passed through.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Iterable
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_wsgi_server,
)

from fedtrace.wire import NodeStatus
from node.policy import QueryKind

DEFAULT_METRICS_PORT = 9464
OTHER = "other"  # the label value for anything outside a label's vocabulary

# The policy's query kinds, and `info` for the node's description (GetInfo, filters).
QUERY_KINDS = (*(kind.value for kind in QueryKind), "info")
BUDGETS = ("queries", "items", "epsilon")
# Query durations range from a cached filter download to a large aggregate round.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_JURISDICTION = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class RefusalReason(enum.StrEnum):
    """Why a node refused a request, as a short fixed code (the `reason` label)."""

    NO_GRANT = "no_grant"  # no grant in force names the partner, dataset and query kind
    RATE_LIMITED = "rate_limited"  # the grant's rate_limit is used up for now
    BUDGET_EXHAUSTED = "budget_exhausted"  # an item or epsilon budget is used up
    TOO_MANY_ITEMS = "too_many_items"  # over max_items_per_query or the node's ceiling
    INVALID_ARGUMENT = "invalid_argument"  # the request is malformed or inconsistent
    UNAUTHENTICATED = "unauthenticated"  # no usable identity, or a revoked certificate
    STALE_EPOCH = "stale_epoch"  # the request names an epoch the node no longer serves
    BUSY = "busy"  # every query slot is taken


def refusal_for_limit(limit: str) -> RefusalReason:
    """The reason code for a request a grant's limit did not fit: "queries", "items", "epsilon"."""
    return RefusalReason.RATE_LIMITED if limit == "queries" else RefusalReason.BUDGET_EXHAUSTED


_BY_STATUS_CODE = {
    "PERMISSION_DENIED": RefusalReason.NO_GRANT,
    "RESOURCE_EXHAUSTED": RefusalReason.BUSY,
    "INVALID_ARGUMENT": RefusalReason.INVALID_ARGUMENT,
    "ALREADY_EXISTS": RefusalReason.INVALID_ARGUMENT,  # a replayed nonce
    "NOT_FOUND": RefusalReason.INVALID_ARGUMENT,
    "UNAUTHENTICATED": RefusalReason.UNAUTHENTICATED,
    "FAILED_PRECONDITION": RefusalReason.STALE_EPOCH,
}


def refusal_reason(status_code: str) -> str:
    """The reason code of a refusal that names none itself, from its gRPC status code name."""
    reason = _BY_STATUS_CODE.get(status_code)
    return reason.value if reason is not None else OTHER


def outcome_status(outcome: str, status_code: str) -> NodeStatus:
    """How the investigator's report will show a query the node settled with `outcome`."""
    if outcome == "answered":
        return NodeStatus.OK
    if status_code in ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
        return NodeStatus.DENIED
    if status_code == "UNAVAILABLE":
        return NodeStatus.UNAVAILABLE
    return NodeStatus.ERROR


_REFUSAL_CODES = tuple(reason.value for reason in RefusalReason)
_OUTCOMES = tuple(status.value for status in NodeStatus)


class LimitUseLike(Protocol):
    """One limit after a request (node.budget.LimitUse has this shape)."""

    @property
    def name(self) -> str: ...

    @property
    def used(self) -> float: ...

    @property
    def limit(self) -> float: ...


def _jurisdiction(code: str) -> str:
    return code if _JURISDICTION.match(code) else OTHER


def _dataset(name: str) -> str:
    return name if _DATASET.match(name) else OTHER


def _member(value: str, vocabulary: Iterable[str]) -> str:
    return value if value in vocabulary else OTHER


class NodeMetrics:
    """The node's metrics in a registry of their own; every method is cheap and never raises."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queries = Counter(
            "fedtrace_queries",
            "Queries this node answered or refused, by query kind, outcome and partner.",
            ("kind", "outcome", "partner"),
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "fedtrace_query_seconds",
            "Time from a query's arrival to its last answer message, by query kind.",
            ("kind",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.budget_remaining = Gauge(
            "fedtrace_budget_remaining",
            "What is left of a grant's limit in its current window after the last query "
            "(queries, items or epsilon).",
            ("partner", "dataset", "kind", "budget"),
            registry=self.registry,
        )
        self.epoch_age = Gauge(
            "fedtrace_epoch_age_seconds",
            "Age of the epoch (secret scalar and blinded set) a dataset is served under.",
            ("dataset",),
            registry=self.registry,
        )
        self.audit_entries = Counter(
            "fedtrace_audit_entries",
            "Entries this process appended to the node's signed audit trail.",
            registry=self.registry,
        )
        self.refusals = Counter(
            "fedtrace_refusals",
            "Requests the node refused, by reason code.",
            ("reason",),
            registry=self.registry,
        )
        for reason in RefusalReason:  # every reason is scraped as 0 before it first happens
            self.refusals.labels(reason=reason.value)

    def query_finished(
        self, kind: str, outcome: NodeStatus | str, partner: str, seconds: float
    ) -> None:
        """One query ended: count it by outcome (ok, denied, unavailable, error) and time it."""
        kind_label = _member(kind, QUERY_KINDS)
        outcome_label = _member(str(outcome), _OUTCOMES)
        self.queries.labels(
            kind=kind_label, outcome=outcome_label, partner=_jurisdiction(partner)
        ).inc()
        self.query_seconds.labels(kind=kind_label).observe(max(0.0, seconds))

    def refused(self, reason: RefusalReason | str) -> None:
        """One refused request; a `reason` outside `RefusalReason` counts as other."""
        self.refusals.labels(reason=_member(str(reason), _REFUSAL_CODES)).inc()

    def audit_appended(self, entries: int = 1) -> None:
        self.audit_entries.inc(entries)

    def set_budget_remaining(
        self, partner: str, dataset: str, kind: str, budget: str, remaining: float
    ) -> None:
        self.budget_remaining.labels(
            partner=_jurisdiction(partner),
            dataset=_dataset(dataset),
            kind=_member(kind, QUERY_KINDS),
            budget=_member(budget, BUDGETS),
        ).set(max(0.0, remaining))

    def record_limit_uses(
        self, partner: str, dataset: str, kind: str, uses: Iterable[LimitUseLike]
    ) -> None:
        """Set the remaining budget of each limit a query was checked against."""
        for use in uses:
            self.set_budget_remaining(partner, dataset, kind, use.name, use.limit - use.used)

    def set_epoch_age(self, dataset: str, seconds: float) -> None:
        self.epoch_age.labels(dataset=_dataset(dataset)).set(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format, as the endpoint serves it."""
        return generate_latest(self.registry)


def start_metrics_server(host: str, port: int, *, metrics: NodeMetrics) -> tuple[WSGIServer, int]:
    """Serve `metrics` at http://HOST:PORT/metrics in a daemon thread; port 0 picks a free one.

    Returns the server (stop it with `stop_metrics_server`) and the port actually bound.
    """
    server, _thread = start_wsgi_server(port, addr=host, registry=metrics.registry)
    return server, int(server.server_port)


def stop_metrics_server(server: WSGIServer) -> None:
    """Stop serving and release the port; safe to call from a signal-handling thread."""
    stopper = threading.Thread(target=server.shutdown, name="metrics-stop", daemon=True)
    stopper.start()
    stopper.join(timeout=5.0)
    server.server_close()
