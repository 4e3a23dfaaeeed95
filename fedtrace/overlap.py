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
* ``OverlapTally`` — the coordinator's side: counts final points by origin.
* ``run_overlap`` — the coordinator's schedule over any ``OverlapPeer``
  transport; ``InProcessPeer`` is the in-memory one used by tests and
  ``measure``.
"""

from __future__ import annotations

import itertools
import os
import resource
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedtrace import group

OVERLAP_DST = b"FEDTRACE-V1-OVERLAP_XMD:SHA-512_R255MAP_RO_"

#: Points per batch message: 65,536 x 32 bytes = 2 MiB, half the 4 MiB gRPC limit.
POINTS_PER_BATCH = 65_536

#: Bytes of a final point the tally keeps: 127 bits of entropy (see docs/overlap.md).
DIGEST_BYTES = 16

#: A overlap roster fits a 64-bit partner mask.
MAX_PARTICIPANTS = 64

_NOTICE = struct.Struct("<IQ")
NOTICE_BYTES = _NOTICE.size
_IDENTITY = bytes(group.POINT_BYTES)


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


def batches(
    blob: bytes, record_bytes: int = group.POINT_BYTES, per_batch: int | None = None
) -> Iterator[bytes]:
    """Cut a concatenation of fixed-size records into messages of ``POINTS_PER_BATCH`` at most."""
    step = record_bytes * (per_batch or POINTS_PER_BATCH)
    for start in range(0, len(blob), step):
        yield blob[start : start + step]


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


def _check_batch(batch: bytes) -> int:
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
        count = _check_batch(batch)
        if self._received + count > self.expected_points:
            raise OverlapError(
                f"{self.origin}'s set was announced with {self.expected_points} "
                f"points; more arrived"
            )
        points = group.split_points(batch)
        try:
            raised = b"".join(group.exponentiate(points, self._key, workers=self._workers))
        except group.InvalidPoint as exc:
            index = None if exc.index is None else self._received + exc.index
            raise group.InvalidPoint(exc.reason, index) from None
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
        out = list(batches(_permute_points(self._held)))
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


# --------------------------------------------------------------------------- coordinator side


GroupCount = int | str


@dataclass
class _Counted:
    masks: npt.NDArray[np.uint64]  # per final point, in origin-roster order then position
    offsets: list[int]  # start of each origin's run in ``masks``


class OverlapTally:
    """The coordinator's count: for each final point, the set of origins that hold it.

    Only ``DIGEST_BYTES`` of each final point are kept (16 bytes per point and
    no Python object per point); counting sorts them with numpy.
    """

    def __init__(self, plan: OverlapPlan) -> None:
        self.plan = plan
        self._digests: dict[str, bytearray] = {code: bytearray() for code in plan.roster}
        self._closed: set[str] = set()
        self._counted: _Counted | None = None

    def add_final(self, origin: str, batch: bytes) -> None:
        """One batch of ``origin``'s fully blinded set, in the order the last hop sent it."""
        self.plan.index(origin)
        if origin in self._closed:
            raise OverlapError(f"{origin}'s set is already complete")
        count = _check_batch(batch)
        rows = np.frombuffer(batch, dtype=np.uint8).reshape(count, group.POINT_BYTES)
        # Cheap checks only: nobody exponentiates a final point again, so a
        # non-canonical one could only fail to match. The identity would match
        # everything, and a set high bit is a second encoding.
        if count and (rows[:, 31] & 0x80).any():
            bad = int(np.flatnonzero(rows[:, 31] & 0x80)[0])
            raise group.InvalidPoint("not a canonical ristretto255 encoding", bad)
        if count and (~rows.any(axis=1)).any():
            bad = int(np.flatnonzero(~rows.any(axis=1))[0])
            raise group.InvalidPoint("identity element", bad)
        self._digests[origin] += rows[:, :DIGEST_BYTES].tobytes()
        self._counted = None

    def close_origin(self, origin: str, expected_points: int) -> None:
        """Mark ``origin``'s set complete; its final count must equal its announced size."""
        got = len(self._digests[origin]) // DIGEST_BYTES
        if got != expected_points:
            raise OverlapError(
                f"{origin}'s set came back with {got} points, {expected_points} were sent"
            )
        self._closed.add(origin)

    def set_size(self, origin: str) -> int:
        return len(self._digests[origin]) // DIGEST_BYTES

    def _count(self) -> _Counted:
        if self._counted is not None:
            return self._counted
        sizes = [len(self._digests[code]) // DIGEST_BYTES for code in self.plan.roster]
        offsets = list(itertools.accumulate(sizes, initial=0))
        total = offsets[-1]
        keys = np.empty((total, 2), dtype="<u8")
        for bit, code in enumerate(self.plan.roster):
            view = np.frombuffer(self._digests[code], dtype="<u8").reshape(-1, 2)
            keys[offsets[bit] : offsets[bit + 1]] = view
            del view  # release the export so the bytearray may grow again
        origin_bits = np.zeros(total, dtype=np.uint64)
        for bit in range(len(self.plan.roster)):
            origin_bits[offsets[bit] : offsets[bit + 1]] = np.uint64(1 << bit)
        order = np.argsort(keys[:, 0], kind="stable")
        high, low = keys[order, 0], keys[order, 1]
        same_high = high[1:] == high[:-1]
        if (same_high & (low[1:] != low[:-1])).any():
            # Two different points agree on their first 8 bytes (rare): sort on all 16.
            order = np.lexsort((keys[:, 1], keys[:, 0]))
            high, low = keys[order, 0], keys[order, 1]
            same_high = high[1:] == high[:-1]
        new_run = np.ones(total, dtype=bool)
        if total:
            new_run[1:] = ~(same_high & (low[1:] == low[:-1]))
        masks = np.zeros(total, dtype=np.uint64)
        if total:
            run_of = np.cumsum(new_run) - 1
            run_masks = np.bitwise_or.reduceat(origin_bits[order], np.flatnonzero(new_run))
            masks[order] = run_masks[run_of]
        self._counted = _Counted(masks=masks, offsets=offsets)
        return self._counted

    def _exact_counts(self) -> dict[int, int]:
        """Distinct points per exact origin mask (a point held by a set of origins counts once)."""
        counted = self._count()
        # Each distinct point appears once per origin holding it; count it at
        # the lowest origin that holds it, so it counts exactly once.
        counts: dict[int, int] = {}
        for bit in range(len(self.plan.roster)):
            start, stop = counted.offsets[bit], counted.offsets[bit + 1]
            masks = counted.masks[start:stop]
            lower = np.uint64((1 << bit) - 1)
            mine = masks[(masks & lower) == 0]
            values, tallies = np.unique(mine, return_counts=True)
            for value, tally in zip(values.tolist(), tallies.tolist(), strict=True):
                counts[int(value)] = counts.get(int(value), 0) + int(tally)
        return counts

    def groups(self, min_cohort: int = 1) -> dict[frozenset[str], GroupCount]:
        """Items held by exactly each group of two or more participants (every group listed).

        A count in ``1 .. min_cohort-1`` is reported as ``"< min_cohort"``;
        zeros are reported (docs/overlap.md, "Minimum cohort").
        """
        exact = self._exact_counts()
        result: dict[frozenset[str], GroupCount] = {}
        for mask in _group_masks(len(self.plan.roster)):
            result[self.plan.members(mask)] = _cohort(exact.get(mask, 0), min_cohort)
        return result

    def pairwise(self, min_cohort: int = 1) -> dict[tuple[str, str], GroupCount]:
        """Items two participants both hold (whoever else holds them), roster order in the key.

        With a cohort, a pair is also suppressed when any exact group
        containing it is, so the matrix can never be used to recover a
        suppressed group count by subtraction.
        """
        exact = self._exact_counts()
        result: dict[tuple[str, str], GroupCount] = {}
        for first, second in itertools.combinations(range(len(self.plan.roster)), 2):
            pair = 1 << first | 1 << second
            covering = [count for mask, count in exact.items() if mask & pair == pair]
            total = sum(covering)
            hides = any(0 < count < min_cohort for count in covering)
            value: GroupCount = _cohort(total, min_cohort)
            if hides and isinstance(value, int):
                value = f"< {min_cohort}" if total < min_cohort else "suppressed"
            result[(self.plan.roster[first], self.plan.roster[second])] = value
        return result

    def shared_masks(self, origin: str) -> npt.NDArray[np.uint64]:
        """Per position of ``origin``'s final set, the mask of the other origins holding it."""
        if not self.plan.reveal:
            raise OverlapError(
                f"overlap {self.plan.overlap_id} does not reveal items to owners: "
                "the relays shuffled, positions mean nothing"
            )
        bit = self.plan.index(origin)
        counted = self._count()
        masks = counted.masks[counted.offsets[bit] : counted.offsets[bit + 1]]
        return masks & np.uint64(~(1 << bit) & ((1 << 64) - 1))

    def shared_for(self, origin: str) -> list[frozenset[str]]:
        """``shared_masks`` as jurisdiction sets (empty where nobody else holds the item)."""
        return [self.plan.members(int(mask)) for mask in self.shared_masks(origin).tolist()]

    def shared_notices(self, origin: str) -> Iterator[bytes]:
        """The notices for ``origin``: ``(position, partner mask)`` for each shared position."""
        masks = self.shared_masks(origin)
        positions = np.flatnonzero(masks)
        records = np.empty(len(positions), dtype=np.dtype([("position", "<u4"), ("mask", "<u8")]))
        records["position"] = positions
        records["mask"] = masks[positions]
        yield from batches(records.tobytes(), NOTICE_BYTES)


def _group_masks(count: int) -> list[int]:
    masks = [m for m in range(1, 1 << count) if m.bit_count() >= 2]
    return sorted(masks, key=lambda m: (m.bit_count(), [b for b in range(count) if m >> b & 1]))


def _cohort(count: int, min_cohort: int) -> GroupCount:
    if min_cohort < 1:
        raise ValueError(f"min_cohort must be at least 1, got {min_cohort}")
    return f"< {min_cohort}" if 0 < count < min_cohort else count


# --------------------------------------------------------------------------- schedule


class OverlapPeer(Protocol):
    """How the coordinator reaches one participant: in memory here, over gRPC later."""

    @property
    def jurisdiction(self) -> str: ...

    def open(self, plan: OverlapPlan) -> int:
        """Join the overlap (node draws its key); returns the size of its set."""
        ...

    def initial(self, overlap_id: str) -> Iterator[bytes]: ...

    def relay(
        self, overlap_id: str, origin: str, expected_points: int, incoming: Iterator[bytes]
    ) -> Iterator[bytes]: ...

    def deliver_shared(self, overlap_id: str, notices: Iterable[bytes]) -> None: ...

    def close(self, overlap_id: str) -> None: ...


@dataclass(frozen=True)
class Relayed:
    """One message the coordinator sent or received, for transcripts and tests."""

    sender: str  # a jurisdiction, or "coordinator"
    receiver: str
    origin: str  # whose set this is
    hop: int  # keys on the points: 1 for an initial batch, n for a final one
    payload: bytes


Observer = Callable[[Relayed], None]


def _tap(
    stream: Iterable[bytes],
    observe: Observer | None,
    sender: str,
    receiver: str,
    origin: str,
    hop: int,
) -> Iterator[bytes]:
    for batch in stream:
        if observe is not None:
            observe(Relayed(sender, receiver, origin, hop, batch))
        yield batch


def run_overlap(
    plan: OverlapPlan,
    peers: Mapping[str, OverlapPeer],
    *,
    observe: Observer | None = None,
    concurrent: bool = False,
) -> OverlapTally:
    """The coordinator's schedule: every set around its ring into the tally, then notices.

    Each set is streamed hop to hop without the coordinator holding it. With
    ``concurrent``, every origin's route runs on its own thread, so in each
    round every node is relaying one set (``plan.rounds()``) while its own set
    travels elsewhere; the first failure stops the overlap and closes it on every
    participant.
    """
    sizes = {code: peers[code].open(plan) for code in plan.roster}
    tally = OverlapTally(plan)
    counting = threading.Lock()

    def route_one(origin: str, hops: list[str]) -> None:
        stream: Iterator[bytes] = _tap(
            peers[origin].initial(plan.overlap_id), observe, origin, "coordinator", origin, 1
        )
        for depth, relay in enumerate(hops, start=1):
            to_relay = _tap(stream, observe, "coordinator", relay, origin, depth)
            stream = _tap(
                peers[relay].relay(plan.overlap_id, origin, sizes[origin], to_relay),
                observe,
                relay,
                "coordinator",
                origin,
                depth + 1,
            )
        for batch in stream:
            with counting:
                tally.add_final(origin, batch)
        with counting:
            tally.close_origin(origin, sizes[origin])

    try:
        routes = plan_route(plan.roster)
        if concurrent:
            pool = ThreadPoolExecutor(max_workers=len(routes), thread_name_prefix="overlap")
            try:
                futures = [pool.submit(route_one, origin, hops) for origin, hops in routes]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future in done and future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        else:
            for origin, hops in routes:
                route_one(origin, hops)
        if plan.reveal:
            for origin in plan.roster:
                notices = _tap(
                    tally.shared_notices(origin),
                    observe,
                    "coordinator",
                    origin,
                    origin,
                    len(plan.roster),
                )
                peers[origin].deliver_shared(plan.overlap_id, notices)
    finally:
        for code in plan.roster:
            peers[code].close(plan.overlap_id)
    return tally


@dataclass
class InProcessPeer:
    """A participant in this process: the in-memory transport for tests and ``measure``."""

    jurisdiction: str
    items: Sequence[bytes]
    workers: int | None = None
    shared: list[SharedItem] = field(default_factory=list)
    party: OverlapParty | None = field(default=None, repr=False)

    def open(self, plan: OverlapPlan) -> int:
        self.party = OverlapParty(plan, self.jurisdiction, self.items, workers=self.workers)
        return self.party.size

    def _party(self, overlap_id: str) -> OverlapParty:
        if self.party is None or self.party.plan.overlap_id != overlap_id:
            raise OverlapError(f"{self.jurisdiction} has no open overlap {overlap_id}")
        return self.party

    def initial(self, overlap_id: str) -> Iterator[bytes]:
        return self._party(overlap_id).initial_batches()

    def relay(
        self, overlap_id: str, origin: str, expected_points: int, incoming: Iterator[bytes]
    ) -> Iterator[bytes]:
        return self._party(overlap_id).relay_hop(origin, expected_points).run(incoming)

    def deliver_shared(self, overlap_id: str, notices: Iterable[bytes]) -> None:
        self.shared = self._party(overlap_id).learn_shared(notices)

    def close(self, overlap_id: str) -> None:
        if self.party is not None and self.party.plan.overlap_id == overlap_id:
            self.party.close()


# --------------------------------------------------------------------------- benchmark


def synthetic_sets(
    n_nodes: int, n_items: int, *, shared_fraction: float = 0.1, seed: int = 1
) -> dict[str, list[bytes]]:
    """Wallet-like sets with planted overlaps: about ``shared_fraction`` of each set is shared.

    Item ``j`` of the shared pool is held by the nodes whose bit is set in
    ``j % 2^n`` (pools cycle through every group of two or more nodes).
    """
    codes = [f"N{index}" for index in range(n_nodes)]
    groups = [m for m in range(1, 1 << n_nodes) if m.bit_count() >= 2]
    sets: dict[str, list[bytes]] = {code: [] for code in codes}
    shared = int(n_items * shared_fraction)
    pool = 0
    while min(len(items) for items in sets.values()) < shared:
        mask = groups[pool % len(groups)]
        item = f"fedtrace:v1:wallet:shared-{seed}-{pool:010d}".encode()
        for bit, code in enumerate(codes):
            if mask >> bit & 1 and len(sets[code]) < shared:
                sets[code].append(item)
        pool += 1
    for code in codes:
        own = n_items - len(sets[code])
        sets[code].extend(f"fedtrace:v1:wallet:{code}-{seed}-{j:010d}".encode() for j in range(own))
    return sets


def measure(
    n_nodes: int, n_items: int, *, reveal: bool = True, workers: int | None = None
) -> dict[str, float]:
    """One in-process overlap of ``n_nodes`` x ``n_items``; seconds, rates and peak memory.

    All nodes share this machine's cores, so ``total_seconds`` is the sum of
    every node's work; in a federation each node's share runs on its own host.
    """
    sets = synthetic_sets(n_nodes, n_items)
    peers = {code: InProcessPeer(code, items, workers=workers) for code, items in sets.items()}
    plan = OverlapPlan.new(list(sets), reveal=reveal)
    group.exponentiate(
        [group.hash_to_group(b"warm-up", OVERLAP_DST)] * 2 * 20_001,
        group.random_scalar(),
        workers=workers,
    )  # start the pool outside the clock
    exponentiations = n_nodes * n_nodes * n_items
    started = time.perf_counter()
    tally = run_overlap(plan, peers)
    overlap_seconds = time.perf_counter() - started
    tally._counted = None  # time the count on its own, not from run_overlap's cache
    started = time.perf_counter()
    tally.groups()
    tally.pairwise()
    count_seconds = time.perf_counter() - started
    return {
        "nodes": float(n_nodes),
        "items_per_node": float(n_items),
        "reveal": float(reveal),
        "scalar_multiplications": float(exponentiations),
        "overlap_seconds": round(overlap_seconds, 3),
        "count_seconds": round(count_seconds, 3),  # tally only, also inside overlap_seconds
        "multiplications_per_second": round(exponentiations / overlap_seconds),
        # Each set goes up once, then down and up again at each of n-1 hops.
        "point_bytes_via_coordinator": float(
            n_nodes * n_items * (2 * n_nodes - 1) * group.POINT_BYTES
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual benchmark entry point
    import json
    import sys

    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    items = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    print(json.dumps(measure(nodes, items), indent=2))
