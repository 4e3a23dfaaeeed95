"""Additive blinding: published vectors, correctness against b·H(x), single use, refusals."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import rbcl

from fedtrace import blinding, group, psi
from fedtrace.items import item_bytes

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "additive_blinding.json"


def _binding(key: bytes, epoch_id: str = "0011223344556677") -> blinding.PoolBinding:
    return blinding.PoolBinding("node-a", "wallets", epoch_id, blinding.blinding_point(key))


def _items(count: int) -> list[bytes]:
    return [item_bytes("wallet", f"addr-{index}") for index in range(count)]


def test_published_vectors() -> None:
    doc = json.loads(VECTORS.read_text())
    key = bytes.fromhex(doc["b"])
    assert doc["dst"] == group.MEMBERSHIP_DST.decode()
    assert blinding.blinding_point(key).hex() == doc["C"]
    binding = blinding.PoolBinding(
        "vector-node", "wallets", "0011223344556677", bytes.fromhex(doc["C"])
    )
    for vector in doc["vectors"]:
        item = bytes.fromhex(vector["item_hex"])
        r = bytes.fromhex(vector["r"])
        c_point = bytes.fromhex(doc["C"])
        masked = rbcl.crypto_scalarmult_ristretto255(r, c_point)
        unmask = rbcl.crypto_scalarmult_ristretto255_base(r)
        assert (group.hash_to_group(item).hex(), masked.hex(), unmask.hex()) == (
            vector["H(x)"],
            vector["r*C"],
            vector["r*G"],
        )
        # Independently: r·C = (r·b⁻¹)·G.
        product = rbcl.crypto_core_ristretto255_scalar_mul(r, group.invert_scalar(key))
        assert rbcl.crypto_scalarmult_ristretto255_base(product) == masked
        pool = blinding.BlindingPool(binding, (blinding.PoolEntry(r, masked, unmask),))
        (sent,), entries = blinding.hash_and_blind([item], pool, binding)
        assert sent.hex() == vector["P"]
        (answer,) = psi.evaluate([sent], key)
        assert answer.hex() == vector["b*P"]
        (result,) = blinding.unblind([answer], entries)
        assert result.hex() == vector["b*H(x)"]
        # Cross-check with the multiplicative path: b·H(x) computed directly.
        assert group.blind_items([item], key) == [result]


@pytest.mark.parametrize("workers", [1, 2])
def test_additive_result_equals_the_epoch_table_point(workers: int) -> None:
    key = group.random_scalar()
    binding = _binding(key)
    count = blinding.PARALLEL_THRESHOLD + 5 if workers == 2 else 40
    pool = blinding.prepare_pool(binding, count, workers=workers)
    items = _items(count)
    sent, entries = blinding.hash_and_blind(items, pool, binding)
    assert len(set(sent)) == count
    assert blinding.unblind(psi.evaluate(sent, key), entries) == group.blind_items(items, key)
    assert pool.remaining == 0


def test_blind_validates_its_input_points() -> None:
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 2, workers=1)
    with pytest.raises(group.InvalidPoint) as info:
        blinding.blind([group.hash_to_group(b"x"), bytes(32)], pool, binding)
    assert info.value.index == 1
    assert pool.remaining == 2


def test_entries_are_handed_out_once_and_a_spent_pool_raises() -> None:
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 3, workers=1)
    first = pool.take(2)
    with pytest.raises(blinding.PoolExhausted):
        pool.take(2)  # only one left: nothing is taken
    (last,) = pool.take(1)
    assert last not in first
    with pytest.raises(blinding.PoolExhausted):
        blinding.hash_and_blind(_items(1), pool, binding)


def test_single_use_under_threads() -> None:
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 400, workers=1)
    taken: list[list[blinding.PoolEntry]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def drain(slot: int) -> None:
        start.wait()
        while True:
            try:
                taken[slot].extend(pool.take(3))
            except blinding.PoolExhausted:
                return

    threads = [threading.Thread(target=drain, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    scalars = [entry.scalar for batch in taken for entry in batch]
    assert len(scalars) == len(set(scalars)) == 399  # 400 // 3 batches of 3
    assert pool.remaining == 1


def test_a_pool_for_another_epoch_or_blinding_point_is_refused() -> None:
    key = group.random_scalar()
    pool = blinding.prepare_pool(_binding(key, "epoch-1"), 2, workers=1)
    with pytest.raises(blinding.StalePool):
        blinding.hash_and_blind(_items(1), pool, _binding(key, "epoch-2"))
    new_key = group.random_scalar()
    with pytest.raises(blinding.StalePool):
        blinding.hash_and_blind(_items(1), pool, _binding(new_key, "epoch-1"))
    assert pool.remaining == 2


@pytest.mark.parametrize(
    "point",
    [bytes(32), b"\x01" * 31, b"\xff" * 32, bytes(31) + b"\x80", bytes([1]) + bytes(31)],
)
def test_invalid_blinding_points_are_refused(point: bytes) -> None:
    with pytest.raises(group.InvalidPoint):
        blinding.PoolBinding("node-a", "wallets", "e", point)


def test_invalid_answers_are_refused() -> None:
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 3, workers=1)
    sent, entries = blinding.hash_and_blind(_items(3), pool, binding)
    answers = psi.evaluate(sent, key)
    for bad in (bytes(32), b"\xff" * 32, answers[0][:31]):
        with pytest.raises(group.InvalidPoint) as info:
            blinding.unblind([answers[0], bad, answers[2]], entries)
        assert info.value.index == 1
    with pytest.raises(group.InvalidPoint, match="identity"):
        blinding.unblind([answers[0], entries[1].unmask, answers[2]], entries)
    with pytest.raises(ValueError, match="answered 2 points"):
        blinding.unblind(answers[:2], entries)


def test_serialisation_round_trip_keeps_only_unspent_entries() -> None:
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 5, workers=1)
    spent = pool.take(2)
    data = blinding.pool_to_bytes(pool)
    restored = blinding.pool_from_bytes(data, recompute=True)
    assert restored.binding == binding
    assert restored.entries == pool.entries[2:]
    assert not set(spent) & set(restored.entries)
    items = _items(3)
    sent, entries = blinding.hash_and_blind(items, restored, binding)
    assert blinding.unblind(psi.evaluate(sent, key), entries) == group.blind_items(items, key)
    assert "scalar" not in repr(restored.entries[0])


def test_damaged_pool_bytes_are_refused() -> None:
    key = group.random_scalar()
    data = blinding.pool_to_bytes(blinding.prepare_pool(_binding(key), 2, workers=1))
    with pytest.raises(blinding.MalformedPool):
        blinding.pool_from_bytes(b"XXXX" + data[4:])
    with pytest.raises(blinding.MalformedPool):
        blinding.pool_from_bytes(data[:-1])
    flipped = bytearray(data)
    flipped[-1] ^= 0x01  # r·G of the last entry
    with pytest.raises(blinding.MalformedPool):
        blinding.pool_from_bytes(bytes(flipped), recompute=True)


def test_reusing_an_entry_reveals_the_difference_of_the_hashes() -> None:
    """Why single use is mandatory: P1 − P2 = H(x1) − H(x2), testable against guesses."""
    key = group.random_scalar()
    binding = _binding(key)
    (entry,) = blinding.prepare_pool(binding, 1, workers=1).take(1)
    x1, x2 = _items(2)
    reused = blinding.BlindingPool(binding, (entry, entry))
    (p1, p2), _ = blinding.hash_and_blind([x1, x2], reused, binding)
    # An observer of the two blinded points, guessing the pair (x1, x2):
    observed = blinding.subtract_points(p1, p2)
    guess = blinding.subtract_points(group.hash_to_group(x1), group.hash_to_group(x2))
    assert observed == guess
    # With fresh entries the same test fails.
    fresh = blinding.prepare_pool(binding, 2, workers=1)
    (q1, q2), _ = blinding.hash_and_blind([x1, x2], fresh, binding)
    assert blinding.subtract_points(q1, q2) != guess


def test_the_blinding_point_proof_verifies_and_binds_its_context() -> None:
    key = group.random_scalar()
    c_point, b_point, proof = blinding.prove_blinding_point(key, b"node-a/wallets/epoch-1")
    assert c_point == blinding.blinding_point(key)
    assert b_point == rbcl.crypto_scalarmult_ristretto255_base(key)
    blinding.verify_blinding_point(c_point, b_point, proof, b"node-a/wallets/epoch-1")
    with pytest.raises(blinding.InvalidProof):
        blinding.verify_blinding_point(c_point, b_point, proof, b"node-a/wallets/epoch-2")
    tampered = proof[:40] + bytes([proof[40] ^ 1]) + proof[41:]
    with pytest.raises(blinding.InvalidProof):
        blinding.verify_blinding_point(c_point, b_point, tampered, b"node-a/wallets/epoch-1")
    with pytest.raises(blinding.InvalidProof):
        blinding.verify_blinding_point(c_point, b_point, proof[:63], b"node-a/wallets/epoch-1")


def test_a_wrong_blinding_point_is_caught_by_the_proof_and_only_breaks_correctness() -> None:
    key = group.random_scalar()
    _, b_point, proof = blinding.prove_blinding_point(key, b"ctx")
    wrong = rbcl.crypto_scalarmult_ristretto255_base(group.random_scalar())  # c·G, c ≠ b⁻¹
    with pytest.raises(blinding.InvalidProof):
        blinding.verify_blinding_point(wrong, b_point, proof, b"ctx")
    # Without the check: the node's answers unblind to random points (false negatives).
    binding = blinding.PoolBinding("node-a", "wallets", "e", wrong)
    items = _items(4)
    sent, entries = blinding.hash_and_blind(items, blinding.prepare_pool(binding, 4), binding)
    table = set(group.blind_items(items, key))
    assert not table & set(blinding.unblind(psi.evaluate(sent, key), entries))


def test_vector_scalars_follow_their_stated_derivation() -> None:
    doc = json.loads(VECTORS.read_text())
    prefix = b"fedtrace additive blinding test vector "

    def derived(label: bytes) -> str:
        digest = hashlib.sha512(prefix + label).digest()
        return (int.from_bytes(digest, "little") % group.GROUP_ORDER).to_bytes(32, "little").hex()

    assert doc["b"] == derived(b"node epoch key b")
    for index, vector in enumerate(doc["vectors"]):
        assert vector["r"] == derived(b"pool entry r %d" % index)


def test_context_binding_header_and_extension() -> None:
    assert blinding.blinding_context("EE", "wallets", "ab") == (
        b"\x00\x02EE\x00\x07wallets\x00\x02ab"
    )
    # Length prefixes keep ("EE", "wa") and ("EEw", "a") apart.
    assert blinding.blinding_context("EE", "wa", "x") != blinding.blinding_context("EEw", "a", "x")
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 3, workers=1)
    pool.take(1)
    data = blinding.pool_to_bytes(pool)
    assert blinding.pool_binding_from_bytes(data) == binding
    with pytest.raises(blinding.MalformedPool):
        blinding.pool_binding_from_bytes(b"FTAX" + data[4:])
    more = blinding.prepare_pool(binding, 2, workers=1)
    merged = pool.extended(more)
    assert merged.entries == pool.entries[1:] + more.entries
    with pytest.raises(blinding.StalePool):
        pool.extended(blinding.prepare_pool(_binding(key, "ff"), 1, workers=1))
    items = _items(4)
    hashed = group.hash_to_group_many(items)
    sent, entries = blinding.blind_hashed(hashed, merged, binding)
    assert blinding.unblind(psi.evaluate(sent, key), entries) == group.blind_items(items, key)
    assert merged.remaining == 0


def test_unblind_refuses_every_invalid_encoding_through_the_subtraction() -> None:
    # unblind relies on libsodium failing (rbcl then returns zero bytes) for an
    # invalid operand instead of decoding each answer twice: every RFC 9496
    # invalid encoding must still be refused.
    vectors = json.loads((VECTORS.parent / "ristretto255.json").read_text())
    key = group.random_scalar()
    binding = _binding(key)
    pool = blinding.prepare_pool(binding, 3, workers=1)
    sent, entries = blinding.hash_and_blind(_items(3), pool, binding)
    answers = psi.evaluate(sent, key)
    for encodings in vectors["invalid_encodings"].values():
        for encoding in encodings:
            with pytest.raises(group.InvalidPoint, match="canonical") as info:
                blinding.unblind([answers[0], bytes.fromhex(encoding), answers[2]], entries)
            assert info.value.index == 1
    assert blinding.pool_from_bytes(blinding.pool_to_bytes(pool), validate=False).binding == binding
