"""DP noise: OpenDP's discrete Laplace at the declared scale."""

from __future__ import annotations

import math
import statistics

from fedtrace import dp


def test_noise_off_is_zero() -> None:
    spec = dp.noise_spec(100, 1.0, noise=False)
    assert dp.sample_noise(spec) == 0 and spec.half_width_95 == 0


def test_scale_and_certified_epsilon() -> None:
    spec = dp.noise_spec(dp.sensitivity(0, 500), 0.5)
    assert spec.scale == 1000
    assert math.isclose(dp.privacy_loss(spec), 0.5, rel_tol=1e-6)


def test_spread_matches_scale() -> None:
    spec = dp.noise_spec(10, 1.0)
    draws = [dp.sample_noise(spec) for _ in range(4000)]
    rho = math.exp(-1 / spec.scale)
    expected_sd = math.sqrt(2 * rho) / (1 - rho)
    assert abs(statistics.fmean(draws)) < 5 * expected_sd / math.sqrt(len(draws))
    assert 0.85 < statistics.pstdev(draws) / expected_sd < 1.15
    inside = sum(abs(d) <= spec.half_width_95 for d in draws) / len(draws)
    assert 0.93 < inside < 0.97


def test_sensitivity_covers_substitution_and_add_remove() -> None:
    assert dp.sensitivity(-1000, 1000) == 2000  # substitution: hi - lo
    assert dp.sensitivity(100, 1000) == 1000  # add/remove: max(|lo|, |hi|)
    assert dp.sensitivity(-300, -100) == 300
    assert dp.sensitivity(0, 0) == 1
