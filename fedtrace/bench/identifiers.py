"""Throughput of wallet canonicalisation (`fedtrace.identifiers`), for `scripts/bench`."""

from __future__ import annotations

import random
import time

from fedtrace.identifiers import base58, bech32
from fedtrace.identifiers.detect import canonical_address
from fedtrace.identifiers.evm import to_checksum_address


def sample_addresses(n: int, seed: int = 1) -> list[tuple[str, str]]:
    """A deterministic typical mix of ``(address, chain)`` rows.

    Per 10 rows: 2 P2PKH, 1 P2SH, 2 P2WPKH, 1 taproot, 2 EIP-55 and 2 lower-case
    Ethereum addresses.
    """
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    for i in range(n):
        slot = i % 10
        if slot in (0, 1):
            rows.append((base58.encode_check(b"\x00" + rng.randbytes(20)), "btc"))
        elif slot == 2:
            rows.append((base58.encode_check(b"\x05" + rng.randbytes(20)), "btc"))
        elif slot in (3, 4):
            rows.append((bech32.encode_segwit("bc", 0, rng.randbytes(20)), "btc"))
        elif slot == 5:
            rows.append((bech32.encode_segwit("bc", 1, rng.randbytes(32)), "btc"))
        elif slot in (6, 7):
            rows.append((to_checksum_address(rng.randbytes(20).hex()), "eth"))
        else:
            rows.append(("0x" + rng.randbytes(20).hex(), "eth"))
    return rows


def measure_rate(n: int) -> dict[str, float]:
    """Canonicalise ``n`` generated addresses and report rows per second.

    ``rows_per_s`` uses the transactions table's chain hint; ``detect_rows_per_s``
    detects the chain from the address alone (watchlists of kind ``wallet``).
    """
    rows = sample_addresses(n)
    start = time.perf_counter()
    for address, chain in rows:
        canonical_address(address, chain)
    hinted = time.perf_counter() - start
    start = time.perf_counter()
    for address, _ in rows:
        canonical_address(address)
    detected = time.perf_counter() - start
    return {
        "rows": float(n),
        "seconds": hinted,
        "rows_per_s": n / hinted if hinted else float("inf"),
        "detect_seconds": detected,
        "detect_rows_per_s": n / detected if detected else float("inf"),
    }
