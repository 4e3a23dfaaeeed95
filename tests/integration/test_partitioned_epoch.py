"""End to end: a real node whose epoch is split into partitions, matched by the real coordinator.

The node's ``[compute] partition_items`` is set low so a small dataset builds
several partitions; the coordinator fetches every partition into its cache
directory, and the match equals the plain-Python intersection.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from pathlib import Path

import pytest

from fedtrace.demo_data import generate_federation_data
from fedtrace.harness import LocalFederation, run_cli
from fedtrace.identifiers import canonical_address

pytestmark = pytest.mark.slow

PARTITION_ITEMS = 30
POLICY = """
jurisdiction = "EE"
version = "ee-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 1000
"""


def _set_partition_items(node_toml: Path, items: int) -> None:
    """``[compute] partition_items = items`` in node.toml, whether or not [compute] exists."""
    text = node_toml.read_text()
    line = f"partition_items = {items}"
    if re.search(r"^partition_items\s*=.*$", text, re.MULTILINE):
        text = re.sub(r"^partition_items\s*=.*$", line, text, count=1, flags=re.MULTILINE)
    elif re.search(r"^\[compute\]\s*$", text, re.MULTILINE):
        text = re.sub(r"^\[compute\]\s*$", f"[compute]\n{line}", text, count=1, flags=re.MULTILINE)
    else:
        text += f"\n[compute]\n{line}\n"
    node_toml.write_text(text)


def _match(fed: Path, watchlist: Path, cache: Path) -> dict[str, object]:
    done = run_cli(
        "query",
        "match",
        "--federation",
        str(fed),
        "--watchlist",
        str(watchlist),
        "--dataset",
        "wallets",
        "--case",
        "CASE-P",
        "--legal-basis",
        "MLA",
        "--format",
        "json",
        check=False,
        timeout=300,
        env={"FEDTRACE_CACHE_DIR": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    [result] = report["results"]
    assert isinstance(result, dict)
    return result


def test_a_partitioned_epoch_matches_the_plain_intersection(tmp_path: Path) -> None:
    data = generate_federation_data(tmp_path / "data", ("EE", "FR"), 1_500, seed=23)
    held = sorted(data.wallets["EE"])
    bits = math.ceil(math.log2(len(held) / PARTITION_ITEMS))
    assert bits >= 2, f"{len(held)} wallets give too few partitions"
    entries = held[::7] + data.watchlist(120)
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("\n".join(entries) + "\n")
    expected = list(dict.fromkeys(canonical_address(e) for e in entries))
    expected = [item for item in expected if item in data.wallets["EE"]]
    assert len(expected) >= 20
    cache = tmp_path / "cache"

    with LocalFederation(tmp_path / "fed", investigator="FR") as federation:
        node = federation.add_node("EE", policy=POLICY, tables=data.tables("EE"))
        _set_partition_items(node.node_dir / "node.toml", PARTITION_ITEMS)
        federation.issue_investigator()
        federation.start()
        fed = federation.federation_file

        result = _match(fed, watchlist, cache)
        assert result["status"] == "ok", result
        assert result["matched"] == expected
        assert result["match_count"] == len(expected)

        epoch_id = str(result["epoch_id"])
        key = "\x00".join(("EE", "wallets", epoch_id)).encode()
        directory = cache / "filters" / hashlib.sha256(key).hexdigest()
        names = sorted(path.name for path in directory.iterdir())
        assert names == [f"p{p:04x}.gcs" for p in range(1 << bits)]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert {stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()} == {0o600}

        # The next query tests against the partitions on disk: same answer, nothing refetched.
        before = {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}
        again = _match(fed, watchlist, cache)
        assert again["matched"] == expected
        assert {path.name: path.stat().st_mtime_ns for path in directory.iterdir()} == before
