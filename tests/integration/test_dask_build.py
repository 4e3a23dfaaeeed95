"""A node builds its epoch on a real Dask cluster (a scheduler and two workers on loopback, TLS).

The cluster's certificates come from a test CA (`fedtrace.pki`); the node connects
with `[compute] scheduler = "tls://127.0.0.1:PORT"`. One worker is killed while the
node blinds, the build finishes on the other, and a match through the real
coordinator equals the plain-Python intersection and the answers of a node with the
same items built on its own cores. Nothing secret lands in the workers' directories
or logs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import duckdb
import pytest

from fedtrace.demo_data import generate_federation_data
from fedtrace.pki import ROLE_NODE, issue

from .conftest import JURISDICTIONS, Federation, wait_until
from .test_federation import _oracle, _watchlist

pytestmark = pytest.mark.slow

POLICY = """
jurisdiction = "{code}"
version = "{code}-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 500
"""
SYNTHETIC_TRANSACTIONS = 60_000  # 120,000 more wallets: seconds of blinding per worker
KILL_AFTER_SECONDS = 1.5
BUILT = "dataset wallets: new epoch "  # the node's log line once the build is stored


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Cluster:
    """`dask scheduler` and `dask worker` processes with TLS certificates from the test CA."""

    def __init__(self, root: Path, ca_dir: Path) -> None:
        self.root = root
        self.tls = root / "cluster-tls"
        issue(ca_dir, self.tls, name="DK", role=ROLE_NODE)
        self.scratch = root / "dask-tmp"
        self.scratch.mkdir(mode=0o700)
        self.port = _free_port()
        self.address = f"tls://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
            "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False",
            "DASK_TEMPORARY_DIRECTORY": str(self.scratch),
        }

    def _tls_args(self) -> list[str]:
        return [
            "--tls-ca-file", str(self.tls / "ca.pem"),
            "--tls-cert", str(self.tls / "cert.pem"),
            "--tls-key", str(self.tls / "key.pem"),
        ]  # fmt: skip

    def _start(self, name: str, args: list[str]) -> None:
        with (self.root / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", *args, *self._tls_args()],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
            )

    def start(self) -> None:
        self._start(
            "scheduler",
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--protocol", "tls", "--no-dashboard"],
        )  # fmt: skip
        for name in ("worker-1", "worker-2"):
            self.local_directory(name).mkdir(mode=0o700)
            self._start(
                name,
                ["distributed.cli.dask_worker", self.address, "--nworkers", "1", "--nthreads",
                 "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                 "--local-directory", str(self.local_directory(name)), "--name", name],
            )  # fmt: skip
        wait_until(lambda: self.log("worker-1").count("Registered to") >= 1, timeout=60)
        wait_until(lambda: self.log("worker-2").count("Registered to") >= 1, timeout=60)

    def local_directory(self, name: str) -> Path:
        return self.root / f"{name}-space"

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def cluster_and_federation(tmp_path: Path) -> Iterator[tuple[Cluster, Federation]]:
    data = generate_federation_data(tmp_path / "data", JURISDICTIONS, 1_500, seed=5)
    federation = Federation(tmp_path, data)
    with federation:
        cluster = Cluster(tmp_path, federation.ca_dir)
        try:
            cluster.start()
            yield cluster, federation
        finally:
            cluster.stop()


def _add_synthetic_wallets(database: Path) -> None:
    with duckdb.connect(str(database)) as con:
        con.execute(
            "INSERT INTO transactions SELECT 'syn' || i, 'ethereum', "
            "printf('0x%040x', 2 * i + 1), printf('0x%040x', 2 * i + 2), 'ETH', 1, 1, "
            "TIMESTAMPTZ '2024-01-01 00:00:00+00', NULL, 0 FROM range(?) t(i)",
            [SYNTHETIC_TRANSACTIONS],
        )


def _files_holding(directory: Path, secrets: list[bytes]) -> list[Path]:
    found = []
    for path in directory.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            if any(secret in content for secret in secrets):
                found.append(path)
    return found


def test_a_dask_build_survives_a_killed_worker_and_answers_as_a_local_build(
    cluster_and_federation: tuple[Cluster, Federation],
) -> None:
    cluster, federation = cluster_and_federation
    tables = federation.data.tables("EE")
    on_cluster = federation.add_node("EE", policy=POLICY.format(code="EE"), tables=tables)
    on_cores = federation.add_node("LV", policy=POLICY.format(code="LV"), tables=tables)
    federation.issue_investigator()
    _add_synthetic_wallets(on_cluster.database)
    with (on_cluster.node_dir / "node.toml").open("a") as toml:
        toml.write(
            f'\n[compute]\nscheduler = "{cluster.address}"\n'
            f'tls_ca = "{cluster.tls / "ca.pem"}"\n'
            f'tls_cert = "{cluster.tls / "cert.pem"}"\n'
            f'tls_key = "{cluster.tls / "key.pem"}"\n'
        )

    on_cluster.launch()
    wait_until(lambda: "dataset wallets: blinding" in on_cluster.log.read_text(), timeout=120)
    time.sleep(KILL_AFTER_SECONDS)  # both workers are blinding chunks now
    assert BUILT not in on_cluster.log.read_text(), "the build ended before the kill"
    cluster.kill("worker-1")  # mid-build: its chunks are rerun on worker-2
    on_cluster.wait_serving()
    assert BUILT in on_cluster.log.read_text()
    on_cores.start()
    federation.write_federation_file()

    watchlist = _watchlist(federation, "dask-watchlist.txt", 120)
    code, report, stderr = federation.match(watchlist)
    assert code == 0, (stderr, report and report["results"])
    assert report is not None
    results = {r["node"]: r for r in cast(list[dict[str, Any]], report["results"])}
    expected = _oracle(federation, watchlist, "EE")
    assert results["EE"]["status"] == "ok" and results["LV"]["status"] == "ok"
    assert set(results["EE"]["matched"]) == set(expected)
    assert set(results["LV"]["matched"]) == set(expected)

    federation.stop()  # the serving node holds the database: read it once stopped
    with duckdb.connect(str(on_cluster.database), read_only=True) as con:
        epoch_id, table = con.execute(
            "SELECT epoch_id, table_points FROM epochs WHERE dataset = 'wallets'"
        ).fetchall()[0]
        count = con.execute("SELECT item_count FROM epochs WHERE dataset = 'wallets'").fetchall()
    assert count == [(len(bytes(table)) // 32,)] and count[0][0] > 2 * SYNTHETIC_TRANSACTIONS
    key = (on_cluster.node_dir / "keys" / f"wallets-{epoch_id}.key").read_bytes()
    points = [bytes(table)[i : i + 32] for i in range(0, 32 * 50, 32)]
    secrets = [key, key.hex().encode(), *points]
    for directory in (*map(cluster.local_directory, ("worker-1", "worker-2")), cluster.scratch):
        assert _files_holding(directory, secrets) == []
    for log in ("scheduler", "worker-1", "worker-2"):
        assert key.hex() not in cluster.log(log) and repr(key) not in cluster.log(log)
    assert key.hex() not in on_cluster.log.read_text()
