"""Node-side aggregate domain: table order, figure plans, noise spread, pending queries."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal

import pytest

from coordinator.figures import Figure, sum_figures
from fedtrace import dp, group
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.he import PLAIN_MODULUS
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import Level
from node.aggregate import (
    AggregateTable,
    AggregateUnavailable,
    PendingAggregate,
    PendingQueries,
    figure_values,
    plan_figures,
)
from node.policy import Grant
from node.table_order import ordered_table, table_order


def _grant(
    noise: bool = True,
    clip: tuple[tuple[str, float, float], ...] = (
        ("total_in_eur", 0.5, 1000.25),
        ("tx_count", 0, 50),
    ),
) -> Grant:
    return Grant(
        partners=("FR",),
        datasets=("wallets",),
        disclosure=Level.AGGREGATE,
        max_items_per_query=100,
        aggregate_columns=("total_in_eur", "tx_count"),
        clip=clip,
        noise=noise,
        epsilon_per_query=1.0,
    )


def _table(rows: int = 4) -> AggregateTable:
    columns = {"total_in_eur": [0, 10, 200_000, -7][:rows], "tx_count": [1, 99, 3, 4][:rows]}
    return AggregateTable(
        "wallets",
        "e1",
        rows,
        b"\0" * 8 * rows,
        b"",
        {"total_in_eur": 2, "tx_count": 0},
        columns,
        {k: sum(abs(v) for v in c) for k, c in columns.items()},
    )


def test_table_order_is_a_secret_permutation_recomputable_from_the_key() -> None:
    key = group.random_scalar()
    order = table_order(1000, key)
    assert sorted(order) == list(range(1000))
    assert table_order(1000, key) == order
    assert table_order(1000, group.random_scalar()) != order
    items = [f"wallet:{i}".encode() for i in range(50)]
    table = ordered_table(items, key, workers=1)
    blinded = group.blind_items(items, key, workers=1)
    assert table == [blinded[i] for i in table_order(50, key)]


def test_plan_splits_epsilon_and_clips_in_cents() -> None:
    plans = plan_figures(_grant(), _table(), ["total_in_eur", "tx_count"], 1.5)
    assert [p.figure for p in plans] == [COUNT_COLUMN, "total_in_eur", "tx_count"]
    count, money, txs = plans
    assert count.noise.scale == pytest.approx(1 / 0.5) and count.noise.sensitivity == 1
    assert money.bounds == (50, 100_025) and money.decimals == 2
    assert money.noise.scale == pytest.approx(100_025 / 0.5)
    assert txs.bounds == (0, 50) and txs.noise.scale == pytest.approx(100.0)
    values = figure_values(_table(), plans)
    assert values == {
        COUNT_COLUMN: [1, 1, 1, 1],
        "total_in_eur": [50, 50, 100_025, 50],
        "tx_count": [1, 50, 3, 4],
    }


def test_noise_off_keeps_values_exact_and_unnoised() -> None:
    plans = plan_figures(_grant(noise=False, clip=()), _table(), ["total_in_eur"], 0.0)
    assert all(p.noise.scale == 0 and not p.noise.enabled for p in plans)
    assert figure_values(_table(), plans)["total_in_eur"] == [0, 10, 200_000, -7]


def test_clip_bounds_beyond_the_exact_range_are_refused() -> None:
    huge = (("total_in_eur", 0, 1e16), ("tx_count", 0, 1))
    with pytest.raises(
        AggregateUnavailable, match=r"column 'total_in_eur' could sum beyond the exact range"
    ):
        plan_figures(_grant(noise=False, clip=huge), _table(), ["total_in_eur"], 0.0)
    with pytest.raises(AggregateUnavailable, match=r"noise scale 2e\+18 is too large"):
        plan_figures(_grant(clip=huge), _table(), ["total_in_eur"], 1.0)


def test_noise_spread_matches_the_declared_scale() -> None:
    plans = plan_figures(_grant(), _table(), ["tx_count"], 1.0)  # count: scale 2, txs: 100
    for plan in plans:
        draws = [dp.sample_noise(plan.noise) for _ in range(3000)]
        rho = math.exp(-1 / plan.noise.scale)
        expected_sd = math.sqrt(2 * rho / (1 - rho) ** 2)
        assert statistics.pstdev(draws) == pytest.approx(expected_sd, rel=0.12)
        inside = sum(abs(d) <= plan.noise.half_width_95 for d in draws) / len(draws)
        assert 0.93 <= inside <= 0.975


def test_masked_per_node_figures_sum_to_the_total() -> None:
    summary = aggregate_pb2.AggregateSummary(
        noise=[
            aggregate_pb2.FigureNoise(figure=COUNT_COLUMN, scale=0, half_width_95=0),
            aggregate_pb2.FigureNoise(figure="total_in_eur", scale=0, half_width_95=0, decimals=2),
        ]
    )
    mask = 123456789123
    a = {COUNT_COLUMN: (5 + mask) % PLAIN_MODULUS, "total_in_eur": (1050 - mask) % PLAIN_MODULUS}
    b = {COUNT_COLUMN: (7 - mask) % PLAIN_MODULUS, "total_in_eur": (25 + mask) % PLAIN_MODULUS}
    total = sum_figures([(summary, a), (summary, b)])
    assert total[COUNT_COLUMN] == Figure(12, 0, 0.0, 0, non_negative=True)  # a count
    assert total["total_in_eur"].amount() == float(Decimal("10.75"))


def test_pending_query_answers_once_and_expires() -> None:
    pending = PendingQueries(seconds=60)
    query = PendingAggregate(
        b"q" * 16, "fp", _table(), [], 0.0, False, 1, 3, "", "", "r", "FR", "C", "", "", 0, "v1"
    )
    pending.put(query)
    assert pending.take(b"q" * 16) is query
    assert pending.take(b"q" * 16) is None
    stale = PendingQueries(seconds=-1)
    stale.put(query)
    assert stale.take(b"q" * 16) is None
