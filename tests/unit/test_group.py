"""Known-answer and validation tests for fedtrace.group (ristretto255 via libsodium)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fedtrace import group

VECTORS = Path(__file__).parent.parent / "vectors"
RISTRETTO: dict[str, Any] = json.loads((VECTORS / "ristretto255.json").read_text())
HASHING: dict[str, Any] = json.loads((VECTORS / "ristretto255_hash_to_group.json").read_text())
INVALID = [
    (kind, encoding)
    for kind, encodings in RISTRETTO["invalid_encodings"].items()
    for encoding in encodings
]


def scalar_of(value: int) -> bytes:
    return value.to_bytes(group.SCALAR_BYTES, "little")


def test_generator_multiples_rfc9496_a1() -> None:
    multiples = [bytes.fromhex(encoding) for encoding in RISTRETTO["generator_multiples"]]
    generator = multiples[1]
    assert multiples[0] == bytes(32)
    for k in range(1, 16):
        # Exercises scalarmult as used by the protocol (no clamping of small scalars).
        assert group.exponentiate([generator], scalar_of(k), workers=1) == [multiples[k]]
    for encoding in multiples[1:]:
        group.validate_point(encoding)


@pytest.mark.parametrize(("kind", "encoding"), INVALID, ids=[e[:12] for _, e in INVALID])
def test_invalid_encodings_rfc9496_a2(kind: str, encoding: str) -> None:
    with pytest.raises(group.InvalidPoint) as raised:
        group.validate_point(bytes.fromhex(encoding), 3)
    assert raised.value.reason == "not a canonical ristretto255 encoding"
    assert raised.value.index == 3


@pytest.mark.parametrize("vector", RISTRETTO["one_way_map"], ids=lambda v: v["label"][:20])
def test_one_way_map_rfc9496_a3(vector: dict[str, str]) -> None:
    uniform = bytes.fromhex(vector["input"])
    assert hashlib.sha512(vector["label"].encode()).digest() == uniform
    assert group.one_way_map(uniform).hex() == vector["output"]


@pytest.mark.parametrize(
    "vector",
    HASHING["expand_message_xmd"]["vectors"],
    ids=lambda v: f"{v['msg'][:8]}-{v['len_in_bytes']}",
)
def test_expand_message_xmd_sha512_rfc9380_k3(vector: dict[str, Any]) -> None:
    dst = HASHING["expand_message_xmd"]["dst"].encode()
    uniform = group.expand_message_xmd_sha512(vector["msg"].encode(), dst, vector["len_in_bytes"])
    assert uniform.hex() == vector["uniform_bytes"]


@pytest.mark.parametrize("vector", HASHING["hash_to_group"]["vectors"], ids=lambda v: v["input"])
def test_hash_to_group_rfc9497_oprf_vectors(vector: dict[str, str]) -> None:
    spec = HASHING["hash_to_group"]
    dst = bytes.fromhex(spec["dst_hex"])
    item = bytes.fromhex(vector["input"])
    blinded = group.blind_items([item], bytes.fromhex(spec["blind"]), dst=dst, workers=1)
    assert blinded[0].hex() == vector["blinded_element"]
    point = group.hash_to_group(item, dst)
    assert (
        group.exponentiate([point], bytes.fromhex(spec["blind"]))[0].hex()
        == (vector["blinded_element"])
    )
    evaluated = group.exponentiate(blinded, bytes.fromhex(spec["sk"]))
    assert evaluated[0].hex() == vector["evaluation_element"]


def test_expand_message_xmd_rejects_bad_lengths_and_hashes_long_dst() -> None:
    with pytest.raises(ValueError):
        group.expand_message_xmd_sha512(b"x", b"dst", 0)
    with pytest.raises(ValueError):
        group.expand_message_xmd_sha512(b"x", b"dst", 255 * 64 + 1)
    with pytest.raises(ValueError):
        group.expand_message_xmd_sha512(b"x", b"", 32)
    long_dst = b"x" * 300
    assert group.expand_message_xmd_sha512(b"m", long_dst, 64) != (
        group.expand_message_xmd_sha512(b"m", long_dst[:255], 64)
    )


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (bytes(32), "identity element"),
        (b"\xff" * 32, "not a canonical ristretto255 encoding"),
        (bytes.fromhex(RISTRETTO["generator_multiples"][1])[:31], "wrong length: 31 bytes"),
        (bytes.fromhex(RISTRETTO["generator_multiples"][1]) + b"\x00", "wrong length: 33 bytes"),
        (b"", "wrong length: 0 bytes"),
    ],
)
def test_validate_point_rejects(point: bytes, reason: str) -> None:
    with pytest.raises(group.InvalidPoint) as raised:
        group.validate_point(point)
    assert raised.value.reason == reason
    assert raised.value.index is None
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("multiple", [0, 1, 2, 15])
def test_high_bit_set_is_rejected(multiple: int) -> None:
    # The bundled libsodium ignores bit 255 (it accepts these); RFC 9496 does not.
    encoding = bytearray.fromhex(RISTRETTO["generator_multiples"][multiple])
    encoding[31] |= 0x80
    with pytest.raises(group.InvalidPoint) as raised:
        group.validate_point(bytes(encoding))
    assert raised.value.reason == "not a canonical ristretto255 encoding"
    with pytest.raises(group.InvalidPoint):
        group.exponentiate([bytes(encoding)], group.random_scalar())


def test_split_points() -> None:
    points = [group.hash_to_group(bytes([i])) for i in range(3)]
    assert group.split_points(b"".join(points)) == points
    assert group.split_points(b"") == []
    with pytest.raises(group.InvalidPoint) as raised:
        group.split_points(b"".join(points)[:-1])
    assert raised.value.reason.startswith("wrong length: 95 bytes")


def test_exponentiate_names_the_bad_index() -> None:
    points = [group.hash_to_group(bytes([i])) for i in range(5)]
    points[2] = bytes(32)
    with pytest.raises(group.InvalidPoint) as raised:
        group.exponentiate(points, group.random_scalar(), workers=1)
    assert raised.value.index == 2
    points[2] = points[1][:31]
    with pytest.raises(group.InvalidPoint) as raised:
        group.exponentiate(points, group.random_scalar())
    assert (raised.value.index, raised.value.reason) == (2, "wrong length: 31 bytes")


def test_scalars() -> None:
    scalar = group.random_scalar()
    assert len(scalar) == group.SCALAR_BYTES
    assert 0 < int.from_bytes(scalar, "little") < group.GROUP_ORDER
    assert scalar != group.random_scalar()
    inverse = group.invert_scalar(scalar)
    point = group.hash_to_group(b"item")
    there = group.exponentiate([point], scalar)
    assert group.exponentiate(there, inverse) == [point]
    for bad in (bytes(32), scalar_of(group.GROUP_ORDER), b"\x01" * 31):
        with pytest.raises(ValueError):
            group.invert_scalar(bad)
        with pytest.raises(ValueError):
            group.exponentiate([point], bad)


def test_blind_items_is_hash_then_exponentiate() -> None:
    items = [b"", b"a", b"bc1qexample", b"a"]
    scalar = group.random_scalar()
    blinded = group.blind_items(items, scalar, workers=1)
    assert blinded == group.exponentiate([group.hash_to_group(x) for x in items], scalar)
    assert blinded[1] == blinded[3]
    assert group.blind_items([], scalar) == []
    other_dst = group.blind_items(items, scalar, dst=b"OTHER-DST", workers=1)
    assert set(other_dst).isdisjoint(blinded)


@pytest.mark.slow  # starts the worker pool and blinds 21,001 items twice
def test_parallel_path_matches_in_process_and_keeps_order() -> None:
    count = group.PARALLEL_THRESHOLD + 1_001
    items = [b"parallel-%d" % i for i in range(count)]
    scalar = group.random_scalar()
    in_process = group.blind_items(items, scalar, workers=1)
    pooled = group.blind_items(items, scalar, workers=2)
    assert pooled == in_process
    inverse = group.invert_scalar(scalar)
    hashed = group.exponentiate(pooled, inverse, workers=2)
    assert hashed[:50] == [group.hash_to_group(x) for x in items[:50]]
    assert hashed[-1] == group.hash_to_group(items[-1])
    tampered = list(pooled)
    tampered[count - 7] = b"\xff" * 32
    with pytest.raises(group.InvalidPoint) as raised:
        group.exponentiate(tampered, scalar, workers=2)
    assert raised.value.index == count - 7
    assert raised.value.reason == "not a canonical ristretto255 encoding"
    # The pool survives a rejected batch.
    assert group.exponentiate(pooled[:5] * 5_000, scalar, workers=2)[:5] == (
        group.exponentiate(pooled[:5], scalar, workers=1)
    )


def test_point_arithmetic_checks_its_inputs() -> None:
    g = group.multiply_base(scalar_of(1))
    assert g == bytes.fromhex(RISTRETTO["generator_multiples"][1])
    two, three = group.multiply_base(scalar_of(2)), group.multiply_base(scalar_of(3))
    assert group.add_points(g, two) == three
    assert group.subtract_points(three, g) == two
    for bad in (bytes(32), b"\xff" * 32, bytes(31)):
        with pytest.raises(group.InvalidPoint):
            group.add_points(g, bad)
        with pytest.raises(group.InvalidPoint):
            group.subtract_points(bad, g)
    with pytest.raises(ValueError, match="canonical"):
        group.multiply_base(scalar_of(0))


def test_hash_to_group_many_equals_one_by_one_in_and_out_of_process() -> None:
    items = [f"item-{index}".encode() for index in range(group.PARALLEL_THRESHOLD + 5)]
    expected = [group.hash_to_group(item) for item in items[:50]]
    assert group.hash_to_group_many(items[:50]) == expected
    parallel = group.hash_to_group_many(items, workers=2)
    assert parallel[:50] == expected and len(parallel) == len(items)
    assert parallel[-1] == group.hash_to_group(items[-1])
