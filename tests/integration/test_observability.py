"""A real node serving with `--metrics` and `--log-format json`, as an operations team runs it.

After one answered match and one refused query, the Prometheus endpoint counts both by
kind, outcome and partner, times them, shows remaining budgets and epoch ages; every
stderr line is one JSON object; no watchlist identifier or case reference appears in
any log line or metric.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedtrace.demo_data import generate_federation_data
from fedtrace.identifiers import canonicalize
from tests.integration.conftest import Federation, fedtrace

pytestmark = pytest.mark.slow

CASE = "CASE-OBS-2026-991"
POLICY = """
jurisdiction = "EE"
version = "ee-obs-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 500
rate_limit = { queries = 50, per = "day" }
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, int]]:
    root = tmp_path_factory.mktemp("observed")
    data = generate_federation_data(root / "data", ("EE",), 400, seed=5)
    port = _free_port()
    with Federation(root, data) as fed:
        node = fed.add_node("EE", policy=POLICY, tables=data.tables("EE"))
        node.serve_args = ("--metrics", f"127.0.0.1:{port}", "--log-format", "json")
        fed.issue_investigator()
        fed.start()
        yield fed, port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {prefix!r}")


def test_metrics_and_json_logs_carry_outcomes_and_never_an_identifier(
    observed: tuple[Federation, int], tmp_path: Path
) -> None:
    fed, port = observed
    items = fed.data.watchlist(40) + fed.data.watchlist(600)
    held = tmp_path / "watchlist.txt"
    held.write_text("\n".join(items[:40]) + "\n")
    code, report, _ = fed.match(held, "--nodes", "EE")
    assert code == 0 and report is not None
    # A refused query: more items than the grant's max_items_per_query (500).
    too_many = tmp_path / "too-many.txt"
    too_many.write_text("\n".join(fed.data.watchlist(600)) + "\n")
    refused = fedtrace(
        "query", "match", "--federation", str(fed.federation_file), "--watchlist", str(too_many),
        "--dataset", "wallets", "--case", CASE, "--legal-basis", "MLA", "--nodes", "EE",
        "--format", "json",
    )  # fmt: skip
    assert refused.returncode == 3

    text = _scrape(port)
    assert _value(text, 'fedtrace_queries_total{kind="match",outcome="ok",partner="FR"}') >= 1
    assert _value(text, 'fedtrace_queries_total{kind="match",outcome="denied",partner="FR"}') >= 1
    refusals = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fedtrace_refusals_total{")
    )
    assert refusals >= 1
    assert _value(text, 'fedtrace_query_seconds_count{kind="match"}') >= 2
    remaining = 'fedtrace_budget_remaining{budget="queries",dataset="wallets",kind="match"'
    assert _value(text, remaining) <= 49
    assert _value(text, 'fedtrace_epoch_age_seconds{dataset="wallets"}') >= 0
    assert _value(text, "fedtrace_audit_entries_total") >= 3

    node = fed.nodes["EE"]
    lines = [line for line in node.log.read_text().splitlines() if line.strip()]
    assert lines, "the node logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "event", "logger"} <= set(r) for r in records)
    assert any(r["event"] == "serving" for r in records)
    everything = node.log.read_text() + text
    for item in items:
        for form in (item, item.lower(), canonicalize("wallet", item)):
            assert form not in everything
    assert CASE not in everything and "CASE-7" not in everything
