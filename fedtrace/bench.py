"""``scripts/bench``: how fast fedtrace is on this machine, against the hardware and a peer.

One run measures, on the same machine and the same generated sets:

- the ceiling: bare ristretto255 from_hash + scalar multiplication through rbcl,
  on one core and on every core at once (``fedtrace.group.measure_rates``);
- fedtrace blinding throughput, node side (``psi.build_table``) and
  coordinator side (``psi.BlindedQuery`` and ``unblind``);
- the peer, openmined-psi: server setup and client request rates, and the
  bytes per item of its GCS setup message;
- fedtrace's filter bytes per item at the same false-positive rate;
- a real federation (``fedtrace.bench_federation``): cold and warm membership
  query latency and peak memory of the nodes and of the coordinator;
- an encrypted aggregate query (``fedtrace.aggregate.measure_query``): end to
  end seconds, node CPU and bytes per node record, 10,000-item watchlist;
- the overlap query with real node processes (``python -m
  fedtrace.bench_overlap``, a subprocess): overlap seconds and peak memory;
- the gRPC message-size limits, checked against every batch size.

Every figure names its method; every ratio uses figures from the same run.
``python -m fedtrace.bench --quick`` stays at 100,000 items; the full run adds
1,000,000. ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedtrace import gcs, group, parallel, psi
from fedtrace.items import item_bytes

MIB = 1 << 20
GRPC_MESSAGE_LIMIT = 4 * MIB
PEER_FPR = 1e-9
FILTER_REMAINDER_BITS = 30  # fedtrace's FPR 2**-30 = 9.3e-10, at or below 1e-9
CEILING_ITEMS = 100_000


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    value: float
    unit: str
    method: str


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    comparison: str  # ">=", "<=" or "<"
    unit: str

    @property
    def met(self) -> bool:
        if self.comparison == ">=":
            return self.measured >= self.limit
        if self.comparison == "<":
            return self.measured < self.limit
        return self.measured <= self.limit


class Bench:
    """Collects figures and targets; ``say`` reports progress on stderr."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.figures: list[Figure] = []
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.say = say

    def add(self, section: str, name: str, value: float, unit: str, method: str) -> float:
        self.figures.append(Figure(section, name, value, unit, method))
        return value

    def target(self, name: str, measured: float, comparison: str, limit: float, unit: str) -> None:
        self.targets.append(Target(name, measured, limit, comparison, unit))


