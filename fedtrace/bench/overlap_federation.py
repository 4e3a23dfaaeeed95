"""Benchmark of the overlap query with real node processes: seconds and peak memory.

Builds a throwaway federation with ``fedtrace.harness`` (CA, N nodes over
synthetic ETH transactions with about 10% of each wallet set shared across every
group), starts `fedtrace node serve` for each, runs `fedtrace query overlap` once
and reports wall time and the peak RSS of the coordinator and of every node
process (their blinding pool's worker processes are not included; they hold one
batch each).

    python -m fedtrace.bench.overlap_federation --nodes 3 --wallets 100000 [--dir DIR]

Setup (ingest, each node's membership epoch) is timed apart from the overlap.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedtrace.harness import LocalFederation, cli_argv

CODES = ("EE", "FR", "SG", "DE", "LT", "PL", "NL", "ES")
#: A node blinds its whole set before it serves: a million wallets take minutes on 2 cores.
START_TIMEOUT_SECONDS = 900.0


def wallet_sets(
    codes: tuple[str, ...], wallets: int, shared_fraction: float = 0.1, seed: int = 1
) -> dict[str, list[str]]:
    """Lower-case 0x+40-hex addresses; shared ones cycle through every group of two or more."""
    rng = random.Random(seed)
    groups = [m for m in range(1, 1 << len(codes)) if m.bit_count() >= 2]
    sets: dict[str, list[str]] = {code: [] for code in codes}
    shared = int(wallets * shared_fraction)
    pool = 0
    while min(len(items) for items in sets.values()) < shared:
        address = f"0x{rng.getrandbits(160):040x}"
        mask = groups[pool % len(groups)]
        for bit, code in enumerate(codes):
            if mask >> bit & 1 and len(sets[code]) < shared:
                sets[code].append(address)
        pool += 1
    for code in codes:
        while len(sets[code]) < wallets:
            sets[code].append(f"0x{rng.getrandbits(160):040x}")
    return sets


def _write_transactions(path: Path, wallets: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "tx_hash",
                "chain",
                "from_address",
                "to_address",
                "asset",
                "amount",
                "amount_eur",
                "timestamp",
            ]
        )
        for index, address in enumerate(wallets):
            writer.writerow(
                [
                    f"0x{index:064x}",
                    "eth",
                    address,
                    address,
                    "ETH",
                    "1",
                    "1.00",
                    "2026-01-01T00:00:00Z",
                ]
            )


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _policy(code: str) -> str:
    return (
        f'jurisdiction = "{code}"\nversion = "bench"\n[[grant]]\npartners = ["*"]\n'
        'datasets = ["wallets"]\ndisclosure = "overlap"\nreveal_to_owner = true\n'
    )


def run(n_nodes: int, wallets: int, root: Path) -> dict[str, Any]:
    codes = CODES[:n_nodes]
    started = time.perf_counter()
    with LocalFederation(root, investigator=codes[0], deadline_seconds=3600) as federation:
        federation.issue_investigator()
        sets = wallet_sets(codes, wallets)
        for code in codes:
            _write_transactions(root / f"{code}.csv", sets[code])
            node = federation.add_node(
                code,
                policy=_policy(code),
                tables={"transactions": root / f"{code}.csv"},
                node_dir=root / code,
            )
            node.start_timeout = START_TIMEOUT_SECONDS
        federation.start()
        setup_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with (root / "query.err").open("w+") as errors:
            coordinator = subprocess.Popen(
                cli_argv(
                    "query",
                    "overlap",
                    "--federation",
                    str(federation.federation_file),
                    "--dataset",
                    "wallets",
                    "--case",
                    "BENCH",
                    "--format",
                    "json",
                    "--out",
                    str(root / "report.json"),
                ),
                stderr=errors,
                text=True,
            )
            # VmHWM polled while it lives: wait4's ru_maxrss carries this process's peak
            # (the generated wallet sets) over into the child across fork + exec.
            coordinator_rss = 0.0
            while coordinator.poll() is None:
                coordinator_rss = max(coordinator_rss, _peak_rss_mib(coordinator.pid))
                time.sleep(0.01)
            overlap_seconds = time.perf_counter() - started
            if coordinator.returncode != 0:
                errors.seek(0)
                raise RuntimeError(
                    f"overlap failed ({coordinator.returncode}): {errors.read()[-2000:]}"
                )
        report = json.loads((root / "report.json").read_text())
        node_rss = {code: _peak_rss_mib(node.pid) for code, node in federation.nodes.items()}
    multiplications = n_nodes * n_nodes * wallets
    return {
        "nodes": n_nodes,
        "wallets_per_node": wallets,
        "setup_seconds": round(setup_seconds, 1),
        "overlap_seconds": round(overlap_seconds, 2),
        "scalar_multiplications": multiplications,
        "multiplications_per_second": round(multiplications / overlap_seconds),
        "coordinator_peak_rss_mib": coordinator_rss,
        "node_peak_rss_mib": node_rss,
        "groups": report["groups"],
        "statuses": {r["node"]: r["status"] for r in report["results"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedtrace.bench.overlap_federation")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--dir", help="build the federation here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.dir:
        result = run(args.nodes, args.wallets, Path(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="fedtrace-overlap-bench-") as tmp:
            result = run(args.nodes, args.wallets, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
