"""What an honest client would have sent, recomputed from an opened sealed opening.

Pure functions over bytes: the monitor hashes each opened item to the group exactly
as the coordinator does (``fedtrace.group`` under the membership domain), applies
the opened blinding (one scalar per query, or ``H(x) + r·C`` per point with the
node's blinding point ``C``) and compares with what the node received. For an
aggregate it also derives the honest indicator: the node's shuffled round-1 answer
unblinded with the opened scalar, tagged as the coordinator tags it
(``fedtrace.aggregate.match_positions``) against the epoch's position tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import blinding, group
from fedtrace.aggregate import match_positions

_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255

#: Indices listed in a finding before the rest are only counted.
MAX_LISTED = 50


class RecomputeError(ValueError):
    """The opening cannot be applied: a malformed scalar, point or a count that does not fit."""


def multiplicative_points(items: Sequence[bytes], scalar: bytes) -> list[bytes]:
    """``H(x)^a`` for every item, in order (``psi.BlindedQuery``'s blinded list)."""
    try:
        return group.blind_items(items, scalar)
    except ValueError as exc:
        raise RecomputeError(f"the opened scalar is unusable: {exc}") from None


def additive_points(
    items: Sequence[bytes], masks: Sequence[bytes], blinding_point: bytes
) -> list[bytes]:
    """``H(x) + r·C`` for every item with its own opened ``r`` (``blinding.blind_hashed``)."""
    if len(masks) != len(items):
        raise RecomputeError(f"the opening holds {len(masks)} masks for {len(items)} items")
    try:
        group.validate_point(blinding_point)
    except group.InvalidPoint as exc:
        raise RecomputeError(f"the node's blinding point is invalid: {exc}") from None
    hashed = group.hash_to_group_many(items)
    points = []
    for index, (point, mask) in enumerate(zip(hashed, masks, strict=True)):
        try:
            group.invert_scalar(mask)  # canonical and non-zero, as the pool's scalars are
        except ValueError:
            raise RecomputeError(f"opened mask {index} is not a canonical scalar") from None
        points.append(blinding.add_points(point, _multiply(mask, blinding_point)))
    return points


def differing(expected: Sequence[bytes], received: Sequence[bytes]) -> list[int]:
    """Indices where the recomputed point is not the point the node received."""
    if len(expected) != len(received):
        raise RecomputeError(
            f"the opening recomputes {len(expected)} points; the node received {len(received)}"
        )
    return [
        i for i, (mine, theirs) in enumerate(zip(expected, received, strict=True)) if mine != theirs
    ]


def honest_positions(tags: bytes, answer_points: Sequence[bytes], scalar: bytes) -> list[int]:
    """The table rows an honest indicator marks: the node's round-1 answer unblinded, tagged."""
    try:
        unblinded = group.exponentiate(answer_points, group.invert_scalar(scalar))
    except ValueError as exc:
        raise RecomputeError(f"the node's round-1 answer cannot be unblinded: {exc}") from None
    try:
        return match_positions(tags, unblinded)
    except ValueError as exc:
        raise RecomputeError(f"the exported position tags are malformed: {exc}") from None


@dataclass(frozen=True)
class IndicatorFinding:
    """How a decrypted indicator departs from the honest one."""

    not_binary: tuple[int, ...]  # positions holding anything but 0 or 1 (weighted)
    outside: tuple[int, ...]  # positions set to 1 that no watchlisted item matched (selective)
    missing: tuple[int, ...]  # matched positions left at 0 (under-counting; not a leak)

    @property
    def misuse(self) -> bool:
        """A weight or a 1 outside the matched rows: the answer reveals more than the grant."""
        return bool(self.not_binary or self.outside)


def indicator_finding(
    values: Sequence[int], row_count: int, honest: Sequence[int]
) -> IndicatorFinding:
    """Compare decrypted indicator slots (residues) over ``row_count`` rows with ``honest``.

    Slots past ``row_count`` multiply no column, so they are not judged.
    """
    if len(values) < row_count:
        raise RecomputeError(f"the indicator covers {len(values)} slots for {row_count} rows")
    wanted = set(honest)
    not_binary, outside, missing = [], [], []
    for row in range(row_count):
        value = values[row]
        if value not in (0, 1):
            not_binary.append(row)
        elif value == 1 and row not in wanted:
            outside.append(row)
        elif value == 0 and row in wanted:
            missing.append(row)
    return IndicatorFinding(tuple(not_binary), tuple(outside), tuple(missing))


def listed(indices: Sequence[int]) -> str:
    """``3, 7, 9`` or ``3, 7, … (120 in all)`` for a human line."""
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED])
    return shown if len(indices) <= MAX_LISTED else f"{shown}, … ({len(indices)} in all)"
