"""The overlap query in one process: every node an ``InProcessPeer``, seconds and peak memory.

    python -m fedtrace.bench.overlap [NODES [ITEMS]]    # default 3 x 100,000; prints JSON

``synthetic_sets`` plants overlaps in wallet-like sets; tests use it too.
``MultiplicationBound`` is the k²·N bound both overlap benchmarks report against:
every scalar multiplication of the overlap spread over every core at the bare
single-core rate, measured in the same run (docs/overlap.md, "Performance").
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import group, parallel
from fedtrace.overlap import OVERLAP_DST, OverlapPlan
from fedtrace.overlap_ring import InProcessPeer, run_overlap

#: Bare multiplications timed for one single-core rate sample (about a second).
RATE_SAMPLE = 15_000

_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255


def single_core_multiply_rate(count: int = RATE_SAMPLE) -> float:
    """Bare ristretto255 scalar multiplications per CPU second on one core (rbcl, this process).

    No hashing, no validation, no batching: the figure the k²·N bound divides by.
    Timed in CPU time, not wall time, so a process that shares the core while
    it runs does not lower the rate (and so loosen the bound).
    """
    scalar = group.random_scalar()
    points = [group.hash_to_group(index.to_bytes(8, "little"), OVERLAP_DST) for index in range(64)]
    multiply = _multiply
    started = time.thread_time()
    for index in range(count):
        multiply(scalar, points[index & 63])
    return count / (time.thread_time() - started)


@dataclass(frozen=True)
class MultiplicationBound:
    """The k²·N bound of one overlap: its scalar multiplications on every core at the bare rate.

    An overlap of k nodes with N items each raises every set to every key:
    k·k·N multiplications. Hashing to the group, validation, transport and the
    tally are all extra, so a measured time is reported as a ratio to this bound.
    """

    nodes: int
    items_per_node: int
    cores: int
    single_core_rate: float  # bare multiplications per second, one core, same run

    @property
    def multiplications(self) -> int:
        return self.nodes * self.nodes * self.items_per_node

    @property
    def seconds(self) -> float:
        """Wall seconds with every core multiplying and nothing else."""
        return self.multiplications / (self.cores * self.single_core_rate)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the multiplications alone."""
        return self.multiplications / self.single_core_rate

    def figures(self, seconds: float) -> dict[str, float]:
        """The bound and the ratio of ``seconds`` (a measured wall time) to it."""
        return {
            "cores": float(self.cores),
            "single_core_multiply_rate": round(self.single_core_rate),
            "bound_seconds": round(self.seconds, 2),
            "ratio_to_bound": round(seconds / self.seconds, 3),
        }


def multiplication_bound(
    nodes: int, items_per_node: int, rates: list[float]
) -> MultiplicationBound:
    """The bound from this run's rate samples: the fastest one, so the ratio is never flattered
    by a sample taken while something else held a core."""
    return MultiplicationBound(nodes, items_per_node, parallel.default_workers(None), max(rates))


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
    rates = [single_core_multiply_rate()]
    started = time.perf_counter()
    tally = run_overlap(plan, peers, concurrent=True)  # every route at once, as deployed
    overlap_seconds = time.perf_counter() - started
    rates.append(single_core_multiply_rate())
    bound = multiplication_bound(n_nodes, n_items, rates)
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
        **bound.figures(overlap_seconds),
        "load_average": round(os.getloadavg()[0], 2),
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
