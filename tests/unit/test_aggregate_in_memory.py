"""The aggregate query through coordinator.fanout against the real node servicers, in memory."""

from __future__ import annotations

import pytest

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.epoch_cache import TagCache
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import (
    InMemoryFederation,
    eth,
    full_policy,
    revoked_node,
    two_nodes,
)

# Seconds of homomorphic encryption per test: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("aggregate"))


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    """EE and LT as in `two_nodes`, and LV: a federation total needs three answering nodes."""
    memory = two_nodes(tmp_path_factory.mktemp("aggregate-three"))
    memory.add_node("LV", full_policy("LV"), {eth(n) for n in range(301, 701)})
    return memory


def _expected(memory: InMemoryFederation, code: str, items: list[str]) -> tuple[int, float]:
    """Match count and total_in_eur of `items` at `code`, from the CSV the node ingested."""
    wallets = sorted(memory.held[code])
    count, total = 0, 0.0
    for item in items:
        if item in memory.held[code]:
            i = wallets.index(item)
            count += 1
            total += (i - 1) % len(wallets) % 7 + 1.25
    return count, total


def _query(
    items: list[str], *, total_only: bool = False, investigator: str = "DE"
) -> AggregateQuery:
    return AggregateQuery(
        dataset="wallets",
        case_ref="AGG-1",
        legal_basis="MLA",
        items=tuple(items),
        investigator=investigator,
        columns=("total_in_eur", "tx_count"),
        total_only=total_only,
    )


def test_each_node_sums_exactly_its_matched_records(memory: InMemoryFederation) -> None:
    items = [eth(n) for n in range(350, 460)]
    outcome = run_aggregate(
        memory.federation("DE"),
        _query(items),
        memory.connections("DE"),
        memory.ca_pem,
        cache=TagCache(None),
    )
    assert outcome.total is None
    for result in outcome.results:
        assert result.result.status == NodeStatus.OK, result.result.reason
        assert result.result.signature is not None
        count, total = _expected(memory, result.result.node, items)
        figures = result.figures or {}
        assert figures["match_count"].amount() == count
        assert figures["tx_count"].amount() == 2 * count
        assert figures["total_in_eur"].amount() == pytest.approx(total)


def test_total_only_gives_one_federation_total(three: InMemoryFederation) -> None:
    items = [eth(n) for n in range(350, 460)]
    outcome = run_aggregate(
        three.federation("DE"),
        _query(items, total_only=True),
        three.connections("DE"),
        three.ca_pem,
    )
    assert all(r.result.status == NodeStatus.OK and r.figures is None for r in outcome.results)
    assert outcome.total is not None and outcome.total.status == NodeStatus.OK
    expected = sum(_expected(three, code, items)[0] for code in ("EE", "LT", "LV"))
    assert (outcome.total.figures or {})["match_count"].amount() == expected
    transcript = outcome.results[0].result.signature["transcript"]  # type: ignore[index]
    assert list(transcript["peers"]) == ["EE", "LT", "LV"] and transcript["answering_set_sha256"]


def test_total_only_over_two_nodes_gives_one_total(memory: InMemoryFederation) -> None:
    """Two answering nodes (never the investigator's own) are enough for a masked total."""
    outcome = run_aggregate(
        memory.federation("DE"),
        _query([eth(450)], total_only=True),
        memory.connections("DE"),
        memory.ca_pem,
    )
    assert outcome.total is not None and outcome.total.status == NodeStatus.OK, [
        r.result.reason for r in outcome.results
    ]


def test_a_partner_without_an_aggregate_grant_is_denied_at_every_node(
    memory: InMemoryFederation,
) -> None:
    outcome = run_aggregate(
        memory.federation("FR"),
        _query([eth(1)], investigator="FR"),
        memory.connections("FR"),
        memory.ca_pem,
    )
    assert [r.result.status for r in outcome.results] == [NodeStatus.DENIED] * 2


def test_a_revoked_node_certificate_is_refused(memory: InMemoryFederation) -> None:
    revoked = revoked_node(memory, "EE")
    outcome = run_aggregate(
        memory.federation("DE"),
        _query([eth(450)]),
        memory.connections("DE"),
        memory.ca_pem,
        revoked=revoked,
    )
    by_node = {r.result.node: r.result for r in outcome.results}
    assert by_node["EE"].status == NodeStatus.ERROR and "revoked" in by_node["EE"].reason
    assert by_node["LT"].status == NodeStatus.OK
