"""End to end: a monitor certificate, a grant that demands sealed openings, a match through
FED.toml's [[monitor]], and `fedtrace node monitor-export` of what the node kept."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedtrace import opening, pki
from fedtrace.harness import LocalFederation, run_cli
from tests.unit.test_match_in_memory import eth, transactions_csv

pytestmark = pytest.mark.slow

POLICY = """jurisdiction = "EE"
version = "ee-monitor-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 100
monitor = "OVS"
"""


def test_sealed_match_is_answered_and_exported(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    with LocalFederation(root) as federation:
        issued = run_cli(
            "pki", "issue", str(federation.ca_dir), str(root / "ovs"),
            "--name", "OVS", "--role", "monitor",
        )  # fmt: skip
        assert "monitor certificate for OVS issued" in issued.stdout
        held = [eth(n) for n in range(1, 41)]
        node = federation.add_node(
            "EE",
            policy=POLICY,
            tables={"transactions": transactions_csv(tmp_path / "tx.csv", held)},
        )
        federation.issue_investigator()
        federation.start()
        fed = federation.federation_file
        watchlist = tmp_path / "watchlist.txt"
        watchlist.write_text("\n".join([held[3], held[7], eth(999)]) + "\n")
        query = (
            "query", "match", "--federation", str(fed), "--watchlist", str(watchlist),
            "--dataset", "wallets", "--case", "C-9", "--legal-basis", "MLA", "--format", "json",
        )  # fmt: skip
        refused = run_cli(*query, check=False)
        [result] = json.loads(refused.stdout)["results"]
        assert result["status"] != "ok"
        assert "FED.toml names no monitor OVS, which EE's grant requires" in result["reason"]

        fed.write_text(fed.read_text() + '\n[[monitor]]\nname = "OVS"\ncert = "ovs/cert.pem"\n')
        done = run_cli(*query, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        [result] = json.loads(done.stdout)["results"]
        assert result["status"] == "ok" and sorted(result["matched"]) == sorted([held[3], held[7]])

        out = tmp_path / "export"
        exported = run_cli(
            "node", "monitor-export", str(node.node_dir), "--monitor", "OVS", "--out", str(out)
        )
        assert exported.stdout.strip() == f"exported 1 sealed query for monitor OVS to {out}"
        again = run_cli(
            "node", "monitor-export", str(node.node_dir), "--monitor", "OVS", "--out", str(out),
            check=False,
        )  # fmt: skip
        assert again.returncode != 0 and "not empty" in again.stderr
        other = run_cli(
            "node", "monitor-export", str(node.node_dir), "--monitor", "XYZ",
            "--out", str(tmp_path / "other"), "--json",
        )  # fmt: skip
        assert json.loads(other.stdout)["count"] == 0

    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "queries.jsonl").stat().st_mode) == 0o600
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 1 and manifest["monitor"] == "OVS" and manifest["node"] == "EE"
    [line] = [json.loads(x) for x in (out / "queries.jsonl").read_text().splitlines()]
    assert line["audit_seq"] > 0 and line["kind"] == "match" and line["case_ref"] == "C-9"
    sealed = opening.SealedOpening(
        "OVS",
        opening.SUITE,
        bytes.fromhex(line["enc"]),
        bytes.fromhex(line["ciphertext"]),
        bytes.fromhex(line["statement"]),
        bytes.fromhex(line["signature"]),
    )
    key = pki._load_private_key(pki.read_key_pem(root / "ovs" / "key.pem"), None)
    opened = opening.open_sealed(sealed, key)
    assert len(opened.items) == 3
    statement = opening.Statement.from_bytes(sealed.statement)
    assert statement.points_sha256.hex() == line["node_points_sha256"]
    assert (
        opening.points_digest([bytes.fromhex(line["received_points"])]) == statement.points_sha256
    )
