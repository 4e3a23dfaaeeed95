"""Aggregate figures: decrypted noisy sums, per node and for the federation total.

`Figure` is one decrypted figure with its noise terms; `sum_figures` adds masked
per-node figures into the federation total (the masks cancel modulo the plaintext
modulus) and derives the total's noise terms from every node's. `report verify`
uses the same function to re-derive the terms a report's total must show.

A figure that cannot be negative — the match count, and the sum of a column the
node clips to bounds with lo ≥ 0 — is shown clamped at 0 and its 95 % interval
cut at 0: post-processing of a differentially private value costs no privacy,
and the cut interval still holds the true value with at least 95 % probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from coordinator.results import NodeResult
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.he import PLAIN_MODULUS, signed
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import NodeStatus


@dataclass(frozen=True)
class Figure:
    """One decrypted figure: its noisy value in the smallest unit and how it was noised."""

    value: int
    decimals: int
    scale: float
    half_width_95: int
    non_negative: bool = False  # a count, or a sum of a column clipped to lo >= 0

    @property
    def shown(self) -> int:
        """The value as reported: clamped at 0 when the figure cannot be negative."""
        return max(self.value, 0) if self.non_negative else self.value

    @property
    def clamped(self) -> bool:
        """The noise took this non-negative figure below 0, and it is shown as 0."""
        return self.shown != self.value

    def amount(self) -> int | float:
        """The shown value in the column's unit: an integer, or euros with their cents."""
        if self.decimals == 0:
            return self.shown
        return float(Decimal(self.shown).scaleb(-self.decimals))

    def interval_95(self) -> list[int | float]:
        """The shown value ± the noise's 95 % half-width (cut at 0 for a non-negative figure)."""
        low, high = self.shown - self.half_width_95, self.shown + self.half_width_95
        if self.non_negative:
            low = max(low, 0)
        if self.decimals == 0:
            return [low, high]
        return [
            float(Decimal(low).scaleb(-self.decimals)),
            float(Decimal(high).scaleb(-self.decimals)),
        ]


@dataclass
class AggregateResult:
    """A node's result: the match result fields plus its figures (none for total-only)."""

    result: NodeResult
    min_cohort: int = 0
    figures: dict[str, Figure] | None = None

    @property
    def withheld(self) -> bool:
        count = (self.figures or {}).get(COUNT_COLUMN)
        return count is not None and count.shown < self.min_cohort


@dataclass
class FederationTotal:
    status: NodeStatus
    nodes: list[str] = field(default_factory=list)
    reason: str = ""
    min_cohort: int = 0
    figures: dict[str, Figure] | None = None

    @property
    def withheld(self) -> bool:
        count = (self.figures or {}).get(COUNT_COLUMN)
        return count is not None and count.shown < self.min_cohort


@dataclass
class AggregateOutcome:
    results: list[AggregateResult]
    total: FederationTotal | None = None


def non_negative(noise: aggregate_pb2.FigureNoise) -> bool:
    """Whether a figure cannot be negative: the count, or a column the node says is clipped
    at lo >= 0 (FigureNoise.non_negative; unset, a column is not assumed so)."""
    return noise.figure == COUNT_COLUMN or noise.non_negative


def node_figures(
    summary: aggregate_pb2.AggregateSummary, values: dict[str, int]
) -> dict[str, Figure]:
    return {
        n.figure: Figure(values[n.figure], n.decimals, n.scale, n.half_width_95, non_negative(n))
        for n in summary.noise
    }


def _variance(scale: float) -> float:
    """Variance of the discrete Laplace distribution of this scale (0 for no noise)."""
    if scale <= 0:
        return 0.0
    rho = math.exp(-1.0 / scale)
    return 2 * rho / (1 - rho) ** 2


def sum_figures(
    per_node: Sequence[tuple[aggregate_pb2.AggregateSummary, dict[str, int]]],
) -> dict[str, Figure]:
    """The federation total of masked per-node figures: the masks cancel mod t.

    The noise of the total is the sum of every node's independent noise; its 95%
    half-width is the normal approximation 1.96·sqrt(Σ variances), exact when
    one node is noisy (its own half-width) and 0 when none is.
    """
    first = per_node[0][0]
    out: dict[str, Figure] = {}
    for n in first.noise:
        total = signed(sum(values[n.figure] for _, values in per_node) % PLAIN_MODULUS)
        scales = [next(x.scale for x in s.noise if x.figure == n.figure) for s, _ in per_node]
        widths = [
            next(x.half_width_95 for x in s.noise if x.figure == n.figure) for s, _ in per_node
        ]
        noisy = [w for s, w in zip(scales, widths, strict=True) if s > 0]
        if len(noisy) <= 1:
            width = noisy[0] if noisy else 0
        else:
            width = math.ceil(1.96 * math.sqrt(sum(_variance(s) for s in scales)))
        scale = math.sqrt(sum(_variance(s) for s in scales) / 2)  # the equivalent single scale
        floor = all(
            non_negative(next(x for x in s.noise if x.figure == n.figure)) for s, _ in per_node
        )
        out[n.figure] = Figure(total, n.decimals, round(scale, 6), width, floor)
    return out
