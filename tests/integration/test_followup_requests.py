"""Follow-up requests end to end: a real `fedtrace node serve` process, the officer's and the
investigator's CLI commands, answers checked against DuckDB and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from fedtrace.demo_data import generate_federation_data
from fedtrace.harness import LocalFederation, LocalNode
from node.audit import AUDIT_DIR, entries
from node.store import NodeDatabase
from tests.integration.conftest import fedtrace

pytestmark = pytest.mark.slow

CASE = "CASE-9"
UNHELD = "0x52908400098527886e0f7030069857d2e4169ee7"  # valid EIP-55, in no dataset here

POLICY = """
jurisdiction = "EE"
version = "ee-followup-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
legal_bases = ["MLA"]
disclosable_fields = ["tx_count", "total_in_eur", "first_seen", "last_seen", "linked_subjects"]
approval = "officer"
answer_within_days = 10
preservation_days_max = 60
"""


@dataclass
class Setup:
    root: Path
    node: LocalNode
    fed: Path
    held: list[str]  # wallets EE holds, with a linked subject first
    oracle: dict[str, dict[str, object]]


def _oracle(database: Path) -> tuple[list[str], dict[str, dict[str, object]]]:
    con = duckdb.connect(str(database), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(
        """
        WITH legs AS (
            SELECT from_address AS address, tx_hash, 0 AS eur_in, "timestamp" FROM transactions
            UNION ALL SELECT to_address, tx_hash, amount_eur, "timestamp" FROM transactions)
        SELECT address, count(DISTINCT tx_hash), sum(eur_in)::DECIMAL(38, 2),
               strftime(min("timestamp"), '%Y-%m-%dT%H:%M:%SZ'),
               strftime(max("timestamp"), '%Y-%m-%dT%H:%M:%SZ'),
               (SELECT list(DISTINCT subject_id ORDER BY subject_id) FROM subject_wallets s
                WHERE s.address = legs.address)
        FROM legs GROUP BY address ORDER BY count(DISTINCT tx_hash) DESC, address
        """
    ).fetchall()
    con.close()
    oracle = {
        r[0]: {
            "tx_count": r[1],
            "total_in_eur": str(r[2]),
            "first_seen": r[3],
            "last_seen": r[4],
            "linked_subjects": list(r[5] or []),
        }
        for r in rows
    }
    linked = [a for a, v in oracle.items() if v["linked_subjects"]]
    held = linked[:1] + [a for a in oracle if a not in linked[:1]][:8]
    return held, oracle


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("followup")
    data = generate_federation_data(root / "data", ("EE",), 400, seed=5)
    with LocalFederation(root, deadline_seconds=None) as federation:
        node = federation.add_node(
            "EE", policy=POLICY, tables=data.tables("EE"), node_dir=root / "EE"
        )
        held, oracle = _oracle(node.database)
        federation.issue_investigator()
        federation.start()
        fed = federation.federation_file
        watchlist = root / "watchlist.txt"
        watchlist.write_text("\n".join(held) + "\n")
        done = fedtrace(
            "query",
            "match",
            "--federation",
            str(fed),
            "--watchlist",
            str(watchlist),
            "--dataset",
            "wallets",
            "--case",
            CASE,
            "--legal-basis",
            "MLA",
            "--format",
            "json",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["results"][0]["match_count"] == len(held)
        yield Setup(root, node, fed, held, oracle)


def _request(s: Setup, kind: str, item: str, *extra: str, case: str = CASE) -> tuple[int, dict]:
    done = fedtrace(
        "request",
        kind,
        "--federation",
        str(s.fed),
        "--node",
        "EE",
        "--dataset",
        "wallets",
        "--item",
        item,
        "--case",
        case,
        "--legal-basis",
        "MLA",
        "--format",
        "json",
        *extra,
    )
    assert done.stdout.startswith("{"), done.stderr
    return done.returncode, json.loads(done.stdout)


def _status(s: Setup) -> dict[str, dict]:
    done = fedtrace(
        "request", "status", "--federation", str(s.fed), "--case", CASE, "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["results"][0]
    return {r["request_id"]: r for r in result["requests"]}


def _officer(s: Setup, *args: str) -> str:
    done = fedtrace("node", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _audit(s: Setup, event: str) -> list[dict]:
    return [e for e in entries(s.node.node_dir / AUDIT_DIR) if e.get("event") == event]


def test_request_without_an_earlier_match_is_refused(setup: Setup) -> None:
    code, report = _request(setup, "disclose", setup.held[0], case="CASE-OTHER")
    result = report["results"][0]
    assert code == 3 and result["status"] == "denied"
    assert result["reason"] == (
        "EE has answered no match by FR under case 'CASE-OTHER' on dataset 'wallets'; "
        "a follow-up request must follow a match under the same case"
    )
    refused = [
        e
        for e in _audit(setup, "query")
        if e["kind"] == "disclose" and e["case_ref"] == "CASE-OTHER"
    ]
    assert refused and refused[-1]["outcome"] == "refused"


def test_item_not_held_answers_no_record(setup: Setup) -> None:
    code, report = _request(setup, "disclose", UNHELD)
    result = report["results"][0]
    assert code == 0 and result["state"] == "no-record"
    record = result["requests"][0]
    assert record["disclosed"] == [] and record["fields_disclosed"] == []


def test_bad_item_and_bad_fields(setup: Setup) -> None:
    done = fedtrace(
        "request",
        "disclose",
        "--federation",
        str(setup.fed),
        "--node",
        "EE",
        "--dataset",
        "wallets",
        "--item",
        "0xnot-an-address",
        "--case",
        CASE,
        "--legal-basis",
        "MLA",
    )
    assert done.returncode == 2
    assert done.stderr.startswith("fedtrace: error: --item is not a valid wallet: ")
    code, report = _request(setup, "disclose", setup.held[1], "--fields", "tx_count,full_name")
    assert code == 3 and report["results"][0]["reason"] == (
        "EE's policy does not let FR receive full_name of 'wallets'; disclosable: tx_count, "
        "total_in_eur, first_seen, last_seen, linked_subjects"
    )


def test_pending_then_partly_approved_with_signed_fields(setup: Setup) -> None:
    item = setup.held[0]
    code, report = _request(setup, "disclose", item, "--reason", "funds moved on 3 Nov")
    assert code == 0
    request_id = report["results"][0]["request_id"]
    assert report["results"][0]["state"] == "pending"
    listed = json.loads(
        _officer(setup, "requests", str(setup.node.node_dir), "--pending", "--format", "json")
    )
    mine = [r for r in listed["requests"] if r["request_id"] == request_id]
    assert mine and mine[0]["item"] == item and mine[0]["reason"] == "funds moved on 3 Nov"
    out = _officer(
        setup,
        "approve",
        str(setup.node.node_dir),
        request_id,
        "--fields",
        "tx_count,first_seen,linked_subjects",
        "--reason",
        "per MLA",
    )
    assert out.startswith(f"{request_id}: partly approved; disclosed tx_count, first_seen, ")
    status = _status(setup)[request_id]
    expected = setup.oracle[item]
    assert status["state"] == "partly-approved"
    assert status["disclosed"] == [
        {
            "tx_count": expected["tx_count"],
            "first_seen": expected["first_seen"],
            "linked_subjects": expected["linked_subjects"],
        }
    ]
    assert status["fields_withheld"] == ["total_in_eur", "last_seen"]
    assert status["signature"]["algorithm"] == "ecdsa-p256-sha256"
    approved = [e for e in _audit(setup, "request-approved") if e["request"] == request_id]
    assert approved and approved[0]["state"] == "partly-approved"
    assert item not in json.dumps(approved)  # the audit never holds the identifier

    out_dir = setup.root / "evidence"
    done = fedtrace(
        "request",
        "export",
        "--federation",
        str(setup.fed),
        "--case",
        CASE,
        "--node",
        "EE",
        "--id",
        request_id,
        "--out",
        str(out_dir),
    )
    assert done.returncode == 0, done.stderr
    [record_file] = out_dir.glob("*.json")
    assert (out_dir / (record_file.stem + ".html")).read_text().count("per MLA") == 1
    verified = fedtrace("report", "verify", str(record_file), "--federation", str(setup.fed))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    document = json.loads(record_file.read_text())
    document["record"]["disclosed"][0]["tx_count"] += 1
    altered = setup.root / "altered.json"
    altered.write_text(json.dumps(document))
    failed = fedtrace("report", "verify", str(altered), "--federation", str(setup.fed))
    assert failed.returncode == 1
    assert "EE: the record was altered (its digest does not match the signed one)" in (
        failed.stderr
    )


def test_refusal(setup: Setup) -> None:
    _, report = _request(setup, "disclose", setup.held[2])
    request_id = report["results"][0]["request_id"]
    done = fedtrace("node", "refuse", str(setup.node.node_dir), request_id)
    assert done.returncode == 2 and "--reason" in done.stderr
    out = _officer(
        setup, "refuse", str(setup.node.node_dir), request_id, "--reason", "not proportionate"
    )
    assert out == f"{request_id}: refused (not proportionate)\n"
    status = _status(setup)[request_id]
    assert status["state"] == "refused" and status["disclosed"] == []
    again = fedtrace("node", "approve", str(setup.node.node_dir), request_id)
    assert again.returncode == 2
    assert "is already refused" in again.stderr


def test_expiry_reported_to_both_sides(setup: Setup) -> None:
    _, report = _request(setup, "disclose", setup.held[3])
    request_id = report["results"][0]["request_id"]
    with NodeDatabase(setup.node.node_dir / "node.duckdb").session() as con:
        con.execute(
            "UPDATE followup_requests SET deadline = '2020-01-01T00:00:00Z' WHERE request_id = ?",
            [request_id],
        )
    table = _officer(setup, "requests", str(setup.node.node_dir))
    assert "EXPIRED" in table and request_id in table
    status = _status(setup)[request_id]
    assert status["state"] == "expired" and status["decided_by"] == "deadline"
    expired = [e for e in _audit(setup, "request-expired") if e["request"] == request_id]
    assert len(expired) == 1


def test_preservation_recorded_and_audited(setup: Setup) -> None:
    code, report = _request(setup, "preserve", setup.held[4], "--days", "61")
    assert code == 3 and report["results"][0]["reason"] == (
        "EE's policy preserves records for FR for at most 60 days; 61 asked"
    )
    code, report = _request(setup, "preserve", setup.held[4], "--days", "30")
    assert code == 0
    request_id = report["results"][0]["request_id"]
    assert report["results"][0]["requests"][0]["preservation_days"] == 30
    out = _officer(setup, "approve", str(setup.node.node_dir), request_id)
    assert out.startswith(f"{request_id}: approved; preserve until ")
    status = _status(setup)[request_id]
    assert status["state"] == "approved" and status["disclosed"] == []
    assert status["preserved_until"]
    audited = [
        e
        for e in entries(setup.node.node_dir / AUDIT_DIR)
        if e.get("request") == request_id or (e.get("details") or {}).get("request") == request_id
    ]
    assert [e["event"] for e in audited] == ["query", "request-approved"]
    assert audited[1]["preservation_days"] == 30
    verify = fedtrace("audit", "verify", str(setup.node.node_dir))
    assert verify.returncode == 0, verify.stdout
