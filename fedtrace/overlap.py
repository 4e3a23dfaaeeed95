"""The overlap query: which groups of jurisdictions share items, by commutative blinding.

No watchlist and no raw records: each participating node blinds its own set
with a fresh overlap key, and the coordinator relays every node's blinded set
around a ring of the other nodes until each item carries every key,
``H(y)^(k_1 ... k_n)``. Equal items from different nodes are then equal points,
and the coordinator counts, per point, which origins hold it. See
``docs/overlap.md`` for the protocol, what each party learns and the leaks that
remain.

This module knows nothing of the network. Every message is ``bytes``:

* a *point batch* is a concatenation of 32-byte ristretto255 encodings, at most
  ``POINTS_PER_BATCH`` of them (2 MiB);
* a *shared notice* (own-item reveal only) is a concatenation of 12-byte
  records ``position: u32 LE || partners: u64 LE``, where ``partners`` is a
  bitmask over ``OverlapPlan.roster``.

Roles:

* ``OverlapPlan`` — the roster (ring order), the overlap id and whether owners
  learn their shared items; the same value on every side.
* ``OverlapParty`` — a node's side: its key, its initial batches, its relay
  hops (``RelayHop``) and, with reveal, turning notices into its own records.
* the coordinator's side (counting final points by origin, and the schedule
  that relays every set around the ring) is ``fedtrace.overlap_ring``.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import group, parallel
from fedtrace.wire import POINTS_PER_BATCH as POINTS_PER_BATCH  # re-exported: tests shrink it
from fedtrace.wire import batched

OVERLAP_DST = b"FEDTRACE-V1-OVERLAP_XMD:SHA-512_R255MAP_RO_"

#: Points per batch message: 65,536 x 32 bytes = 2 MiB, half the 4 MiB gRPC limit.

#: Bytes of a final point the tally keeps: 127 bits of entropy (see docs/overlap.md).
DIGEST_BYTES = 16

#: A overlap roster fits a 64-bit partner mask.
MAX_PARTICIPANTS = 64

_NOTICE = struct.Struct("<IQ")
NOTICE_BYTES = _NOTICE.size
_IDENTITY = bytes(group.POINT_BYTES)

#: Chunks per pool worker for one relayed batch: an unlucky slow chunk idles no core for long.
_CHUNKS_PER_WORKER = 4

# libsodium's variable-base multiplication; rbcl raises RuntimeError where libsodium
# refuses the input (not a canonical encoding of a group element) or the result
# (the identity, which for a non-zero scalar means an identity input).
_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255
_NON_CANONICAL = "not a canonical ristretto255 encoding"


class OverlapError(ValueError):
    """A overlap message or request that breaks the plan (wrong origin, count, format)."""


# --------------------------------------------------------------------------- plan


def plan_route(nodes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """For each origin, its relay hops: the ring successors ``i+1, i+2, ..., i+n-1``.

    The ring makes every hop a different key set (docs/overlap.md, "Route"): a
    node never sees two batches blinded under the same keys, the relay never
    sees two intermediate batches under the same keys, and each node is the
    last hop of exactly one foreign set.
    """
    roster = list(nodes)
    count = len(roster)
    return [
        (origin, [roster[(index + step) % count] for step in range(1, count)])
        for index, origin in enumerate(roster)
    ]


@dataclass(frozen=True)
class OverlapPlan:
    """What every side of one overlap agrees on before any point is blinded."""

    overlap_id: str
    roster: tuple[str, ...]  # ring order; bit i of a partner mask is roster[i]
    reveal: bool  # owners learn their shared items; relays then keep order

    def __post_init__(self) -> None:
        if not self.overlap_id:
            raise OverlapError("a overlap needs an id")
        if len(self.roster) < 2:
            raise OverlapError(f"a overlap needs at least 2 participants, got {len(self.roster)}")
        if len(self.roster) > MAX_PARTICIPANTS:
            raise OverlapError(f"a overlap takes at most {MAX_PARTICIPANTS} participants")
        if len(set(self.roster)) != len(self.roster):
            raise OverlapError(f"a participant appears twice in {list(self.roster)}")

    @classmethod
    def new(cls, roster: Sequence[str], *, reveal: bool) -> OverlapPlan:
        return cls(overlap_id=secrets.token_hex(16), roster=tuple(roster), reveal=reveal)

    def index(self, jurisdiction: str) -> int:
        try:
            return self.roster.index(jurisdiction)
        except ValueError:
            raise OverlapError(f"{jurisdiction} is not in overlap {self.overlap_id}") from None

    def route(self, origin: str) -> list[str]:
        """The nodes that relay ``origin``'s set, in order."""
        start = self.index(origin)
        count = len(self.roster)
        return [self.roster[(start + step) % count] for step in range(1, count)]

    def hop_of(self, relay: str, origin: str) -> int:
        """At which hop (1-based) ``relay`` handles ``origin``'s set."""
        distance = (self.index(relay) - self.index(origin)) % len(self.roster)
        if distance == 0:
            raise OverlapError(f"{relay} never relays its own set")
        return distance

    def rounds(self) -> list[list[tuple[str, str]]]:
        """``(origin, relay)`` pairs by round: in round h every node relays exactly one set."""
        count = len(self.roster)
        return [
            [(self.roster[(index - hop) % count], relay) for index, relay in enumerate(self.roster)]
            for hop in range(1, count)
        ]

    def mask_of(self, jurisdictions: Iterable[str]) -> int:
        mask = 0
        for jurisdiction in jurisdictions:
            mask |= 1 << self.index(jurisdiction)
        return mask

    def members(self, mask: int) -> frozenset[str]:
        return frozenset(code for bit, code in enumerate(self.roster) if mask >> bit & 1)


