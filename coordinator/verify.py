"""`fedtrace report verify`: re-check a saved JSON report against the federation CA.

For every result a node answered, the node signed a transcript of the exchange
(`fedtrace.transcript`). Verification recomputes the transcript's digest,
checks the node's certificate chains to the federation CA (at the time the
query was sent), that the certificate names the node the result is from, that
the signature is the node's, and that the result's visible fields (node,
disclosure, policy version and policy file SHA-256, epoch, case, dataset, legal
basis) agree with what the node signed.

What a node signature proves, and what it does not: the node cannot know which
items matched (the coordinator computes that from the unblinded answer and the
node's filter), so `matched` and `match_count` are not covered by it. The
coordinator therefore signs the whole report with the investigator's key
(`investigator_signature`); that proves the report is what the investigator's
coordinator wrote, unchanged since, but it is the investigator's own statement,
not the node's. See docs/audit.md.

Aggregate and overlap reports carry their own transcripts (AggregateTranscript,
OverlapTranscript); coordinator/verify_kinds.py checks those results, and
coordinator/case_record.py checks exported follow-up case records.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.case_record import verify_case_record
from coordinator.certificates import check_investigator
from coordinator.signatures import (
    ReportVerification,
    check_audit_head,
    check_node_signature,
    policy_mismatches,
)
from coordinator.verify_kinds import verify_aggregate_results, verify_overlap_results
from fedtrace.errors import ConfigError
from fedtrace.followup import EXPORT_DOCUMENT
from fedtrace.revocation import RevocationList
from fedtrace.transcript import OPTIONAL_FIELDS, Transcript, check_since_v2, check_version
from fedtrace.wire import Level, NodeStatus

_MEMBERSHIP_LEVELS = (Level.MEMBERSHIP.label, Level.DISCLOSURE_REQUEST.label)
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Transcript)}


def _transcript(document: object) -> Transcript:
    required = set(_FIELD_TYPES) - OPTIONAL_FIELDS
    if (
        not isinstance(document, dict)
        or not required <= set(document)
        or not set(document) <= set(_FIELD_TYPES)
    ):
        raise ValueError("its transcript does not have exactly the transcript fields")
    check_since_v2(document, _FIELD_TYPES, check_version(document))
    for name, kind in _FIELD_TYPES.items():
        if name not in document:
            continue  # an optional field a transcript from before it existed omits
        value = document[name]
        expected = {"str": str, "bool": bool, "int": int}[str(kind)]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"its transcript field {name!r} is not a {kind}")
    return Transcript.from_json(document)


def _check_result(
    result: Mapping[str, Any], report: Mapping[str, Any], ca_pem: bytes, outcome: ReportVerification
) -> str | None:
    """Check one result; returns the investigator its transcript names, when it verifies."""
    node = str(result.get("node", "?"))
    status = result.get("status")
    signature = result.get("signature")
    if status != NodeStatus.OK:
        if signature:
            outcome.fail(f"{node}: status {status!r} but the result carries a signature")
        else:
            outcome.note(f"{node}: {status} — not signed (only answers are signed)")
        return None
    checked = check_node_signature(node, signature, _transcript, ca_pem, outcome)
    if checked is None:
        return None
    transcript, identity = checked
    if not check_audit_head(node, result, outcome):
        return None
    mismatches = []
    expected = {
        "node": (node, transcript.jurisdiction),
        "disclosure": (result.get("disclosure"), transcript.disclosure),
        "policy_version": (result.get("policy_version"), transcript.policy_version),
        "epoch_id": (result.get("epoch_id"), transcript.epoch_id),
        "case": (report.get("case"), transcript.case_ref),
        "dataset": (report.get("dataset"), transcript.dataset),
        "legal_basis": (report.get("legal_basis", ""), transcript.legal_basis),
    }
    for name, (shown, signed) in expected.items():
        if shown != signed:
            mismatches.append(f"{name} shows {shown!r} but the node signed {signed!r}")
    mismatches += policy_mismatches(result, transcript)
    count = result.get("match_count")
    matched = result.get("matched")
    if (
        not isinstance(count, int)
        or isinstance(count, bool)
        or not 0 <= count <= transcript.item_count
    ):
        mismatches.append(
            f"match_count {count!r} is not between 0 and the "
            f"{transcript.item_count} items the node answered"
        )
    if matched is not None:
        if transcript.disclosure not in _MEMBERSHIP_LEVELS or transcript.shuffled:
            mismatches.append(
                f"it lists matched items, but the node answered at {transcript.disclosure} level"
            )
        elif not isinstance(matched, list) or len(matched) != count:
            mismatches.append("its matched list does not hold match_count items")
    if mismatches:
        outcome.fail(f"{node}: " + "; ".join(mismatches))
        return None
    outcome.note(
        f"{node}: signature valid ({identity.describe()}), {transcript.disclosure}, "
        f"policy {transcript.policy_version}, case {transcript.case_ref}"
    )
    return transcript.investigator


def verify_report(
    report: Mapping[str, Any],
    ca_pem: bytes,
    *,
    require_investigator_signature: bool = True,
    revoked: RevocationList | None = None,
) -> ReportVerification:
    """Every signature in a saved report; with `revoked`, no signer may be revoked."""
    if report.get("document") == EXPORT_DOCUMENT:  # docs/requests.md
        return verify_case_record(
            dict(report),
            ca_pem,
            require_investigator_signature=require_investigator_signature,
            revoked=revoked,
        )
    outcome = ReportVerification(revoked=revoked)
    results = report.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        outcome.fail("not a fedtrace report: no 'results' list")
        return outcome
    if not results:
        outcome.fail("the report holds no results")
        return outcome
    investigators: set[str] = set()
    if report.get("query") in ("aggregate", "overlap"):  # see coordinator/verify_kinds.py
        check = {"aggregate": verify_aggregate_results, "overlap": verify_overlap_results}
        investigators = check[report["query"]](report, results, ca_pem, outcome)
    else:
        for result in results:
            investigator = _check_result(result, report, ca_pem, outcome)
            if investigator:
                investigators.add(investigator)
    if len(investigators) > 1:
        outcome.fail(f"the transcripts name several investigators: {', '.join(investigators)}")
    check_investigator(report, ca_pem, investigators, outcome, require_investigator_signature)
    return outcome


def load_report(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: report not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the report: {exc}") from None
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a JSON report ({exc}); save one with "
            "`fedtrace query match --format json --out FILE`"
        ) from None
    if not isinstance(report, dict):
        raise ConfigError(f"{path}: not a fedtrace JSON report (expected one object)")
    return report
