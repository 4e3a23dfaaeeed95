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


def run_demo(keep: Path | None = None) -> int:
    started = time.monotonic()
    root = keep or Path(tempfile.mkdtemp(prefix="fedtrace-demo-"))
    try:
        node_dirs, watchlist = build_federation(root)
        _say("starting three nodes (each blinds its wallets for a new epoch)")
        with serving(node_dirs) as addresses:
            federation = write_federation_file(root, addresses)
            _say(f"investigator {INVESTIGATOR}: matching a 200-address watchlist, case DEMO-1\n")
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fedtrace.cli",
                    "query",
                    "match",
                    "--federation",
                    str(federation),
                    "--watchlist",
                    str(watchlist),
                    "--dataset",
                    "wallets",
                    "--case",
                    "DEMO-1",
                    "--legal-basis",
                    "MLA",
                ],
                text=True,
                check=False,
            )
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s; nodes stopped")
        return ExitCode.OK if done.returncode in (0, 3) else done.returncode
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
