"""The flooding margin of ``fedtrace.he``'s answers: an analytic bound and a measurement.

``fedtrace.he`` floods every answer with noise uniform in ``[-FLOOD_BOUND,
FLOOD_BOUND]``. The smudging lemma needs that bound to exceed the computation
noise by ``REQUIRED_MARGIN_BITS`` = 40 + log2 N bits. ``worst_case_margin_bits``
proves it from SEAL's invariant-noise lemmas; ``measure_margin`` measures it with
the investigator's secret key (tests and benchmarks only). See
docs/aggregates.md, "Circuit privacy".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedtrace.he import (
    DATA_MODULUS,
    DATA_PRIMES,
    FLOOD_BOUND,
    FRESH_ERROR_BOUND,
    PLAIN_MODULUS,
    POLY_MODULUS_DEGREE,
    REQUIRED_MARGIN_BITS,
    SLOT_COUNT,
    IndicatorBatch,
    PublicHeContext,
    SecretHeContext,
)


def worst_case_noise_bits(chunks: int) -> float:
    """log2 of a bound on the invariant noise of an unflooded answer over ``chunks`` chunks.

    Bounds in the infinity norm with expansion factor N (SEAL's invariant-noise
    lemmas): a fresh symmetric ciphertext has v0 ≤ t·(21 + 1/2)/q; squaring gives
    ≤ 2·(N·t/2)·v0 + N·v0² + t·N·(N+3)·v0 + t·(1+N+N²)/(2q); relinearisation adds
    ≤ t·(k·N·21/2 + (N+1)/2)/q (k data primes, special prime ≥ each q_j);
    subtracting the indicator adds v0; each plaintext product multiplies by at
    most N·t/2; chunks add; the slot mask's rounding adds t/(2q). The flood's own
    encryption of zero brings e·u + e1 + e2·s ≤ t·21·(2N+1)/q, smudged along with the rest.
    """
    n, t, q = POLY_MODULUS_DEGREE, PLAIN_MODULUS, DATA_MODULUS
    v0 = t * (FRESH_ERROR_BOUND + 0.5) / q
    square = (
        2 * (n * t / 2) * v0 + n * v0 * v0 + t * n * (n + 3) * v0 + t * (1 + n + n * n) / (2 * q)
    )
    relin = t * (len(DATA_PRIMES) * n * FRESH_ERROR_BOUND / 2 + (n + 1) / 2) / q
    defect = square + relin + v0
    per_chunk = (n * t / 2) * defect + (n * t / 2) * v0
    public_zero = t * FRESH_ERROR_BOUND * (2 * n + 1) / q
    return math.log2(chunks * per_chunk + t / (2 * q) + public_zero)


def worst_case_margin_bits(chunks: int) -> float:
    """log2(flood bound / worst-case computation noise), both in absolute coefficient terms."""
    return math.log2(PLAIN_MODULUS * FLOOD_BOUND / DATA_MODULUS) - worst_case_noise_bits(chunks)


@dataclass(frozen=True)
class FloodMargin:
    """A measured flooding margin (budgets are SEAL invariant noise budgets, in bits)."""

    chunks: int
    computation_budget_bits: int  # the unflooded answer: noise ≈ q/(2t)·2^-budget
    flood_budget_bits: int  # the flood term alone
    answer_budget_bits: int  # the flooded answer at ``ANSWER_PRIMES`` primes (> 0: decrypts)
    worst_case_margin_bits: float  # against the analytic bound, ``worst_case_margin_bits``
    required_margin_bits: int = REQUIRED_MARGIN_BITS

    @property
    def measured_margin_bits(self) -> int:
        """log2(flood noise / computation noise), to within a bit (budgets are floored)."""
        return self.computation_budget_bits - self.flood_budget_bits


def measure_margin(
    secret: SecretHeContext,
    public: PublicHeContext,
    batch: IndicatorBatch,
    column: Sequence[int],
) -> FloodMargin:
    """Measure the flood against the computation noise of one answer (needs the secret key).

    Evaluates the answer without the flood, the flood alone and the full
    answer, and reads each one's invariant noise budget; the difference of the
    first two is log2(flood / computation noise) to within a bit.
    """
    unflooded = public.evaluate_unflooded(batch, column)
    flood = public.flood_term()
    answer = public.masked_dot(batch, column, [0] * SLOT_COUNT)
    return FloodMargin(
        chunks=len(batch),
        computation_budget_bits=secret.budget_of(unflooded),
        flood_budget_bits=secret.budget_of(flood),
        answer_budget_bits=secret.noise_budget(answer),
        worst_case_margin_bits=worst_case_margin_bits(len(batch)),
    )
