"""`fedtrace demo`: a three-jurisdiction federation on this machine, end to end, then shut down.

It uses only the public commands' building blocks: a CA, three nodes with
synthetic data and the example policies in policies/, real `fedtrace node
serve` processes on loopback, and an investigator's match query.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedtrace.demo_data import generate_federation_data
from fedtrace.errors import ExitCode, FedtraceError
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue

JURISDICTIONS = ("EE", "FR", "SG")
INVESTIGATOR = "FR"
POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
START_TIMEOUT_SECONDS = 60.0


def _say(text: str) -> None:
    print(text, flush=True)


def _fedtrace(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fedtrace.cli", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise FedtraceError(f"`fedtrace {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


@contextmanager
def serving(node_dirs: dict[str, Path]) -> Iterator[dict[str, str]]:
    """Start one `fedtrace node serve` per node on a free loopback port; stop them on exit."""
    processes: dict[str, subprocess.Popen[str]] = {}
    addresses: dict[str, str] = {}
    try:
        for code, node_dir in node_dirs.items():
            with (node_dir / "serve.log").open("w") as log:
                processes[code] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fedtrace.cli",
                        "node",
                        "serve",
                        str(node_dir),
                        "--listen",
                        "127.0.0.1:0",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        for code, process in processes.items():
            addresses[code] = _wait_for_port(code, process, node_dirs[code] / "serve.log")
        yield addresses
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdout is not None:
                process.stdout.close()


def _wait_for_port(code: str, process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    line = process.stdout.readline()  # "fedtrace node EE serving on 127.0.0.1:PORT"
    if "serving on" not in line or time.monotonic() > deadline:
        tail = log.read_text()[-400:] if log.exists() else ""
        raise FedtraceError(f"node {code} did not start: {tail.strip()}")
    return line.rsplit(" ", 1)[-1].strip()


def build_federation(root: Path) -> tuple[dict[str, Path], Path]:
    """CA, nodes with data and policies, investigator certificate; returns nodes and watchlist."""
    _say(f"building a demo federation in {root}")
    init_ca(root / "ca")
    data = generate_federation_data(root / "data", JURISDICTIONS, 20_000)
    node_dirs: dict[str, Path] = {}
    for code in JURISDICTIONS:
        node_dir = root / "nodes" / code
        _fedtrace("node", "init", str(node_dir), "--jurisdiction", code, "--ca", str(root / "ca"))
        shutil.copyfile(POLICY_DIR / f"{code}.toml", node_dir / "policy.toml")
        for table in ("transactions", "subjects", "subject_wallets"):
            _fedtrace(
                "node",
                "ingest",
                str(node_dir),
                str(root / "data" / code / f"{table}.csv"),
                "--table",
                table,
            )
        _say(f"  node {code}: {len(data.wallets[code]):,} wallets from 20,000 transactions")
        node_dirs[code] = node_dir
    issue(root / "ca", root / "investigator", name=INVESTIGATOR, role=ROLE_INVESTIGATOR)
    watchlist = root / "watchlist.txt"
    watchlist.write_text("\n".join(data.watchlist(200)) + "\n")
    return node_dirs, watchlist


def write_federation_file(root: Path, addresses: dict[str, str]) -> Path:
    lines = [
        "[investigator]",
        f'name = "{INVESTIGATOR}"',
        'cert = "investigator/cert.pem"',
        'key = "investigator/key.pem"',
        'ca = "ca/ca.pem"',
        "",
    ]
    for code, address in addresses.items():
        lines += ["[[node]]", f'name = "{code}"', f'address = "{address}"', ""]
    path = root / "federation.toml"
    path.write_text("\n".join(lines))
    return path


def _investigator(*args: str) -> int:
    """Run one investigator command as a user would, printing its report."""
    done = subprocess.run([sys.executable, "-m", "fedtrace.cli", *args], text=True, check=False)
    return done.returncode


def run_demo(keep: Path | None = None) -> int:
    started = time.monotonic()
    root = keep or Path(tempfile.mkdtemp(prefix="fedtrace-demo-"))
    try:
        node_dirs, watchlist = build_federation(root)
        _say("starting three nodes (each blinds its wallets for a new epoch)")
        with serving(node_dirs) as addresses:
            fed = str(write_federation_file(root, addresses))
            common = ("--federation", fed, "--dataset", "wallets", "--legal-basis", "MLA")
            _say(f"investigator {INVESTIGATOR}: which of 200 watchlisted wallets each node holds\n")
            codes = [
                _investigator(
                    "query", "match", *common, "--watchlist", str(watchlist), "--case", "DEMO-1"
                )
            ]
            _say(
                f"\ninvestigator {INVESTIGATOR}: how much moved through the matched wallets, "
                "as one noisy federation-wide total\n"
            )
            codes.append(
                _investigator(
                    "query",
                    "aggregate",
                    *common,
                    "--watchlist",
                    str(watchlist),
                    "--case",
                    "DEMO-2",
                    "--sum",
                    "total_in_eur",
                    "--sum",
                    "tx_count",
                    "--total-only",
                )
            )
            _say(
                f"\ninvestigator {INVESTIGATOR}: which jurisdictions share wallets, "
                "with no watchlist\n"
            )
            codes.append(_investigator("query", "overlap", *common, "--case", "DEMO-3"))
            _say("\nEE's operator: EE's own wallets the overlap found shared\n")
            codes.append(_investigator("node", "shared", str(node_dirs["EE"]), "--case", "DEMO-3"))
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s; nodes stopped")
        failed = [code for code in codes if code not in (0, 3)]
        return failed[0] if failed else ExitCode.OK
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
