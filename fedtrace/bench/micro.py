"""The protocol's building blocks against the hardware and a peer, on generated sets.

- the ceiling: bare ristretto255 from_hash + scalar multiplication through rbcl,
  on one core and on every core at once (``fedtrace.bench.groups.measure_rates``);
- fedtrace blinding throughput, node side (``psi.build_table``) and
  coordinator side (``psi.BlindedQuery`` and ``unblind``);
- the peer, openmined-psi: server setup and client request rates, and the
  bytes per item of its GCS setup message;
- fedtrace's filter bytes per item at the same false-positive rate;
- the gRPC message sizes, checked against the 4 MiB limit.
"""

from __future__ import annotations

import time

from fedtrace import gcs, group, parallel, psi, wire
from fedtrace.bench.figures import MIB, Bench, timed, wallet_items
from fedtrace.bench.groups import measure_rates
from fedtrace.items import item_bytes
from node.setup import node_toml_text

GRPC_MESSAGE_LIMIT = 4 * MIB
PEER_FPR = 1e-9
FILTER_REMAINDER_BITS = 30  # fedtrace's FPR 2**-30 = 9.3e-10, at or below 1e-9
CEILING_ITEMS = 100_000


def measure_ceiling(bench: Bench) -> float:
    bench.say(f"ceiling: bare libsodium on {CEILING_ITEMS:,} items")
    rates = measure_rates(CEILING_ITEMS)
    cores = int(rates["cores"])
    bench.add(
        "ceiling",
        "raw h2g+mult, 1 core",
        rates["raw_single_core"],
        "items/s",
        "rbcl from_hash + scalarmult_ristretto255 loop, one process, 64-byte inputs "
        "pre-hashed outside the timing",
    )
    return bench.add(
        "ceiling",
        f"raw h2g+mult, {cores} cores",
        rates["raw_all_cores"],
        "items/s",
        f"same loop in {cores} pool processes at once; total / slowest process",
    )


def measure_blinding(bench: Bench, sizes: list[int], ceiling: float) -> dict[int, float]:
    """Node- and coordinator-side blinding rates; returns node blinding seconds per size."""
    cores = parallel.default_workers(None)
    group.blind_items([b"warm"] * (group.PARALLEL_THRESHOLD + 1), group.random_scalar())
    node_seconds: dict[int, float] = {}
    for size in sizes:
        bench.say(f"fedtrace blinding: {size:,} items")
        items = [item_bytes("wallet", address) for address in wallet_items(size)]
        key = group.random_scalar()
        seconds, table = timed(psi.build_table, items, key)
        node_seconds[size] = seconds
        rate = bench.add(
            "blinding",
            f"node build_table, {size:,}",
            size / seconds,
            "items/s",
            f"psi.build_table: expand_message_xmd + h2g + mult on {cores} "
            "processes, then CSPRNG shuffle; pool already warm",
        )
        bench.add(
            "blinding",
            f"node build_table vs ceiling, {size:,}",
            rate / ceiling,
            "ratio",
            "node rate / raw all-cores rate",
        )
        seconds, query = timed(psi.BlindedQuery, items)
        coordinator = bench.add(
            "blinding",
            f"coordinator BlindedQuery, {size:,}",
            size / seconds,
            "items/s",
            "psi.BlindedQuery: fresh scalar, h2g + mult",
        )
        bench.add(
            "blinding",
            f"coordinator BlindedQuery vs ceiling, {size:,}",
            coordinator / ceiling,
            "ratio",
            "coordinator rate / raw all-cores rate",
        )
        seconds, _ = timed(query.unblind, query.blinded)
        bench.add(
            "blinding",
            f"coordinator unblind, {size:,}",
            size / seconds,
            "items/s",
            "BlindedQuery.unblind: validate every point + mult by a^-1 (on the query's "
            "own points: same work as on a node's answer)",
        )
        if size == max(sizes):
            measure_filter(bench, table)
        del table, query, items
    return node_seconds


