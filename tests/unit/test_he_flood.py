"""Circuit-private aggregates (`fedtrace.he`, margin in `fedtrace.he_flood`): exactness, indicator
check, flood margin."""

from __future__ import annotations

import secrets

import pytest

# Seconds of lattice arithmetic per test: the slow tier.
pytestmark = pytest.mark.slow

pytest.importorskip("tenseal.sealapi", reason="TenSEAL's SEAL bindings are not importable")

from fedtrace.he import (  # noqa: E402
    ANSWER_PRIMES,
    MAX_CHUNKS,
    PLAIN_MODULUS,
    REQUIRED_MARGIN_BITS,
    SLOT_COUNT,
    HeError,
    PublicHeContext,
    SecretHeContext,
    signed,
    uniform_residues,
)
from fedtrace.he_flood import measure_margin, worst_case_margin_bits  # noqa: E402

_rng = secrets.SystemRandom()


@pytest.fixture(scope="module")
def keys() -> tuple[SecretHeContext, PublicHeContext]:
    secret = SecretHeContext.generate()
    return secret, PublicHeContext.from_bytes(secret.public_bytes())  # through bytes


def _mask(total: int) -> list[int]:
    mask = [secrets.randbelow(PLAIN_MODULUS) for _ in range(SLOT_COUNT - 1)]
    return [*mask, (total - sum(mask)) % PLAIN_MODULUS]


def _chi_square_uniform(residues: list[int], bins: int = 16) -> float:
    counts = [0] * bins
    for value in residues:
        counts[value * bins // PLAIN_MODULUS] += 1
    expected = len(residues) / bins
    return sum((c - expected) ** 2 / expected for c in counts)


def test_honest_indicator_gives_the_exact_dot_product(keys) -> None:
    secret, public = keys
    rows = SLOT_COUNT + 3000  # two chunks, the second one mostly padding
    bits = [0] * rows
    for row in _rng.sample(range(rows), 500):
        bits[row] = 1
    column = [_rng.randint(-(10**12), 10**12) for _ in range(rows)]
    column[rows - 1], bits[rows - 1] = 10**15, 1  # one large transfer, in cents
    noise = -12345
    batch = public.load_indicators(secret.encrypt_indicator(bits))
    answer = public.masked_dot(batch, column, _mask(noise))
    assert secret.primes(answer) == ANSWER_PRIMES
    assert (
        secret.decrypt_sum(answer) == sum(b * v for b, v in zip(bits, column, strict=True)) + noise
    )


def test_uniform_residues_cover_the_plaintext_space() -> None:
    sample = uniform_residues(4096)
    assert len(sample) == 4096 and all(0 <= r < PLAIN_MODULUS for r in sample)
    assert _chi_square_uniform(sample) < 60


def test_indicator_must_be_zero_or_one_for_the_investigator(keys) -> None:
    secret, _ = keys
    with pytest.raises(ValueError):
        secret.encrypt_indicator([0, 1, 2])


@pytest.mark.parametrize("weight", [2, 2**29])
def test_weighted_slots_contribute_uniform_residues(keys, weight: int) -> None:
    """A cheating investigator's weighted slots decrypt to uniform residues, honest ones do not."""
    secret, public = keys
    weighted = set(_rng.sample(range(SLOT_COUNT), 2048))
    ones = set(_rng.sample(sorted(set(range(SLOT_COUNT)) - weighted), 100))
    values = [weight if s in weighted else 1 if s in ones else 0 for s in range(SLOT_COUNT)]
    column = [_rng.randint(1, 10**12) for _ in range(SLOT_COUNT)]
    batch = public.load_indicators(secret.encrypt_slots(values))  # bypasses the 0/1 check
    slots = secret.decrypt_slots(public.masked_dot(batch, column, [0] * SLOT_COUNT))
    for s in ones:
        assert slots[s] == column[s]
    for s in set(range(SLOT_COUNT)) - weighted - ones:
        assert slots[s] == 0
    sample = [slots[s] for s in sorted(weighted)]
    assert all(slots[s] != weight * column[s] % PLAIN_MODULUS for s in weighted)
    assert len(set(sample)) == len(sample)
    # 16 bins, 15 degrees of freedom: P(chi² > 60) < 10^-6 for uniform residues.
    assert _chi_square_uniform(sample) < 60


def test_a_single_weighted_row_randomises_the_sum(keys) -> None:
    """Weight 2^29 on one row: the sum no longer reveals that row's value, run after run."""
    secret, public = keys
    rows = 5000
    target = _rng.randrange(rows)
    column = [_rng.randint(1, 10**9) for _ in range(rows)]
    honest = [1 if row % 7 == 0 else 0 for row in range(rows)]
    honest[target] = 0
    values = list(honest)
    values[target] = 2**29
    rest = sum(b * v for b, v in zip(honest, column, strict=True))
    batch = public.load_indicators(secret.encrypt_slots(values))
    contributions = [
        (secret.decrypt_sum(public.masked_dot(batch, column, _mask(0))) - rest) % PLAIN_MODULUS
        for _ in range(8)
    ]
    assert len(set(contributions)) == len(contributions)
    assert 2**29 * column[target] % PLAIN_MODULUS not in contributions
    # Eight uniform residues: their mean lies in (t/8, 7t/8) except with probability < 10^-4.
    assert PLAIN_MODULUS / 8 < sum(contributions) / len(contributions) < 7 * PLAIN_MODULUS / 8


def test_flood_margin_is_measured_above_the_requirement(keys) -> None:
    secret, public = keys
    rows = 2 * SLOT_COUNT
    bits = [_rng.randrange(2) for _ in range(rows)]
    column = [_rng.randint(-(10**12), 10**12) for _ in range(rows)]
    margin = measure_margin(
        secret, public, public.load_indicators(secret.encrypt_indicator(bits)), column
    )
    print(margin, "measured margin", margin.measured_margin_bits)
    assert REQUIRED_MARGIN_BITS == 40 + 14
    assert margin.measured_margin_bits >= REQUIRED_MARGIN_BITS
    assert margin.worst_case_margin_bits >= REQUIRED_MARGIN_BITS
    assert margin.answer_budget_bits > 0  # the flooded answer still decrypts
    assert worst_case_margin_bits(MAX_CHUNKS) >= REQUIRED_MARGIN_BITS


def test_serialisation_round_trip(keys) -> None:
    secret, public = keys
    blob = secret.public_bytes()
    again = PublicHeContext.from_bytes(blob)
    assert again.serialize() == blob == public.serialize()
    assert "secret" not in repr(again).lower()
    for broken in (blob[:-1], b"XXXX" + blob[4:], blob + b"\x00", blob[:40]):
        with pytest.raises(HeError):
            PublicHeContext.from_bytes(broken)
    indicators = secret.encrypt_indicator([1, 0, 1])
    answer = again.masked_dot(again.load_indicators(indicators), [5, 7, 11], _mask(0))
    assert signed(secret.decrypt_sum(bytes(answer))) == 16
    with pytest.raises(HeError):  # an answer is not a fresh indicator
        again.load_indicators([answer])
    with pytest.raises(HeError):
        again.load_indicators([b"not a ciphertext"])
