"""Real federations for end-to-end tests: a CA, DuckDB-backed nodes and `fedtrace node serve`
processes on loopback ports chosen by the OS, talked to by the real coordinator CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.harness import LocalFederation, run_cli
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue

JURISDICTIONS = ("EE", "FR", "SG")
INVESTIGATOR = "FR"
TRANSACTIONS = 1_500
CLI_ENV = {"FEDTRACE_CACHE_DIR": os.environ.get("FEDTRACE_TEST_CACHE", "/tmp/fedtrace-test-cache")}

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
    """``fedtrace ARGS`` as a user runs it, with the tests' shared filter cache."""
    return run_cli(*args, check=check, timeout=timeout, env=CLI_ENV)


class Federation(LocalFederation):
    """A local federation with the synthetic data its nodes hold and a match helper."""

    def __init__(self, root: Path, data: DemoData, *, deadline_seconds: int = 60) -> None:
        super().__init__(root, investigator=INVESTIGATOR, deadline_seconds=deadline_seconds)
        self.data = data

    def write_fed(
        self,
        name: str = "federation.toml",
        investigator_dir: str = "investigator",
        addresses: dict[str, str] | None = None,
    ) -> Path:
        return self.write_federation_file(
            name, investigator_dir=investigator_dir, addresses=addresses
        )

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
    data = generate_federation_data(root / "data", JURISDICTIONS, TRANSACTIONS, seed=11)
    with Federation(root, data) as fed:
        for code in JURISDICTIONS:
            fed.add_node(code, policy=POLICIES[code], tables=data.tables(code))
        fed.issue_investigator()
        init_ca(root / "rogue-ca")
        issue(root / "rogue-ca", root / "rogue", name=INVESTIGATOR, role=ROLE_INVESTIGATOR)
        fed.start()
        yield fed


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
