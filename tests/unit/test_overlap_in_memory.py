"""The overlap query through coordinator.fanout and the relay ring, real servicers in memory."""

from __future__ import annotations

import pytest

from coordinator.overlap import OverlapQuery, run_overlap
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import InMemoryFederation, revoked_node, two_nodes


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("overlap"))


def _query(investigator: str = "IT") -> OverlapQuery:
    return OverlapQuery(
        dataset="wallets", case_ref="OV-1", legal_basis="MLA", investigator=investigator
    )


def test_groups_count_the_items_each_group_holds_exactly(memory: InMemoryFederation) -> None:
    outcome = run_overlap(
        memory.federation("IT"), _query(), memory.connections("IT"), memory.ca_pem
    )
    assert [r.status for r in outcome.results] == [NodeStatus.OK] * 2, outcome.results
    assert outcome.roster == ("EE", "LT") and not outcome.reveal
    ee, lt = memory.held["EE"], memory.held["LT"]
    assert outcome.groups == {frozenset({"EE", "LT"}): len(ee & lt)}
    assert outcome.pairwise == {("EE", "LT"): len(ee & lt)}
    assert all(r.signature is not None for r in outcome.results)


def test_without_an_overlap_grant_every_node_denies_and_no_overlap_runs(
    memory: InMemoryFederation,
) -> None:
    outcome = run_overlap(
        memory.federation("FR"), _query("FR"), memory.connections("FR"), memory.ca_pem
    )
    assert [r.status for r in outcome.results] == [NodeStatus.DENIED] * 2
    assert outcome.groups is None


def test_a_revoked_participant_is_left_out(memory: InMemoryFederation) -> None:
    outcome = run_overlap(
        memory.federation("IT"),
        _query(),
        memory.connections("IT"),
        memory.ca_pem,
        revoked=revoked_node(memory, "LT"),
    )
    by_node = {r.node: r for r in outcome.results}
    assert by_node["LT"].status == NodeStatus.ERROR and "revoked" in by_node["LT"].reason
    assert outcome.groups is None  # one participant left: no overlap
