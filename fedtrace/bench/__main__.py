"""``scripts/bench``: how fast fedtrace is on this machine, against the hardware and a peer.

``python -m fedtrace.bench --quick`` stays at 100,000 items; the full run adds
1,000,000. ``--json`` prints one JSON object instead of the table. ``--psi
[--sizes 234k,1m]`` runs only the side-by-side PSI section (``fedtrace.bench.psi``).
``--scale [--scale-items N]`` builds one big epoch on a LocalCluster (``fedtrace.bench.scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from fedtrace.bench import psi as bench_psi
from fedtrace.bench import run as bench_run
from fedtrace.bench import scale as bench_scale
from fedtrace.bench.figures import Bench, render_table


def report_json(bench: Bench) -> str:
    """One JSON object: the machine, every figure, every target with ``met``, the notes."""
    return json.dumps(
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="100,000 items only (minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to build the federations (default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument(
        "--sealing",
        action="store_true",
        help="only what sealed openings for a monitor cost (1,000 and 10,000 items; seconds)",
    )
    bench_psi.add_arguments(parser)
    bench_scale.add_arguments(parser)
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    if args.peers_setup:
        return bench_psi.setup_peers_venv(say)

    def measure(workdir: Path) -> Bench:
        if args.sealing:
            bench = Bench(say)
            bench_run.measure_sealing(bench, (1_000, 10_000))
            return bench
        if args.psi:
            return bench_run.run_psi(bench_psi.plan_from_args(args), workdir, say)
        if args.scale:
            return bench_scale.run(bench_scale.plan_from_args(args), workdir, say)
        return bench_run.run(args.quick, workdir, args.cold_runs, args.warm_runs, say)

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        bench = measure(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="fedtrace-bench-") as workdir:
            bench = measure(Path(workdir))
    if args.json:
        print(report_json(bench))
    else:
        sys.stdout.write(render_table(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
