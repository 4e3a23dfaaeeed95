"""Follow-up requests without gRPC: records, the node's lookup and states, the audit check."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fedtrace.followup import FollowUpRecord, record_digest
from fedtrace.pki import ROLE_NODE, init_ca, issue
from node import followup
from node.audit import AuditLog
from node.config import DatasetConfig
from node.setup import SUBJECTS_SQL, WALLETS_SQL
from node.store import NodeDatabase

A = "0x52908400098527886e0f7030069857d2e4169ee7"
B = "0xde709f2102306220921060314715629080e2fb77"
NOW = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)
WALLETS = DatasetConfig(
    "wallets",
    "wallet",
    WALLETS_SQL,
    "address",
    (),
    ("tx_count", "total_in_eur", "first_seen", "last_seen", "linked_subjects"),
)
SUBJECTS = DatasetConfig(
    "subjects", "person", SUBJECTS_SQL, "", (), ("subject_id", "full_name", "nationality")
)


@pytest.fixture
def database(tmp_path: Path) -> NodeDatabase:
    db = NodeDatabase(tmp_path / "node.duckdb")
    with db.session() as con:
        con.execute(
            "INSERT INTO transactions VALUES "
            f"('t1', 'eth', '{A}', '{B}', 'ETH', 1, 100.50, '2026-01-02T03:04:05Z', NULL, 1),"
            f"('t2', 'eth', '{B}', '{A}', 'ETH', 1, 20.25, '2026-02-03T04:05:06Z', NULL, 1)"
        )
        con.execute(
            f"INSERT INTO subject_wallets VALUES ('S-2', '{A}', 'eth', NULL, 1),"
            f"('S-1', '{A}', 'eth', NULL, 1)"
        )
        con.execute(
            "INSERT INTO subjects VALUES ('S-1', 'Hans-Peter Müller', '1970-05-01', "
            "'DE', 'C01X00T47', NULL, 1)"
        )
    return db


def _submission(
    kind: str = "disclose",
    item: str = A,
    automatic: bool = False,
    fields: tuple[str, ...] = ("tx_count", "first_seen", "linked_subjects"),
    dataset: DatasetConfig = WALLETS,
) -> followup.Submission:
    return followup.Submission(
        kind=kind,
        partner="FR",
        partner_subject="CN=FR",
        case_ref="CASE-1",
        legal_basis="MLA",
        reason="",
        dataset=dataset,
        item=item,
        fields_asked=fields if kind == "disclose" else (),
        preservation_days=30 if kind == "preserve" else 0,
        automatic=automatic,
        answer_within_days=10,
        policy_version="p1",
        grant_index=1,
        nonce="00",
    )


def test_lookup_uses_declared_columns_only(database: NodeDatabase) -> None:
    with database.session() as con:
        held = followup.lookup(
            con, WALLETS, A, ["tx_count", "total_in_eur", "last_seen", "linked_subjects"]
        )
        assert held == [
            {
                "tx_count": 2,
                "total_in_eur": "20.25",
                "last_seen": "2026-02-03T04:05:06Z",
                "linked_subjects": ["S-1", "S-2"],
            }
        ]
        assert followup.lookup(con, WALLETS, "0x" + "1" * 40, ["tx_count"]) == []
        with pytest.raises(ValueError, match="'total_out_eur' is not a disclosable column"):
            followup.lookup(con, WALLETS, A, ["total_out_eur"])


def test_person_lookup_by_name_and_date_of_birth(database: NodeDatabase) -> None:
    item = followup.canonical_item(SUBJECTS, "MÜLLER, Hans Peter|1970-05-01")
    assert item == "hans muller peter|1970-05-01"
    with database.session() as con:
        assert followup.lookup(con, SUBJECTS, item, ["subject_id", "nationality"]) == [
            {"subject_id": "S-1", "nationality": "DE"}
        ]


def test_automatic_approval_and_no_record(database: NodeDatabase) -> None:
    row = followup.submit(database, _submission(automatic=True), NOW)
    assert row.state == "approved" and row.decided_by == "policy"
    assert row.disclosed == [
        {"tx_count": 2, "first_seen": "2026-01-02T03:04:05Z", "linked_subjects": ["S-1", "S-2"]}
    ]
    none = followup.submit(database, _submission(item="0x" + "2" * 40), NOW)
    assert none.state == "no-record" and none.disclosed == [] and none.deadline == ""


def test_officer_flow_partly_approved_refused_expired(database: NodeDatabase) -> None:
    pending = followup.submit(database, _submission(), NOW)
    assert pending.state == "pending" and pending.deadline == "2026-12-05T08:00:00Z"
    with pytest.raises(followup.FollowUpError, match=r"did not ask for total_in_eur; it asked"):
        followup.approve(
            database,
            WALLETS,
            pending.request_id,
            WALLETS.disclosable_columns,
            ["total_in_eur"],
            "",
            NOW,
        )
    with pytest.raises(followup.FollowUpError, match="no longer lets FR receive first_seen"):
        followup.approve(database, WALLETS, pending.request_id, ["tx_count"], None, "", NOW)
    decided = followup.approve(
        database, WALLETS, pending.request_id, WALLETS.disclosable_columns, ["tx_count"], "ok", NOW
    )
    assert decided.state == "partly-approved" and decided.disclosed == [{"tx_count": 2}]
    assert decided.fields_withheld == ["first_seen", "linked_subjects"]
    with pytest.raises(followup.FollowUpError, match="is already partly approved"):
        followup.refuse(database, pending.request_id, "no", NOW)

    second = followup.submit(database, _submission(), NOW)
    with pytest.raises(followup.FollowUpError, match="a refusal needs its reason"):
        followup.refuse(database, second.request_id, " ", NOW)
    assert followup.refuse(database, second.request_id, "no", NOW).state == "refused"

    third = followup.submit(database, _submission(), NOW)
    assert followup.expire_overdue(database, NOW + dt.timedelta(days=9)) == []
    [expired] = followup.expire_overdue(database, NOW + dt.timedelta(days=10))
    assert expired.request_id == third.request_id and expired.decided_by == "deadline"
    assert followup.expire_overdue(database, NOW + dt.timedelta(days=11)) == []
    with pytest.raises(followup.FollowUpError, match="expired on 2026-12-05T08:00:00Z"):
        followup.approve(
            database, WALLETS, third.request_id, WALLETS.disclosable_columns, None, "", NOW
        )


def test_preservation_discloses_nothing(database: NodeDatabase) -> None:
    row = followup.submit(database, _submission(kind="preserve"), NOW)
    decided = followup.approve(database, WALLETS, row.request_id, (), None, "", NOW)
    assert decided.state == "approved" and decided.disclosed == []
    assert decided.preserved_until == "2026-12-25T08:00:00Z"
    fields = followup.audit_fields(decided)
    assert fields["preservation_days"] == 30 and A not in json.dumps(fields)


def test_record_is_strict_and_digest_covers_everything(database: NodeDatabase) -> None:
    row = followup.submit(database, _submission(automatic=True), NOW)
    record = followup.record_of(row, "EE", NOW)
    document = json.loads(record.canonical_json())
    assert FollowUpRecord.from_json(document) == record
    assert record_digest(record.canonical_json()) == record.digest()
    document["disclosed"][0]["tx_count"] = 3
    assert FollowUpRecord.from_json(document).digest() != record.digest()
    with pytest.raises(ValueError, match="exactly the record fields"):
        FollowUpRecord.from_json({**document, "extra": 1})
    with pytest.raises(ValueError, match="'preservation_days' is not a int"):
        FollowUpRecord.from_json({**document, "preservation_days": "30"})


def test_earlier_match_reads_the_audit_trail(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "node", name="EE", role=ROLE_NODE)
    log = AuditLog(
        tmp_path / "audit",
        (tmp_path / "node" / "key.pem").read_bytes(),
        (tmp_path / "node" / "cert.pem").read_bytes(),
    )
    base = {
        "peer": {"jurisdiction": "FR"},
        "case_ref": "C-1",
        "dataset": "wallets",
        "kind": "match",
        "outcome": "answered",
    }
    log.append("query", {**base, "outcome": "refused"})
    assert not followup.earlier_match(tmp_path / "audit", "FR", "C-1", "wallets")
    log.append("query", base)
    assert followup.earlier_match(tmp_path / "audit", "FR", "C-1", "wallets")
    assert not followup.earlier_match(tmp_path / "audit", "SG", "C-1", "wallets")
    assert not followup.earlier_match(tmp_path / "audit", "FR", "C-2", "wallets")
    assert not followup.earlier_match(tmp_path / "audit", "FR", "C-1", "subjects")
