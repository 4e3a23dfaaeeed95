"""The Python API's reports say how long their query took (`timings`), outside the signed JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.tracing import QueryTimings, Stopwatch, Timings
from fedtrace.api import FederationClient
from tests.unit.test_match_in_memory import InMemoryFederation, eth, two_nodes


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("timings"))


def _client(memory: InMemoryFederation, investigator: str) -> FederationClient:
    return FederationClient(
        memory.federation(investigator),
        memory.connections(investigator),
        filters=FilterCache(None),
        tags=TagCache(None),
    )


def _sane(timings: Timings, nodes: set[str], wall: float) -> None:
    assert set(timings) == {"total", "prepare", "per_node"}
    assert 0.0 <= timings["prepare"] <= timings["total"] <= wall
    assert set(timings["per_node"]) == nodes
    for seconds in timings["per_node"].values():
        assert 0.0 <= seconds <= timings["total"]


def _wall(clock: Stopwatch) -> float:
    return clock.stop().total


def test_query_reports_time_the_query_and_each_node(memory: InMemoryFederation) -> None:
    with _client(memory, "FR") as fed:
        clock = Stopwatch()
        match = fed.match([eth(5), eth(450)], dataset="wallets", case="T-1", legal_basis="MLA")
        aggregate = fed.aggregate(
            [eth(450)], dataset="wallets", case="T-1", sums=["tx_count"], legal_basis="MLA"
        )
        overlap = fed.overlap(dataset="wallets", case="T-1", legal_basis="MLA")
        wall = _wall(clock)
    for report in (match, aggregate, overlap):
        _sane(report.timings, {"EE", "LT"}, wall)
    assert match.timings["per_node"] == {r.node: r.seconds for r in match.results}
    assert 0.0 < match.timings["total"]


def test_timings_stay_out_of_the_signed_document(memory: InMemoryFederation) -> None:
    with _client(memory, "FR") as fed:
        report = fed.match([eth(5)], dataset="wallets", case="T-2", legal_basis="MLA")
    document = report.to_dict()
    assert "timings" not in document and "total" not in json.dumps(document)
    assert json.loads(report.render("json")) == document
    assert "elapsed" not in repr(report)
    report.timings["per_node"].clear()  # a copy: the report's own timings are unchanged
    assert set(report.timings["per_node"]) == {"EE", "LT"}


def test_request_reports_time_the_one_node_asked(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    with _client(memory, "ES") as fed:
        fed.match([eth(3)], dataset="wallets", case="T-3", legal_basis="MLA")  # then ask
        clock = Stopwatch()
        submitted = fed.request_disclose(
            node="EE", dataset="wallets", item=eth(3), case="T-3", legal_basis="MLA"
        )
        everywhere = fed.request_status(case="T-3")
        one = fed.request_status(case="T-3", node="EE")
        request_id = submitted.to_dict()["results"][0]["request_id"]
        export = fed.request_export(case="T-3", node="EE", id=request_id, out=tmp_path)
        wall = _wall(clock)
    for report in (submitted, one, export):
        _sane(report.timings, {"EE"}, wall)
    # Follow-up results carry no seconds of their own: per node only when one node was asked.
    _sane(everywhere.timings, set(), wall)


def test_a_stopwatch_not_marked_prepared_counts_everything_as_preparation() -> None:
    timings = Stopwatch().stop([("EE", 0.5)])
    assert timings.prepare == timings.total and dict(timings.per_node) == {"EE": 0.5}
    assert QueryTimings().as_timings() == {"total": 0.0, "prepare": 0.0, "per_node": {}}
