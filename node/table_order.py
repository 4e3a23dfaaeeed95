"""The secret order of an epoch table, re-derivable from the epoch's key.

The epoch table T lists the blinded items in an order the investigator must not
be able to predict. Drawing that order from a PRF keyed by the epoch's secret
scalar (SHAKE-256 over a domain tag and the key, 64 bits per row, rows sorted
by their draw) makes it as unpredictable as a fresh shuffle while letting the
node recompute which dataset item sits at each row of T. The aggregate query
needs exactly that mapping (`node.aggregate`), and the node never has to store
it: it is as secret as the key it is derived from and dies with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedtrace import group

_ORDER_DOMAIN = b"fedtrace-v1 epoch table order\x00"
_KEY_BYTES = 8


def table_permutation(count: int, key: bytes) -> npt.NDArray[np.intp]:
    """`table_order` as a numpy index array (no Python list: an epoch build of millions)."""
    if count < 2:
        return np.arange(count, dtype=np.intp)
    stream = hashlib.shake_256(_ORDER_DOMAIN + key).digest(_KEY_BYTES * count)
    draws = np.frombuffer(stream, dtype="<u8")
    return np.argsort(draws, kind="stable").astype(np.intp, copy=False)


def table_order(count: int, key: bytes) -> list[int]:
    """Row j of the epoch table holds item ``table_order(count, key)[j]`` of the sorted items."""
    order: list[int] = table_permutation(count, key).tolist()
    return order


def ordered_table(items: Sequence[bytes], key: bytes, *, workers: int | None = None) -> list[bytes]:
    """The epoch table ``{H(y)^key}`` in the key-derived secret order."""
    blinded = group.blind_items(items, key, workers=workers)
    return [blinded[index] for index in table_order(len(blinded), key)]
