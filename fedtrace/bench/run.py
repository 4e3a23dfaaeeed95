"""One benchmark run: every section in order, figures and targets from the same run.

The sections, on the same machine and the same generated sets:

- the ceiling, blinding, the peer (openmined-psi), filter bytes and message
  sizes (``fedtrace.bench.micro``);
- wallet canonicalisation (``fedtrace.bench.identifiers``);
- an encrypted aggregate query (``fedtrace.bench.aggregate.measure_query``): end
  to end seconds, node CPU and bytes per node record, 10,000-item watchlist;
- the overlap query in one process (``fedtrace.bench.overlap.measure``) and with
  real node processes (``python -m fedtrace.bench.overlap_federation``, a
  subprocess): overlap seconds and peak memory;
- a real federation (``fedtrace.bench.federation``): cold and warm membership
  query latency and peak memory of the nodes and of the coordinator.

``run_psi`` is ``scripts/bench --psi``: only the side-by-side comparison with
SecretFlow's unbalanced PSI and openmined-psi (``fedtrace.bench.psi``).

Every figure names its method; every ratio uses figures from the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedtrace import group
from fedtrace.bench import aggregate as aggregate_bench
from fedtrace.bench import identifiers as identifiers_bench
from fedtrace.bench import overlap as overlap_bench
from fedtrace.bench import psi as psi_bench
from fedtrace.bench.federation import measure_federation
from fedtrace.bench.figures import MIB, Bench, Say
from fedtrace.bench.micro import (
    check_message_sizes,
    measure_blinding,
    measure_ceiling,
    measure_peer,
)
from fedtrace.bench.psi import PsiPlan


def measure_others(bench: Bench, quick: bool, node_rate: float) -> None:
    """Identifier canonicalisation, aggregates and the in-process overlap."""
    rows = 50_000 if quick else 200_000
    bench.say(f"identifiers: canonicalising {rows:,} addresses")
    rates = identifiers_bench.measure_rate(rows)
    rate = bench.add(
        "identifiers",
        "canonicalisation, chain hinted",
        rates["rows_per_s"],
        "rows/s",
        "bench.identifiers.measure_rate: canonical_address(a, chain)",
    )
    bench.add(
        "identifiers",
        "canonicalisation vs node blinding",
        rate / node_rate,
        "ratio",
        "canonicalisation rows/s / node build_table items/s",
    )
    measure_aggregates(bench, [100_000] if quick else [100_000, 1_000_000])
    measure_sealing(bench, (1_000,) if quick else (1_000, 10_000))
    arguments = (3, 10_000 if quick else 20_000)  # measure(n_nodes, n_items)
    method = f"fedtrace.bench.overlap.measure{arguments}"
    bench.say(method)
    try:
        result = overlap_bench.measure(*arguments)
    except Exception as exc:  # noqa: BLE001 - one failed section must not sink the bench
        bench.notes.append(f"{method} failed: {exc}")
        return
    for name, value in result.items():
        bench.add("overlap", name, value, "", method)


SEALING_FIGURES = {  # fedtrace.bench.sealing key -> unit
    "seal_ms": "ms",
    "opening_bytes": "B",
    "node_check_ms": "ms",
    "monitor_verify_ms": "ms",
    "monitor_verify_both_rounds_ms": "ms",
    "indicator_bytes": "B",
}


def measure_sealing(bench: Bench, sizes: tuple[int, ...]) -> None:
    """What a sealed opening for a monitor adds per query and per item (accountable queries)."""
    from fedtrace.bench import sealing

    method = f"fedtrace.bench.sealing.measure{sizes}"
    bench.say(method)
    try:
        figures = sealing.measure(sizes)
    except Exception as exc:  # noqa: BLE001 - one failed section must not sink the bench
        bench.notes.append(f"{method} failed: {exc}")
        return
    for case, values in figures["points"].items():
        items = float(case.rsplit("-", 1)[1])
        for key, value in values.items():
            if key in SEALING_FIGURES:
                bench.add("sealing", f"{case} {key}", value, SEALING_FIGURES[key], method)
        if "opening_bytes" in values:
            bench.add(
                "sealing",
                f"{case} opening bytes per item",
                values["opening_bytes"] / items,
                "B",
                method,
            )
        if "seal_ms" in values:
            bench.add(
                "sealing",
                f"{case} seal µs per item",
                1000 * values["seal_ms"] / items,
                "µs",
                method,
            )
    for key, value in figures["indicator"].items():
        if key in SEALING_FIGURES:
            bench.add("sealing", f"aggregate round 2 {key}", value, SEALING_FIGURES[key], method)


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
    """``fedtrace.bench.aggregate.measure_query``: one whole aggregate query per size."""
    for size in sizes:
        bench.say(f"aggregate: 10,000-item watchlist x {size:,} wallets, 3 columns + count")
        try:
            figures = aggregate_bench.measure_query(size)
        except Exception as exc:  # noqa: BLE001 - one failed section must not sink the bench
            bench.notes.append(f"fedtrace.bench.aggregate.measure_query({size}) failed: {exc}")
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
    """The overlap query with real node processes, in a ``fedtrace.bench.overlap_federation``
    subprocess (so the figures are not this process's memory)."""
    rss: dict[int, tuple[float, float]] = {}  # size -> (largest node, coordinator) MiB
    for size in sizes:
        bench.say(f"overlap: 3 nodes x {size:,} wallets, real processes")
        directory = workdir / f"overlap-{size}"
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedtrace.bench.overlap_federation",
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
                f"overlap_federation --wallets {size} failed: "
                f"{(done.stderr.strip().splitlines() or ['?'])[-1]}"
            )
            continue
        result = json.loads(done.stdout)
        if set(result["statuses"].values()) != {"ok"}:
            bench.notes.append(
                f"overlap_federation --wallets {size}: statuses {result['statuses']}"
            )
        section = f"overlap {size:,}"
        method = (
            f"python -m fedtrace.bench.overlap_federation --nodes 3 --wallets {size}: "
            "`fedtrace query overlap` CLI wall time against 3 `node serve` processes"
        )
        seconds = bench.add(section, "overlap", result["overlap_seconds"], "s", method)
        bench.add(
            section,
            "setup (ingest + node start, new epochs)",
            result["setup_seconds"],
            "s",
            "overlap_federation: CA, node init, ingest, nodes started one after another",
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


def run(quick: bool, workdir: Path, cold_runs: int, warm_runs: int, say: Say) -> Bench:
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


def run_psi(plan: PsiPlan, workdir: Path, say: Say) -> Bench:
    """``scripts/bench --psi``: the side-by-side PSI section alone (``fedtrace.bench.psi``)."""
    bench = Bench(say)
    bench.add("run", "load average at start", os.getloadavg()[0], "", "1-minute load")
    started = time.perf_counter()
    psi_bench.measure(bench, plan, workdir)
    bench.add("run", "load average at end", os.getloadavg()[0], "", "1-minute load")
    bench.add("run", "bench wall time", time.perf_counter() - started, "s", "this run")
    return bench
