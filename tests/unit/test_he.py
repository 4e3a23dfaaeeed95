"""HE wrapper: exactness near the plaintext bound, no secret in the public context."""

from __future__ import annotations

import random

import pytest

from fedtrace import he


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
    answer = public.masked_dot(public.load_indicators(secret.encrypt_indicator(bits)), column,
                               [0] * he.SLOT_COUNT)
    assert secret.decrypt_sum(answer) == sum(column) >= 10**15 - rows
    assert secret.noise_budget(answer) > 10


def test_public_context_cannot_decrypt(secret: he.SecretHeContext) -> None:
    blob = secret.public_bytes()
    public = he.PublicHeContext.from_bytes(blob)
    assert not hasattr(public, "decrypt_sum") and not hasattr(public, "_secret_key")
    other = he.SecretHeContext.generate()
    answer = public.masked_dot(public.load_indicators(secret.encrypt_indicator([1, 1])), [5, 7],
                               [0] * he.SLOT_COUNT)
    assert secret.decrypt_sum(answer) == 12
    with pytest.raises(he.HeError):
        other.decrypt_sum(answer)  # another key: garbage, detected by the noise budget


def test_rejects_malformed_context() -> None:
    with pytest.raises(he.HeError):
        he.PublicHeContext.from_bytes(b"nonsense")
    with pytest.raises(he.HeError):
        he.PublicHeContext.from_bytes(b"\x00" * (he.MAX_PUBLIC_CONTEXT_BYTES + 1))
