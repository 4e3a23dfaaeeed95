"""The watchlist's hashed points ``H(x)``, kept in memory across one client's matches.

Blinding a watchlist starts with ``hash_to_group`` of every item; an investigator
who repeats a match (the same watchlist against a new epoch, or another dataset
of the same kind) would pay it again on every call. A `HashCache` remembers each
item's point, keyed by the item's bytes (which name its kind), so a repeat match
only adds its fresh mask: one addition per item with additive blinding, one
multiplication with multiplicative blinding, whose scalar is still new per query.

The cache lives in memory only and is never written anywhere: the hashes of a
watchlist let anyone test guesses of its items, so they are as sensitive as the
watchlist itself. It holds at most ``capacity`` items and forgets the least
recently used first; `clear` drops everything (a client does so when closed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from fedtrace import group

#: Items remembered by default: a million points take about 250 MB with their keys.
DEFAULT_CAPACITY = 1_000_000


class HashCache:
    """``hash_to_group`` of watchlist items, remembered across queries (bounded, LRU)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, dst: bytes = group.MEMBERSHIP_DST):
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self.capacity = capacity
        self._dst = dst
        self._points: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._points)

    def __repr__(self) -> str:
        return f"HashCache(<{len(self)} of {self.capacity} items>)"

    def points(self, items: Sequence[bytes]) -> list[bytes]:
        """``group.hash_to_group_many(items)``, hashing only the items not remembered."""
        found: list[bytes | None] = []
        missing: dict[bytes, None] = {}
        with self._lock:
            remembered = self._points
            for item in items:
                point = remembered.get(item)
                if point is None:
                    missing[item] = None
                else:
                    remembered.move_to_end(item)
                found.append(point)
        if not missing:
            return [point for point in found if point is not None]
        fresh = dict(zip(missing, group.hash_to_group_many(list(missing), self._dst), strict=True))
        self._remember(fresh)
        return [
            fresh[item] if point is None else point
            for item, point in zip(items, found, strict=True)
        ]

    def _remember(self, fresh: dict[bytes, bytes]) -> None:
        if not self.capacity:
            return
        with self._lock:
            self._points.update(fresh)
            excess = len(self._points) - self.capacity
            for _ in range(max(0, excess)):
                self._points.popitem(last=False)

    def clear(self) -> None:
        """Forget every remembered point."""
        with self._lock:
            self._points.clear()
