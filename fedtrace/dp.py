"""Differential-privacy noise for aggregate answers, drawn by OpenDP's discrete Laplace.

A node adds integer noise to each encrypted column total before the
investigator can decrypt it. The mechanism is OpenDP's ``make_laplace`` over
64-bit integers, which samples the discrete Laplace (two-sided geometric)
distribution exactly with a cryptographic RNG; numpy's RNG is never used.

The scale is ``sensitivity / epsilon``. One record changes a clipped column sum
by at most ``hi − lo`` when its value is substituted (any value in the clip range
for any other) and by ``max(|lo|, |hi|)`` when it is added or removed, so the
sensitivity is the larger of the two; the match count's is 1.
``NoiseSpec`` also carries the 95% half-width for reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

dp.enable_features("contrib")

#: Beyond this scale a 64-bit noise draw could overflow the plaintext range.
MAX_SCALE = 1e15


@dataclass(frozen=True)
class NoiseSpec:
    """How one figure is noised: ``scale`` 0 means no noise (a grant with ``noise = "off"``)."""

    sensitivity: int
    epsilon: float
    scale: float
    half_width_95: int

    @property
    def enabled(self) -> bool:
        return self.scale > 0


def sensitivity(lo: int, hi: int) -> int:
    """Largest change one record makes to a sum clipped to ``[lo, hi]``.

    ``hi − lo`` covers substituting one record's value by any other (it is what
    ``[−1000, 1000]`` really allows: 2000, not 1000); ``max(|lo|, |hi|)`` covers adding
    or removing one record, which exceeds ``hi − lo`` when both bounds share a sign.
    """
    if lo > hi:
        raise ValueError(f"clip bounds are reversed: [{lo}, {hi}]")
    return max(hi - lo, abs(lo), abs(hi), 1)


def half_width_95(scale: float) -> int:
    """Smallest k with P(|Z| > k) <= 0.05 for discrete Laplace noise of this scale."""
    if scale <= 0:
        return 0
    rho = math.exp(-1.0 / scale)
    # P(|Z| >= j) = 2 rho^j / (1 + rho) for j >= 1, so we need j = k + 1 with that <= 0.05.
    j = math.ceil(math.log(0.05 * (1 + rho) / 2) / math.log(rho))
    return max(j - 1, 0)


def noise_spec(sensitivity_: int, epsilon: float, *, noise: bool = True) -> NoiseSpec:
    """The discrete Laplace scale for ``epsilon``-DP on a figure of this sensitivity."""
    if sensitivity_ < 1:
        raise ValueError(f"sensitivity must be a positive integer, got {sensitivity_}")
    if not noise:
        return NoiseSpec(sensitivity_, math.inf, 0.0, 0)
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon}")
    scale = sensitivity_ / epsilon
    if scale > MAX_SCALE:
        raise ValueError(f"noise scale {scale:.3g} is too large for exact integer sums")
    return NoiseSpec(sensitivity_, epsilon, scale, half_width_95(scale))


def _mechanism(scale: float) -> Any:
    return dp.m.make_laplace(
        dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=float(scale)
    )


def sample_noise(spec: NoiseSpec) -> int:
    """One noise draw for ``spec`` (0 when noise is off), from OpenDP's secure sampler."""
    if not spec.enabled:
        return 0
    mechanism = _mechanism(spec.scale)
    # The mechanism releases 0 + Z; the node adds Z under encryption, never seeing the sum.
    value = mechanism(0)
    if not isinstance(value, int):
        raise TypeError(f"OpenDP returned {type(value).__name__}, expected int")
    return value


def privacy_loss(spec: NoiseSpec) -> float:
    """The epsilon OpenDP itself certifies for ``spec`` (a cross-check of ``noise_spec``)."""
    if not spec.enabled:
        return math.inf
    return float(_mechanism(spec.scale).map(spec.sensitivity))
