"""Benchmark of the overlap query with real node processes: seconds and peak memory.

Builds a throwaway federation with ``fedtrace.harness`` (CA, N nodes over
synthetic ETH transactions with about 10% of each wallet set shared across every
group), starts `fedtrace node serve` for each, runs `fedtrace query overlap` once
and reports wall time and the peak RSS of the coordinator and of every node
process (their blinding pool's worker processes are not included; they hold one
batch each).

    python -m fedtrace.bench.overlap_federation --nodes 3 --wallets 100000 [--dir DIR]

Setup (ingest, each node's membership epoch) is timed apart from the overlap.
The overlap is reported against the k²·N bound (``fedtrace.bench.overlap.
MultiplicationBound``) with the bare single-core multiplication rate sampled in
this process just before and just after it: ``bound_seconds`` and
``ratio_to_bound`` (wall time), and ``cpu_seconds`` (every node process with its
pool workers, and the coordinator) against ``bound_cpu_seconds``, which stays
meaningful when something else shares the machine.

With ``FEDTRACE_BENCH_PROFILE=DIR`` in the environment, every node process and
the coordinator run under cProfile (all threads) and write ``DIR/ROLE-PID.prof``
when they exit; read them with ``python -m pstats``.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import csv
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedtrace.bench.overlap import multiplication_bound, single_core_multiply_rate
from fedtrace.harness import LocalFederation, cli_argv

CODES = ("EE", "FR", "SG", "DE", "LT", "PL", "NL", "ES")
#: A node blinds its whole set before it serves: a million wallets take minutes on 2 cores.
START_TIMEOUT_SECONDS = 900.0
#: Set to a directory to profile the node processes and the coordinator (module docstring).
PROFILE_ENV = "FEDTRACE_BENCH_PROFILE"
_PROFILE_SHIM = "from fedtrace.bench.overlap_federation import profile_process\nprofile_process()\n"


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


def process_cpu_seconds(root: int) -> tuple[float, float]:
    """CPU seconds of ``root`` alone, and of ``root`` with every live descendant and the
    children each has reaped.

    A node's pool workers are children of its forkserver, not of the node, so
    the node's own figure leaves out the multiplications.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    tree = {root}
    grown = True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    per_second = os.sysconf("SC_CLK_TCK")
    return ticks.get(root, 0) / per_second, sum(ticks.get(pid, 0) for pid in tree) / per_second


def _minus(after: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile_process() -> None:
    """Run this process under cProfile, every thread, if it is a node or the coordinator.

    Called from the ``sitecustomize`` shim the bench puts on ``PYTHONPATH``; the
    stats go to ``$FEDTRACE_BENCH_PROFILE/ROLE-PID.prof`` at exit (a node exits
    on the harness's SIGTERM). Pool workers and other processes are left alone.
    """
    directory = os.environ.get(PROFILE_ENV)
    argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    if not directory or b"fedtrace.cli" not in argv:
        return
    if b"serve" in argv:
        role = "node-" + Path(argv[argv.index(b"serve") + 1].decode()).name
    elif b"overlap" in argv:
        role = "coordinator"
    else:
        return
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: object) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook for the thread

    def dump() -> None:
        stats: pstats.Stats | None = None
        for profile in profiles:
            profile.disable()
            profile.create_stats()
            if not getattr(profile, "stats", None):
                continue
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        if stats is not None:
            stats.dump_stats(str(Path(directory) / f"{role}-{os.getpid()}.prof"))

    threading.setprofile(start)
    start()
    atexit.register(dump)


def _enable_profiling() -> None:
    """Put the profiling shim on the children's ``PYTHONPATH`` when ``PROFILE_ENV`` is set."""
    directory = os.environ.get(PROFILE_ENV)
    if not directory:
        return
    shim = Path(directory).resolve() / "site"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(_PROFILE_SHIM)
    os.environ[PROFILE_ENV] = str(Path(directory).resolve())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(shim), os.environ.get("PYTHONPATH", "")) if part
    )


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
        load_average = os.getloadavg()[0]
        rates = [single_core_multiply_rate()]
        nodes_cpu = {code: process_cpu_seconds(node.pid) for code, node in federation.nodes.items()}
        children_cpu = _children_cpu_seconds()
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
                stdout=subprocess.DEVNULL,  # its "report written" line; this prints JSON
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
            coordinator_cpu = _children_cpu_seconds() - children_cpu
            nodes_cpu = {
                code: _minus(process_cpu_seconds(node.pid), nodes_cpu[code])
                for code, node in federation.nodes.items()
            }
            rates.append(single_core_multiply_rate())
            if coordinator.returncode != 0:
                errors.seek(0)
                raise RuntimeError(
                    f"overlap failed ({coordinator.returncode}): {errors.read()[-2000:]}"
                )
        report = json.loads((root / "report.json").read_text())
        node_rss = {code: _peak_rss_mib(node.pid) for code, node in federation.nodes.items()}
    bound = multiplication_bound(n_nodes, wallets, rates)
    cpu_seconds = sum(tree for _, tree in nodes_cpu.values()) + coordinator_cpu
    return {
        "nodes": n_nodes,
        "wallets_per_node": wallets,
        "setup_seconds": round(setup_seconds, 1),
        "overlap_seconds": round(overlap_seconds, 2),
        "scalar_multiplications": bound.multiplications,
        "multiplications_per_second": round(bound.multiplications / overlap_seconds),
        **bound.figures(overlap_seconds),
        "single_core_rate_samples": [round(rate) for rate in rates],
        "cpu_seconds": round(cpu_seconds, 1),
        "bound_cpu_seconds": round(bound.cpu_seconds, 1),
        "cpu_ratio_to_bound": round(cpu_seconds / bound.cpu_seconds, 3),
        "node_cpu_seconds": {code: round(tree, 1) for code, (_, tree) in nodes_cpu.items()},
        "node_server_cpu_seconds": {code: round(own, 1) for code, (own, _) in nodes_cpu.items()},
        "coordinator_cpu_seconds": round(coordinator_cpu, 1),
        "load_average_at_start": round(load_average, 2),
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
    _enable_profiling()
    if args.dir:
        result = run(args.nodes, args.wallets, Path(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="fedtrace-overlap-bench-") as tmp:
            result = run(args.nodes, args.wallets, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