def wallet_items(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct canonical Ethereum addresses, deterministic for a seed."""
    import random

    rng = random.Random(seed)
    return ["0x" + rng.randbytes(20).hex() for _ in range(count)]


def _timed(action: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action(*args)
    return time.perf_counter() - started, result


def measure_ceiling(bench: Bench) -> float:
    bench.say(f"ceiling: bare libsodium on {CEILING_ITEMS:,} items")
    rates = group.measure_rates(CEILING_ITEMS)
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
        seconds, table = _timed(psi.build_table, items, key)
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
        seconds, query = _timed(psi.BlindedQuery, items)
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
        seconds, _ = _timed(query.unblind, query.blinded)
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
    seconds, filter_ = _timed(gcs.build_filter, table, FILTER_REMAINDER_BITS)
    bench.add(
        "filter",
        f"fedtrace GCS bytes/item, {size:,}",
        len(filter_.data) / size,
        "B/item",
        f"gcs.build_filter, k={FILTER_REMAINDER_BITS}: FPR 2^-{FILTER_REMAINDER_BITS} = "
        f"{2.0**-FILTER_REMAINDER_BITS:.2e} per tested item",
    )
    bench.add("filter", f"fedtrace GCS build, {size:,}", seconds, "s", "gcs.build_filter")
    seconds, _ = _timed(
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
        seconds, setup = _timed(
            psi_server.CreateSetupMessage, PEER_FPR, 1, items, DataStructure.GCS
        )
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
        seconds, _ = _timed(psi_client.CreateRequest, items)
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
            _, setup = _timed(
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
    from coordinator import match as coordinator_match
    from coordinator import transport
    from node import service

    limits = {
        "node Evaluate answer batch": service.POINTS_PER_BATCH * group.POINT_BYTES,
        "node GetFilter chunk": service.FILTER_CHUNK_BYTES,
        "coordinator Evaluate request batch": coordinator_match.POINTS_PER_BATCH
        * group.POINT_BYTES,
        "coordinator channel limit": transport.MAX_MESSAGE_BYTES,
    }
    from node.setup import node_toml_text

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


def measure_others(bench: Bench, quick: bool, node_rate: float) -> None:
    """Figures other modules offer, when they exist in this tree."""
    try:
        from fedtrace.identifiers import bench as identifier_bench
    except ImportError:
        bench.notes.append("fedtrace.identifiers.bench: not available")
    else:
        rows = 50_000 if quick else 200_000
        bench.say(f"identifiers: canonicalising {rows:,} addresses")
        rates = identifier_bench.measure_rate(rows)
        rate = bench.add(
            "identifiers",
            "canonicalisation, chain hinted",
            rates["rows_per_s"],
            "rows/s",
            "identifiers.bench.measure_rate: canonical_address(a, chain)",
        )
        bench.add(
            "identifiers",
            "canonicalisation vs node blinding",
            rate / node_rate,
            "ratio",
            "canonicalisation rows/s / node build_table items/s",
        )
    measure_aggregates(bench, [100_000] if quick else [100_000, 1_000_000])
    calls: dict[str, tuple[int, ...]] = {
        "fedtrace.overlap": (3, 10_000 if quick else 20_000),  # measure(n_nodes, n_items)
    }
    for module_name, arguments in calls.items():
        try:
            module = importlib.import_module(module_name)
            measure = module.measure
        except (ImportError, AttributeError):
            bench.notes.append(f"{module_name}.measure: not available")
            continue
        bench.say(f"{module_name}.measure{arguments}")
        try:
            result = measure(*arguments)
        except Exception as exc:  # noqa: BLE001 - another team's code must not sink the bench
            bench.notes.append(f"{module_name}.measure failed: {exc}")
            continue
        for name, value in (result or {}).items():
            if isinstance(value, int | float):
                bench.add(
                    module_name.split(".")[-1],
                    str(name),
                    float(value),
                    "",
                    f"{module_name}.measure{arguments}",
                )


AGGREGATE_FIGURES = {  # measure_query key -> (row name, unit)
    "end_to_end_s": ("end to end, 10,000-item watchlist", "s"),
    "node_cpu_s": ("node CPU (evaluate + HE answer)", "s"),
    "node_aggregate_s": ("node HE answer, 4 figures", "s"),
    "bytes_per_record_per_query": ("bytes per node record per query", "B/rec"),
    "indicator_bytes_per_record": ("  of which indicator ciphertexts", "B/rec"),
    "answer_bytes_per_record": ("  of which answers (4 x 2-prime BFV)", "B/rec"),
    "tag_bytes_per_record": ("position tags (once per epoch)", "B/rec"),
    "public_context_bytes": ("public HE context (cacheable by SHA-256)", "B"),
}


def measure_aggregates(bench: Bench, sizes: list[int]) -> None:
    """``fedtrace.aggregate.measure_query``: one whole aggregate query per size, no network."""
    try:
        from fedtrace.aggregate import measure_query
    except ImportError:
        bench.notes.append("fedtrace.aggregate.measure_query: not available")
        return
    for size in sizes:
        bench.say(f"aggregate: 10,000-item watchlist x {size:,} wallets, 3 columns + count")
        try:
            figures = measure_query(size)
        except Exception as exc:  # noqa: BLE001 - another team's code must not sink the bench
            bench.notes.append(f"fedtrace.aggregate.measure_query({size}) failed: {exc}")
            continue
        method = (
            f"aggregate.measure_query({size}): both PSI rounds + BFV round in one "
            "process, no network; sum of sequential steps; checked exact"
        )
        for key, (name, unit) in AGGREGATE_FIGURES.items():
            bench.add(f"aggregate {size:,}", name, figures[key], unit, method)
        if size == 100_000:
            bench.target(
                "aggregate 10k x 100k end to end", figures["end_to_end_s"], "<=", 10.0, "s"
            )
        bench.target(
            f"aggregate bytes/record/query, {size // 1000:,}k",
            figures["bytes_per_record_per_query"],
            "<=",
            60.0,
            "B",
        )


def measure_overlap(bench: Bench, workdir: Path, sizes: list[int]) -> None:
    """The overlap query with real node processes, via ``python -m fedtrace.bench_overlap``."""
    rss: dict[int, tuple[float, float]] = {}  # size -> (largest node, coordinator) MiB
    for size in sizes:
        bench.say(f"overlap: 3 nodes x {size:,} wallets, real processes")
        directory = workdir / f"overlap-{size}"
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedtrace.bench_overlap",
                "--nodes",
                "3",
                "--wallets",
                str(size),
                "--dir",
                str(directory),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            bench.notes.append(
                f"bench_overlap --wallets {size} failed: "
                f"{(done.stderr.strip().splitlines() or ['?'])[-1]}"
            )
            continue
        result = json.loads(done.stdout)
        if set(result["statuses"].values()) != {"ok"}:
            bench.notes.append(f"bench_overlap --wallets {size}: statuses {result['statuses']}")
        section = f"overlap {size:,}"
        method = (
            f"python -m fedtrace.bench_overlap --nodes 3 --wallets {size}: "
            "`fedtrace query overlap` CLI wall time against 3 `node serve` processes"
        )
        seconds = bench.add(section, "overlap", result["overlap_seconds"], "s", method)
        bench.add(
            section,
            "setup (ingest + node start, new epochs)",
            result["setup_seconds"],
            "s",
            "bench_overlap: CA, node init, ingest, nodes started one after another",
        )
        coordinator = bench.add(
            section,
            "coordinator peak RSS",
            result["coordinator_peak_rss_mib"],
            "MiB",
            "VmHWM of the `query overlap` process, polled every 10 ms",
        )
        node = bench.add(
            section,
            "node peak RSS (largest)",
            max(result["node_peak_rss_mib"].values()),
            "MiB",
            "VmHWM of each node process after the overlap (no pool workers)",
        )
        rss[size] = (node, coordinator)
        if size == 100_000:
            bench.target("overlap 3 x 100k", seconds, "<", 60.0, "s")
    if len(rss) == 2 and min(rss[100_000]) > 0:
        for index, who in enumerate(("node", "coordinator")):
            bench.add(
                "ratios",
                f"overlap {who} RSS growth 100k -> 1M",
                rss[1_000_000][index] / rss[100_000][index],
                "x",
                f"overlap {who} peak RSS at 1M / at 100k (linear would be 10x)",
            )


def run(
    quick: bool, workdir: Path, cold_runs: int, warm_runs: int, say: Callable[[str], None]
) -> Bench:
    bench = Bench(say)
    bench.add(
        "run",
        "load average at start",
        os.getloadavg()[0],
        "",
        "1-minute load; above ~0.5 other work shares the cores and every rate drops",
    )
    sizes = [100_000] if quick else [100_000, 1_000_000]
    started = time.perf_counter()
    ceiling = measure_ceiling(bench)
    node_seconds = measure_blinding(bench, sizes, ceiling)
    node_rate = max(size / seconds for size, seconds in node_seconds.items())
    coordinator_rate = max(
        f.value for f in bench.figures if f.name.startswith("coordinator BlindedQuery,")
    )
    peer = measure_peer(bench, sizes)
    messages_ok = check_message_sizes(bench)
    measure_others(bench, quick, node_rate)
    group.shutdown_pool()  # the nodes and the CLI get the cores to themselves
    measure_overlap(bench, workdir, sizes)

    from fedtrace.bench_federation import measure_federation

    federation = {}
    for size in sizes:
        say(f"federation: 3 nodes x {size:,} wallets, watchlist 10,000")
        figures = measure_federation(
            workdir / f"federation-{size}", size, cold_runs=cold_runs, warm_runs=warm_runs, say=say
        )
        federation[size] = figures
        section = f"federation {size:,}"
        bench.add(
            section,
            "ingest",
            figures.ingest_rows_per_s,
            "rows/s",
            "fedtrace node ingest of transactions CSV (2 fresh wallets a row)",
        )
        bench.add(
            section,
            "node start, new epoch (median of slowest)",
            statistics.median(max(s) for s in figures.node_start_s),
            "s",
            "process start to serving: reads the dataset, blinds it, builds and persists "
            "the filter; nodes started one at a time, each alone on the cores",
        )
        bench.add(
            section,
            "cold query (median)",
            statistics.median(figures.cold_query_s),
            "s",
            "`fedtrace query match` CLI wall time right after the cold start, no cached "
            "filters (fetches 3 filters)",
        )
        cold_total = bench.add(
            section,
            "cold total (median)",
            statistics.median(figures.cold_total_s),
            "s",
            "slowest node's start with a new epoch + the cold query",
        )
        cold_ratio = bench.add(
            section,
            "cold total / node blinding time",
            cold_total / node_seconds[size],
            "ratio",
            f"node blinding time = psi.build_table of {size:,} items above "
            f"({node_seconds[size]:.1f} s)",
        )
        warm = bench.add(
            section,
            f"warm query (median of {warm_runs})",
            statistics.median(figures.warm_query_s),
            "s",
            "`fedtrace query match` CLI wall time, epochs persisted, filters "
            "cached; 3 nodes + coordinator share this machine's cores",
        )
        bench.add(section, "warm query (min)", min(figures.warm_query_s), "s", "same runs")
        bench.add(
            section,
            "node peak RSS",
            figures.node_peak_rss / MIB,
            "MiB",
            "VmHWM of the largest node process (/proc/PID/status)",
        )
        bench.add(
            section,
            "node peak RSS incl. pool workers",
            figures.node_peak_rss_with_workers / MIB,
            "MiB",
            "node VmHWM + VmHWM of every descendant process (pool workers, forkserver)",
        )
        bench.add(
            section,
            "coordinator peak RSS",
            figures.coordinator_peak_rss / MIB,
            "MiB",
            "VmHWM of the `query match` process, polled every 10 ms; max over all runs",
        )
        if size == 1_000_000:
            bench.target("warm 10k x 3 x 1M query", warm, "<=", 2.0, "s")
            bench.target("cold / node blinding time, 1M", cold_ratio, "<=", 1.2, "ratio")
            bench.target(
                "node RSS incl. workers, 1M",
                figures.node_peak_rss_with_workers / MIB,
                "<=",
                1536,
                "MiB",
            )

    bench.target("node blinding vs all-cores ceiling", node_rate / ceiling, ">=", 0.9, "ratio")
    bench.target("coordinator blinding vs ceiling", coordinator_rate / ceiling, ">=", 0.9, "ratio")
    if peer:
        bench.add(
            "ratios",
            "node blinding / openmined setup",
            node_rate / peer["setup"],
            "x",
            "best rates of this run",
        )
        bench.add(
            "ratios",
            "coordinator blinding / openmined request",
            coordinator_rate / peer["request"],
            "x",
            "best rates of this run",
        )
        bench.target("node blinding vs openmined setup", node_rate / peer["setup"], ">=", 3.0, "x")
        bench.target(
            "coordinator blinding vs openmined request",
            coordinator_rate / peer["request"],
            ">=",
            3.0,
            "x",
        )
        ours = next(f.value for f in bench.figures if f.name.startswith("fedtrace GCS bytes"))
        bench.target(
            "filter bytes/item vs openmined at 2^-30", ours, "<=", peer["bytes_equal_fpr"], "B/item"
        )
    if len(federation) == 2:
        small, large = federation[100_000], federation[1_000_000]
        growth = large.node_peak_rss_with_workers / small.node_peak_rss_with_workers
        bench.add(
            "ratios",
            "node RSS growth 100k -> 1M",
            growth,
            "x",
            "linear growth would be <= 10x (fixed runtime overhead makes it less)",
        )
        bench.target("node memory grows at most linearly (1M/100k)", growth, "<=", 10.0, "x")
    bench.target("largest gRPC message", 2.0 if messages_ok else 99.0, "<=", 4.0, "MiB")
    bench.add("run", "load average at end", os.getloadavg()[0], "", "1-minute load")
    bench.add("run", "bench wall time", time.perf_counter() - started, "s", "this run")
    return bench


def render_table(bench: Bench) -> str:
    lines = [
        f"fedtrace bench — {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "",
    ]
    section = ""
    for figure in bench.figures:
        if figure.section != section:
            section = figure.section
            lines.append(f"[{section}]")
        value = f"{figure.value:,.0f}" if abs(figure.value) >= 1000 else f"{figure.value:.3f}"
        lines.append(f"  {figure.name:<46} {value:>12} {figure.unit:<8} {figure.method}")
    lines += ["", "[targets]"]
    for target in bench.targets:
        lines.append(
            f"  {'MET    ' if target.met else 'NOT MET'} {target.name:<46} "
            f"{target.measured:>10.3f} {target.comparison} {target.limit:g} "
            f"{target.unit}"
        )
    for note in bench.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 items only (minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to build the federations (default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=5)
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        bench = run(args.quick, args.workdir, args.cold_runs, args.warm_runs, say)
    else:
        with tempfile.TemporaryDirectory(prefix="fedtrace-bench-") as workdir:
            bench = run(args.quick, Path(workdir), args.cold_runs, args.warm_runs, say)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": {
                        "host": platform.node(),
                        "cores": os.cpu_count(),
                        "python": platform.python_version(),
                    },
                    "figures": [asdict(f) for f in bench.figures],
                    "targets": [{**asdict(t), "met": t.met} for t in bench.targets],
                    "notes": bench.notes,
                },
                indent=2,
            )
        )
    else:
        sys.stdout.write(render_table(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
