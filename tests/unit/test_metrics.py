"""The node's Prometheus metrics: names, labels, fixed vocabularies, and the HTTP endpoint."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedtrace.wire import NodeStatus
from node.metrics import (
    OTHER,
    NodeMetrics,
    RefusalReason,
    refusal_for_limit,
    start_metrics_server,
    stop_metrics_server,
)


@dataclass(frozen=True)
class Use:
    name: str
    used: float
    limit: float


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def endpoint(metrics: NodeMetrics) -> Iterator[str]:
    server, port = start_metrics_server("127.0.0.1", 0, metrics=metrics)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_metrics_server(server)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode()


def test_endpoint_serves_every_metric_over_http(metrics: NodeMetrics, endpoint: str) -> None:
    metrics.query_finished("match", NodeStatus.OK, "FR", 0.3)
    metrics.query_finished("match", NodeStatus.DENIED, "SG", 0.01)
    metrics.query_finished("aggregate", "ok", "FR", 2.0)
    metrics.refused(RefusalReason.NO_GRANT)
    metrics.refused(RefusalReason.RATE_LIMITED)
    metrics.refused(RefusalReason.RATE_LIMITED)
    metrics.audit_appended()
    metrics.audit_appended(2)
    metrics.set_budget_remaining("FR", "wallets", "match", "queries", 49)
    metrics.set_epoch_age("wallets", 120.5)

    found = samples(scrape(endpoint))

    assert (
        found[("fedtrace_queries_total", (("kind", "match"), ("outcome", "ok"), ("partner", "FR")))]
        == 1
    )
    assert (
        found[
            (
                "fedtrace_queries_total",
                (("kind", "match"), ("outcome", "denied"), ("partner", "SG")),
            )
        ]
        == 1
    )
    assert found[("fedtrace_query_seconds_count", (("kind", "match"),))] == 2
    assert found[("fedtrace_query_seconds_sum", (("kind", "aggregate"),))] == pytest.approx(2.0)
    assert found[("fedtrace_refusals_total", (("reason", "rate_limited"),))] == 2
    assert found[("fedtrace_refusals_total", (("reason", "no_grant"),))] == 1
    assert found[("fedtrace_refusals_total", (("reason", "busy"),))] == 0
    assert found[("fedtrace_audit_entries_total", ())] == 3
    budget = (("budget", "queries"), ("dataset", "wallets"), ("kind", "match"), ("partner", "FR"))
    assert found[("fedtrace_budget_remaining", budget)] == 49
    assert found[("fedtrace_epoch_age_seconds", (("dataset", "wallets"),))] == 120.5


def test_port_zero_binds_a_free_port_and_stop_releases_it(metrics: NodeMetrics) -> None:
    server, port = start_metrics_server("127.0.0.1", 0, metrics=metrics)
    assert port > 0
    assert "fedtrace_audit_entries_total" in scrape(f"http://127.0.0.1:{port}/metrics")
    stop_metrics_server(server)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_labels_never_carry_identifiers_or_free_text(metrics: NodeMetrics) -> None:
    address = "0x52908400098527886E0F7030069857D2E4169EE7"
    metrics.query_finished("match", "ok", address, 0.1)
    metrics.query_finished("CASE-7 wallets of suspect", "maybe", "fr", 0.1)
    metrics.refused("the partner asked for 0x5290…")
    metrics.set_budget_remaining("FR", "Wallets; DROP", "match", "secret", 1)
    metrics.set_epoch_age("../etc", 1)

    text = metrics.exposition().decode()

    values = {value for _, labels in samples(text) for _, value in labels}
    for leaked in (address, "CASE-7 wallets of suspect", "maybe", "fr", "Wallets; DROP", "secret"):
        assert leaked not in values
    assert "0x5290" not in text and "DROP" not in text and "CASE-7" not in text
    found = samples(text)
    assert (
        found[
            ("fedtrace_queries_total", (("kind", "match"), ("outcome", "ok"), ("partner", OTHER)))
        ]
        == 1
    )
    assert (
        found[("fedtrace_queries_total", (("kind", OTHER), ("outcome", OTHER), ("partner", OTHER)))]
        == 1
    )
    assert found[("fedtrace_refusals_total", (("reason", OTHER),))] == 1


def test_limit_uses_set_what_remains_of_each_budget(metrics: NodeMetrics) -> None:
    metrics.record_limit_uses(
        "FR",
        "wallets",
        "aggregate",
        [Use("queries", 3, 50), Use("items", 1_200, 100_000), Use("epsilon", 10.5, 10.0)],
    )
    found = samples(metrics.exposition().decode())
    base = (("dataset", "wallets"), ("kind", "aggregate"), ("partner", "FR"))

    def remaining(budget: str) -> float:
        return found[("fedtrace_budget_remaining", tuple(sorted((("budget", budget), *base))))]

    assert remaining("queries") == 47
    assert remaining("items") == 98_800
    assert remaining("epsilon") == 0  # never negative


def test_each_node_metrics_has_its_own_registry() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.audit_appended()
    assert samples(first.exposition().decode())[("fedtrace_audit_entries_total", ())] == 1
    assert samples(second.exposition().decode())[("fedtrace_audit_entries_total", ())] == 0


def test_an_exhausted_limit_names_its_refusal_reason() -> None:
    assert refusal_for_limit("queries") is RefusalReason.RATE_LIMITED
    assert refusal_for_limit("items") is RefusalReason.BUDGET_EXHAUSTED
    assert refusal_for_limit("epsilon") is RefusalReason.BUDGET_EXHAUSTED
