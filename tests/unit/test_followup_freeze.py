"""Freeze (restraint) orders: policy keys, the node's state machine, an in-memory round trip."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from coordinator.case_record import SignedRecord, case_record, verify_case_record
from coordinator.fanout import NodeTrust
from coordinator.federation import NodeEntry
from coordinator.followup import (
    FollowUpAsk,
    FollowUpResult,
    report_table,
    request_status,
    submit_request,
)
from coordinator.match import MatchQuery, run_match
from coordinator.signatures import sign_report
from fedtrace.followup import RECORD_FORMAT_V1, FollowUpRecord
from fedtrace.wire import NodeStatus
from node import followup, followup_freeze
from node.audit import AUDIT_DIR, entries
from node.officer_requests import approve_request, list_requests, release_request
from node.policy import QueryKind, parse_policy
from node.policy.model import Policy
from node.store import NodeDatabase
from tests.unit.test_followup import NOW, WALLETS, A, B
from tests.unit.test_match_in_memory import InMemoryFederation, eth

GRANT = """jurisdiction = "EE"
version = "ee-freeze-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
legal_bases = ["MLA"]
disclosable_fields = ["tx_count"]
answer_within_days = 10
"""


@pytest.fixture
def database(tmp_path: Path) -> NodeDatabase:
    db = NodeDatabase(tmp_path / "node.duckdb")
    with db.session() as con:
        con.execute(
            "INSERT INTO transactions VALUES "
            f"('t1', 'eth', '{A}', '{B}', 'ETH', 1, 100.50, '2026-01-02T03:04:05Z', NULL, 1)"
        )
    return db


def _parse(text: str) -> tuple[Policy | None, list[tuple[str, int, int, str]]]:
    outcome = parse_policy(text.encode(), Path("p.toml"), now=NOW)
    found = [(d.severity, d.line, d.column, d.message) for d in outcome.diagnostics]
    return outcome.policy, found


# --- policy keys ---------------------------------------------------------------------------------


def test_freeze_keys_parse_and_decide_which_grants_serve_freezes() -> None:
    policy, problems = _parse(GRANT)
    assert problems == [] and policy is not None
    [plain] = policy.grants
    assert plain.freeze_days_max is None and plain.freeze_approval == "officer"
    assert not plain.serves(QueryKind.FREEZE) and plain.serves(QueryKind.PRESERVE)
    assert "refused" in plain.freeze_terms()

    policy, problems = _parse(GRANT + 'freeze_days_max = 30\nfreeze_approval = "automatic"\n')
    assert problems == [] and policy is not None
    [grant] = policy.grants
    assert grant.freeze_days_max == 30 and grant.freeze_approval == "automatic"
    assert grant.serves(QueryKind.FREEZE)
    assert grant.freeze_terms() == "Freeze (restraint) orders: up to 30 days; in force at once."


def test_freeze_keys_are_checked_with_their_positions() -> None:
    _, problems = _parse(GRANT + "freeze_days_max = 0\n")
    assert ("error", 11, 19, "grant #1: 'freeze_days_max' must be at least 1, not 0") in problems
    _, problems = _parse(GRANT + 'freeze_days_max = 5\nfreeze_approval = "oficer"\n')
    [(severity, line, column, message)] = problems
    assert (severity, line, column) == ("error", 12, 19)
    assert "'freeze_approval' must be one of 'automatic', 'officer'" in message
    assert message.endswith('(did you mean "officer"?)')
    _, problems = _parse(GRANT + 'freeze_approval = "officer"\n')
    assert [p[:3] for p in problems] == [("warning", 11, 1)]
    assert "no effect without 'freeze_days_max'" in problems[0][3]
    membership = GRANT.replace('"disclosure-request"', '"membership"').replace(
        'disclosable_fields = ["tx_count"]\nanswer_within_days = 10\n', ""
    )
    _, problems = _parse(membership + "freeze_days_max = 5\n")
    assert [p[:3] for p in problems] == [("warning", 9, 1)]
    assert "has no effect on a membership grant" in problems[0][3]


# --- the state machine at the node -----------------------------------------------------------


def _freeze(automatic: bool = False, item: str = A, days: int = 30) -> followup.Submission:
    return followup.Submission(
        kind="freeze",
        partner="FR",
        partner_subject="CN=FR",
        case_ref="CASE-1",
        legal_basis="MLA",
        reason="proceeds of fraud",
        dataset=WALLETS,
        item=item,
        fields_asked=(),
        preservation_days=days,
        automatic=automatic,
        answer_within_days=10,
        policy_version="p1",
        grant_index=1,
        nonce="00",
        amount_eur=250_000,
    )


def test_freeze_pending_frozen_released(database: NodeDatabase) -> None:
    row = followup.submit(database, _freeze(), NOW)
    assert row.state == "pending" and row.amount_eur == 250_000 and row.frozen_until == ""
    with pytest.raises(followup.FollowUpError, match="only a freeze can be released|not frozen"):
        followup_freeze.release(database, row.request_id, "done", "officer", NOW)
    with pytest.raises(followup.FollowUpError, match="discloses no fields"):
        followup.approve(database, WALLETS, row.request_id, (), ["tx_count"], "", NOW)
    frozen = followup.approve(database, WALLETS, row.request_id, (), None, "ok", NOW)
    assert frozen.state == "frozen" and frozen.frozen_until == "2026-12-25T08:00:00Z"
    assert frozen.decided_by == "officer" and frozen.disclosed == []
    with pytest.raises(followup.FollowUpError, match="is frozen until 2026-12-25T08:00:00Z"):
        followup.refuse(database, row.request_id, "no", NOW)
    with pytest.raises(followup.FollowUpError, match="a release needs its reason"):
        followup_freeze.release(database, row.request_id, " ", "officer", NOW)
    later = NOW + dt.timedelta(days=3)
    released = followup_freeze.release(database, row.request_id, "funds seized", "jane", later)
    assert released.state == "released" and released.released_by == "jane"
    assert released.released_at == "2026-11-28T08:00:00Z"
    assert released.frozen_until == "2026-12-25T08:00:00Z"
    with pytest.raises(followup.FollowUpError, match="released, not frozen"):
        followup_freeze.release(database, row.request_id, "again", "jane", later)
    assert followup.find(database, row.request_id) == released
    record = followup.record_of(released, "EE", later)
    assert record.kind == "freeze" and record.amount_eur == 250_000
    assert FollowUpRecord.from_json(json.loads(record.canonical_json())) == record
    assert followup.audit_fields(released)["release_reason"] == "funds seized"


def test_freeze_expires_when_looked_at_past_its_end(database: NodeDatabase) -> None:
    automatic = followup.submit(database, _freeze(automatic=True, days=5), NOW)
    assert automatic.state == "frozen" and automatic.decided_by == "policy"
    assert automatic.frozen_until == "2026-11-30T08:00:00Z"
    assert followup.expire_overdue(database, NOW + dt.timedelta(days=4)) == []
    [expired] = followup.expire_overdue(database, NOW + dt.timedelta(days=5))
    assert expired.request_id == automatic.request_id and expired.state == "expired"
    assert expired.decided_by == "policy" and expired.frozen_until == "2026-11-30T08:00:00Z"
    with pytest.raises(followup.FollowUpError, match="expired on 2026-11-30T08:00:00Z"):
        followup_freeze.release(database, automatic.request_id, "late", "jane", NOW)
    unheld = followup.submit(database, _freeze(item=B.replace("b", "c")), NOW)
    assert unheld.state == "no-record"
    pending = followup.submit(database, _freeze(), NOW)
    [unanswered] = followup.expire_overdue(database, NOW + dt.timedelta(days=10))
    assert unanswered.request_id == pending.request_id and unanswered.decided_by == "deadline"


def test_a_version_1_record_still_parses_and_keeps_its_fields(database: NodeDatabase) -> None:
    row = followup.submit(database, _freeze(automatic=True), NOW)
    record = dataclasses.replace(
        followup.record_of(row, "EE", NOW), kind="preserve", record_format=RECORD_FORMAT_V1
    )
    document = record.as_json()
    assert "amount_eur" not in document and "frozen_until" not in document
    assert FollowUpRecord.from_json(document).as_json() == document
    with pytest.raises(ValueError, match="exactly the record fields"):
        FollowUpRecord.from_json({**document, "amount_eur": 1})


# --- in memory: the investigator, the node's RequestService, the officer ---------------------


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    memory = InMemoryFederation.create(tmp_path_factory.mktemp("freeze"))
    policy = GRANT.replace('partners = ["FR"]', 'partners = ["ES"]') + "freeze_days_max = 30\n"
    memory.add_node("EE", policy, {eth(n) for n in range(1, 41)})
    query = MatchQuery("wallets", "FZ-1", "MLA", "wallet", (eth(3), eth(4)), "ES")
    [result] = run_match(memory.federation("ES"), query, memory.connections("ES"), memory.ca_pem)
    assert result.status == NodeStatus.OK, result.reason
    return memory


def _submit(memory: InMemoryFederation, item: str, days: int, case: str = "FZ-1") -> FollowUpResult:
    ask = FollowUpAsk(
        "freeze", "wallets", item, case, "MLA", "fraud", preservation_days=days, amount_eur=9000
    )
    return submit_request(
        memory.federation("ES"),
        NodeEntry("EE", "memory"),
        ask,
        memory.connections("ES"),
        NodeTrust(memory.ca_pem),
    )


def _status_result(memory: InMemoryFederation) -> FollowUpResult:
    [result] = request_status(
        memory.federation("ES"),
        memory.federation("ES").nodes,
        "FZ-1",
        memory.connections("ES"),
        NodeTrust(memory.ca_pem),
    )
    assert result.status == NodeStatus.OK, result.reason
    return result


def _status(memory: InMemoryFederation) -> dict[str, SignedRecord]:
    return {s.record.request_id: s for s in _status_result(memory).requests}


def test_freeze_round_trip_in_memory(memory: InMemoryFederation) -> None:
    node_dir = memory.root / "EE"
    too_long = _submit(memory, eth(3), 31)
    assert too_long.status == NodeStatus.DENIED
    assert "at most 30 days (freeze_days_max); 31 asked" in too_long.reason
    no_match = _submit(memory, eth(5), 10, case="FZ-OTHER")
    assert no_match.status == NodeStatus.DENIED
    assert "must follow a match under the same case" in no_match.reason

    submitted = _submit(memory, eth(3), 20)
    assert submitted.status == NodeStatus.OK, submitted.reason
    [signed] = submitted.requests
    request_id = signed.record.request_id
    assert signed.record.state == "pending" and signed.record.amount_eur == 9000

    frozen = approve_request(node_dir, request_id, None, "court order")
    assert frozen.state == "frozen"
    record = _status(memory)[request_id].record
    assert record.state == "frozen" and record.frozen_until == frozen.frozen_until
    table = report_table("FZ-1", "request status", [_status_result(memory)])
    assert f"frozen until {frozen.frozen_until}" in table and "EUR 9,000" in table

    released = release_request(node_dir, request_id, "assets seized")
    assert released.state == "released"
    shown = _status(memory)[request_id]
    assert shown.record.state == "released" and shown.record.release_reason == "assets seized"
    document = case_record(shown, "ES", NOW)
    key = (memory.root / "ES" / "key.pem").read_bytes()
    cert = (memory.root / "ES" / "cert.pem").read_bytes()
    signed_document = sign_report(document, key, cert)
    assert verify_case_record(signed_document, memory.ca_pem).ok
    altered = json.loads(json.dumps(signed_document))
    altered["record"]["amount_eur"] = 1
    assert not verify_case_record(altered, memory.ca_pem).ok

    second = _submit(memory, eth(4), 5)
    second_id = second.requests[0].record.request_id
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=6)
    assert approve_request(node_dir, second_id, None, "", now=past).state == "frozen"
    assert _status(memory)[second_id].record.state == "expired"  # read past its end
    listed = json.loads(list_requests(node_dir, pending_only=False, fmt="json"))
    assert {r["request_id"]: r["state"] for r in listed["requests"]}[second_id] == "expired"
    table = list_requests(node_dir, pending_only=False, fmt="table")
    assert "released" in table and "frozen until" in table and "EUR 9,000" in table
    events = [
        e["event"]
        for e in entries(node_dir / AUDIT_DIR)
        if e.get("request") in (request_id, second_id)
        or (e.get("details") or {}).get("request") in (request_id, second_id)
    ]
    assert events == [
        "query",
        "request-frozen",
        "request-released",
        "query",
        "request-frozen",
        "request-expired",
    ]
