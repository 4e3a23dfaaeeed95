"""A Golomb-compressed set (GCS) over a node's blinded table, for membership tests.

Each distinct point is hashed to a 64-bit value (BLAKE2b, personalised) and
reduced modulo ``M = n * 2**k``, where ``n`` is the number of distinct points
and ``k = remainder_bits``; a point not in the set then tests positive with
probability about ``2**-k``. The sorted values are delta-encoded and each delta
is Rice-coded with parameter ``r = k - 1``: the quotient ``delta >> r`` in unary
and the low ``r`` bits as they are. (Deltas are near-geometric with mean
``2**k``; ``r = k - 1`` is the best power-of-two Golomb divisor for that, about
``k + 1.54`` bits per item against ``k + 1.58`` for ``r = k``.)

Wire layout of ``data`` (the counts travel beside it as ``item_count`` and
``remainder_bits``), chosen so that numpy encodes and decodes it without a
per-item Python loop, at the same size as interleaved Rice codes:

1. the remainders: ``n`` fields of ``r`` bits, packed least-significant bit
   first into ``ceil(n*r/8)`` bytes, unused high bits of the last byte zero;
2. the quotients: for each delta, ``q`` zero bits then a one bit, packed the
   same way; the block ends with the byte holding the ``n``-th one bit and the
   bits after it are zero.

Anything else (a short or long block, a wrong number of terminators, a value
outside ``[0, M)``) is rejected by ``GolombFilter.from_bytes``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

_HASH_PERSON = b"fedtrace-gcs-v1"
_HASH_BYTES = 8
#: Remainder fields are read as one unaligned 64-bit word, so ``r + 7`` must fit in 64 bits.
MAX_REMAINDER_BITS = 56
DEFAULT_REMAINDER_BITS = 30

HashArray = npt.NDArray[np.uint64]


def point_hashes(points: Sequence[bytes]) -> HashArray:
    """64-bit BLAKE2b digests of the points, as little-endian unsigned integers."""
    digests = b"".join(
        [
            hashlib.blake2b(point, digest_size=_HASH_BYTES, person=_HASH_PERSON).digest()
            for point in points
        ]
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)


def point_blob_hashes(blob: bytes, point_bytes: int = 32) -> HashArray:
    """`point_hashes` of a concatenation of ``point_bytes``-byte points (no list of points)."""
    if len(blob) % point_bytes:
        raise ValueError(f"{len(blob)} bytes is not a whole number of {point_bytes}-byte points")
    view = memoryview(blob)
    blake2b = hashlib.blake2b
    digests = b"".join(
        [
            blake2b(
                view[start : start + point_bytes], digest_size=_HASH_BYTES, person=_HASH_PERSON
            ).digest()
            for start in range(0, len(blob), point_bytes)
        ]
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)


def _modulus(item_count: int, remainder_bits: int) -> int:
    return item_count << remainder_bits


def _rice_bits(remainder_bits: int) -> int:
    return remainder_bits - 1


def _check_parameters(item_count: int, remainder_bits: int) -> None:
    if not 1 <= remainder_bits <= MAX_REMAINDER_BITS:
        raise ValueError(
            f"remainder_bits must be between 1 and {MAX_REMAINDER_BITS}, got {remainder_bits}"
        )
    if item_count < 0:
        raise ValueError(f"item_count must not be negative, got {item_count}")
    if _modulus(item_count, remainder_bits) >= 2**64:
        raise ValueError(
            f"{item_count} items with {remainder_bits} remainder bits exceed the 64-bit hash range"
        )


def _pack_remainders(remainders: HashArray, bits: int) -> bytes:
    """Pack ``bits``-wide fields LSB-first into a byte string."""
    if bits == 0:
        return b""
    count = len(remainders)
    bit_offsets = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    word_index = (bit_offsets >> np.uint64(6)).astype(np.intp)
    shift = bit_offsets & np.uint64(63)
    low = remainders << shift
    # The part of a field that spills into the next word; a shift of 64 would be
    # undefined, so fields that start on a word boundary spill nothing.
    spill = np.where(
        shift == 0, np.uint64(0), remainders >> ((np.uint64(64) - shift) & np.uint64(63))
    )
    words = np.zeros(int(word_index[-1]) + 2, dtype=np.uint64)
    # Fields occupy disjoint bits, so adding them is the same as OR-ing them in.
    np.add.at(words, word_index, low)
    np.add.at(words, word_index + 1, spill)
    return words.astype("<u8").tobytes()[: -(-count * bits // 8)]


def _unpack_remainders(block: bytes, count: int, bits: int) -> HashArray:
    """Read ``count`` fields of ``bits`` bits from an LSB-first packed block."""
    if bits == 0:
        return np.zeros(count, dtype=np.uint64)
    padded = np.frombuffer(block + bytes(8), dtype=np.uint8)
    bit_offsets = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    byte_offsets = (bit_offsets >> np.uint64(3)).astype(np.intp)
    words = padded[byte_offsets[:, None] + np.arange(8, dtype=np.intp)]
    values = np.ascontiguousarray(words).view("<u8").reshape(count).astype(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    return (values >> (bit_offsets & np.uint64(7))) & mask


@dataclass(frozen=True)
class GolombFilter:
    """A compressed set of points: no false negatives, false positives at about 2**-k."""

    item_count: int
    remainder_bits: int
    data: bytes

    @classmethod
    def from_bytes(cls, item_count: int, remainder_bits: int, data: bytes) -> GolombFilter:
        """Check and decode a received filter; ``ValueError`` says what is wrong with it."""
        _check_parameters(item_count, remainder_bits)
        received = cls(item_count, remainder_bits, bytes(data))
        received._sorted_hashes  # noqa: B018 - decoding is the validation
        return received

    @cached_property
    def _sorted_hashes(self) -> HashArray:
        return _decode(self.item_count, self.remainder_bits, self.data)

    @property
    def modulus(self) -> int:
        """``M``: hashes are reduced to ``[0, M)``."""
        return _modulus(self.item_count, self.remainder_bits)

    def contains_many(self, points: Sequence[bytes]) -> list[bool]:
        """Membership of each point, in order (true for every member, rarely for others)."""
        if not points:
            return []
        if self.item_count == 0:
            return [False] * len(points)
        stored = self._sorted_hashes
        queries = point_hashes(points) % np.uint64(self.modulus)
        slots = np.searchsorted(stored, queries)
        found = np.zeros(len(points), dtype=bool)
        inside = slots < len(stored)
        found[inside] = stored[slots[inside]] == queries[inside]
        return [bool(hit) for hit in found]

    def contains(self, point: bytes) -> bool:
        """Membership of one point."""
        return self.contains_many([point])[0]


def _decode(item_count: int, remainder_bits: int, data: bytes) -> HashArray:
    if item_count == 0:
        if data:
            raise ValueError(f"an empty filter carries no data, got {len(data)} bytes")
        return np.zeros(0, dtype=np.uint64)
    rice_bits = _rice_bits(remainder_bits)
    remainder_bytes = -(-item_count * rice_bits // 8)
    if len(data) <= remainder_bytes:
        raise ValueError(
            f"truncated filter: {len(data)} bytes cannot hold {item_count} remainders "
            f"({remainder_bytes} bytes) and their quotients"
        )
    remainder_block = data[:remainder_bytes]
    spare_bits = remainder_bytes * 8 - item_count * rice_bits
    if spare_bits and remainder_block[-1] >> (8 - spare_bits):
        raise ValueError("malformed filter: padding bits after the remainders are not zero")

    quotient_bits = np.unpackbits(
        np.frombuffer(data, dtype=np.uint8, offset=remainder_bytes), bitorder="little"
    )
    terminators = np.flatnonzero(quotient_bits)
    if len(terminators) < item_count:
        raise ValueError(f"truncated filter: {len(terminators)} quotients for {item_count} items")
    if len(terminators) > item_count:
        raise ValueError(
            f"malformed filter: {len(terminators)} quotients for {item_count} items "
            "(wrong count or trailing data)"
        )
    if int(terminators[-1]) // 8 != len(data) - remainder_bytes - 1:
        raise ValueError("malformed filter: trailing bytes after the last quotient")

    quotients = np.diff(terminators, prepend=-1).astype(np.uint64) - np.uint64(1)
    remainders = _unpack_remainders(remainder_block, item_count, rice_bits)
    deltas = (quotients << np.uint64(rice_bits)) | remainders
    # Quotients are bounded by the terminator count, so the running sum cannot wrap
    # before the range check below catches an oversized value.
    values = np.cumsum(deltas, dtype=np.uint64)
    if int(values[-1]) >= _modulus(item_count, remainder_bits):
        raise ValueError("malformed filter: a value lies outside the hash range")
    return values


def build_filter(
    points: Iterable[bytes] | Sequence[bytes], remainder_bits: int = DEFAULT_REMAINDER_BITS
) -> GolombFilter:
    """Build the filter over the distinct points (duplicates are stored once)."""
    distinct = list(dict.fromkeys(points))
    return filter_from_hashes(point_hashes(distinct), remainder_bits)


def filter_from_hashes(
    hashes: HashArray, remainder_bits: int = DEFAULT_REMAINDER_BITS
) -> GolombFilter:
    """The filter over points given by their `point_hashes`, one hash per distinct point.

    Vectorised end to end (no per-item Python): an epoch build computes the hashes
    where it blinds and builds each partition's filter from its share of them.
    """
    item_count = len(hashes)
    _check_parameters(item_count, remainder_bits)
    if item_count == 0:
        return GolombFilter(0, remainder_bits, b"")
    values = np.sort(
        np.asarray(hashes, dtype=np.uint64) % np.uint64(_modulus(item_count, remainder_bits))
    )
    deltas = np.diff(values, prepend=np.uint64(0))
    rice_bits = _rice_bits(remainder_bits)
    quotients = deltas >> np.uint64(rice_bits)
    remainders = deltas & np.uint64((1 << rice_bits) - 1)

    terminators = np.cumsum(quotients + np.uint64(1)) - np.uint64(1)
    quotient_bits = np.zeros(int(terminators[-1]) + 1, dtype=np.uint8)
    quotient_bits[terminators.astype(np.intp)] = 1
    data = (
        _pack_remainders(remainders, rice_bits)
        + np.packbits(quotient_bits, bitorder="little").tobytes()
    )

    built = GolombFilter(item_count, remainder_bits, data)
    # Seed the decode cache with what we already hold (cached_property reads __dict__).
    built.__dict__["_sorted_hashes"] = values
    return built
