"""End to end: `fedtrace query prepare`, then a match that spends the pool, against real nodes.

Uses the session fixture `federation` of tests/integration/conftest.py (EE answers FR at
membership level, FR answers FR at cardinality level) with a cache directory of its own.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedtrace.blinding import ENTRY_BYTES
from fedtrace.harness import run_cli

from .conftest import Federation
from .test_federation import _oracle, _watchlist

pytestmark = pytest.mark.slow


def test_prepare_then_match_spends_the_pool_and_equals_the_oracle(
    federation: Federation, tmp_path: Path
) -> None:
    env = {"FEDTRACE_CACHE_DIR": str(tmp_path / "cache")}
    fed = str(federation.write_fed("blinding.toml"))
    prepared = run_cli(
        "query", "prepare", "--federation", fed, "--dataset", "wallets", "--items", "300",
        "--nodes", "EE,FR", check=False, env=env,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    lines = prepared.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["EE", "FR"]
    assert all("300 entries for epoch" in line for line in lines)
    pools = tmp_path / "cache" / "pools"
    assert stat.S_IMODE(pools.stat().st_mode) == 0o700
    sizes = {path: path.stat().st_size for path in pools.glob("*.pool")}
    assert len(sizes) == 2
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in sizes)

    watchlist = _watchlist(federation, "blinding-watchlist.txt", 120)
    done = run_cli(
        "query", "match", "--federation", fed, "--watchlist", str(watchlist),
        "--dataset", "wallets", "--case", "CASE-7", "--legal-basis", "MLA",
        "--nodes", "EE,FR", "--format", "json", check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["node"]: r for r in json.loads(done.stdout)["results"]}
    ee, fr = results["EE"], results["FR"]
    assert ee["status"] == "ok" and ee["matched"] == _oracle(federation, watchlist, "EE")
    assert ee["signature"]["transcript"]["blinding"] == "additive"
    # FR answers FR shuffled (cardinality): it refuses the additive points, and the
    # coordinator asks again multiplicatively; the refused entries are spent all the same.
    assert fr["status"] == "ok" and fr["disclosure"] == "cardinality"
    assert fr["match_count"] == len(_oracle(federation, watchlist, "FR"))
    assert fr["signature"]["transcript"]["blinding"] == "multiplicative"
    tested = ee["signature"]["transcript"]["item_count"]
    assert all(
        sizes[path] - path.stat().st_size == tested * ENTRY_BYTES for path in sizes
    )  # both pools shrank by one entry per item, before the points were sent
    report = tmp_path / "report.json"
    report.write_text(done.stdout)
    verified = run_cli("report", "verify", str(report), "--federation", fed, check=False, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
