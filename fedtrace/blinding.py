"""Additive blinding for the membership exchange: precomputed pools, one point addition online.

The node publishes, for each dataset epoch with secret scalar ``b``, the
blinding point ``C = b⁻¹·G``. Offline, the coordinator prepares a pool of
entries ``(r, r·C, r·G)`` for that epoch, each with a fresh random scalar ``r``.
Online it sends ``P = H(x) + r·C`` (one point addition), the node answers
``b·P = b·H(x) + r·G`` exactly as it answers a multiplicatively blinded point,
and the coordinator recovers ``b·H(x) = b·P − r·G`` (one subtraction).

Every entry is single use: two points blinded with the same ``r`` differ by
``H(x1) − H(x2)``, which anyone who sees them can test guesses against.
``BlindingPool.take`` hands each entry out once, across threads, and a spent
pool raises. Shuffled (cardinality) answers keep the multiplicative blinding of
``fedtrace.psi``: an additive mask differs per item, so it cannot be removed
once the node has permuted the answers.

``prove_blinding_point`` / ``verify_blinding_point`` are a Chaum–Pedersen proof
that ``C`` is ``b⁻¹·G`` for the ``b`` behind a published ``B = b·G``: a wrong ``C``
cannot leak an item (any non-identity ``C`` hides it) but would silently turn
every answer into a non-match.

Pools serialise to bytes (``pool_to_bytes`` / ``pool_from_bytes``, no pickle);
only unspent entries are written, and the file holds secret scalars.
See docs/protocol.md for the security argument.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import group, parallel

#: Bytes of one serialised entry: r, r·C, r·G.
ENTRY_BYTES = group.SCALAR_BYTES + 2 * group.POINT_BYTES
#: Pools larger than this are prepared on the process pool.
PARALLEL_THRESHOLD = 2_000
#: Online additions and subtractions (~18 µs each: both operands are decoded) are spread
#: over the process pool above this many points, when the pool is already running.
ONLINE_PARALLEL_THRESHOLD = 5_000

_MAGIC = b"FTAB"
_FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sB")
_LENGTH = struct.Struct(">H")
_COUNT = struct.Struct(">I")
_CHUNKS_PER_WORKER = 4

_add: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_add
_sub: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_sub
_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255
_multiply_base: Callable[[bytes], bytes] = rbcl.crypto_scalarmult_ristretto255_base
_scalar_mul: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_mul
_scalar_sub: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_sub
_scalar_reduce: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_reduce

PROOF_DST = b"FEDTRACE-V1-BLINDING-POINT-DLEQ"
PROOF_BYTES = 2 * group.SCALAR_BYTES

#: Transcript labels of the two blindings (``fedtrace.v1.Blinding``).
MULTIPLICATIVE = "multiplicative"
ADDITIVE = "additive"
#: The start of a node's FAILED_PRECONDITION refusal of an additive request it would shuffle.
NEEDS_UNSHUFFLED = "additive blinding needs an unshuffled level"


class InvalidProof(ValueError):
    """The node's proof that ``C = b⁻¹·G`` for the ``b`` behind ``B = b·G`` does not verify."""


class PoolExhausted(RuntimeError):
    """The pool has fewer unspent entries than asked for; nothing was taken."""


class StalePool(ValueError):
    """The pool was prepared for another node, dataset, epoch or blinding point."""


class MalformedPool(ValueError):
    """Serialised pool bytes that do not decode to a valid pool."""


def add_points(left: bytes, right: bytes) -> bytes:
    """``left + right`` for two already validated ristretto255 encodings."""
    # libsodium returns the identity encoding, not an error, for an invalid
    # input; callers validate first, this is the last line of defence.
    return _add(left, right)


def subtract_points(left: bytes, right: bytes) -> bytes:
    """``left − right`` for two already validated ristretto255 encodings."""
    return _sub(left, right)


