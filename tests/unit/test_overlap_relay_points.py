"""The relay's one validation per point: ``raise_points`` refuses exactly what
``group.validate_point`` refuses, with the same reason and the lowest bad index."""

from __future__ import annotations

import os

import pytest

from fedtrace import group
from fedtrace.overlap import OVERLAP_DST, raise_points


def points(count: int, seed: int = 0) -> list[bytes]:
    return [group.hash_to_group(f"{seed}-{index}".encode(), OVERLAP_DST) for index in range(count)]


def high_bit(point: bytes) -> bytes:
    return point[:31] + bytes([point[31] | 0x80])


def test_raise_points_is_exponentiate_without_the_second_validation() -> None:
    key = group.random_scalar()
    batch = points(40)
    assert raise_points(b"".join(batch), key, workers=1) == b"".join(
        group.exponentiate(batch, key, workers=1)
    )
    assert raise_points(b"", key) == b""


def test_random_encodings_are_refused_exactly_as_validate_point_refuses_them() -> None:
    key = group.random_scalar()
    candidates = [os.urandom(32) for _ in range(600)] + [high_bit(p) for p in points(50)]
    candidates += [bytes(32), b"\xff" * 32, (2**255 - 19).to_bytes(32, "little")]
    candidates += points(50, seed=1)
    for candidate in candidates:
        try:
            group.validate_point(candidate, 0)
            expected = None
        except group.InvalidPoint as exc:
            expected = exc.reason
        try:
            raise_points(candidate, key, workers=1)
            got = None
        except group.InvalidPoint as exc:
            assert exc.index == 0
            got = exc.reason
        assert got == expected, candidate.hex()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_lowest_bad_index_is_reported_across_chunks(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group, "PARALLEL_THRESHOLD", 4)
    key = group.random_scalar()
    batch = points(64)
    batch[50] = bytes(32)  # identity, in a late chunk
    batch[37] = b"\xff" * 32  # non-canonical with bit 255 set, earlier
    with pytest.raises(group.InvalidPoint) as raised:
        raise_points(b"".join(batch), key, offset=100, workers=workers)
    assert (raised.value.index, raised.value.reason) == (
        137,
        "not a canonical ristretto255 encoding",
    )
    batch[37] = b"\x01" + bytes(31)  # off the group, bit 255 clear
    batch[9] = high_bit(batch[9])
    batch[3] = bytes(32)
    with pytest.raises(group.InvalidPoint) as raised:
        raise_points(b"".join(batch), key, workers=workers)
    assert (raised.value.index, raised.value.reason) == (3, "identity element")
    batch[3] = points(1, seed=2)[0]
    with pytest.raises(group.InvalidPoint) as raised:
        raise_points(b"".join(batch), key, workers=workers)
    assert (raised.value.index, raised.value.reason) == (
        9,
        "not a canonical ristretto255 encoding",
    )
    batch[9] = points(1, seed=3)[0]
    with pytest.raises(group.InvalidPoint) as raised:
        raise_points(b"".join(batch), key, workers=workers)
    assert raised.value.index == 37


def test_parallel_and_in_process_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group, "PARALLEL_THRESHOLD", 4)
    key = group.random_scalar()
    blob = b"".join(points(64))
    assert raise_points(blob, key, workers=2) == raise_points(blob, key, workers=1)