def measure_filter(bench: Bench, table: list[bytes]) -> None:
    size = len(table)
    seconds, filter_ = timed(gcs.build_filter, table, FILTER_REMAINDER_BITS)
    bench.add(
        "filter",
        f"fedtrace GCS bytes/item, {size:,}",
        len(filter_.data) / size,
        "B/item",
        f"gcs.build_filter, k={FILTER_REMAINDER_BITS}: FPR 2^-{FILTER_REMAINDER_BITS} = "
        f"{2.0**-FILTER_REMAINDER_BITS:.2e} per tested item",
    )
    bench.add("filter", f"fedtrace GCS build, {size:,}", seconds, "s", "gcs.build_filter")
    seconds, _ = timed(
        gcs.GolombFilter.from_bytes, filter_.item_count, filter_.remainder_bits, filter_.data
    )
    bench.add(
        "filter",
        f"fedtrace GCS decode+validate, {size:,}",
        seconds,
        "s",
        "GolombFilter.from_bytes (what a coordinator does per fetched filter)",
    )


def measure_peer(bench: Bench, sizes: list[int]) -> dict[str, float]:
    """openmined-psi on the same sets; returns its best rates by name."""
    try:
        from private_set_intersection.python import DataStructure, client, server
    except ImportError:
        bench.notes.append("openmined-psi not installed: peer figures not available")
        return {}
    best: dict[str, float] = {}
    for size in sizes:
        bench.say(f"peer openmined-psi: {size:,} items")
        items = wallet_items(size)
        psi_server = server.CreateWithNewKey(True)
        psi_client = client.CreateWithNewKey(True)
        cpu = time.process_time()
        seconds, setup = timed(psi_server.CreateSetupMessage, PEER_FPR, 1, items, DataStructure.GCS)
        cores_used = (time.process_time() - cpu) / seconds
        rate = bench.add(
            "peer",
            f"openmined server setup, {size:,}",
            size / seconds,
            "items/s",
            f"server.CreateSetupMessage(fpr=1e-9, num_client_inputs=1, GCS); "
            f"used {cores_used:.2f} cores (CPU time / wall time)",
        )
        best["setup"] = max(best.get("setup", 0.0), rate)
        bench.add(
            "peer",
            f"openmined GCS bytes/item, fpr 1e-9, {size:,}",
            len(setup.SerializeToString()) / size,
            "B/item",
            "serialised ServerSetup / items; num_client_inputs=1 so 1e-9 is per item",
        )
        seconds, _ = timed(psi_client.CreateRequest, items)
        rate = bench.add(
            "peer",
            f"openmined client request, {size:,}",
            size / seconds,
            "items/s",
            "client.CreateRequest (hash to P-256 + blind)",
        )
        best["request"] = max(best.get("request", 0.0), rate)
        if size == min(sizes):
            # fedtrace's FPR is 2^-k; compare the sizes at exactly that FPR too.
            _, setup = timed(
                psi_server.CreateSetupMessage,
                2.0**-FILTER_REMAINDER_BITS,
                1,
                items,
                DataStructure.GCS,
            )
            best["bytes_equal_fpr"] = bench.add(
                "peer",
                f"openmined GCS bytes/item, fpr 2^-{FILTER_REMAINDER_BITS}, {size:,}",
                len(setup.SerializeToString()) / size,
                "B/item",
                f"as above at fpr=2^-{FILTER_REMAINDER_BITS}, fedtrace's FPR",
            )
        del items, setup
    return best


def check_message_sizes(bench: Bench) -> bool:
    """Every message the protocol sends is a bounded batch under the 4 MiB gRPC limit."""
    limits = {
        "node Evaluate answer batch": wire.POINTS_PER_BATCH * group.POINT_BYTES,
        "node GetFilter chunk": wire.CHUNK_BYTES,
        "coordinator Evaluate request batch": wire.POINTS_PER_BATCH * group.POINT_BYTES,
        "coordinator channel limit": wire.MAX_MESSAGE_BYTES,
    }
    default_limit = next(
        int(line.split("=")[1])
        for line in node_toml_text("EE", "127.0.0.1:0").splitlines()
        if line.startswith("max_message_bytes")
    )
    limits["node server limit (node init default)"] = default_limit
    ok = True
    for name, size in limits.items():
        bench.add("messages", name, size / MIB, "MiB", "constant in the code / node.toml default")
        ok = ok and size <= GRPC_MESSAGE_LIMIT
    # Batches leave room for the protobuf framing inside the 4 MiB limit.
    assert max(size for name, size in limits.items() if "limit" not in name) < GRPC_MESSAGE_LIMIT
    return ok