def blinding_point(secret_key: bytes) -> bytes:
    """The node's published ``C = b⁻¹·G`` for its epoch scalar ``b``."""
    return _multiply_base(group.invert_scalar(secret_key))


def blinding_context(node: str, dataset: str, epoch_id: str) -> bytes:
    """The proof's context: node, dataset and epoch id, each length-prefixed (UTF-8)."""
    return b"".join(_pack_text(value) for value in (node, dataset, epoch_id))


def _challenge(context: bytes, *points: bytes) -> bytes:
    digest = hashlib.sha512(_LENGTH.pack(len(PROOF_DST)) + PROOF_DST)
    digest.update(_LENGTH.pack(len(context)) + context)
    for point in points:
        digest.update(point)
    return _scalar_reduce(digest.digest())


def prove_blinding_point(secret_key: bytes, context: bytes) -> tuple[bytes, bytes, bytes]:
    """The node's ``(C, B, proof)``: ``C = b⁻¹·G``, ``B = b·G`` and a Chaum–Pedersen proof.

    The proof shows that one scalar ``b`` gives both ``B = b·G`` and ``G = b·C``,
    without revealing ``b``. ``context`` (e.g. node, dataset and epoch id) is bound
    into the challenge, so a proof cannot be replayed for another epoch.
    """
    c_point = blinding_point(secret_key)
    b_point = _multiply_base(secret_key)
    generator = _multiply_base((1).to_bytes(group.SCALAR_BYTES, "little"))
    while True:
        nonce = group.random_scalar()
        challenge = _challenge(
            context,
            generator,
            b_point,
            c_point,
            _multiply_base(nonce),
            _multiply(nonce, c_point),
        )
        response = _scalar_sub(nonce, _scalar_mul(challenge, secret_key))
        if any(challenge) and any(response):
            return c_point, b_point, challenge + response


def verify_blinding_point(c_point: bytes, b_point: bytes, proof: bytes, context: bytes) -> None:
    """Raise ``InvalidProof`` unless ``proof`` shows ``b·C = G`` for the ``b`` of ``B = b·G``."""
    group.validate_point(c_point)
    group.validate_point(b_point)
    if len(proof) != PROOF_BYTES:
        raise InvalidProof(f"a proof is {PROOF_BYTES} bytes, got {len(proof)}")
    challenge, response = proof[: group.SCALAR_BYTES], proof[group.SCALAR_BYTES :]
    try:
        group.invert_scalar(challenge)  # canonical and non-zero
        group.invert_scalar(response)
    except ValueError:
        raise InvalidProof("proof scalars must be canonical and non-zero") from None
    generator = _multiply_base((1).to_bytes(group.SCALAR_BYTES, "little"))
    commit_base = _add(_multiply_base(response), _multiply(challenge, b_point))
    commit_c = _add(_multiply(response, c_point), _multiply(challenge, generator))
    expected = _challenge(context, generator, b_point, c_point, commit_base, commit_c)
    if not hmac.compare_digest(expected, challenge):
        raise InvalidProof("the blinding point is not b⁻¹·G for the announced b·G")


@dataclass(frozen=True)
class PoolBinding:
    """What a pool was prepared for: one node's dataset epoch and its blinding point ``C``."""

    node: str
    dataset: str
    epoch_id: str
    blinding_point: bytes

    def __post_init__(self) -> None:
        for name in ("node", "dataset", "epoch_id"):
            value = getattr(self, name)
            if not value or len(value.encode("utf-8")) > 0xFFFF:
                raise ValueError(f"pool binding {name} must be 1 to 65535 UTF-8 bytes")
        group.validate_point(self.blinding_point)


@dataclass(frozen=True)
class PoolEntry:
    """One single-use blinding: the scalar ``r`` (secret), ``r·C`` and ``r·G``."""

    scalar: bytes = field(repr=False)
    masked: bytes  # r·C, added to H(x) before sending
    unmask: bytes = field(repr=False)  # r·G, subtracted from the node's answer


