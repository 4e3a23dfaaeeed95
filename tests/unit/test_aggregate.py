"""Aggregate protocol: positions from tags, exact sums, slot masks, pairwise masks."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrace import aggregate, he, psi


@pytest.fixture(scope="module")
def secret() -> he.SecretHeContext:
    return he.SecretHeContext.generate()


def test_positions_from_shuffled_answer() -> None:
    node_items = [f"w{i}".encode() for i in range(300)]
    watch = [f"w{i}".encode() for i in range(250, 400)]
    key = psi.group.random_scalar()
    table = psi.build_table(node_items, key, workers=1)
    query = psi.BlindedQuery(watch, workers=1)
    unblinded = query.unblind(psi.shuffled(psi.evaluate(query.blinded, key, workers=1)))
    positions = aggregate.match_positions(aggregate.position_tags(table), unblinded)
    assert len(positions) == 50
    expected = {psi.group.blind_items([x], key, workers=1)[0] for x in watch[:50]}
    assert {table[p] for p in positions} == expected


@pytest.mark.parametrize("rows", [0, 1000, he.SLOT_COUNT + 7])
def test_exact_sums_against_oracle(secret: he.SecretHeContext, rows: int) -> None:
    rng = random.Random(rows)
    positions = sorted(rng.sample(range(rows), rows // 5)) if rows else []
    columns = {
        aggregate.COUNT_COLUMN: [1] * rows,
        "total_in_eur": aggregate.clip(
            [rng.randrange(-10, 10**11) for _ in range(rows)], 0, 10**11
        ),
    }
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    cts = secret.encrypt_indicator(aggregate.indicator(rows, positions))
    answers = aggregate.node_aggregate(public, cts, columns, {})
    totals = aggregate.decrypt_aggregate(secret, answers)
    for name, values in columns.items():
        assert totals[name] == sum(values[p] for p in positions)


def test_noise_and_slots_masked(secret: he.SecretHeContext) -> None:
    rows = 500
    positions = list(range(0, rows, 3))
    column = [1000 + i for i in range(rows)]
    public = he.PublicHeContext.from_bytes(secret.public_bytes())
    cts = secret.encrypt_indicator(aggregate.indicator(rows, positions))
    answer = aggregate.node_aggregate(public, cts, {"c": column}, {"c": -17}, {"c": 5})["c"]
    assert secret.decrypt_sum(answer) == sum(column[p] for p in positions) - 12
    slots = secret.decrypt_slots(answer)
    plain = [column[i] if i in positions else 0 for i in range(rows)]
    assert all(slot != value for slot, value in zip(slots, plain, strict=False))
    assert sum(slot > he.PLAIN_MODULUS // 2 for slot in slots) > he.SLOT_COUNT // 3


def _members(codes: list[str]) -> dict[str, tuple[X25519PrivateKey, aggregate.MaskMember]]:
    out = {}
    for code in codes:
        private, public, salt = aggregate.new_agreement_key()
        out[code] = (private, aggregate.MaskMember(code, code.encode() * 8, salt, public))
    return out


@pytest.mark.parametrize("count", [3, 4])
def test_pairwise_masks_cancel(count: int) -> None:
    codes = ["EE", "FR", "SG", "DE"][:count]
    keys = _members(codes)
    members = [member for _, member in keys.values()]
    nonce = b"n" * 16
    masks = {
        code: aggregate.pairwise_mask(keys[code][0], code, members, nonce, ["a", "b"])
        for code in codes
    }
    for column in ("a", "b"):
        assert sum(m[column] for m in masks.values()) % he.PLAIN_MODULUS == 0
        assert all(m[column] for m in masks.values())
        partial = sum(masks[c][column] for c in codes[:-1]) % he.PLAIN_MODULUS
        assert partial != 0  # a node dropped out: the masks no longer cancel
