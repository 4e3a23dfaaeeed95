"""HE wrapper: exactness near the plaintext bound, no secret in the public context."""

from __future__ import annotations

import random

import pytest

from fedtrace import he

#: A flooded answer keeps about 2^-8 of invariant noise headroom (he.FLOOD_HEADROOM_BITS);
#: before flooding, answers kept about 30 bits, and these tests asked for 25.
FLOODED_BUDGET_BITS = he.FLOOD_HEADROOM_BITS - 2


@pytest.fixture(scope="module")
def secret() -> he.SecretHeContext:
    return he.SecretHeContext.generate()


def test_plain_modulus_supports_batching_and_range() -> None:
    assert (he.PLAIN_MODULUS - 1) % (2 * he.POLY_MODULUS_DEGREE) == 0
    assert he.PLAIN_MODULUS // 2 > 10**16


def test_exact_sum_near_bound(secret: he.SecretHeContext) -> None:
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    rows = he.SLOT_COUNT + 123  # not a multiple of the slot count
    bits = [1] * rows
    column = [10**15 // rows + random.randrange(2) for _ in range(rows)]
    answer = public.masked_dot(
        public.load_indicators(secret.encrypt_indicator(bits)), column, [0] * he.SLOT_COUNT
    )
    assert secret.decrypt_sum(answer) == sum(column) >= 10**15 - rows
    assert secret.noise_budget(answer) >= FLOODED_BUDGET_BITS


def test_public_context_cannot_decrypt(secret: he.SecretHeContext) -> None:
    blob = secret.public_bytes()
    public = he.PublicHeContext.from_bytes(blob)
    assert not hasattr(public, "decrypt_sum") and not hasattr(public, "_secret_key")
    other = he.SecretHeContext.generate()
    answer = public.masked_dot(
        public.load_indicators(secret.encrypt_indicator([1, 1])), [5, 7], [0] * he.SLOT_COUNT
    )
    assert secret.decrypt_sum(answer) == 12
    with pytest.raises(he.HeError):
        other.decrypt_sum(answer)  # another key: garbage, detected by the noise budget


def test_rejects_malformed_context() -> None:
    with pytest.raises(he.HeError):
        he.PublicHeContext.from_bytes(b"nonsense")
    with pytest.raises(he.HeError):
        he.PublicHeContext.from_bytes(b"\x00" * (he.MAX_PUBLIC_CONTEXT_BYTES + 1))


def test_answer_switched_to_lowest_level_and_smaller(secret: he.SecretHeContext) -> None:
    """Answers leave at 2 primes (the last level SEAL keeps above t) , flooded."""
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    batch = public.load_indicators(secret.encrypt_indicator([1, 0, 1]))
    answer = public.masked_dot(batch, [3, 4, 5], [0] * he.SLOT_COUNT)
    assert he.ANSWER_PRIMES == 2 and secret.primes(answer) == 2
    # A 2-prime answer is at most its raw size (flooded, so zstd gains nothing).
    assert len(answer) <= 2 * he.SLOT_COUNT * 2 * 8 + 256 < 600_000
    assert secret.decrypt_sum(answer) == 8
    assert secret.noise_budget(answer) >= FLOODED_BUDGET_BITS


@pytest.mark.parametrize("sign", [1, -1])
def test_exact_at_the_bound_after_switching(secret: he.SecretHeContext, sign: int) -> None:
    """±10^15 cents (and the node's largest exact range) decrypt exactly at the answer level."""
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    rows = 3 * he.SLOT_COUNT + 7
    bits = [1] * rows
    column = [sign * (10**15 // rows)] * rows
    column[-1] += sign * (10**15 - sum(abs(v) for v in column))
    mask = [random.randrange(he.PLAIN_MODULUS) for _ in range(he.SLOT_COUNT)]
    offset = sign * (he.PLAIN_MODULUS // 4) - sum(column)  # top of node.aggregate.EXACT_LIMIT
    mask[0] = (mask[0] + offset - sum(mask)) % he.PLAIN_MODULUS
    answer = public.masked_dot(public.load_indicators(secret.encrypt_indicator(bits)), column, mask)
    assert sum(column) == sign * 10**15
    assert secret.primes(answer) == he.ANSWER_PRIMES
    assert secret.decrypt_sum(answer) == sign * (he.PLAIN_MODULUS // 4)
    assert secret.noise_budget(answer) >= FLOODED_BUDGET_BITS


def test_exact_on_random_data_after_switching(secret: he.SecretHeContext) -> None:
    """Random indicators, columns up to 10^12 cents each and random masks: every slot exact."""
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    rng = random.Random(20260105)
    rows = 2 * he.SLOT_COUNT + 999
    bits = [rng.randrange(2) for _ in range(rows)]
    column = [rng.randrange(-(10**12), 10**12) for _ in range(rows)]
    mask = [rng.randrange(he.PLAIN_MODULUS) for _ in range(he.SLOT_COUNT)]
    answer = public.masked_dot(public.load_indicators(secret.encrypt_indicator(bits)), column, mask)
    expected = [mask[slot] for slot in range(he.SLOT_COUNT)]
    for row, (bit, value) in enumerate(zip(bits, column, strict=True)):
        expected[row % he.SLOT_COUNT] += bit * value
    assert secret.decrypt_slots(answer) == [v % he.PLAIN_MODULUS for v in expected]
    assert secret.noise_budget(answer) >= FLOODED_BUDGET_BITS
