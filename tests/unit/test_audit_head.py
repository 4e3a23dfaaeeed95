"""Signed audit heads: the statement, its forms, the coordinator's checks; canonical evidence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from coordinator.heads import HeadWitness, head_entry, heads_from_report, merge_heads
from coordinator.results import NodeFailure
from coordinator.verify_kinds import load_aggregate_transcript
from fedtrace.aggregate_transcript import AggregateTranscript, FigureTerms, decimal_text
from fedtrace.audit_head import SignedHead, head_statement, sign_head
from fedtrace.canonical import canonical_json
from fedtrace.pki import ROLE_NODE, init_ca, issue
from fedtrace.transcript import LEGACY_VERSION, TRANSCRIPT_VERSION
from fedtrace.v1 import node_pb2
from node.audit import AuditLog
from node.audit.heads import HeldHead, check_heads


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    """Node EE's key and certificate, and node FR's certificate."""
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "EE", name="EE", role=ROLE_NODE)
    issue(tmp_path / "ca", tmp_path / "FR", name="FR", role=ROLE_NODE)
    return (
        (tmp_path / "EE" / "key.pem").read_bytes(),
        (tmp_path / "EE" / "cert.pem").read_bytes(),
        (tmp_path / "FR" / "cert.pem").read_bytes(),
    )


def test_statement_is_rfc8785_canonical_json() -> None:
    statement = head_statement("EE", 12, bytes(range(32)), 1_700_000_000_000)
    assert statement == (
        b'{"entries":12,"head_sha256":"' + bytes(range(32)).hex().encode() + b'",'
        b'"jurisdiction":"EE","kind":"fedtrace-audit-head","timestamp_unix_ms":1700000000000,'
        b'"v":1}'
    )


def test_a_signed_head_verifies_and_round_trips(keys: tuple[bytes, bytes, bytes]) -> None:
    key, cert, other = keys
    head = sign_head(key, "EE", 5, b"\x07" * 32, 1_700_000_000_000)
    assert head.verifies(cert) and not head.verifies(other)
    assert SignedHead.from_dict(json.loads(json.dumps(head.to_dict()))) == head
    wire = node_pb2.AuditHead.FromString(head.to_proto().SerializeToString())
    assert SignedHead.from_proto(wire) == head
    assert head.to_dict()["head_sha256"] == "07" * 32
    assert "head of 5 entries (0707070707070707…) signed at 2023-11-14T22:13:20Z" in (
        head.describe()
    )


@pytest.mark.parametrize(
    "change", [{"entries": 6}, {"jurisdiction": "FR"}, {"timestamp_unix_ms": 1}]
)
def test_a_changed_head_does_not_verify(
    keys: tuple[bytes, bytes, bytes], change: dict[str, object]
) -> None:
    key, cert, _ = keys
    document = {**sign_head(key, "EE", 5, b"\x07" * 32, 1_700_000_000_000).to_dict(), **change}
    assert not SignedHead.from_dict(document).verifies(cert)


@pytest.mark.parametrize(
    "document",
    [
        {"jurisdiction": 5, "entries": 1},
        {"jurisdiction": "EE", "entries": "1", "head_sha256": "00" * 32},
        {"jurisdiction": "EE", "entries": 1, "head_sha256": "00", "timestamp_unix_ms": 0},
    ],
)
def test_malformed_heads_are_refused(document: dict[str, object]) -> None:
    full = {"timestamp_unix_ms": 0, "signature": "", "head_sha256": "00" * 32, **document}
    with pytest.raises(ValueError):
        SignedHead.from_dict(full)


def test_the_log_signs_its_last_entry(tmp_path: Path, keys: tuple[bytes, bytes, bytes]) -> None:
    key, cert, _ = keys
    log = AuditLog(tmp_path / "audit", key, cert)
    empty = log.signed_head("EE")
    assert empty.entries == 0 and empty.head_sha256 == bytes(32) and empty.verifies(cert)
    for number in range(3):
        entry = log.append("query", {"n": number})
    head = log.signed_head("EE")
    assert head.entries == 3 and head.head_sha256.hex() == entry["hash"]
    assert head.verifies(cert)


def _trail(tmp_path: Path, key: bytes, cert: bytes, entries: int) -> tuple[Path, AuditLog]:
    log = AuditLog(tmp_path / "audit", key, cert)
    for number in range(entries):
        log.append("query", {"n": number})
    return tmp_path / "audit", log


def test_heads_covered_by_the_trail(tmp_path: Path, keys: tuple[bytes, bytes, bytes]) -> None:
    key, cert, other = keys
    directory, log = _trail(tmp_path, key, cert, 3)
    first = HeldHead(log.signed_head("EE"), cert)
    log.append("query", {"n": 3})
    second = HeldHead(log.signed_head("EE"), cert)
    foreign = HeldHead(sign_head(key, "FR", 99, bytes(32), 0), other)
    checked = check_heads(directory, [first, second, foreign], jurisdiction="EE")
    assert checked.ok and checked.covered == 2, checked.problems


def test_a_truncated_or_rewritten_trail_is_caught(
    tmp_path: Path, keys: tuple[bytes, bytes, bytes]
) -> None:
    key, cert, _ = keys
    directory, log = _trail(tmp_path, key, cert, 4)
    held = HeldHead(log.signed_head("EE"), cert)
    trail = directory / "audit.jsonl"
    lines = trail.read_text().splitlines(keepends=True)
    trail.write_text("".join(lines[:2]))
    [problem] = check_heads(directory, [held], jurisdiction="EE").problems
    assert "trail rolled back or truncated behind a signed head held by a partner" in problem
    assert "head of 4 entries" in problem and "trail has 2 entries" in problem
    trail.write_text("".join(lines[:3]) + lines[3].replace('"n":3', '"n":7'))
    [problem] = check_heads(directory, [held], jurisdiction="EE").problems
    assert "differs at entry 4" in problem


def test_a_head_that_does_not_verify_is_not_evidence(
    tmp_path: Path, keys: tuple[bytes, bytes, bytes]
) -> None:
    key, cert, _ = keys
    directory, log = _trail(tmp_path, key, cert, 1)
    forged = SignedHead.from_dict({**log.signed_head("EE").to_dict(), "entries": 50})
    checked = check_heads(directory, [HeldHead(forged, cert)], jurisdiction="EE")
    assert checked.ok and checked.covered == 0
    assert "not evidence" in checked.notes[0]


def test_the_witness_refuses_bad_and_older_heads(keys: tuple[bytes, bytes, bytes]) -> None:
    key, cert, other = keys
    witness = HeadWitness()
    later = sign_head(key, "EE", 9, b"\x01" * 32, 2)
    assert witness.admit("EE", later, cert) == later
    with pytest.raises(NodeFailure, match="signed audit head does not verify"):
        witness.admit("EE", later, other)
    with pytest.raises(NodeFailure, match="answered without auditing the answer"):
        witness.admit("EE", sign_head(key, "EE", 9, b"\x01" * 32, 3), cert, answer=True)
    with pytest.raises(NodeFailure, match="went back"):
        witness.admit("EE", sign_head(key, "EE", 8, b"\x01" * 32, 3), cert)
    with pytest.raises(NodeFailure, match="names 'FR'"):
        witness.admit("EE", sign_head(key, "FR", 9, b"\x01" * 32, 3), cert)
    with pytest.raises(NodeFailure, match="without a signed audit head"):
        witness.check("EE", node_pb2.NodeInfo(), cert)
    assert witness.latest("EE") == later


def test_merging_keeps_every_distinct_head(keys: tuple[bytes, bytes, bytes]) -> None:
    key, cert, _ = keys
    one = head_entry(sign_head(key, "EE", 1, b"\x01" * 32, 1), cert.decode())
    two = head_entry(sign_head(key, "EE", 2, b"\x02" * 32, 2), cert.decode())
    merged = merge_heads([two, one], [one, two])
    assert [h["entries"] for h in merged] == [1, 2]
    report = {
        "results": [
            {
                "node": "EE",
                "signature": {"certificate_pem": cert.decode()},
                "audit_head": {k: v for k, v in two.items() if k != "certificate_pem"},
            }
        ]
    }
    assert heads_from_report(report) == ([two], [])
    report["results"][0]["audit_head"]["entries"] = 3
    assert heads_from_report(report) == ([], ["EE: signed audit head does not verify"])


# --- every report kind carries each node's verified head (in-memory federation) ----------------


def _carries_verified_heads(results: list[dict[str, object]]) -> None:
    for result in results:
        assert result["status"] == "ok", result
        head = SignedHead.from_dict(result["audit_head"])  # type: ignore[arg-type]
        signature = result["signature"]
        assert isinstance(signature, dict)
        assert head.jurisdiction == result["node"] and head.entries > 0
        assert head.verifies(signature["certificate_pem"].encode())


def test_reports_carry_signed_heads_and_report_verify_checks_them(tmp_path: Path) -> None:
    from coordinator.epoch_cache import FilterCache, TagCache
    from coordinator.verify import verify_report
    from fedtrace.api import FederationClient
    from tests.unit.test_match_in_memory import eth, two_nodes

    memory = two_nodes(tmp_path)

    def client(investigator: str) -> FederationClient:
        return FederationClient(
            memory.federation(investigator),
            memory.connections(investigator),
            filters=FilterCache(None),
            tags=TagCache(None),
        )

    with client("FR") as fed:
        match = fed.match([eth(5), eth(450)], dataset="wallets", case="H-1", legal_basis="MLA")
    with client("DE") as fed:
        aggregate = fed.aggregate(
            [eth(n) for n in range(440, 460)],
            dataset="wallets",
            case="H-2",
            sums=["tx_count"],
            legal_basis="MLA",
        )
    with client("ES") as fed:
        fed.match([eth(5)], dataset="wallets", case="H-1", legal_basis="MLA")
        disclose = fed.request_disclose(
            node="EE", dataset="wallets", item=eth(5), case="H-1", legal_basis="MLA"
        )
    with client("IT") as fed:
        overlap = fed.overlap(dataset="wallets", case="H-3", legal_basis="MLA")
    for report in (match, aggregate, overlap):
        document = report.to_dict()
        _carries_verified_heads(document["results"])
        assert json.loads(report.render("json"))["results"] == document["results"]
        assert verify_report(document, memory.ca_pem).ok
        forged = json.loads(json.dumps(document))
        forged["results"][0]["audit_head"]["entries"] -= 1
        forged.pop("investigator_signature", None)
        checked = verify_report(forged, memory.ca_pem, require_investigator_signature=False)
        assert any("signed audit head does not verify" in f for f in checked.failures)
    [request] = disclose.to_dict()["results"]
    assert SignedHead.from_dict(request["audit_head"]).jurisdiction == "EE"
    [record] = request["requests"]
    assert record["record_format"] == "fedtrace-followup-v3"
    assert len(bytes.fromhex(record["policy_sha256"])) == 32  # the policy file it was decided under
    transcript = match.to_dict()["results"][0]["signature"]["transcript"]
    assert transcript["v"] == 2  # RFC 8785 canonical transcripts


# --- canonical evidence: RFC 8785 transcripts, exact decimals, older documents still verify ----


def _aggregate_transcript(version: int) -> AggregateTranscript:
    return AggregateTranscript(
        jurisdiction="EE", investigator="FR", dataset="wallets", epoch_id="e", tags_sha256="t",
        disclosure="aggregate", policy_version="p", case_ref="C-1", legal_basis="MLA",
        nonce="00", timestamp_unix_ms=1, query_id="q", item_count=3, row_count=9,
        total_only=False, min_cohort=5, epsilon=0.1,
        figures=(FigureTerms("match_count", 0, 3.0, 9), FigureTerms("tx_count", 0, 1e-7, 1)),
        request_sha256="r", response_sha256="s", public_context_sha256="c",
        indicator_sha256="i", answers_sha256="a", peers=(), total_nonce="", v=version,
    )  # fmt: skip


def test_transcripts_sign_rfc8785_bytes_with_floats_as_exact_decimals() -> None:
    signed = _aggregate_transcript(TRANSCRIPT_VERSION)
    document = json.loads(signed.canonical_json())
    assert signed.canonical_json() == canonical_json(document)
    assert document["v"] == 2 and document["epsilon"] == "0.1"
    assert [f["scale"] for f in document["figures"]] == ["3.0", "0.0000001"]
    assert decimal_text(600.0) == "600.0" and decimal_text(0.5) == "0.5"
    stored = json.loads(json.dumps(dataclasses.asdict(signed)))  # as a report keeps it
    assert load_aggregate_transcript(stored).digest() == signed.digest()


def test_a_version_1_transcript_keeps_its_bytes_and_still_loads() -> None:
    old = _aggregate_transcript(LEGACY_VERSION)
    stored = dataclasses.asdict(old)
    del stored["v"], stored["policy_sha256"]  # signed before these were recorded
    for figure in stored["figures"]:
        del figure["clip"]
    legacy = json.dumps(stored, sort_keys=True, separators=(",", ":")).encode()
    assert old.canonical_json() == legacy
    assert load_aggregate_transcript(json.loads(json.dumps(stored))).digest() == old.digest()


def test_a_version_2_followup_record_still_parses() -> None:
    from fedtrace.followup import RECORD_FORMAT_V2, FollowUpRecord
    from fedtrace.followup import canonical_json as record_json

    record = FollowUpRecord(
        request_id="RQ-1", jurisdiction="EE", investigator="FR", kind="disclose",
        state="pending", case_ref="C-1", legal_basis="MLA", reason="", dataset="wallets",
        item="0x1", fields_asked=[], preservation_days=0, submitted_at="t", deadline="",
        decided_at="", decided_by="", decision_reason="", fields_disclosed=[],
        fields_withheld=[], disclosed=[], preserved_until="", policy_version="p", nonce="00",
        signed_at="t", record_format=RECORD_FORMAT_V2,
    )  # fmt: skip
    document = record.as_json()
    assert "policy_sha256" not in document and "amount_eur" in document
    assert FollowUpRecord.from_json(document).as_json() == document
    assert (
        record_json(document)
        == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_an_unknown_transcript_version_is_refused() -> None:
    stored = json.loads(json.dumps(dataclasses.asdict(_aggregate_transcript(TRANSCRIPT_VERSION))))
    with pytest.raises(ValueError, match="unknown serialisation version 3"):
        load_aggregate_transcript({**stored, "v": 3})
