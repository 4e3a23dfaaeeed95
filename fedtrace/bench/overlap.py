"""The overlap query in one process: every node an ``InProcessPeer``, seconds and peak memory.

    python -m fedtrace.bench.overlap [NODES [ITEMS]]    # default 3 x 100,000; prints JSON

``synthetic_sets`` plants overlaps in wallet-like sets; tests use it too.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from fedtrace import group
from fedtrace.overlap import OVERLAP_DST, OverlapPlan
from fedtrace.overlap_ring import InProcessPeer, run_overlap


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    nodes = int(args[0]) if args else 3
    items = int(args[1]) if len(args) > 1 else 100_000
    print(json.dumps(measure(nodes, items), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
