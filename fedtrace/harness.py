"""A federation on this machine: a CA, nodes, real `fedtrace node serve` processes, FED.toml.

The demo, the benchmarks and the integration tests all build their federations
here, through the public commands a deployment uses (`fedtrace node init`,
`fedtrace node ingest`, `fedtrace node serve`) and the PKI functions behind
`fedtrace pki`:

    with LocalFederation(root) as federation:
        federation.add_node("EE", policy=EE_POLICY, tables={"transactions": csv})
        federation.issue_investigator()
        federation.start()              # every node on a loopback port the OS picks
        run_cli("query", "match", "--federation", str(federation.federation_file), ...)
    # every node process is stopped here (SIGTERM, then SIGKILL after a timeout)

A node prints ``fedtrace node EE serving on HOST:PORT`` once it accepts calls;
`LocalNode.start` reads that line to learn the port bound to ``127.0.0.1:0``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fedtrace.errors import FedtraceError
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue

SERVING_MARKER = "serving on"
LOOPBACK_ANY_PORT = "127.0.0.1:0"
FEDERATION_FILE = "federation.toml"
INVESTIGATOR_DIR = "investigator"
CA_DIR = "ca"
SERVE_LOG = "serve.log"
START_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 60.0
CLI_TIMEOUT_SECONDS = 600.0


class HarnessError(FedtraceError):
    """A command of the local federation failed, or a node did not start."""


def cli_argv(*args: str) -> list[str]:
    """The command line of ``fedtrace ARGS`` run with this interpreter."""
    return [sys.executable, "-m", "fedtrace.cli", *args]


def run_cli(
    *args: str,
    check: bool = True,
    timeout: float | None = CLI_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``fedtrace ARGS`` to completion, output captured; ``check`` raises on a non-zero exit.

    ``env`` adds to (or overrides) this process's environment.
    """
    done = subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **env} if env is not None else None,
    )
    if check and done.returncode != 0:
        raise HarnessError(
            f"`fedtrace {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-1500:]}"
        )
    return done


