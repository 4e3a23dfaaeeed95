"""Noisy aggregates in memory: a figure of a non-negative column is never shown below 0."""

from __future__ import annotations

import pytest

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.epoch_cache import TagCache
from fedtrace import dp
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import InMemoryFederation, eth, full_policy

# Homomorphic encryption end to end: the slow tier.
pytestmark = pytest.mark.slow

# The sensitivity of tx_count under the grant's clip [0, 100000]: it tells its noise apart.
TX_COUNT_SENSITIVITY = 100_000


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    """One node, EE, whose aggregate grant to DE adds noise (tx_count clipped to [0, 100000])."""
    memory = InMemoryFederation.create(tmp_path_factory.mktemp("aggregate-clamp"))
    policy = full_policy("EE").replace(
        'noise = "off"',
        'noise = "on"\nepsilon_budget = { epsilon = 10.0, per = "30d" }\nepsilon_lifetime = 40.0',
    )
    assert 'noise = "on"' in policy
    memory.add_node("EE", policy, {eth(n) for n in range(1, 601)})
    return memory


def test_a_tx_count_pushed_below_zero_by_noise_is_shown_as_0_and_clamped(
    noisy: InMemoryFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    def noise(spec: dp.NoiseSpec) -> int:
        """No noise, except far below zero on tx_count."""
        return -10_000_000 if spec.sensitivity == TX_COUNT_SENSITIVITY else 0

    monkeypatch.setattr(dp, "sample_noise", noise)
    outcome = run_aggregate(
        noisy.federation("DE"),
        AggregateQuery(
            dataset="wallets",
            case_ref="AGG-CLAMP",
            legal_basis="MLA",
            items=tuple(eth(n) for n in range(1, 21)),
            investigator="DE",
            columns=("total_in_eur", "tx_count"),
        ),
        noisy.connections("DE"),
        noisy.ca_pem,
        cache=TagCache(None),
    )
    [result] = outcome.results
    assert result.result.status == NodeStatus.OK, result.result.reason
    figures = result.figures or {}
    tx_count = figures["tx_count"]
    assert tx_count.non_negative and tx_count.value < 0
    assert tx_count.amount() == 0 and tx_count.clamped
    assert tx_count.interval_95()[0] == 0
    count = figures[COUNT_COLUMN]
    assert count.non_negative and count.amount() == 20 and not count.clamped
    assert figures["total_in_eur"].non_negative and not figures["total_in_eur"].clamped
