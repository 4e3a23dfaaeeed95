"""The ristretto255 group (RFC 9496) as used by the membership exchange.

Points and scalars are 32-byte strings; libsodium (bundled by ``rbcl``) does the
arithmetic in constant time. ``hash_to_group`` is RFC 9380's
``hash_to_ristretto255``: ``expand_message_xmd`` with SHA-512 to 64 bytes, then
the RFC 9496 one-way map (libsodium's ``crypto_core_ristretto255_from_hash``).

Every point that arrives from another party goes through ``validate_point``:
the right length, a canonical encoding, and not the identity.

Large batches are spread over a process pool (see ``fedtrace.parallel``);
results always come back in input order.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Callable, Sequence

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import parallel

#: The group's name as nodes announce it (``DatasetInfo.group``).
GROUP_NAME = "ristretto255"
POINT_BYTES = 32
SCALAR_BYTES = 32
MEMBERSHIP_DST = b"FEDTRACE-V1-PSI_XMD:SHA-512_R255MAP_RO_"

#: The order of the ristretto255 group (RFC 9496, section 4).
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493

#: Batches larger than this are split across the process pool, starting it if need be.
PARALLEL_THRESHOLD = 20_000
#: Once the pool is running (a node serving, a coordinator after ``prepare``) a chunk
#: costs about a millisecond to hand over and collect, against ~37 µs per scalar
#: multiplication: batches larger than this are split, so a 10k-point request uses
#: every core.
WARM_PARALLEL_THRESHOLD = 2_000
#: The same for hashing alone (~20 µs per item), which gains only on larger batches.
WARM_HASH_THRESHOLD = 5_000

#: Chunks per worker: enough that an unlucky slow chunk does not idle the others.
_CHUNKS_PER_WORKER = 4

_IDENTITY = bytes(POINT_BYTES)
_SHA512_BLOCK_BYTES = 128
_SHA512_DIGEST_BYTES = 64
_UNIFORM_BYTES = 64
_OVERSIZE_DST_PREFIX = b"H2C-OVERSIZE-DST-"
# Typed handles on the libsodium calls used here.
_from_hash: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_from_hash
_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255
_multiply_base: Callable[[bytes], bytes] = rbcl.crypto_scalarmult_ristretto255_base
_add: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_add
_sub: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_sub
_is_valid_point: Callable[[bytes], bool] = rbcl.crypto_core_ristretto255_is_valid_point
_scalar_random: Callable[[], bytes] = rbcl.crypto_core_ristretto255_scalar_random
_scalar_invert: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_invert

# SHA-512 state after absorbing Z_pad (one zero block); copied per message.
_ZPAD_STATE = hashlib.sha512(bytes(_SHA512_BLOCK_BYTES))


class InvalidPoint(ValueError):
    """A received group element was rejected; ``index`` says which one, when known."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        where = f" at index {index}" if index is not None else ""
        super().__init__(f"invalid ristretto255 point{where}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidPoint], tuple[str, int | None]]:
        return (InvalidPoint, (self.reason, self.index))


def _dst_prime(dst: bytes) -> bytes:
    if len(dst) > 255:
        dst = hashlib.sha512(_OVERSIZE_DST_PREFIX + dst).digest()
    if not dst:
        raise ValueError("domain separation tag must not be empty")
    return dst + bytes([len(dst)])


def expand_message_xmd_sha512(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 ``expand_message_xmd`` instantiated with SHA-512."""
    ell = -(-length // _SHA512_DIGEST_BYTES)
    if length < 1 or ell > 255 or length > 65535:
        raise ValueError(f"expand_message_xmd cannot produce {length} bytes")
    dst_prime = _dst_prime(dst)
    state = _ZPAD_STATE.copy()
    state.update(message)
    state.update(length.to_bytes(2, "big") + b"\x00" + dst_prime)
    b_0 = state.digest()
    block = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    output = [block]
    for counter in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, block, strict=True))
        block = hashlib.sha512(mixed + bytes([counter]) + dst_prime).digest()
        output.append(block)
    return b"".join(output)[:length]


def _hash_many(items: Sequence[bytes], dst: bytes) -> list[bytes]:
    """``hash_to_group`` over a batch, with the per-message constants hoisted out."""
    dst_prime = _dst_prime(dst)
    tail = _UNIFORM_BYTES.to_bytes(2, "big") + b"\x00" + dst_prime
    second = b"\x01" + dst_prime
    zpad_copy = _ZPAD_STATE.copy
    sha512 = hashlib.sha512
    from_hash = _from_hash
    points = []
    for item in items:
        state = zpad_copy()
        state.update(item)
        state.update(tail)
        points.append(from_hash(sha512(state.digest() + second).digest()))
    return points


def hash_to_group_many(
    items: Sequence[bytes], dst: bytes = MEMBERSHIP_DST, *, workers: int | None = None
) -> list[bytes]:
    """``[hash_to_group(x, dst) for x in items]`` at batch speed (process pool when large)."""
    _dst_prime(dst)
    resolved, bounds = _plan(len(items), workers, WARM_HASH_THRESHOLD)
    if len(bounds) == 1:
        return _hash_many(items, dst)
    chunk_args: list[tuple[object, ...]] = []
    for start, stop in bounds:
        chunk = items[start:stop]
        lengths = array.array("I", [len(item) for item in chunk])
        chunk_args.append((b"".join(chunk), lengths.tobytes(), dst))
    return split_points(b"".join(parallel.run_chunks(_hash_chunk, chunk_args, resolved)))


def one_way_map(uniform: bytes) -> bytes:
    """RFC 9496 section 4.3.4 element derivation from 64 uniform bytes."""
    if len(uniform) != _UNIFORM_BYTES:
        raise ValueError(f"the one-way map takes {_UNIFORM_BYTES} bytes, got {len(uniform)}")
    return _from_hash(uniform)


def hash_to_group(item: bytes, dst: bytes = MEMBERSHIP_DST) -> bytes:
    """RFC 9380 ``hash_to_ristretto255(item)`` under ``dst``; returns a 32-byte encoding."""
    return _from_hash(expand_message_xmd_sha512(item, dst, _UNIFORM_BYTES))


def _scalar_int(scalar: bytes) -> int:
    if len(scalar) != SCALAR_BYTES:
        raise ValueError(f"scalar must be {SCALAR_BYTES} bytes, got {len(scalar)}")
    value = int.from_bytes(scalar, "little")
    if not 0 < value < GROUP_ORDER:
        raise ValueError("scalar must be canonical (below the group order) and non-zero")
    return value


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar from libsodium's CSPRNG."""
    while True:
        scalar = _scalar_random()
        if any(scalar):
            return scalar


def invert_scalar(scalar: bytes) -> bytes:
    """The multiplicative inverse of a non-zero canonical scalar modulo the group order."""
    _scalar_int(scalar)
    return _scalar_invert(scalar)


def validate_point(point: bytes, index: int | None = None) -> None:
    """Raise ``InvalidPoint`` unless ``point`` canonically encodes a non-identity element."""
    if len(point) != POINT_BYTES:
        raise InvalidPoint(f"wrong length: {len(point)} bytes", index)
    if point == _IDENTITY:
        raise InvalidPoint("identity element", index)
    # libsodium ignores bit 255 when decoding, which RFC 9496 forbids (the value
    # would be >= p); without this check every point, the identity included,
    # would have a second accepted encoding.
    if point[31] & 0x80 or not _is_valid_point(point):
        raise InvalidPoint("not a canonical ristretto255 encoding", index)


def multiply_base(scalar: bytes) -> bytes:
    """``scalar·G`` for a canonical non-zero scalar (fixed-base, constant time)."""
    _scalar_int(scalar)
    return _multiply_base(scalar)


def add_points(left: bytes, right: bytes) -> bytes:
    """``left + right``, validating both; ``InvalidPoint`` for an invalid input.

    libsodium reports an invalid input only through a return code that rbcl
    drops (it returns 32 zero bytes), so the inputs are checked here.
    """
    validate_point(left, 0)
    validate_point(right, 1)
    return _add(left, right)


def subtract_points(left: bytes, right: bytes) -> bytes:
    """``left − right``, validating both; ``InvalidPoint`` for an invalid input."""
    validate_point(left, 0)
    validate_point(right, 1)
    return _sub(left, right)


def split_points(blob: bytes) -> list[bytes]:
    """Cut a concatenation of 32-byte encodings into points (not yet validated)."""
    if len(blob) % POINT_BYTES:
        raise InvalidPoint(f"wrong length: {len(blob)} bytes is not a multiple of {POINT_BYTES}")
    view = memoryview(blob)
    return [bytes(view[start : start + POINT_BYTES]) for start in range(0, len(blob), POINT_BYTES)]


def _exponentiate_in_process(points: Sequence[bytes], scalar: bytes, offset: int) -> list[bytes]:
    for position, point in enumerate(points):
        validate_point(point, offset + position)
    multiply = _multiply
    return [multiply(scalar, point) for point in points]


# Pool tasks: bytes in, bytes out. Module-level so workers can import them by name.


def _unpack_items(items_blob: bytes, lengths_blob: bytes) -> list[bytes]:
    lengths = array.array("I")
    lengths.frombytes(lengths_blob)
    items = []
    start = 0
    for length in lengths:
        items.append(items_blob[start : start + length])
        start += length
    return items


def _blind_chunk(items_blob: bytes, lengths_blob: bytes, scalar: bytes, dst: bytes) -> bytes:
    multiply = _multiply
    items = _unpack_items(items_blob, lengths_blob)
    return b"".join([multiply(scalar, point) for point in _hash_many(items, dst)])


def blind_blob(
    items_blob: bytes, lengths_blob: bytes, scalar: bytes, dst: bytes = MEMBERSHIP_DST
) -> bytes:
    """``blind_items`` over items packed as one blob and their native ``uint32`` lengths.

    In this process, for callers that spread chunks over workers themselves (an
    epoch build streaming its items to a process pool or a cluster).
    """
    _scalar_int(scalar)
    _dst_prime(dst)
    return _blind_chunk(items_blob, lengths_blob, scalar, dst)


def _hash_chunk(items_blob: bytes, lengths_blob: bytes, dst: bytes) -> bytes:
    return b"".join(_hash_many(_unpack_items(items_blob, lengths_blob), dst))


def _exponentiate_chunk(points_blob: bytes, scalar: bytes, offset: int) -> bytes:
    # An InvalidPoint raised here reaches the caller through the future, intact.
    return b"".join(_exponentiate_in_process(split_points(points_blob), scalar, offset))


def _plan(
    count: int, workers: int | None, warm_threshold: int = WARM_PARALLEL_THRESHOLD
) -> tuple[int, list[tuple[int, int]]]:
    """Worker count and chunk bounds; a single bound means "stay in process".

    A cold pool is started only for a batch above ``PARALLEL_THRESHOLD``; a running
    one is used above ``warm_threshold`` (or ``PARALLEL_THRESHOLD``, if lower).
    """
    resolved = parallel.default_workers(workers)
    threshold = PARALLEL_THRESHOLD
    if count > min(threshold, warm_threshold) and parallel.pool_ready(resolved):
        threshold = min(threshold, warm_threshold)
    if resolved == 1 or count <= threshold:
        return 1, [(0, count)]
    return resolved, parallel.chunk_bounds(count, resolved * _CHUNKS_PER_WORKER)


def blind_items(
    items: Sequence[bytes],
    scalar: bytes,
    *,
    dst: bytes = MEMBERSHIP_DST,
    workers: int | None = None,
) -> list[bytes]:
    """``[hash_to_group(x, dst) ^ scalar for x in items]``, in order."""
    _scalar_int(scalar)
    _dst_prime(dst)
    resolved, bounds = _plan(len(items), workers)
    if len(bounds) == 1:
        multiply = _multiply
        return [multiply(scalar, point) for point in _hash_many(items, dst)]
    chunk_args: list[tuple[object, ...]] = []
    for start, stop in bounds:
        chunk = items[start:stop]
        lengths = array.array("I", [len(item) for item in chunk])
        chunk_args.append((b"".join(chunk), lengths.tobytes(), scalar, dst))
    blobs = parallel.run_chunks(_blind_chunk, chunk_args, resolved)
    return split_points(b"".join(blobs))


def exponentiate(
    points: Sequence[bytes], scalar: bytes, *, workers: int | None = None
) -> list[bytes]:
    """Validate every point (``InvalidPoint`` names a bad index), then ``point ^ scalar``."""
    _scalar_int(scalar)
    for index, point in enumerate(points):
        if len(point) != POINT_BYTES:
            raise InvalidPoint(f"wrong length: {len(point)} bytes", index)
    resolved, bounds = _plan(len(points), workers)
    if len(bounds) == 1:
        return _exponentiate_in_process(points, scalar, 0)
    chunk_args: list[tuple[object, ...]] = [
        (b"".join(points[start:stop]), scalar, start) for start, stop in bounds
    ]
    # Chunks run in order of index and the first failure stops the run, so the
    # reported index is the lowest bad one among the chunks that ran.
    blobs = parallel.run_chunks(_exponentiate_chunk, chunk_args, resolved)
    return split_points(b"".join(blobs))


def shutdown_pool() -> None:
    """Stop the worker processes (also done automatically at exit)."""
    parallel.shutdown_pool()