@dataclass
class LocalNode:
    """One node directory and, while it serves, its `fedtrace node serve` process."""

    jurisdiction: str
    node_dir: Path
    listen: str = LOOPBACK_ANY_PORT
    #: More `fedtrace node serve` options, e.g. ("--metrics", "127.0.0.1:9464").
    serve_args: tuple[str, ...] = ()
    start_timeout: float = START_TIMEOUT_SECONDS
    stop_timeout: float = STOP_TIMEOUT_SECONDS
    process: subprocess.Popen[str] | None = field(default=None, repr=False)
    address: str = ""
    #: Seconds from process start to its "serving on" line, for the last start.
    start_seconds: float = 0.0
    _launched_at: float = field(default=0.0, repr=False)

    @property
    def log(self) -> Path:
        """The node's stderr (its log lines), appended across restarts."""
        return self.node_dir / SERVE_LOG

    @property
    def policy_file(self) -> Path:
        return self.node_dir / "policy.toml"

    @property
    def database(self) -> Path:
        return self.node_dir / "node.duckdb"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise HarnessError(f"node {self.jurisdiction} is not running")
        return self.process.pid

    def write_policy(self, text: str) -> None:
        """Replace the node's policy file (a serving node reloads it within a second)."""
        self.policy_file.write_text(text)

    def ingest(self, csv_path: Path, table: str, env: Mapping[str, str] | None = None) -> None:
        """`fedtrace node ingest NODE_DIR CSV --table TABLE`."""
        run_cli("node", "ingest", str(self.node_dir), str(csv_path), "--table", table, env=env)

    def launch(self) -> None:
        """Start `fedtrace node serve` without waiting for it; `wait_serving` then waits."""
        if self.running:
            raise HarnessError(f"node {self.jurisdiction} is already running")
        if self.process is not None:  # exited on its own since: collect it first
            self.process.wait()
            self._forget()
        self._launched_at = time.perf_counter()
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                cli_argv(
                    "node", "serve", str(self.node_dir), "--listen", self.listen, *self.serve_args
                ),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def wait_serving(self) -> str:
        """Wait for the "serving on HOST:PORT" line; return that address (also `.address`)."""
        process = self.process
        if process is None or process.stdout is None:
            raise HarnessError(f"node {self.jurisdiction} was not launched")
        lines: list[str] = []
        reader = threading.Thread(
            target=_read_until_serving, args=(process.stdout, lines), daemon=True
        )
        reader.start()
        reader.join(self.start_timeout)
        line = lines[-1] if lines else ""
        if SERVING_MARKER not in line:
            why = "timed out" if reader.is_alive() else "exited"
            process.kill()
            process.wait()
            reader.join(STOP_TIMEOUT_SECONDS)  # the pipe is at EOF now: let the reader finish
            self._forget()
            raise HarnessError(
                f"node {self.jurisdiction} did not start ({why}): "
                f"{self.log.read_text()[-2000:].strip() if self.log.exists() else ''}"
            )
        self.start_seconds = time.perf_counter() - self._launched_at
        self.address = line.rsplit(" ", 1)[-1].strip()
        return self.address

    def start(self) -> str:
        """Start the node, wait until it serves and return its address ("127.0.0.1:PORT")."""
        self.launch()
        return self.wait_serving()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the node process if it is still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (graceful stop by default), wait, kill on timeout; the exit status."""
        if self.process is None:
            raise HarnessError(f"node {self.jurisdiction} is not running")
        self.send_signal(sig)
        return self.wait_stopped()

    def stop_if_running(self) -> None:
        if self.process is not None:
            self.stop()

    def wait_stopped(self) -> int:
        """Wait for a signalled process to exit, SIGKILL it after ``stop_timeout``; its status."""
        process = self.process
        if process is None:
            raise HarnessError(f"node {self.jurisdiction} is not running")
        try:
            code = process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self._forget()
        return code

    def reap(self, timeout: float | None = None) -> int:
        """Wait for a process that is stopping on its own (a signal sent elsewhere); a
        `subprocess.TimeoutExpired` if it does not exit in time."""
        if self.process is None:
            raise HarnessError(f"node {self.jurisdiction} is not running")
        code = self.process.wait(timeout=self.stop_timeout if timeout is None else timeout)
        self._forget()
        return code

    def _forget(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


def _read_until_serving(stream: Iterable[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
        if SERVING_MARKER in line:
            return


@dataclass
class LocalFederation:
    """A CA, nodes under ``root/nodes/CODE``, the investigator's certificate and FED.toml.

    As a context manager it stops every node process on exit, whatever happened.
    """

    root: Path
    investigator: str = "FR"
    #: ``[query] deadline_seconds`` in FED.toml; None leaves the coordinator's default.
    deadline_seconds: int | None = 60
    nodes: dict[str, LocalNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.ca_dir / "ca.pem").exists():
            init_ca(self.ca_dir)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def ca_dir(self) -> Path:
        return self.root / CA_DIR

    @property
    def federation_file(self) -> Path:
        return self.root / FEDERATION_FILE

    def add_node(
        self,
        jurisdiction: str,
        *,
        policy: str | None = None,
        tables: Mapping[str, Path] | None = None,
        node_dir: Path | None = None,
    ) -> LocalNode:
        """`fedtrace node init`, then the policy file (if given), then one ingest per table.

        ``tables`` maps a table name (``transactions``, ``subjects``, …) to its CSV;
        without ``policy`` the node keeps `node init`'s deny-all policy.
        """
        if jurisdiction in self.nodes:
            raise HarnessError(f"node {jurisdiction} is already in the federation")
        directory = node_dir or self.root / "nodes" / jurisdiction
        run_cli(
            "node", "init", str(directory), "--jurisdiction", jurisdiction, "--ca", str(self.ca_dir)
        )
        node = LocalNode(jurisdiction, directory)
        if policy is not None:
            node.write_policy(policy)
        for table, csv_path in (tables or {}).items():
            node.ingest(csv_path, table)
        self.nodes[jurisdiction] = node
        return node

    def issue_investigator(
        self, directory: str = INVESTIGATOR_DIR, *, name: str | None = None
    ) -> Path:
        """The investigator's certificate and key in ``root/directory``; its certificate path."""
        return issue(
            self.ca_dir,
            self.root / directory,
            name=name or self.investigator,
            role=ROLE_INVESTIGATOR,
        )

    def start(self, *, together: bool = False) -> dict[str, str]:
        """Start every stopped node, write FED.toml, return the addresses by jurisdiction.

        Nodes start one after another (each has the cores to itself while it blinds
        its sets); ``together`` launches them all first and then waits for each.
        """
        stopped = [node for node in self.nodes.values() if not node.running]
        try:
            if together:
                for node in stopped:
                    node.launch()
                for node in stopped:
                    node.wait_serving()
            else:
                for node in stopped:
                    node.start()
        except BaseException:
            self.stop()
            raise
        self.write_federation_file()
        return self.addresses

    def stop(self) -> None:
        """Stop every running node: SIGTERM to all, then wait (SIGKILL after the timeout)."""
        for node in self.nodes.values():
            node.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.process is not None:
                node.wait_stopped()

    @property
    def addresses(self) -> dict[str, str]:
        return {code: node.address for code, node in self.nodes.items()}

    def write_federation_file(
        self,
        name: str = FEDERATION_FILE,
        *,
        investigator_dir: str = INVESTIGATOR_DIR,
        investigator: str | None = None,
        addresses: Mapping[str, str] | None = None,
        nodes: Iterable[str] | None = None,
    ) -> Path:
        """FED.toml at ``root/name``: the investigator's TLS material and every node's address.

        ``addresses`` overrides some nodes' addresses; ``nodes`` lists a subset of them.
        Paths in the file are relative to ``root``, as the coordinator reads them.
        """
        lines = [
            "[investigator]",
            f'name = "{investigator or self.investigator}"',
            f'cert = "{investigator_dir}/cert.pem"',
            f'key = "{investigator_dir}/key.pem"',
            f'ca = "{CA_DIR}/ca.pem"',
            "",
        ]
        if self.deadline_seconds is not None:
            lines += ["[query]", f"deadline_seconds = {self.deadline_seconds}", ""]
        overrides = addresses or {}
        for code in nodes if nodes is not None else self.nodes:
            address = overrides.get(code, self.nodes[code].address)
            lines += ["[[node]]", f'name = "{code}"', f'address = "{address}"', ""]
        path = self.root / name
        path.write_text("\n".join(lines))
        return path
