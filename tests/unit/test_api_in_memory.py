"""The Python API (fedtrace.api) over in-memory connections: typed reports, signed dicts, items."""

from __future__ import annotations

import json

import pytest

from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.verify import verify_report
from coordinator.watchlist import WatchlistError
from fedtrace.api import FederationClient
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import InMemoryFederation, eth, two_nodes


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("api"))


def _client(memory: InMemoryFederation, investigator: str) -> FederationClient:
    return FederationClient(
        memory.federation(investigator),
        memory.connections(investigator),
        filters=FilterCache(None),
        tags=TagCache(None),
    )


def test_match_report_is_the_signed_json_report(memory: InMemoryFederation) -> None:
    items = [eth(n).replace("0x", "0X") for n in (5, 450, 900, 5000)] + [eth(5)]
    with _client(memory, "FR") as fed:
        report = fed.match(items, dataset="wallets", case="API-1", legal_basis="MLA")
    document = report.to_dict()
    assert document["query"] == "match" and document["case"] == "API-1"
    assert document["watchlist"] == {
        "file": "(items)",
        "kind": "wallet",
        "lines": 5,
        "items": 4,
        "duplicates": 1,
        "skipped_invalid": 0,
    }
    matched = {r["node"]: r["matched"] for r in document["results"]}
    assert matched == {"EE": [eth(5), eth(450)], "LT": [eth(450), eth(900)]}
    assert json.loads(report.render("json")) == document
    assert report.complete and all(r.status == NodeStatus.OK for r in report.results)
    assert verify_report(document, memory.ca_pem).ok


def test_an_invalid_item_is_named(memory: InMemoryFederation) -> None:
    with (
        _client(memory, "FR") as fed,
        pytest.raises(WatchlistError, match=r"item 2 \('0xnot-a-wallet'\) is not a valid wallet"),
    ):
        fed.match([eth(1), "0xnot-a-wallet"], dataset="wallets", case="API-2")


def test_aggregate_overlap_and_requests_through_one_client(memory: InMemoryFederation) -> None:
    with _client(memory, "DE") as fed:
        report = fed.aggregate(
            [eth(n) for n in range(440, 460)],
            dataset="wallets",
            case="API-3",
            sums=["tx_count"],
            legal_basis="MLA",
        )
    document = report.to_dict()
    assert document["query"] == "aggregate" and document["columns"] == ["tx_count"]
    assert [r["match_count"] for r in document["results"]] == [20, 20]
    assert verify_report(document, memory.ca_pem).ok
    with _client(memory, "IT") as fed:
        overlap = fed.overlap(dataset="wallets", case="API-4", legal_basis="MLA")
    assert overlap.complete and verify_report(overlap.to_dict(), memory.ca_pem).ok


def test_request_disclose_status_and_export(memory: InMemoryFederation, tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "records"
    with _client(memory, "ES") as fed:
        fed.match([eth(3)], dataset="wallets", case="API-5", legal_basis="MLA")
        submitted = fed.request_disclose(
            node="EE", dataset="wallets", item=eth(3), case="API-5", legal_basis="MLA"
        )
        [result] = submitted.to_dict()["results"]
        assert result["status"] == "ok" and result["state"] == "pending"
        status = fed.request_status(case="API-5")
        assert [len(r["requests"]) for r in status.to_dict()["results"]] == [1, 0]
        export = fed.request_export(case="API-5", node="EE", id=result["request_id"], out=out)
    assert export.json_path.exists() and export.html_path.exists()
    saved = json.loads(export.json_path.read_text())
    assert saved == export.document and verify_report(saved, memory.ca_pem).ok
