"""The coordinator's side of the overlap query: the relay schedule and the tally.

``run_overlap`` relays every node's blinded set around the ring of the other
nodes (``fedtrace.overlap.plan_route``) over any ``OverlapPeer`` transport and
counts the final points by origin in an ``OverlapTally``. ``InProcessPeer`` is
the in-memory peer used by tests and ``fedtrace.bench.overlap``. Like
``fedtrace.overlap`` it knows nothing of the network: every message is bytes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedtrace import group
from fedtrace import overlap as overlap_protocol
from fedtrace.overlap import (
    DIGEST_BYTES,
    NOTICE_BYTES,
    OverlapError,
    OverlapParty,
    OverlapPlan,
    SharedItem,
    check_batch,
    plan_route,
)
from fedtrace.wire import batched

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
        count = check_batch(batch)
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
        yield from batched(records.tobytes(), NOTICE_BYTES, overlap_protocol.POINTS_PER_BATCH)


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
        """Fix the plan at the node (it checks every member's join, draws its key and blinds
        its set, committing to it); returns the size of its set."""
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
    tally = OverlapTally(plan)
    counting = threading.Lock()
    sizes: dict[str, int] = {}

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
        # Each node blinds its own set at open: concurrently when the routes are.
        if concurrent:
            with ThreadPoolExecutor(max_workers=len(plan.roster)) as opening:
                opened = list(opening.map(lambda code: peers[code].open(plan), plan.roster))
        else:
            opened = [peers[code].open(plan) for code in plan.roster]
        sizes.update(zip(plan.roster, opened, strict=True))
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
    """A participant in this process: the in-memory transport for tests and benchmarks."""

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
