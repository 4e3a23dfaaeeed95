"""``scripts/bench --scale``: one node epoch of millions of wallets, built on a Dask LocalCluster.

Builds a node database of ``--scale-items`` synthetic wallets (default 10,000,000)
and its epoch through ``[compute] scheduler = "local"`` (a LocalCluster, one
single-threaded worker per core, TLS between them), then a second epoch of
``--scale-pool-items`` wallets (default 1,000,000: a sample, so the run stays
within the hour) on the node's own process pool, and reports:

- items/s of each build (cluster and pool, same run, same machine);
- peak RSS of the node process and of each worker process (sampled every 0.2 s);
- partitions and filter bytes per item;
- a 10,000-item match (half held) as the coordinator runs it: blind, the node's
  evaluation, unblind, test against the partitions the points fall into, first
  (partitions read from the node database) and warm (partitions cached).

The node side runs in this process (`node.epoch.current_epoch`), not behind gRPC:
what is measured is the build and the per-query work, not the network.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from fedtrace import gcs, psi
from fedtrace.bench.figures import MIB, Bench, Say, timed
from fedtrace.items import item_bytes
from fedtrace.partitions import PartitionedFilter
from node.config import LOCAL_CLUSTER, ComputeConfig, DatasetConfig
from node.epoch import FILTER_REMAINDER_BITS, Epoch, current_epoch
from node.store import NodeDatabase

SECTION = "scale"
#: The node's memory target at a million wallets.
RSS_TARGET_MIB = 1536
SAMPLE_SECONDS = 0.2
SPREAD = 2654435761  # wallet i is 0x(i * SPREAD), zero-padded: distinct, not sequential
CHILDREN = "VmHWM of each child process: workers (largest first), nannies, pool"
WALLETS = DatasetConfig(
    name="wallets",
    kind="wallet",
    sql="SELECT address FROM wallet_rows",
    key_column="address",
    aggregate_columns=(),
    disclosable_columns=(),
)


@dataclass(frozen=True)
class ScalePlan:
    items: int = 10_000_000
    pool_items: int = 1_000_000
    query_items: int = 10_000
    partition_items: int = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the scale-out run: a big epoch on a LocalCluster against the local pool",
    )
    parser.add_argument("--scale-items", type=int, default=ScalePlan.items, metavar="N")
    parser.add_argument("--scale-pool-items", type=int, default=ScalePlan.pool_items, metavar="N")


def plan_from_args(args: argparse.Namespace) -> ScalePlan:
    return ScalePlan(items=args.scale_items, pool_items=args.scale_pool_items)


def _address(index: int) -> str:
    return f"0x{index * SPREAD:040x}"


def _node_database(directory: Path, count: int) -> NodeDatabase:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = NodeDatabase(directory / "node.duckdb")
    with database.session() as con:
        con.execute(
            "CREATE OR REPLACE TABLE wallet_rows AS "
            "SELECT printf('0x%040x', i * ?) AS address FROM range(?) t(i)",
            [SPREAD, count],
        )
    return database


class PeakRss:
    """Samples this process's children: the peak resident memory of each, by pid."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(SAMPLE_SECONDS):
            for child in me.children(recursive=True):
                try:
                    rss = _high_water_mark(child.pid) or child.memory_info().rss
                    name = " ".join(child.cmdline()[-3:])[-60:]
                except (psutil.Error, OSError):
                    continue
                if rss > self.peaks.get(child.pid, ("", 0))[1]:
                    self.peaks[child.pid] = (name, rss)

    @contextmanager
    def running(self) -> Iterator[PeakRss]:
        sampler = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        sampler.start()
        try:
            yield self
        finally:
            self._stop.set()
            sampler.join()


def _high_water_mark(pid: int) -> int:
    """The process's peak resident memory (Linux ``VmHWM``), 0 where unknown."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _own_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(bench: Bench, label: str, directory: Path, count: int, compute: ComputeConfig) -> Epoch:
    bench.say(f"{label}: {count:,} synthetic wallets")
    database = _node_database(directory, count)
    with PeakRss().running() as children:
        started = time.perf_counter()
        epoch = current_epoch(database, WALLETS, 24.0, compute=compute)
        seconds = time.perf_counter() - started
    bench.add(SECTION, f"{label} build, {count:,}", count / seconds, "items/s", "current_epoch")
    bench.add(SECTION, f"{label} build time, {count:,}", seconds, "s", "read, blind, store")
    workers = sorted((rss for _, rss in children.peaks.values()), reverse=True)
    for rank, rss in enumerate(workers):
        bench.add(SECTION, f"{label} child {rank + 1} peak RSS", rss / MIB, "MiB", CHILDREN)
    return epoch


def _query(bench: Bench, epoch: Epoch, count: int) -> None:
    held = [item_bytes("wallet", _address(i)) for i in range(0, count, 2)]
    others = [item_bytes("wallet", f"0x{i:040x}ff") for i in range(count - len(held))]
    cache: dict[int, gcs.GolombFilter] = {}  # the coordinator's partition cache

    def partition(p: int) -> gcs.GolombFilter:
        if p not in cache:
            cache[p] = epoch.partition_filter(p)
        return cache[p]

    members = PartitionedFilter(epoch.partition_bits, FILTER_REMAINDER_BITS, partition)

    def match() -> int:
        query = psi.BlindedQuery(held + others)
        unblinded = query.unblind(psi.evaluate(query.blinded, epoch.secret_key))
        return sum(members.contains(unblinded))

    first, found = timed(match)
    warm, again = timed(match)
    if found < len(held) or again != found:
        raise RuntimeError(f"the scale match found {found} and {again} of {len(held)} held items")
    bench.add(SECTION, f"match {count:,}, first", first, "s", "blind, evaluate, unblind, test")
    bench.add(SECTION, f"match {count:,}, warm", warm, "s", "partitions cached")


def run(plan: ScalePlan, workdir: Path, say: Say) -> Bench:
    bench = Bench(say)
    started = time.perf_counter()
    cluster = ComputeConfig(scheduler=LOCAL_CLUSTER, partition_items=plan.partition_items)
    epoch = _build(bench, "LocalCluster", workdir / "scale-cluster", plan.items, cluster)
    node_peak = _own_peak_mib()
    bench.add(SECTION, f"node peak RSS, {plan.items:,}", node_peak, "MiB", "getrusage, DuckDB in")
    filter_bytes = sum(
        epoch.partition_filter(p).item_count and len(epoch.partition_filter(p).data)
        for p in range(1 << epoch.partition_bits)
    )
    bench.add(SECTION, "partitions", float(1 << epoch.partition_bits), "", "2**P")
    bench.add(SECTION, "filter bytes per item", filter_bytes / plan.items, "B", "all partitions")
    _query(bench, epoch, plan.query_items)
    if plan.items <= 1_000_000:
        bench.target(f"node peak RSS at {plan.items:,}", node_peak, "<", RSS_TARGET_MIB, "MiB")
    own = ComputeConfig(partition_items=plan.partition_items)
    _build(bench, "local pool", workdir / "scale-pool", plan.pool_items, own)
    bench.notes.append(
        f"scale: {plan.items:,} wallets on a LocalCluster, {plan.pool_items:,} on the local "
        f"pool, in {time.perf_counter() - started:.0f} s"
    )
    return bench
