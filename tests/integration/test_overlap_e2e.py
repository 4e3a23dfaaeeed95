"""The overlap query end to end: real `fedtrace node serve` processes, the real CLI.

Nodes hold planted wallet sets; every group count must equal the plain-Python
oracle, each node's `node shared` must list exactly its shared records, a node
without an overlap grant is `denied` while the others still run, and nothing the
coordinator relays carries a raw identifier or an unkeyed hash of one.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedtrace import group
from fedtrace import overlap as overlap_protocol
from fedtrace.harness import LocalFederation, LocalNode
from fedtrace.items import item_bytes
from tests.integration.conftest import fedtrace

pytestmark = pytest.mark.slow

INVESTIGATOR = "FR"
REVEALING = ("EE", "FR", "SG", "DE")  # overlap grant, reveal_to_owner = true, min_cohort 1
NO_GRANT = "LT"  # a membership grant only: no overlap
COUNT_ONLY = "PL"  # overlap grant without reveal, min_cohort 40
ALL = (*REVEALING, NO_GRANT, COUNT_ONLY)
OWN_ITEMS = 40


def _policy(code: str) -> str:
    head = f'jurisdiction = "{code}"\nversion = "{code.lower()}-overlap-1"\n'
    if code == NO_GRANT:
        return head + (
            '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
            'disclosure = "membership"\nmax_items_per_query = 500\n'
        )
    reveal = "false" if code == COUNT_ONLY else "true"
    cohort = 40 if code == COUNT_ONLY else 1
    return head + (
        '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\ndisclosure = "overlap"\n'
        f"reveal_to_owner = {reveal}\nmin_cohort = {cohort}\n"
    )


def _address(rng: random.Random) -> str:
    return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))


def planted_sets(codes: tuple[str, ...], seed: int = 5) -> dict[str, set[str]]:
    """Every group of two or more nodes shares a few wallets (group size + 1); plus own ones."""
    rng = random.Random(seed)
    sets: dict[str, set[str]] = {code: set() for code in codes}
    for size in range(2, len(codes) + 1):
        for members in itertools.combinations(codes, size):
            for _ in range(len(members) + sum(map(len, members)) % 3):
                address = _address(rng)
                for code in members:
                    sets[code].add(address)
    for code in codes:
        sets[code].update(_address(rng) for _ in range(OWN_ITEMS))
    return sets


def oracle_groups(sets: dict[str, set[str]], roster: tuple[str, ...]) -> dict[frozenset[str], int]:
    """Plain Python: for every group of two or more, the items held by exactly that group."""
    holders: dict[str, set[str]] = {}
    for code in roster:
        for item in sets[code]:
            holders.setdefault(item, set()).add(code)
    counts = {
        frozenset(g): 0
        for size in range(2, len(roster) + 1)
        for g in itertools.combinations(roster, size)
    }
    for codes in holders.values():
        if len(codes) >= 2:
            counts[frozenset(codes)] += 1
    return counts


def oracle_shared(
    sets: dict[str, set[str]], roster: tuple[str, ...], code: str
) -> dict[str, list[str]]:
    return {
        item: sorted(other for other in roster if other != code and item in sets[other])
        for item in sets[code]
        if any(other != code and item in sets[other] for other in roster)
    }


def write_transactions(path: Path, wallets: set[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "tx_hash",
                "chain",
                "from_address",
                "to_address",
                "asset",
                "amount",
                "amount_eur",
                "timestamp",
            ]
        )
        for index, address in enumerate(sorted(wallets)):
            writer.writerow(
                [
                    f"0x{index:064x}",
                    "eth",
                    address,
                    address,
                    "ETH",
                    "1.0",
                    "10.00",
                    "2026-01-02T03:04:05Z",
                ]
            )


@dataclass
class OverlapFederation:
    local: LocalFederation
    sets: dict[str, set[str]]

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def nodes(self) -> dict[str, LocalNode]:
        return self.local.nodes

    @property
    def fed(self) -> Path:
        return self.local.federation_file

    def overlap(
        self,
        nodes: tuple[str, ...],
        case: str,
        *extra: str,
        fmt: str = "json",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "fedtrace.cli",
                "query",
                "overlap",
                "--federation",
                str(self.fed),
                "--dataset",
                "wallets",
                "--case",
                case,
                "--legal-basis",
                "MLA",
                "--nodes",
                ",".join(nodes),
                "--format",
                fmt,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )

    def shared(self, code: str, case: str) -> dict[str, list[str]]:
        done = fedtrace(
            "node",
            "shared",
            str(self.nodes[code].node_dir),
            "--case",
            case,
            "--format",
            "json",
            check=True,
        )
        document = json.loads(done.stdout)
        assert document["node"] == code and document["case"] == case
        return {row["record"]: row["shared_with"] for row in document["shared"]}


@pytest.fixture(scope="module")
def overlap_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverlapFederation]:
    root = tmp_path_factory.mktemp("overlap")
    with LocalFederation(root, investigator=INVESTIGATOR) as local:
        fed = OverlapFederation(local, sets=planted_sets(ALL))
        for code in ALL:
            write_transactions(root / f"{code}.csv", fed.sets[code])
            local.add_node(
                code, policy=_policy(code), tables={"transactions": root / f"{code}.csv"}
            )
        local.issue_investigator()
        local.start()
        yield fed


def _groups(report: dict[str, object]) -> dict[frozenset[str], object]:
    groups = report["groups"]
    assert isinstance(groups, list)
    return {frozenset(g["jurisdictions"]): g["count"] for g in groups}


def _pairs(report: dict[str, object]) -> dict[frozenset[str], object]:
    pairs = report["pairwise"]
    assert isinstance(pairs, list)
    return {frozenset(p["jurisdictions"]): p["count"] for p in pairs}


@pytest.mark.parametrize("roster", [("EE", "FR", "SG"), REVEALING], ids=["3-nodes", "4-nodes"])
def test_group_counts_equal_the_oracle_and_owners_learn_exactly_their_shared_records(
    overlap_federation: OverlapFederation, roster: tuple[str, ...], tmp_path: Path
) -> None:
    case = f"CASE-OVERLAP-{len(roster)}"
    relay_log = tmp_path / "relayed.jsonl"
    done = overlap_federation.overlap(
        roster, case, env={"FEDTRACE_OVERLAP_RELAY_LOG": str(relay_log)}
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["query"] == "overlap" and report["case"] == case
    assert report["dataset"] == "wallets"
    assert [r["node"] for r in report["results"]] == list(roster)
    assert all(r["status"] == "ok" and r["disclosure"] == "overlap" for r in report["results"])
    assert all(
        r["signature"]["transcript"]["overlap_id"] == report["overlap"]["overlap_id"]
        for r in report["results"]
    )
    assert report["overlap"]["reveal_to_owners"] is True
    sets = overlap_federation.sets
    expected = oracle_groups(sets, roster)
    assert _groups(report) == expected
    assert _pairs(report) == {
        frozenset(pair): len(sets[pair[0]] & sets[pair[1]])
        for pair in itertools.combinations(roster, 2)
    }
    for result in report["results"]:
        assert result["set_size"] == len(sets[result["node"]])
    for code in roster:
        assert overlap_federation.shared(code, case) == oracle_shared(sets, roster, code)

    # Nothing relayed is a raw identifier, its item encoding, or its unkeyed hash-to-group.
    messages = [json.loads(line) for line in relay_log.read_text().splitlines()]
    assert {m["sender"] for m in messages} >= set(roster)
    payload = b"".join(bytes.fromhex(m["payload"]) for m in messages)
    every = set().union(*(sets[code] for code in roster))
    hashed = {
        group.hash_to_group(item_bytes("wallet", a), overlap_protocol.OVERLAP_DST) for a in every
    }
    assert not any(address.encode() in payload for address in every)
    assert not any(address[2:].encode() in payload for address in every)
    points = {
        bytes.fromhex(m["payload"])[i : i + 32]
        for m in messages
        if m["sender"] != "coordinator" or m["hop"] < len(roster)
        for i in range(0, len(m["payload"]) // 2, 32)
    }
    assert points and not points & hashed


def test_node_without_an_overlap_grant_is_denied_and_the_overlap_runs_among_the_rest(
    overlap_federation: OverlapFederation,
) -> None:
    roster = ("EE", NO_GRANT, "SG")
    done = overlap_federation.overlap(roster, "CASE-OVERLAP-DENIED")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    results = {r["node"]: r for r in report["results"]}
    assert results[NO_GRANT]["status"] == "denied"
    assert results[NO_GRANT]["reason"] == (
        "LT's policy lt-overlap-1 grants FR no overlap access to dataset 'wallets'; "
        "ask LT's privacy officer for a grant"
    )
    assert results["EE"]["status"] == results["SG"]["status"] == "ok"
    assert report["overlap"]["participants"] == ["EE", "SG"]
    assert _groups(report) == oracle_groups(overlap_federation.sets, ("EE", "SG"))


def test_count_only_overlap_applies_the_largest_cohort_and_reveals_nothing(
    overlap_federation: OverlapFederation,
) -> None:
    roster = ("EE", "SG", COUNT_ONLY)
    case = "CASE-OVERLAP-COHORT"
    done = overlap_federation.overlap(roster, case)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overlap"]["reveal_to_owners"] is False
    assert report["overlap"]["min_cohort"] == 40
    exact = oracle_groups(overlap_federation.sets, roster)
    assert sorted(exact.values()) == [36, 36, 36, 45]  # planted: three pairs below the cohort
    assert _groups(report) == {g: ("< 40" if 0 < n < 40 else n) for g, n in exact.items()}
    # Every pair covers a suppressed exact pair, so no pair count is shown (no subtraction).
    assert set(_pairs(report).values()) == {"suppressed"}
    for code in roster:
        assert overlap_federation.shared(code, case) == {}


def test_table_and_csv_reports(overlap_federation: OverlapFederation) -> None:
    roster = ("EE", "FR", "SG")
    table = overlap_federation.overlap(roster, "CASE-OVERLAP-TABLE", fmt="table")
    assert table.returncode == 0, table.stderr
    exact = oracle_groups(overlap_federation.sets, roster)
    assert "items held by exactly these jurisdictions" in table.stdout
    assert "EE + FR + SG" in table.stdout
    assert "pairwise: items both hold" in table.stdout
    line = next(x for x in table.stdout.splitlines() if x.strip().startswith("EE + FR + SG"))
    assert line.split()[-1] == str(exact[frozenset(roster)])
    rows = list(
        csv.reader(
            overlap_federation.overlap(roster, "CASE-OVERLAP-CSV", fmt="csv").stdout.splitlines()
        )
    )
    assert rows[0] == ["section", "jurisdictions", "count", "status", "reason", "policy_version"]
    groups = {r[1]: int(r[2]) for r in rows if r[0] == "group"}
    assert groups == {" ".join(c for c in roster if c in g): n for g, n in exact.items()}
