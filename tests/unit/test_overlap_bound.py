"""The k²·N bound the overlap benchmarks report their times against."""

from __future__ import annotations

import os

from fedtrace.bench.overlap import (
    MultiplicationBound,
    multiplication_bound,
    single_core_multiply_rate,
)
from fedtrace.bench.overlap_federation import process_cpu_seconds


def test_the_bound_is_every_multiplication_on_every_core() -> None:
    bound = MultiplicationBound(nodes=3, items_per_node=1_000_000, cores=2, single_core_rate=25_000)
    assert bound.multiplications == 9_000_000
    assert bound.seconds == 180.0
    assert bound.cpu_seconds == 360.0
    figures = bound.figures(270.0)
    assert figures["bound_seconds"] == 180.0 and figures["ratio_to_bound"] == 1.5


def test_the_fastest_rate_sample_sets_the_bound() -> None:
    assert multiplication_bound(3, 10, [10_000.0, 12_000.0, 11_000.0]).single_core_rate == 12_000.0
    assert single_core_multiply_rate(200) > 0


def test_cpu_seconds_of_a_process_tree_include_itself() -> None:
    own, tree = process_cpu_seconds(os.getpid())
    assert 0 < own <= tree
