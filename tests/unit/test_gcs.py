"""Tests for fedtrace.gcs: no false negatives, the promised false-positive rate, strict decoding."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrace.gcs import GolombFilter, build_filter


def points(count: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(8, "little")).digest() for i in range(count)]


@settings(max_examples=60, deadline=None)
@given(
    members=st.lists(st.binary(min_size=32, max_size=32), max_size=400),
    remainder_bits=st.integers(min_value=1, max_value=40),
)
def test_no_false_negatives_and_round_trip(members: list[bytes], remainder_bits: int) -> None:
    built = build_filter(members, remainder_bits)
    assert built.item_count == len(set(members))
    received = GolombFilter.from_bytes(built.item_count, built.remainder_bits, built.data)
    assert received == built
    assert all(received.contains_many(members))
    assert all(received.contains(member) for member in members[:5])


def test_duplicates_are_stored_once() -> None:
    unique = points(100)
    assert build_filter(unique + unique[:40]) == build_filter(unique)
    assert build_filter(iter(unique)) == build_filter(unique)


def test_empty_set() -> None:
    empty = build_filter([])
    assert (empty.item_count, empty.data) == (0, b"")
    assert empty.contains_many(points(3)) == [False, False, False]
    assert empty.contains_many([]) == []
    assert GolombFilter.from_bytes(0, 30, b"") == empty
    with pytest.raises(ValueError, match="empty filter"):
        GolombFilter.from_bytes(0, 30, b"\x00")


def test_single_item() -> None:
    (member,) = points(1)
    single = build_filter([member])
    assert single.contains(member)
    assert GolombFilter.from_bytes(1, 30, single.data).contains(member)


def test_false_positive_rate_matches_remainder_bits() -> None:
    remainder_bits = 8
    built = build_filter(points(5_000), remainder_bits)
    trials = 200_000
    hits = sum(built.contains_many(points(trials, salt=b"outsider")))
    expected = trials / 2**remainder_bits  # ~781; the true rate is a hair below 2**-k
    assert 0.85 * expected < hits < 1.1 * expected


def test_size_near_rice_optimum() -> None:
    built = build_filter(points(50_000))
    bits_per_item = 8 * len(built.data) / built.item_count
    # 30 remainder bits, Rice parameter 29: about 31.54 bits per item.
    assert 31.4 < bits_per_item < 31.7


def test_size_not_above_openmined_gcs() -> None:
    psi = pytest.importorskip("private_set_intersection.python")
    count = 4_000
    members = points(count)
    ours = len(build_filter(members).data)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(
        2.0**-30, 1, [m.hex() for m in members], psi.DataStructure.GCS
    )
    theirs = len(setup.SerializeToString())
    assert ours <= theirs * 1.002


@pytest.fixture()
def sample() -> GolombFilter:
    return build_filter(points(1_000), 20)


def test_rejects_truncated(sample: GolombFilter) -> None:
    for cut in (1, 2, len(sample.data) // 2, len(sample.data) - 1):
        with pytest.raises(ValueError, match="truncated|malformed"):
            GolombFilter.from_bytes(sample.item_count, sample.remainder_bits, sample.data[:cut])


def test_rejects_trailing_junk(sample: GolombFilter) -> None:
    for junk in (b"\x00", b"\x01", b"\x80\x00", os.urandom(16)):
        with pytest.raises(ValueError, match="malformed|trailing"):
            GolombFilter.from_bytes(sample.item_count, sample.remainder_bits, sample.data + junk)


def test_rejects_wrong_count(sample: GolombFilter) -> None:
    for count in (sample.item_count - 1, sample.item_count + 1, sample.item_count * 2):
        with pytest.raises(ValueError):
            GolombFilter.from_bytes(count, sample.remainder_bits, sample.data)


def test_rejects_wrong_parameters(sample: GolombFilter) -> None:
    for bits in (0, 57, -1):
        with pytest.raises(ValueError, match="remainder_bits"):
            GolombFilter.from_bytes(sample.item_count, bits, sample.data)
    with pytest.raises(ValueError, match="negative"):
        GolombFilter.from_bytes(-1, 20, sample.data)
    with pytest.raises(ValueError):
        GolombFilter.from_bytes(sample.item_count, 21, sample.data)


def test_rejects_value_outside_range() -> None:
    # One item, k=4 (Rice 3): remainder 0b111, then quotient 2 -> delta 23 >= M = 16.
    with pytest.raises(ValueError, match="outside"):
        GolombFilter.from_bytes(1, 4, bytes([0b111, 0b100]))
    assert GolombFilter.from_bytes(1, 4, bytes([0b111, 0b010])).item_count == 1


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=64), count=st.integers(0, 20), bits=st.integers(1, 40))
def test_arbitrary_bytes_decode_or_raise_value_error(data: bytes, count: int, bits: int) -> None:
    try:
        received = GolombFilter.from_bytes(count, bits, data)
    except ValueError:
        return
    assert received.contains_many([b"\x00" * 32]) in ([True], [False])