# --------------------------------------------------------------------------- helpers


def _random_permutation(count: int) -> npt.NDArray[np.intp]:
    """A uniformly random permutation from the OS CSPRNG (64-bit random keys, sorted).

    Two equal keys (probability below count^2 / 2^65) only make the order of
    that pair follow the input; numpy's own generators are not used because
    they are not cryptographic.
    """
    keys = np.frombuffer(os.urandom(8 * count), dtype="<u8")
    return np.argsort(keys, kind="stable")


def _permute_points(blob: bytes | bytearray) -> bytes:
    if not blob:
        return b""
    rows = np.frombuffer(bytes(blob), dtype=np.uint8).reshape(-1, group.POINT_BYTES)
    return rows[_random_permutation(len(rows))].tobytes()


def _raise_chunk(blob: bytes, key: bytes, offset: int) -> bytes:
    """Pool task: every 32-byte point of ``blob`` times ``key``; ``InvalidPoint`` at the first
    the multiplication refuses (an identity or a non-canonical encoding), indexed from
    ``offset``. Module-level so workers import it by name."""
    multiply = _multiply
    step = group.POINT_BYTES
    raised = []
    for start in range(0, len(blob), step):
        point = blob[start : start + step]
        try:
            raised.append(multiply(key, point))
        except RuntimeError:
            reason = "identity element" if point == _IDENTITY else _NON_CANONICAL
            raise group.InvalidPoint(reason, offset + start // step) from None
    return b"".join(raised)


def _first_invalid(batch: bytes, offset: int, stop: int) -> group.InvalidPoint:
    """The refusal for the lowest invalid point among the first ``stop`` (error path only)."""
    for index in range(stop + 1):
        try:
            group.validate_point(batch[index * group.POINT_BYTES : (index + 1) * group.POINT_BYTES])
        except group.InvalidPoint as exc:
            return group.InvalidPoint(exc.reason, offset + index)
    raise AssertionError(f"point {offset + stop} was refused but validates")  # pragma: no cover


def raise_points(batch: bytes, key: bytes, *, offset: int = 0, workers: int | None = None) -> bytes:
    """Every point of ``batch`` raised to ``key``, each validated once, as one blob.

    ``group.exponentiate`` validates every point and then multiplies it, but the
    multiplication validates too: libsodium decodes the point and refuses a
    non-canonical or off-group encoding and an identity result. The only input it
    accepts that RFC 9496 forbids is one with bit 255 set (libsodium ignores that
    bit), so that bit is checked over the whole batch at once and the separate
    per-point validation is left out: the same points are refused, for the same
    reasons. ``InvalidPoint`` names the lowest bad index, counted from
    ``offset``. Large batches are spread over the process pool.
    """
    count = len(batch) // group.POINT_BYTES
    if len(batch) % group.POINT_BYTES:
        raise group.InvalidPoint(
            f"wrong length: {len(batch)} bytes is not a multiple of {group.POINT_BYTES}"
        )
    if count == 0:
        return b""
    high = np.flatnonzero(np.frombuffer(batch, dtype=np.uint8)[31 :: group.POINT_BYTES] & 0x80)
    if len(high):
        raise _first_invalid(batch, offset, int(high[0]))
    resolved = parallel.default_workers(workers)
    try:
        if resolved == 1 or count <= group.PARALLEL_THRESHOLD:
            return _raise_chunk(batch, key, offset)
        step = group.POINT_BYTES
        chunks: list[tuple[object, ...]] = [
            (batch[start * step : stop * step], key, offset + start)
            for start, stop in parallel.chunk_bounds(count, resolved * _CHUNKS_PER_WORKER)
        ]
        return b"".join(parallel.run_chunks(_raise_chunk, chunks, resolved))
    except group.InvalidPoint as exc:
        # A later chunk may have failed first: report the lowest bad point of the batch.
        assert exc.index is not None
        raise _first_invalid(batch, offset, exc.index - offset) from None


def check_batch(batch: bytes) -> int:
    if len(batch) % group.POINT_BYTES:
        raise group.InvalidPoint(
            f"wrong length: {len(batch)} bytes is not a multiple of {group.POINT_BYTES}"
        )
    count = len(batch) // group.POINT_BYTES
    if count > POINTS_PER_BATCH:
        raise OverlapError(f"a batch holds at most {POINTS_PER_BATCH} points, got {count}")
    return count


# --------------------------------------------------------------------------- node side


class RelayHop:
    """One node's pass over one foreign set: raise every point to the overlap key.

    ``add`` takes each incoming batch and returns the batches ready to send on:
    at once when the plan keeps order (reveal), otherwise nothing until
    ``finish``, which shuffles the whole set (not per batch, so a position
    cannot even be traced to its batch) and returns it.
    """

    def __init__(
        self, key: bytes, *, origin: str, expected_points: int, shuffle: bool, workers: int | None
    ) -> None:
        self._key = key
        self.origin = origin
        self.expected_points = expected_points
        self.shuffle = shuffle
        self._workers = workers
        self._received = 0
        self._held = bytearray()
        self._finished = False

    def __repr__(self) -> str:
        return f"RelayHop(origin={self.origin!r}, {self._received}/{self.expected_points} points)"

    def add(self, batch: bytes) -> list[bytes]:
        if self._finished:
            raise OverlapError(f"the hop over {self.origin}'s set has already finished")
        count = check_batch(batch)
        if self._received + count > self.expected_points:
            raise OverlapError(
                f"{self.origin}'s set was announced with {self.expected_points} "
                f"points; more arrived"
            )
        raised = raise_points(batch, self._key, offset=self._received, workers=self._workers)
        self._received += count
        if self.shuffle:
            self._held += raised
            return []
        return [raised] if raised else []

    def finish(self) -> list[bytes]:
        if self._finished:
            raise OverlapError(f"the hop over {self.origin}'s set has already finished")
        if self._received != self.expected_points:
            raise OverlapError(
                f"{self.origin}'s set was announced with {self.expected_points} "
                f"points; {self._received} arrived"
            )
        self._finished = True
        if not self.shuffle:
            return []
        out = list(batched(_permute_points(self._held), group.POINT_BYTES, POINTS_PER_BATCH))
        self._held = bytearray()
        return out

    def run(self, incoming: Iterable[bytes]) -> Iterator[bytes]:
        """The whole hop as a stream: what a servicer's response iterator yields."""
        for batch in incoming:
            yield from self.add(batch)
        yield from self.finish()


@dataclass(frozen=True)
class SharedItem:
    """One of the node's own items that other participants hold too."""

    item: bytes
    partners: frozenset[str]


class OverlapParty:
    """A node's side of one overlap: a fresh key, its own shuffled set, its relay hops.

    The key is drawn here and lives only as long as this object (``close``
    drops it): no other overlap and no membership epoch can reuse it.
    """

    def __init__(
        self,
        plan: OverlapPlan,
        jurisdiction: str,
        items: Iterable[bytes],
        *,
        workers: int | None = None,
    ) -> None:
        self.plan = plan
        self.jurisdiction = jurisdiction
        self._bit = plan.index(jurisdiction)
        distinct = sorted(set(items))
        # The node's own order: a CSPRNG permutation kept only here, so the
        # relay cannot use positions (e.g. sortedness) and, with reveal, the
        # node can map positions back to its records.
        permutation = _random_permutation(len(distinct)).tolist()
        self._order: list[bytes] = [distinct[i] for i in permutation]
        self._key: bytes | None = group.random_scalar()
        self._workers = workers
        self._relayed: set[str] = set()

    def __repr__(self) -> str:
        return f"OverlapParty({self.jurisdiction!r}, <{len(self._order)} items>)"

    @property
    def size(self) -> int:
        """How many distinct items this node contributes (announced to all: a known leak)."""
        return len(self._order)

    def _overlap_key(self) -> bytes:
        if self._key is None:
            raise OverlapError(f"overlap {self.plan.overlap_id} is closed at {self.jurisdiction}")
        return self._key

    def initial_batches(self) -> Iterator[bytes]:
        """``H(y)^k`` over the own set, in the node's private random order, batch by batch."""
        key = self._overlap_key()
        for start in range(0, len(self._order), POINTS_PER_BATCH):
            chunk = self._order[start : start + POINTS_PER_BATCH]
            yield b"".join(group.blind_items(chunk, key, dst=OVERLAP_DST, workers=self._workers))

    def relay_hop(self, origin: str, expected_points: int) -> RelayHop:
        """Start this node's one pass over ``origin``'s set (refused twice, or for its own)."""
        if origin == self.jurisdiction:
            raise OverlapError(f"{self.jurisdiction} does not relay its own set")
        self.plan.hop_of(self.jurisdiction, origin)  # origin must be on the roster
        if origin in self._relayed:
            raise OverlapError(
                f"{self.jurisdiction} has already relayed {origin}'s set "
                f"in overlap {self.plan.overlap_id}"
            )
        if expected_points < 0:
            raise OverlapError(f"a set cannot have {expected_points} points")
        self._relayed.add(origin)
        return RelayHop(
            self._overlap_key(),
            origin=origin,
            expected_points=expected_points,
            shuffle=not self.plan.reveal,
            workers=self._workers,
        )

    def learn_shared(self, notices: Iterable[bytes]) -> list[SharedItem]:
        """Turn the coordinator's notices into own records and the partners holding them."""
        if not self.plan.reveal:
            raise OverlapError(f"overlap {self.plan.overlap_id} does not reveal items to owners")
        allowed = ((1 << len(self.plan.roster)) - 1) & ~(1 << self._bit)
        shared: dict[int, int] = {}
        for notice in notices:
            if len(notice) % NOTICE_BYTES:
                raise OverlapError(f"a shared notice is a multiple of {NOTICE_BYTES} bytes")
            for position, mask in _NOTICE.iter_unpack(notice):
                if position >= len(self._order):
                    raise OverlapError(f"notice names position {position} of {len(self._order)}")
                if mask == 0 or mask & ~allowed:
                    raise OverlapError(
                        f"notice for position {position} has partner mask "
                        f"{mask:#x}, outside the roster or naming this node"
                    )
                if position in shared:
                    raise OverlapError(f"position {position} appears twice in the notices")
                shared[position] = mask
        return [
            SharedItem(self._order[position], self.plan.members(mask))
            for position, mask in sorted(shared.items())
        ]

    def close(self) -> None:
        """Forget the key and the order: nothing under this overlap can be produced again."""
        self._key = None
        self._order = []
