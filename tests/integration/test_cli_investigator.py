"""The investigator's CLI against real nodes: local checks, `--out`'s summary, a used-up limit.

Uses the session fixture `federation` of tests/integration/conftest.py (EE answers FR
at membership level, FR at cardinality level, SG denies FR), and one node of its own
with a rate limit of one query a day.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedtrace.harness import LocalFederation
from tests.integration.conftest import Federation, fedtrace

pytestmark = pytest.mark.slow

RATE_LIMITED = """jurisdiction = "EE"
version = "rate-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 500
rate_limit = { queries = 1, per = "day" }
"""


def _watchlist(federation: Federation) -> Path:
    path = federation.root / "cli-watchlist.txt"
    path.write_text("\n".join(federation.data.watchlist(60)) + "\n")
    return path


def _match(fed: Path, watchlist: Path, dataset: str, *extra: str) -> list[str]:
    return [
        "query", "match", "--federation", str(fed), "--watchlist", str(watchlist),
        "--dataset", dataset, "--case", "CASE-CLI", *extra,
    ]  # fmt: skip


def test_an_unknown_dataset_is_one_line_before_any_query(federation: Federation) -> None:
    done = fedtrace(*_match(federation.federation_file, _watchlist(federation), "wallet"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "fedtrace: error: unknown dataset 'wallet'; the federation's nodes offer: "
        "subjects, wallets (did you mean 'wallets'?)\n"
    )


def test_out_writes_the_report_and_prints_its_summary(
    federation: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    args = _match(federation.federation_file, _watchlist(federation), "wallets")
    done = fedtrace(*args, "--legal-basis", "mla", "--format", "json", "--out", str(out))
    assert done.returncode == 3, done.stderr
    report = json.loads(out.read_text())
    assert report["legal_basis"] == "MLA"
    matches = sum(r.get("match_count", 0) for r in report["results"] if r["status"] == "ok")
    assert done.stdout == f"report written to {out}: 3 nodes, 2 ok, 1 denied; {matches} matches\n"
    for result in report["results"]:
        if result["status"] == "ok":
            assert result["false_positive_rate"] == 2**-30
            assert result["expected_false_hits"] == 60 * 2**-30


def test_a_used_up_rate_limit_is_denied_with_its_renewal_time(tmp_path: Path) -> None:
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text(f"0x{5:040x}\n")
    transactions = tmp_path / "transactions.csv"
    transactions.write_text(
        "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
        f"t1,eth,0x{5:040x},0x{6:040x},ETH,1,10.00,2026-01-01T00:00:00Z\n"
    )
    with LocalFederation(tmp_path / "fed") as local:
        local.add_node("EE", policy=RATE_LIMITED, tables={"transactions": transactions})
        local.issue_investigator()
        local.start()
        args = _match(local.federation_file, watchlist, "wallets", "--format", "json")
        first = fedtrace(*args)
        assert first.returncode == 0, first.stderr
        second = fedtrace(*args)
    assert second.returncode == 3, second.stderr
    [result] = json.loads(second.stdout)["results"]
    assert result["status"] == "denied"
    assert re.fullmatch(
        r"rate limit used up; renews at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ \(RESOURCE_EXHAUSTED: "
        r"FR's rate limit on EE's dataset 'wallets' is used up: 1 of 1 queries per day used.*\)",
        result["reason"],
    ), result["reason"]
