"""Faults with real node processes: SIGKILL mid-query, restart integrity, torn audit writes,
interrupted ingest, SIGTERM during a query, and 20 investigators × 10 queries of load."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.epoch_cache import FilterCache
from coordinator.federation import load_federation
from coordinator.match import MatchQuery, run_match
from coordinator.transport import GrpcConnections as GrpcTransports
from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.harness import LocalNode
from fedtrace.identifiers import canonical_address
from node import store

from .conftest import INVESTIGATOR, Federation, fedtrace

pytestmark = pytest.mark.slow

CODES = ("EE", "FR", "SG")
BIG_ITEMS = 40_000  # keeps a node busy for seconds, so a signal lands mid-query


def _policy(code: str) -> str:
    return (
        f'jurisdiction = "{code}"\nversion = "{code.lower()}-faults-1"\n[[grant]]\n'
        'partners = ["FR"]\ndatasets = ["wallets"]\ndisclosure = "membership"\n'
        "max_items_per_query = 100000\n"
    )


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("faults")
    data = generate_federation_data(root / "data", CODES, 1_500, seed=23)
    with Federation(root, data, deadline_seconds=40) as fed:
        for code in CODES:
            fed.add_node(code, policy=_policy(code), tables=data.tables(code))
        fed.issue_investigator()
        fed.start()
        yield fed


def _oracle(data: DemoData, items: list[str], code: str) -> list[str]:
    seen = list(dict.fromkeys(canonical_address(item) for item in items))
    return [item for item in seen if item in data.wallets[code]]


def _big_watchlist(fed: Federation) -> tuple[Path, list[str]]:
    rng = random.Random(3)
    items = fed.data.watchlist(120) + [f"0x{rng.getrandbits(160):040x}" for _ in range(BIG_ITEMS)]
    path = fed.root / "big-watchlist.txt"
    path.write_text("\n".join(items) + "\n")
    return path, items


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (the node's worker pool runs in children)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, total = {pid}, 0.0
    changed = True
    while changed:
        changed = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                changed = True
    for member in tree:
        total += stats.get(member, (0, 0))[1]
    return total / os.sysconf("SC_CLK_TCK")


def _when_busy(node: LocalNode, action: object, timeout: float = 30.0) -> threading.Thread:
    """Run `action` once the node process has burnt CPU on the query (it is mid-evaluation)."""
    assert node.process is not None
    pid = node.process.pid
    start = _cpu_seconds(pid)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _cpu_seconds(pid) - start < 0.3:
            time.sleep(0.02)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _reap(node: LocalNode) -> int:
    """Wait for a node process that was signalled, close its pipe, return its exit status."""
    return node.reap(timeout=60)


def _match_cli(fed: Federation, watchlist: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedtrace.cli",
            "query",
            "match",
            "--federation",
            str(fed.root / "federation.toml"),
            "--watchlist",
            str(watchlist),
            "--dataset",
            "wallets",
            "--case",
            "CASE-F",
            "--legal-basis",
            "MLA",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FEDTRACE_CACHE_DIR": str(fed.root / "cache")},
    )


def _ledger(node_dir: Path) -> tuple[list[tuple[object, ...]], int, int]:
    """(usage ledger rows, data version, transaction rows) of a node, read in one short session."""
    with store.NodeDatabase(node_dir / "node.duckdb").session() as con:
        rows = (
            con.execute("SELECT * FROM policy_usage ORDER BY ALL").fetchall()
            if con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'policy_usage'"
            ).fetchall()[0][0]
            else []
        )
        version = store.data_version(con)
        count = con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
    return rows, version, int(count)


def test_sigkill_mid_query_gives_unavailable_and_the_others_correct(faults: Federation) -> None:
    watchlist, items = _big_watchlist(faults)
    sg = faults.nodes["SG"]
    before, version, _ = _ledger(sg.node_dir)
    started = time.monotonic()
    query = _match_cli(faults, watchlist)
    killer = _when_busy(sg, lambda: sg.process.send_signal(signal.SIGKILL))  # type: ignore[union-attr]
    out, err = query.communicate(timeout=120)
    elapsed = time.monotonic() - started
    killer.join()
    assert _reap(sg) == -signal.SIGKILL
    assert query.returncode == 3, err
    assert elapsed < 40, "the coordinator answers within its deadline"
    results = {r["node"]: r for r in json.loads(out)["results"]}
    assert results["SG"]["status"] == "unavailable", results["SG"]
    assert "did not answer (UNAVAILABLE)" in results["SG"]["reason"]
    for code in ("EE", "FR"):
        assert results[code]["status"] == "ok", results[code]
        assert results[code]["matched"] == _oracle(faults.data, items, code)

    # Restart: data, epoch, budgets and audit intact; no half-written state visible.
    after, version_after, _ = _ledger(sg.node_dir)
    assert version_after == version
    assert set(before) <= set(after)  # charges never vanish; an unsettled one may stay charged
    verify = fedtrace("audit", "verify", str(sg.node_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    epoch_before = results["EE"]["epoch_id"]
    sg.start()
    faults.write_fed()
    (faults.root / "federation.toml").write_text(
        (faults.root / "federation.toml").read_text().replace("= 60", "= 40")
    )
    small = faults.root / "small.txt"
    small.write_text("\n".join(faults.data.watchlist(60)) + "\n")
    status, report, stderr = faults.match(small)
    assert status == 0 and report is not None, stderr
    again = {r["node"]: r for r in report["results"]}
    assert again["SG"]["matched"] == _oracle(faults.data, faults.data.watchlist(60), "SG")
    assert again["EE"]["epoch_id"] == epoch_before
    assert fedtrace("audit", "verify", str(sg.node_dir)).returncode == 0


def test_torn_audit_write_is_set_aside_and_the_prefix_verifies(faults: Federation) -> None:
    ee = faults.nodes["EE"]
    trail = ee.node_dir / "audit" / "audit.jsonl"
    ee.stop(signal.SIGKILL)
    with trail.open("ab") as handle:  # what a crash mid-append leaves: half a line
        handle.write(b'{"event":"query","seq":')
    verify = fedtrace("audit", "verify", str(ee.node_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "torn write" in verify.stdout + verify.stderr
    ee.start()
    faults.write_fed()
    verify = fedtrace("audit", "verify", str(ee.node_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    aside = list((ee.node_dir / "audit").glob("torn-*.partial"))
    assert [p.read_bytes() for p in aside] == [b'{"event":"query","seq":']
    events = [json.loads(line)["event"] for line in trail.read_text().splitlines()]
    assert "trail-repaired" in events


def test_sigterm_during_a_query_finishes_it_then_exits_zero(faults: Federation) -> None:
    watchlist, items = _big_watchlist(faults)
    fr = faults.nodes["FR"]
    process = fr.process
    assert process is not None
    query = _match_cli(faults, watchlist)
    stopper = _when_busy(fr, lambda: process.send_signal(signal.SIGTERM))
    out, err = query.communicate(timeout=120)
    stopper.join()
    assert _reap(fr) == 0
    results = {r["node"]: r for r in json.loads(out)["results"]}
    assert results["FR"]["status"] == "ok", (results["FR"], err)
    assert results["FR"]["matched"] == _oracle(faults.data, items, "FR")
    log = (fr.node_dir / "serve.log").read_text()
    assert "finishing in-flight calls" in log
    fr.start()
    faults.write_fed()


def test_ingest_killed_halfway_leaves_the_previous_data_in_force(faults: Federation) -> None:
    node_dir = faults.root / "ingest-node"
    fedtrace(
        "node",
        "init",
        str(node_dir),
        "--jurisdiction",
        "NL",
        "--ca",
        str(faults.root / "ca"),
        check=True,
    )
    source = faults.root / "data" / "EE" / "transactions.csv"
    fedtrace("node", "ingest", str(node_dir), str(source), "--table", "transactions", check=True)
    before = _ledger(node_dir)
    header, *rows = source.read_text().splitlines()
    big = faults.root / "big-transactions.csv"
    with big.open("w") as handle:
        handle.write(header + "\n")
        for copy in range(60):
            for row in rows:
                fields = row.split(",")
                fields[0] = f"{fields[0]}-{copy}"
                handle.write(",".join(fields) + "\n")
    wal = node_dir / "node.duckdb.wal"
    ingest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedtrace.cli",
            "node",
            "ingest",
            str(node_dir),
            str(big),
            "--table",
            "transactions",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ingest.poll() is None:
        if wal.exists() and wal.stat().st_size > 0:  # inside the ingest transaction
            break
        time.sleep(0.01)
    assert ingest.poll() is None, "the ingest finished before it could be interrupted"
    ingest.send_signal(signal.SIGKILL)
    ingest.communicate(timeout=10)
    assert _ledger(node_dir) == before
    done = fedtrace("node", "ingest", str(node_dir), str(big), "--table", "transactions")
    assert done.returncode == 0, done.stderr  # not a duplicate: the killed ingest left nothing
    assert _ledger(node_dir)[2] == before[2] + 60 * len(rows)
    shutil.rmtree(node_dir)


@dataclass
class LoadFigures:
    latencies: list[float]
    problems: list[str]


def test_load_20_investigators_10_queries_each(faults: Federation) -> None:
    federation = load_federation(faults.root / "federation.toml")
    transports = GrpcTransports(federation)
    pool = faults.data.watchlist(400)
    figures = LoadFigures([], [])
    lock = threading.Lock()

    def investigator(number: int) -> list[bool]:
        rng = random.Random(number)
        correct = []
        for _ in range(10):
            items = tuple(dict.fromkeys(canonical_address(x) for x in rng.sample(pool, 50)))
            query = MatchQuery("wallets", f"LOAD-{number}", "MLA", "wallet", items, INVESTIGATOR)
            started = time.monotonic()
            results = run_match(
                federation, query, transports, transports.ca_pem, cache=FilterCache(None)
            )
            elapsed = time.monotonic() - started
            with lock:
                figures.latencies.append(elapsed)
            wrong = [
                f"{r.node}: {r.status} {r.reason}"
                for r in results
                if r.status != "ok" or r.matched != _oracle(faults.data, list(items), r.node)
            ]
            with lock:
                figures.problems.extend(wrong)
            correct.append(not wrong)
        return correct

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as executor:
        outcomes = [ok for batch in executor.map(investigator, range(20)) for ok in batch]
    wall = time.monotonic() - started
    assert len(outcomes) == 200 and all(outcomes), figures.problems[:5]
    latencies = sorted(figures.latencies)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(
        f"\nLOAD 200 queries x 3 nodes: wall {wall:.1f} s, p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    for node in faults.nodes.values():
        assert node.process is not None and node.process.poll() is None
