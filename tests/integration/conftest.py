"""Real federations for end-to-end tests: a CA, DuckDB-backed nodes and `fedtrace node serve`
processes on loopback ports chosen by the OS, talked to by the real coordinator CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue

JURISDICTIONS = ("EE", "FR", "SG")
INVESTIGATOR = "FR"
TRANSACTIONS = 1_500

# EE tells FR which items it holds; FR tells itself only how many; SG grants FR nothing.
POLICIES = {
    "EE": """
jurisdiction = "EE"
version = "ee-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets", "subjects"]
disclosure = "membership"
max_items_per_query = 500
""",
    "FR": """
jurisdiction = "FR"
version = "fr-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 500
""",
    "SG": """
jurisdiction = "SG"
version = "sg-1"
[[grant]]
partners = ["EE"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 500
""",
}


def fedtrace(
    *args: str, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedtrace.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env={
            **os.environ,
            "FEDTRACE_CACHE_DIR": os.environ.get("FEDTRACE_TEST_CACHE", "/tmp/fedtrace-test-cache"),
        },
    )


@dataclass
class NodeProcess:
    code: str
    node_dir: Path
    process: subprocess.Popen[str] | None = None
    address: str = ""

    def start(self) -> str:
        with (self.node_dir / "serve.log").open("a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedtrace.cli",
                    "node",
                    "serve",
                    str(self.node_dir),
                    "--listen",
                    "127.0.0.1:0",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "serving on" not in line:
            self.process.wait(timeout=10)
            self.process.stdout.close()
            raise AssertionError(
                f"node {self.code} did not start: "
                f"{(self.node_dir / 'serve.log').read_text()[-2000:]}"
            )
        self.address = line.rsplit(" ", 1)[-1].strip()
        return self.address

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        return code


@dataclass
class Federation:
    root: Path
    data: DemoData
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def write_fed(
        self,
        name: str = "federation.toml",
        investigator_dir: str = "investigator",
        addresses: dict[str, str] | None = None,
    ) -> Path:
        lines = [
            "[investigator]",
            f'name = "{INVESTIGATOR}"',
            f'cert = "{investigator_dir}/cert.pem"',
            f'key = "{investigator_dir}/key.pem"',
            'ca = "ca/ca.pem"',
            "",
            "[query]",
            "deadline_seconds = 60",
            "",
        ]
        for code, node in self.nodes.items():
            address = (addresses or {}).get(code, node.address)
            lines += ["[[node]]", f'name = "{code}"', f'address = "{address}"', ""]
        path = self.root / name
        path.write_text("\n".join(lines))
        return path

    def match(
        self, watchlist: Path, *extra: str, fed: Path | None = None, dataset: str = "wallets"
    ) -> tuple[int, dict[str, object] | None, str]:
        done = fedtrace(
            "query",
            "match",
            "--federation",
            str(fed or self.root / "federation.toml"),
            "--watchlist",
            str(watchlist),
            "--dataset",
            dataset,
            "--case",
            "CASE-7",
            "--legal-basis",
            "MLA",
            "--format",
            "json",
            *extra,
        )
        report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        return done.returncode, report, done.stderr


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    init_ca(root / "ca")
    data = generate_federation_data(root / "data", JURISDICTIONS, TRANSACTIONS, seed=11)
    fed = Federation(root=root, data=data)
    for code in JURISDICTIONS:
        node_dir = root / "nodes" / code
        fedtrace(
            "node",
            "init",
            str(node_dir),
            "--jurisdiction",
            code,
            "--ca",
            str(root / "ca"),
            check=True,
        )
        (node_dir / "policy.toml").write_text(POLICIES[code])
        for table in ("transactions", "subjects", "subject_wallets"):
            fedtrace(
                "node",
                "ingest",
                str(node_dir),
                str(root / "data" / code / f"{table}.csv"),
                "--table",
                table,
                check=True,
            )
        fed.nodes[code] = NodeProcess(code, node_dir)
    issue(root / "ca", root / "investigator", name=INVESTIGATOR, role=ROLE_INVESTIGATOR)
    init_ca(root / "rogue-ca")
    issue(root / "rogue-ca", root / "rogue", name=INVESTIGATOR, role=ROLE_INVESTIGATOR)
    for node in fed.nodes.values():
        node.start()
    fed.write_fed()
    yield fed
    for node in fed.nodes.values():
        if node.process is not None:
            node.stop()


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
