"""Follow-up requests through coordinator.fanout against the real RequestService, in memory."""

from __future__ import annotations

import pytest

from coordinator.fanout import NodeTrust
from coordinator.federation import NodeEntry
from coordinator.followup import FollowUpAsk, ItemError, request_status, submit_request
from coordinator.match import MatchQuery, run_match
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import InMemoryFederation, eth, revoked_node, two_nodes


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("requests"))


def _match_first(memory: InMemoryFederation, case: str, items: list[str]) -> None:
    """A follow-up must follow a match under the same case."""
    query = MatchQuery("wallets", case, "MLA", "wallet", tuple(items), "ES")
    results = run_match(memory.federation("ES"), query, memory.connections("ES"), memory.ca_pem)
    assert results[0].status == NodeStatus.OK, results[0].reason


def _ask(item: str, case: str = "RQ-CASE") -> FollowUpAsk:
    return FollowUpAsk(
        kind="disclose",
        dataset="wallets",
        item=item,
        case_ref=case,
        legal_basis="MLA",
        reason="hit in the match query",
        fields=("tx_count",),
    )


def test_submit_then_status_returns_the_signed_record(memory: InMemoryFederation) -> None:
    trust = NodeTrust(memory.ca_pem)
    connections = memory.connections("ES")
    federation = memory.federation("ES")
    ee = NodeEntry("EE", "memory")
    _match_first(memory, "RQ-CASE", [eth(7)])
    result = submit_request(
        federation, ee, _ask(eth(7).upper().replace("0X", "0x")), connections, trust
    )
    assert result.status == NodeStatus.OK, result.reason
    [signed] = result.requests
    assert signed.record.item == eth(7) and signed.record.jurisdiction == "EE"
    status = request_status(federation, federation.nodes, "RQ-CASE", connections, trust)
    assert [r.status for r in status] == [NodeStatus.OK] * 2
    assert [s.record.request_id for s in status[0].requests] == [signed.record.request_id]
    assert status[1].requests == []


def test_an_invalid_item_is_refused_before_anything_is_sent(memory: InMemoryFederation) -> None:
    ask = FollowUpAsk("disclose", "wallets", "not-a-wallet", "C", "MLA", identifier_kind="wallet")
    with pytest.raises(ItemError, match="--item is not a valid wallet"):
        submit_request(
            memory.federation("ES"),
            NodeEntry("EE", "memory"),
            ask,
            memory.connections("ES"),
            NodeTrust(memory.ca_pem),
        )


def test_a_partner_without_a_request_grant_is_denied(memory: InMemoryFederation) -> None:
    result = submit_request(
        memory.federation("IT"),
        NodeEntry("EE", "memory"),
        _ask(eth(8), "RQ-IT"),
        memory.connections("IT"),
        NodeTrust(memory.ca_pem),
    )
    assert result.status == NodeStatus.DENIED


def test_records_of_a_revoked_node_are_not_trusted(memory: InMemoryFederation) -> None:
    _match_first(memory, "RQ-REV", [eth(9)])
    trust = NodeTrust(memory.ca_pem, revoked_node(memory, "EE"))
    federation = memory.federation("ES")
    result = submit_request(
        federation,
        NodeEntry("EE", "memory"),
        _ask(eth(9), "RQ-REV"),
        memory.connections("ES"),
        trust,
    )
    assert result.status == NodeStatus.ERROR and "revoked" in result.reason