class _Cursor:
    """The index of the next unspent entry, behind a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 0


@dataclass(frozen=True)
class BlindingPool:
    """Prepared entries for one ``PoolBinding``; each entry is handed out at most once."""

    binding: PoolBinding
    entries: tuple[PoolEntry, ...] = field(repr=False)
    _cursor: _Cursor = field(default_factory=_Cursor, repr=False, compare=False)

    @property
    def remaining(self) -> int:
        """How many entries are still unspent."""
        with self._cursor.lock:
            return len(self.entries) - self._cursor.next

    def take(self, count: int) -> tuple[PoolEntry, ...]:
        """Spend ``count`` entries atomically, or raise ``PoolExhausted`` taking none."""
        if count < 0:
            raise ValueError(f"cannot take {count} entries")
        with self._cursor.lock:
            start = self._cursor.next
            if start + count > len(self.entries):
                raise PoolExhausted(
                    f"pool for {self.binding.node}/{self.binding.dataset} epoch "
                    f"{self.binding.epoch_id} has {len(self.entries) - start} unspent "
                    f"entries, {count} needed"
                )
            self._cursor.next = start + count
        return self.entries[start : start + count]

    def extended(self, more: BlindingPool) -> BlindingPool:
        """A new pool of this pool's unspent entries followed by ``more``'s (same binding)."""
        if more.binding != self.binding:
            raise StalePool("cannot merge pools prepared for different bindings")
        return BlindingPool(self.binding, self.unspent().entries + more.unspent().entries)

    def unspent(self) -> BlindingPool:
        """A new pool of the entries not yet handed out (what should go back to disk)."""
        with self._cursor.lock:
            start = self._cursor.next
        return BlindingPool(self.binding, self.entries[start:])


# Pool task: bytes in, bytes out, module-level so workers import it by name.


def _prepare_chunk(blinding_point: bytes, count: int) -> bytes:
    multiply = _multiply
    multiply_base = _multiply_base
    parts = []
    for _ in range(count):
        scalar = group.random_scalar()
        parts.append(scalar + multiply(scalar, blinding_point) + multiply_base(scalar))
    return b"".join(parts)


def _entries(blob: bytes) -> tuple[PoolEntry, ...]:
    view = memoryview(blob)
    scalar_end = group.SCALAR_BYTES
    masked_end = scalar_end + group.POINT_BYTES
    return tuple(
        PoolEntry(
            bytes(view[start : start + scalar_end]),
            bytes(view[start + scalar_end : start + masked_end]),
            bytes(view[start + masked_end : start + ENTRY_BYTES]),
        )
        for start in range(0, len(blob), ENTRY_BYTES)
    )


def prepare_pool(binding: PoolBinding, count: int, *, workers: int | None = None) -> BlindingPool:
    """``count`` fresh entries for ``binding`` (two scalar multiplications each, offline)."""
    if count < 0:
        raise ValueError(f"cannot prepare {count} entries")
    resolved = parallel.default_workers(workers)
    if resolved == 1 or count <= PARALLEL_THRESHOLD:
        return BlindingPool(binding, _entries(_prepare_chunk(binding.blinding_point, count)))
    bounds = parallel.chunk_bounds(count, resolved * _CHUNKS_PER_WORKER)
    chunk_args: list[tuple[object, ...]] = [
        (binding.blinding_point, stop - start) for start, stop in bounds
    ]
    blobs = parallel.run_chunks(_prepare_chunk, chunk_args, resolved)
    return BlindingPool(binding, _entries(b"".join(blobs)))


def blind(
    points: Sequence[bytes], pool: BlindingPool, binding: PoolBinding
) -> tuple[list[bytes], tuple[PoolEntry, ...]]:
    """``H(x) + r·C`` for each hashed item, spending one pool entry per point.

    ``binding`` is what the node announces now; a pool prepared for anything
    else raises ``StalePool`` before any entry is spent. Returns the points to
    send and the entries ``unblind`` needs, in the same order.
    """
    for index, point in enumerate(points):
        group.validate_point(point, index)
    return _blind_checked_points(points, pool, binding)


def _blind_checked_points(
    points: Sequence[bytes], pool: BlindingPool, binding: PoolBinding
) -> tuple[list[bytes], tuple[PoolEntry, ...]]:
    if pool.binding != binding:
        raise StalePool(
            f"pool prepared for {pool.binding.node}/{pool.binding.dataset} epoch "
            f"{pool.binding.epoch_id}, but {binding.node}/{binding.dataset} is at epoch "
            f"{binding.epoch_id} (or announces another blinding point)"
        )
    entries = pool.take(len(points))
    masks = [entry.masked for entry in entries]
    return _online(_add_chunk, points, masks), entries


def blind_hashed(
    points: Sequence[bytes], pool: BlindingPool, binding: PoolBinding
) -> tuple[list[bytes], tuple[PoolEntry, ...]]:
    """``blind`` for points fresh from ``group.hash_to_group_many``: valid by construction,
    so not validated again (the online step is then one addition per point)."""
    return _blind_checked_points(points, pool, binding)


def hash_and_blind(
    items: Sequence[bytes],
    pool: BlindingPool,
    binding: PoolBinding,
    *,
    dst: bytes = group.MEMBERSHIP_DST,
) -> tuple[list[bytes], tuple[PoolEntry, ...]]:
    """``blind`` over ``hash_to_group`` of each item (the coordinator's whole online step)."""
    # Points fresh from hash_to_group are valid by construction: no re-validation.
    return _blind_checked_points(group.hash_to_group_many(items, dst), pool, binding)


def unblind(answers: Sequence[bytes], entries: Sequence[PoolEntry]) -> list[bytes]:
    """``b·P − r·G`` for each answer: ``b·H(x)``, validating every received point."""
    if len(answers) != len(entries):
        raise ValueError(f"the node answered {len(answers)} points for {len(entries)} blinded")
    unmasks = [entry.unmask for entry in entries]
    for index, answer in enumerate(answers):
        if len(answer) != group.POINT_BYTES:  # report the first bad answer, whatever its fault
            _unblind_chunk(b"".join(answers[:index]), b"".join(unmasks[:index]), 0)
            group.validate_point(answer, index)  # raises, naming the reason
    return _online(_unblind_chunk, answers, unmasks)


def _online(
    task: Callable[[bytes, bytes, int], bytes], points: Sequence[bytes], others: Sequence[bytes]
) -> list[bytes]:
    """``task`` over 32-byte ``points`` paired with ``others``: on the running pool when large."""
    workers = parallel.default_workers(None)
    count = len(points)
    if workers == 1 or count <= ONLINE_PARALLEL_THRESHOLD or not parallel.pool_ready(workers):
        return group.split_points(task(b"".join(points), b"".join(others), 0))
    chunk_args: list[tuple[object, ...]] = [
        (b"".join(points[start:stop]), b"".join(others[start:stop]), start)
        for start, stop in parallel.chunk_bounds(count, workers * _CHUNKS_PER_WORKER)
    ]
    return group.split_points(b"".join(parallel.run_chunks(task, chunk_args, workers)))


# Pool tasks for the online step: two concatenations of 32-byte points in, one out.


def _add_chunk(points_blob: bytes, masks_blob: bytes, offset: int) -> bytes:
    add, size = _add, group.POINT_BYTES
    return b"".join(
        [
            add(points_blob[start : start + size], masks_blob[start : start + size])
            for start in range(0, len(points_blob), size)
        ]
    )


def _unblind_chunk(answers_blob: bytes, unmasks_blob: bytes, offset: int) -> bytes:
    identity = bytes(group.POINT_BYTES)
    sub = _sub
    results = []
    answers = group.split_points(answers_blob)
    unmasks = group.split_points(unmasks_blob)
    for position, (answer, unmask) in enumerate(zip(answers, unmasks, strict=True)):
        index = offset + position
        if len(answer) != group.POINT_BYTES or answer == identity or answer[31] & 0x80:
            group.validate_point(answer, index)  # raises, naming the reason
        # libsodium decodes (and so validates) both operands; for an invalid one it
        # fails and rbcl returns 32 zero bytes, so one identity test after the
        # subtraction replaces a separate decode of every answer.
        result = sub(answer, unmask)
        if result == identity:
            group.validate_point(answer, index)  # an invalid encoding: raises
            # A valid answer equal to r·G: only a party that knows r·G can send it.
            raise group.InvalidPoint("answer unblinds to the identity", index)
        results.append(result)
    return b"".join(results)


def _pack_text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _LENGTH.pack(len(encoded)) + encoded


def pool_to_bytes(pool: BlindingPool) -> bytes:
    """The unspent entries and their binding; secret material, store with mode 0600."""
    unspent = pool.unspent()
    binding = unspent.binding
    parts = [
        _HEADER.pack(_MAGIC, _FORMAT_VERSION),
        _pack_text(binding.node),
        _pack_text(binding.dataset),
        _pack_text(binding.epoch_id),
        binding.blinding_point,
        _COUNT.pack(len(unspent.entries)),
    ]
    parts.extend(entry.scalar + entry.masked + entry.unmask for entry in unspent.entries)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def read(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise MalformedPool("truncated pool")
        chunk = bytes(self.data[self.offset : self.offset + size])
        self.offset += size
        return chunk

    def text(self) -> str:
        (length,) = _LENGTH.unpack(self.read(_LENGTH.size))
        try:
            return self.read(length).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPool("a binding name is not UTF-8") from None


def _read_binding(reader: _Reader) -> PoolBinding:
    magic, version = _HEADER.unpack(reader.read(_HEADER.size))
    if magic != _MAGIC or version != _FORMAT_VERSION:
        raise MalformedPool("not an additive blinding pool of a known version")
    node, dataset, epoch_id = reader.text(), reader.text(), reader.text()
    try:
        return PoolBinding(node, dataset, epoch_id, reader.read(group.POINT_BYTES))
    except ValueError as exc:
        raise MalformedPool(f"bad pool binding: {exc}") from None


def pool_binding_from_bytes(data: bytes) -> PoolBinding:
    """Only the binding of serialised pool bytes (no entry is read or checked)."""
    return _read_binding(_Reader(data))


def pool_from_bytes(data: bytes, *, recompute: bool = False, validate: bool = True) -> BlindingPool:
    """Decode ``pool_to_bytes`` output, validating every scalar and point.

    With ``recompute`` each entry's ``r·C`` and ``r·G`` are recomputed and
    compared (two multiplications per entry), catching a corrupted file.
    ``validate=False`` skips the per-entry checks (the binding is still checked),
    for bytes whose integrity the caller has established, e.g. by a digest.
    """
    reader = _Reader(data)
    binding = _read_binding(reader)
    (count,) = _COUNT.unpack(reader.read(_COUNT.size))
    if len(data) - reader.offset != count * ENTRY_BYTES:
        raise MalformedPool(f"pool announces {count} entries but holds another length")
    entries = _entries(reader.read(count * ENTRY_BYTES))
    for index, entry in enumerate(entries if validate or recompute else ()):
        try:
            group.invert_scalar(entry.scalar)  # canonical and non-zero
            group.validate_point(entry.masked, index)
            group.validate_point(entry.unmask, index)
        except ValueError as exc:
            raise MalformedPool(f"pool entry {index} is invalid: {exc}") from None
        if recompute and (
            _multiply(entry.scalar, binding.blinding_point) != entry.masked
            or _multiply_base(entry.scalar) != entry.unmask
        ):
            raise MalformedPool(f"pool entry {index} does not match its scalar")
    return BlindingPool(binding, entries)
