"""Real-federation part of ``scripts/bench``: three `fedtrace node serve` processes over mTLS.

Builds a federation on disk through ``fedtrace.harness`` (the public commands
``node init``, ``node ingest``, ``node serve`` on loopback), and times the
investigator's ``fedtrace query match`` CLI end to end: cold (every node starts
a new epoch, so it blinds its whole set, and the coordinator has no cached
filter) and warm (epochs persisted, filters cached). Peak memory is read from
``/proc/PID/status`` (``VmHWM``): for the nodes after the runs, for the
coordinator process polled while it runs.

``measure_psi_federation`` serves the side-by-side PSI section
(``fedtrace.bench.psi``): one or three nodes that hold a given set of wallets,
a cold first answer and warm matches through the Python API
(``fedtrace.connect``) and through the CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from fedtrace.bench.figures import Say
from fedtrace.harness import LocalFederation, LocalNode, cli_argv, run_cli

JURISDICTIONS = ("EE", "FR", "SG")
INVESTIGATOR = "FR"
WATCHLIST_ITEMS = 10_000
#: Wallets every node holds, so the expected match counts are known.
SHARED_WALLETS = 500
#: Wallets of each node that the watchlist names (beside the shared ones).
WATCHLISTED_PER_NODE = 1_000
#: A node blinds its whole set before it serves: a million wallets take minutes on 2 cores.
START_TIMEOUT_SECONDS = 900.0

POLICY = """jurisdiction = "{code}"
version = "bench-1"
[[grant]]
partners = ["{investigator}"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = {limit}
"""


def _address(rng: random.Random) -> str:
    """A valid canonical Ethereum address (lower-case hex needs no checksum)."""
    return "0x" + rng.randbytes(20).hex()


def write_transactions(path: Path, wallets: list[str], seed: int) -> int:
    """Transactions in the exchange schema that touch exactly ``wallets`` (two per row)."""
    rng = random.Random(seed)
    rows = 0
    with path.open("w", encoding="utf-8") as out:
        out.write("tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n")
        for start in range(0, len(wallets) - 1, 2):
            out.write(
                f"0x{rng.randbytes(32).hex()},eth,{wallets[start]},{wallets[start + 1]},ETH,"
                f"1.5,{rng.randrange(1, 100_000)}.25,2024-01-01T00:00:00Z\n"
            )
            rows += 1
    return rows


def peak_rss_bytes(node: LocalNode) -> tuple[int, int]:
    """(peak RSS of the node process, the same plus its pool workers), from VmHWM."""
    main = _vm_hwm(node.pid)
    return main, main + sum(_vm_hwm(pid) for pid in _descendants(node.pid))


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class Federation:
    local: LocalFederation
    wallets: int
    watchlist: Path | None = None
    expected_matches: int = 0
    ingest_rows: int = 0
    ingest_seconds: float = 0.0

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def nodes(self) -> list[LocalNode]:
        return list(self.local.nodes.values())

    @property
    def cache_dir(self) -> Path:
        return self.root / "coordinator-cache"

    def start_all(self) -> list[float]:
        """Start the nodes one after another, so each blinds its set on every core alone,
        as it would on its own machine; returns each node's seconds to serving."""
        self.local.start()
        return [node.start_seconds for node in self.nodes]

    def stop_all(self) -> None:
        self.local.stop()

    def forget_epochs(self) -> None:
        """Drop every persisted epoch and the coordinator's filter cache (nodes stopped)."""
        for node in self.nodes:
            con = duckdb.connect(str(node.database))
            try:
                con.execute("DROP TABLE IF EXISTS epochs")
            finally:
                con.close()
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def query(self) -> tuple[float, int, dict[str, object]]:
        """Run `fedtrace query match` once: (wall seconds, peak RSS bytes, JSON report)."""
        assert self.watchlist is not None
        env = {**os.environ, "FEDTRACE_CACHE_DIR": str(self.cache_dir)}
        started = time.perf_counter()
        with (self.root / "query.err").open("w+") as errors:
            process = subprocess.Popen(
                cli_argv(
                    "query",
                    "match",
                    "--federation",
                    str(self.local.federation_file),
                    "--watchlist",
                    str(self.watchlist),
                    "--dataset",
                    "wallets",
                    "--case",
                    "BENCH-1",
                    "--legal-basis",
                    "MLA",
                    "--format",
                    "json",
                    "--out",
                    str(self.root / "report.json"),
                ),
                stdout=subprocess.DEVNULL,
                stderr=errors,
                text=True,
                env=env,
            )
            # VmHWM is polled while the process lives: wait4's ru_maxrss would not do,
            # Linux carries it over from the forking parent (this bench) across exec.
            peak = 0
            while process.poll() is None:
                peak = max(peak, _vm_hwm(process.pid))
                time.sleep(0.01)
            seconds = time.perf_counter() - started
            errors.seek(0)
            if process.returncode != 0:
                raise RuntimeError(
                    f"query match exited {process.returncode}: {errors.read()[-1500:]}"
                )
        report = json.loads((self.root / "report.json").read_text())
        for result in report["results"]:
            if result["match_count"] != self.expected_matches:
                raise RuntimeError(
                    f"{result['node']} matched {result['match_count']}, "
                    f"expected {self.expected_matches}"
                )
        return seconds, peak, report


def build_federation(root: Path, wallets: int, say: Say) -> Federation:
    """CA, three nodes with ``wallets`` distinct wallets each, the investigator, a watchlist."""
    shutil.rmtree(root, ignore_errors=True)
    local = LocalFederation(root, investigator=INVESTIGATOR, deadline_seconds=600)
    local.issue_investigator()
    rng = random.Random(f"bench:{wallets}")
    shared = [_address(rng) for _ in range(SHARED_WALLETS)]
    federation = Federation(local, wallets=wallets)
    watchlisted = list(shared)
    for index, code in enumerate(JURISDICTIONS):
        node = local.add_node(
            code, policy=POLICY.format(code=code, investigator=INVESTIGATOR, limit=WATCHLIST_ITEMS)
        )
        node.start_timeout = START_TIMEOUT_SECONDS
        own = [_address(rng) for _ in range(wallets - SHARED_WALLETS)]
        watchlisted += own[:WATCHLISTED_PER_NODE]
        held = shared + own
        random.Random(index).shuffle(held)
        csv_path = root / f"{code}-transactions.csv"
        rows = write_transactions(csv_path, held, seed=index)
        started = time.perf_counter()
        node.ingest(csv_path, "transactions")
        federation.ingest_seconds += time.perf_counter() - started
        federation.ingest_rows += rows
        csv_path.unlink()
        say(f"  node {code}: {wallets:,} wallets from {rows:,} transactions ingested")
    while len(watchlisted) < WATCHLIST_ITEMS:
        watchlisted.append(_address(rng))  # held by no node (with overwhelming probability)
    rng.shuffle(watchlisted)
    federation.watchlist = root / "watchlist.txt"
    federation.watchlist.write_text("\n".join(watchlisted) + "\n")
    federation.expected_matches = SHARED_WALLETS + WATCHLISTED_PER_NODE
    return federation


@dataclass(frozen=True)
class FederationFigures:
    wallets: int
    ingest_rows_per_s: float
    node_start_s: list[list[float]]  # per cold run, per node: process start to serving
    cold_query_s: list[float]  # the query alone, right after the cold start, no cached filter
    cold_total_s: list[float]  # slowest node start + cold query
    warm_query_s: list[float]
    node_peak_rss: int  # largest node process VmHWM
    node_peak_rss_with_workers: int  # plus its blinding pool's processes
    coordinator_peak_rss: int


def measure_federation(
    root: Path, wallets: int, *, cold_runs: int, warm_runs: int, say: Say
) -> FederationFigures:
    """Build a federation of three ``wallets``-wallet nodes and time cold and warm queries."""
    federation = build_federation(root, wallets, say)
    node_start: list[list[float]] = []
    cold_query: list[float] = []
    warm_query: list[float] = []
    coordinator_rss = 0
    try:
        for run in range(cold_runs):
            federation.stop_all()
            federation.forget_epochs()
            starts = federation.start_all()
            seconds, rss, _ = federation.query()
            node_start.append(starts)
            cold_query.append(seconds)
            coordinator_rss = max(coordinator_rss, rss)
            say(
                f"  cold run {run + 1}: node starts {', '.join(f'{s:.1f}' for s in starts)} s, "
                f"query {seconds:.2f} s"
            )
        for _ in range(warm_runs):
            seconds, rss, _ = federation.query()
            warm_query.append(seconds)
            coordinator_rss = max(coordinator_rss, rss)
        say(f"  warm: median {statistics.median(warm_query):.2f} s over {warm_runs} runs")
        peaks = [peak_rss_bytes(node) for node in federation.nodes]
    finally:
        federation.stop_all()
    return FederationFigures(
        wallets=wallets,
        ingest_rows_per_s=federation.ingest_rows / federation.ingest_seconds,
        node_start_s=node_start,
        cold_query_s=cold_query,
        cold_total_s=[max(s) + q for s, q in zip(node_start, cold_query, strict=True)],
        warm_query_s=warm_query,
        node_peak_rss=max(main for main, _ in peaks),
        node_peak_rss_with_workers=max(total for _, total in peaks),
        coordinator_peak_rss=coordinator_rss,
    )


# --- the side-by-side PSI section (fedtrace.bench.psi): given sets, Python API and CLI ------

PSI_DATASET = "wallets"
PSI_CASE = "BENCH-PSI-1"
PSI_LEGAL_BASIS = "MLA"


@dataclass(frozen=True)
class PsiFederationFigures:
    """One federation's PSI timings: cold (new epochs, new client) and warm (API, CLI)."""

    nodes: int
    wallets: int  # per node
    node_start_s: tuple[float, ...]  # per node: process start to serving, new epoch
    first_answer_s: float  # new client, no cached filter, no pool: multiplicative
    prepare_s: float  # pool entries for the in-process warm runs, every node
    prepared_entries: int  # per node, for the in-process warm runs
    warm_api_s: tuple[float, ...]  # repeat matches, same client, pools prepared
    warm_cli_s: tuple[float, ...]  # `fedtrace query match` processes, wall clock

    @property
    def cold_total_s(self) -> float:
        """Slowest node's start with a new epoch + the first answer."""
        return max(self.node_start_s) + self.first_answer_s


def check_match_report(
    document: dict[str, object], nodes: int, expected: int, blinding: str | None
) -> None:
    """RuntimeError unless every node answered ok with ``expected`` matches (and, when
    ``blinding`` is given, under that blinding)."""
    results = document["results"]
    assert isinstance(results, list)
    if len(results) != nodes:
        raise RuntimeError(f"{len(results)} results for {nodes} nodes")
    for result in results:
        if result["status"] != "ok" or result["match_count"] != expected:
            raise RuntimeError(
                f"{result['node']}: {result['status']} {result.get('reason', '')} "
                f"matched {result.get('match_count')}, expected {expected}"
            )
        used = result["signature"]["transcript"]["blinding"]
        if blinding is not None and used != blinding:
            raise RuntimeError(f"{result['node']} answered under {used} blinding, not {blinding}")


@contextmanager
def _cache_dir(path: Path) -> Iterator[None]:
    """FEDTRACE_CACHE_DIR for the coordinator made in this process, restored afterwards."""
    saved = os.environ.get("FEDTRACE_CACHE_DIR")
    os.environ["FEDTRACE_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["FEDTRACE_CACHE_DIR"]
        else:
            os.environ["FEDTRACE_CACHE_DIR"] = saved


def build_psi_federation(
    root: Path, nodes: int, wallets: Sequence[str], watchlist: Sequence[str], say: Say
) -> LocalFederation:
    """CA, investigator, ``nodes`` nodes that each hold exactly ``wallets``, the watchlist file."""
    shutil.rmtree(root, ignore_errors=True)
    local = LocalFederation(root, investigator=INVESTIGATOR, deadline_seconds=600)
    local.issue_investigator()
    held = list(wallets)
    if len(held) % 2:  # two wallets a row: the last row pairs the odd one with the first
        held.append(held[0])
    csv_path = root / "transactions.csv"
    rows = write_transactions(csv_path, held, seed=len(held))
    for code in JURISDICTIONS[:nodes]:
        policy = POLICY.format(code=code, investigator=INVESTIGATOR, limit=len(watchlist))
        node = local.add_node(code, policy=policy)
        node.start_timeout = START_TIMEOUT_SECONDS
        node.ingest(csv_path, "transactions")
        say(f"  node {code}: {len(wallets):,} wallets from {rows:,} transactions ingested")
    csv_path.unlink()
    (root / "watchlist.txt").write_text("\n".join(watchlist) + "\n")
    return local


def measure_psi_federation(
    root: Path,
    nodes: int,
    wallets: Sequence[str],
    watchlist: Sequence[str],
    expected: int,
    *,
    warm_runs: int,
    cli_runs: int,
    say: Say,
) -> PsiFederationFigures:
    """Cold and warm matches of ``watchlist`` against ``nodes`` real nodes holding ``wallets``.

    Cold: the nodes start with new epochs (one after another, each alone on the
    cores), then a new `fedtrace.connect` client with an empty cache asks the first
    match (it fetches the filters and blinds multiplicatively). Warm: the same client
    prepares pools (`prepare`) and repeats the match (channels, filters and pools
    reused); then `fedtrace query match` processes run against the same cache.
    """
    import fedtrace

    local = build_psi_federation(root, nodes, wallets, watchlist, say)
    cache = root / "coordinator-cache"
    items = list(watchlist)
    try:
        local.start()
        starts = tuple(node.start_seconds for node in local.nodes.values())
        say(f"  node starts, new epochs: {', '.join(f'{s:.1f}' for s in starts)} s")
        with _cache_dir(cache), fedtrace.connect(local.federation_file) as client:

            def match() -> tuple[float, dict[str, object]]:
                started = time.perf_counter()
                report = client.match(
                    items, dataset=PSI_DATASET, case=PSI_CASE, legal_basis=PSI_LEGAL_BASIS
                )
                return time.perf_counter() - started, report.to_dict()

            first, document = match()
            check_match_report(document, nodes, expected, "multiplicative")
            say(f"  first answer {first:.2f} s")
            started = time.perf_counter()
            client.prepare(dataset=PSI_DATASET, items=len(items) * warm_runs)
            prepare = time.perf_counter() - started
            warm_api = []
            for _ in range(warm_runs):
                seconds, document = match()
                check_match_report(document, nodes, expected, "additive")
                warm_api.append(seconds)
            say(f"  warm in process: median {statistics.median(warm_api):.2f} s")
            client.prepare(dataset=PSI_DATASET, items=len(items) * cli_runs)
        warm_cli = [
            _cli_match(local, cache, nodes, expected, root / "report.json") for _ in range(cli_runs)
        ]
        if warm_cli:
            say(f"  warm CLI: median {statistics.median(warm_cli):.2f} s")
    finally:
        local.stop()
    return PsiFederationFigures(
        nodes=nodes,
        wallets=len(wallets),
        node_start_s=starts,
        first_answer_s=first,
        prepare_s=prepare,
        prepared_entries=len(items) * warm_runs,
        warm_api_s=tuple(warm_api),
        warm_cli_s=tuple(warm_cli),
    )


def _cli_match(local: LocalFederation, cache: Path, nodes: int, expected: int, out: Path) -> float:
    """Wall seconds of one `fedtrace query match` process (additive, pools on disk)."""
    started = time.perf_counter()
    run_cli(
        "query",
        "match",
        "--federation",
        str(local.federation_file),
        "--watchlist",
        str(local.root / "watchlist.txt"),
        "--dataset",
        PSI_DATASET,
        "--case",
        PSI_CASE,
        "--legal-basis",
        PSI_LEGAL_BASIS,
        "--format",
        "json",
        "--out",
        str(out),
        env={"FEDTRACE_CACHE_DIR": str(cache)},
    )
    seconds = time.perf_counter() - started
    check_match_report(json.loads(out.read_text()), nodes, expected, "additive")
    return seconds
