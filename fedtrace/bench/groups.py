"""The ristretto255 ceiling on this machine: bare libsodium against ``group.blind_items``.

python -m fedtrace.bench.groups [N]     # N items, default 100,000; prints JSON
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import group, parallel

_from_hash: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_from_hash
_multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255


def raw_seconds(count: int) -> float:
    """Seconds for ``count`` bare from_hash + scalarmult calls (the libsodium ceiling)."""
    uniform = [hashlib.sha512(i.to_bytes(8, "little")).digest() for i in range(count)]
    scalar = group.random_scalar()
    from_hash = _from_hash
    multiply = _multiply
    started = time.perf_counter()
    for digest in uniform:
        multiply(scalar, from_hash(digest))
    return time.perf_counter() - started


def measure_rates(n: int) -> dict[str, float]:
    """Throughput of the group layer on ``n`` items, in items per second.

    ``raw_*`` is bare libsodium from_hash + scalarmult through rbcl (no
    expand_message_xmd, no batching), once on one core and once concurrently on
    every core; the concurrent figure is the ceiling ``blind_items`` is held to.
    The pool is warmed first, so process start-up is not counted.
    """
    cores = parallel.default_workers(None)
    items = [f"bench-item-{index:012d}".encode() for index in range(n)]
    scalar = group.random_scalar()
    rates: dict[str, float] = {"items": float(n), "cores": float(cores)}

    rates["raw_single_core"] = n / raw_seconds(n)
    if cores > 1:
        parallel.run_chunks(raw_seconds, [(200,)] * cores, cores)  # start and warm every worker
        per_core = -(-n // cores)
        # Every task times only its own libsodium loop and all run at once, so
        # the slowest task bounds what the cores together sustain.
        elapsed = parallel.run_chunks(raw_seconds, [(per_core,)] * cores, cores)
        rates["raw_all_cores"] = per_core * cores / max(elapsed)
    else:
        rates["raw_all_cores"] = rates["raw_single_core"]

    started = time.perf_counter()
    group.blind_items(items, scalar, workers=1)
    rates["blind_items_1_worker"] = n / (time.perf_counter() - started)
    started = time.perf_counter()
    group.blind_items(items, scalar, workers=cores)
    rates["blind_items_all_workers"] = n / (time.perf_counter() - started)
    rates["blind_items_vs_ceiling"] = rates["blind_items_all_workers"] / rates["raw_all_cores"]
    rates["blind_items_1_worker_vs_raw"] = rates["blind_items_1_worker"] / rates["raw_single_core"]
    return rates


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure_rates(int(args[0]) if args else 100_000), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
