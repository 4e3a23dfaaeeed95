"""Freeze (restraint) orders end to end: a real `fedtrace node serve` process, the
investigator's `request freeze|status|export`, the officer's `node approve|release`,
`report verify` on the exported case record, and the node's audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fedtrace.demo_data import generate_federation_data
from fedtrace.harness import LocalFederation
from node.audit import AUDIT_DIR, entries
from tests.integration.conftest import fedtrace

pytestmark = pytest.mark.slow

CASE = "CASE-FZ"
POLICY = """
jurisdiction = "EE"
version = "ee-freeze-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
legal_bases = ["MLA"]
disclosable_fields = ["tx_count"]
answer_within_days = 10
freeze_days_max = 30
freeze_approval = "officer"
"""


def _held(database: Path) -> list[str]:
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute(
        "SELECT DISTINCT to_address FROM transactions ORDER BY to_address LIMIT 3"
    ).fetchall()
    con.close()
    return [str(r[0]) for r in rows]


def _json(*args: str) -> tuple[int, dict[str, Any]]:
    done = fedtrace(*args, "--format", "json")
    assert done.stdout.startswith("{"), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_freeze_submitted_approved_exported_verified_released(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("freeze")
    data = generate_federation_data(root / "data", ("EE",), 300, seed=7)
    with LocalFederation(root, deadline_seconds=None) as federation:
        node = federation.add_node(
            "EE", policy=POLICY, tables=data.tables("EE"), node_dir=root / "EE"
        )
        held = _held(node.database)
        federation.issue_investigator()
        federation.start()
        fed = str(federation.federation_file)
        node_dir = str(node.node_dir)
        watchlist = root / "watchlist.txt"
        watchlist.write_text("\n".join(held) + "\n")
        common = ("--federation", fed, "--node", "EE", "--dataset", "wallets", "--case", CASE)
        freeze = ("request", "freeze", *common, "--legal-basis", "MLA", "--amount-eur", "125000")

        code, report = _json(*freeze, "--item", held[0], "--days", "10")
        assert code == 3, report
        assert "must follow a match under the same case" in report["results"][0]["reason"]
        match = fedtrace(
            "query", "match", "--federation", fed, "--watchlist", str(watchlist),
            "--dataset", "wallets", "--case", CASE, "--legal-basis", "MLA",
        )  # fmt: skip
        assert match.returncode == 0, match.stderr

        code, report = _json(*freeze, "--item", held[0], "--days", "31")
        assert code == 3
        assert report["results"][0]["reason"] == (
            "EE's policy freezes assets for FR for at most 30 days (freeze_days_max); 31 asked"
        )
        code, report = _json(*freeze, "--item", held[0], "--days", "10", "--reason", "fraud")
        assert code == 0, report
        [result] = report["results"]
        request_id = result["request_id"]
        assert result["state"] == "pending" and result["requests"][0]["amount_eur"] == 125000

        approved = fedtrace("node", "approve", node_dir, request_id, "--reason", "court order")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith(f"{request_id}: frozen until ")
        status = fedtrace("request", "status", "--federation", fed, "--case", CASE)
        assert status.returncode == 0, status.stderr
        assert f"{request_id}: freeze wallets" in status.stdout
        assert "FROZEN (asked freeze of EUR 125,000 for 10 days" in status.stdout
        assert "    frozen until 20" in status.stdout

        out_dir = root / "evidence"
        export = fedtrace(
            "request", "export", "--federation", fed, "--case", CASE, "--node", "EE",
            "--id", request_id, "--out", str(out_dir),
        )  # fmt: skip
        assert export.returncode == 0, export.stderr
        [record_file] = out_dir.glob("*.json")
        page = (out_dir / (record_file.stem + ".html")).read_text()
        assert "freeze of EUR 125,000 for 10 days" in page and "frozen until" in page
        verified = fedtrace("report", "verify", str(record_file), "--federation", fed)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        document = json.loads(record_file.read_text())
        assert document["state"] == "frozen" and document["record"]["frozen_until"]
        document["record"]["frozen_until"] = "2099-01-01T00:00:00Z"
        altered = root / "altered.json"
        altered.write_text(json.dumps(document))
        failed = fedtrace("report", "verify", str(altered), "--federation", fed)
        assert failed.returncode == 1
        assert "the record was altered" in failed.stderr

        released = fedtrace("node", "release", node_dir, request_id, "--reason", "seized")
        assert released.returncode == 0, released.stderr
        assert released.stdout.startswith(f"{request_id}: released ")
        again = fedtrace("node", "release", node_dir, request_id, "--reason", "twice")
        assert again.returncode != 0 and "released, not frozen" in again.stderr
        code, report = _json("request", "status", "--federation", fed, "--case", CASE)
        [shown] = report["results"][0]["requests"]
        assert shown["state"] == "released" and shown["release_reason"] == "seized"

    events = [
        e["event"]
        for e in entries(node.node_dir / AUDIT_DIR)
        if e.get("request") == request_id or (e.get("details") or {}).get("request") == request_id
    ]
    assert events == ["query", "request-frozen", "request-released"]
    assert held[0] not in json.dumps(list(entries(node.node_dir / AUDIT_DIR)))
    assert fedtrace("audit", "verify", node_dir).returncode == 0
