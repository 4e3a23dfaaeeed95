"""Follow-up records as evidence: checking a node's signed record, and the exported case record.

`check_record` checks one record a node signed (canonical form, certificate chain
to the federation CA at signing time, names that node, not revoked, signature).
`case_record` builds the self-contained evidence document that `fedtrace report
verify` accepts (`verify_case_record`), and `case_record_html` its readable page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.certificates import check_investigator
from coordinator.signatures import ReportVerification
from fedtrace.errors import FedtraceError
from fedtrace.followup import (
    EXPORT_DOCUMENT,
    KIND_DISCLOSE,
    KIND_FREEZE,
    FollowUpRecord,
    canonical_json,
    record_digest,
    state_label,
)
from fedtrace.pki import ROLE_NODE, InvalidCertificate, PkiError, verify_issued_by, verify_signature
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM


def value_text(value: Any) -> str:
    """A disclosed value as text: lists joined, None as a dash."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class SignedRecord:
    record: FollowUpRecord
    signature: dict[str, str]  # algorithm, record_sha256, value, certificate_pem

    def as_json(self) -> dict[str, Any]:
        return {**self.record.as_json(), "signature": dict(self.signature)}


def _signed_at(record: FollowUpRecord) -> dt.datetime:
    try:
        return dt.datetime.strptime(record.signed_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"signed_at {record.signed_at!r} is not a UTC time") from None


def check_record(
    node: str,
    record_json: bytes,
    signature: bytes,
    cert_pem: bytes,
    ca_pem: bytes,
    revoked: RevocationList | None = None,
) -> FollowUpRecord:
    """The record, after checking its form, the node's certificate and signature; ValueError."""
    try:
        document = json.loads(record_json)
    except ValueError:
        raise ValueError(f"{node} sent a record that is not JSON") from None
    record = FollowUpRecord.from_json(document)
    if canonical_json(document) != record_json:
        raise ValueError(f"{node}'s record is not in canonical form")
    try:
        identity = verify_issued_by(cert_pem, ca_pem, at=_signed_at(record))
    except (InvalidCertificate, PkiError) as exc:
        raise ValueError(
            f"{node}'s signing certificate does not chain to the federation CA: {exc}"
        ) from None
    if identity.role != ROLE_NODE or identity.jurisdiction != node:
        raise ValueError(f"the record is signed by {identity.describe()}, not by node {node}")
    if revoked is not None and revoked.find(identity) is not None:
        raise ValueError(f"{node}'s signing certificate ({identity.describe()}) is revoked")
    if record.jurisdiction != node:
        raise ValueError(f"the record says it is from {record.jurisdiction}, not {node}")
    if not verify_signature(cert_pem, record_digest(record_json), signature):
        raise ValueError(f"the signature is not {node}'s signature over this record")
    return record


def case_record(signed: SignedRecord, exported_by: str, now: dt.datetime) -> dict[str, Any]:
    """The self-contained evidence document for one request (to be signed by the investigator)."""
    r = signed.record
    return {
        "document": EXPORT_DOCUMENT,
        "case": r.case_ref,
        "node": r.jurisdiction,
        "request_id": r.request_id,
        "state": r.state,
        "legal_basis": r.legal_basis,
        "record": r.as_json(),
        "signature": dict(signed.signature),
        "exported_by": exported_by,
        "exported_at": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


_EXPORT_KEYS = {
    "document",
    "case",
    "node",
    "request_id",
    "state",
    "legal_basis",
    "record",
    "signature",
    "exported_by",
    "exported_at",
    "investigator_signature",
}


def verify_case_record(
    document: dict[str, Any],
    ca_pem: bytes,
    *,
    require_investigator_signature: bool = True,
    revoked: RevocationList | None = None,
) -> ReportVerification:
    """Check an exported case record: the node's signature over the record, then the document's."""
    outcome = ReportVerification(revoked=revoked)
    unknown = sorted(set(document) - _EXPORT_KEYS)
    if unknown:
        outcome.fail(f"the case record holds fields no signature covers: {', '.join(unknown)}")
        return outcome
    node = str(document.get("node", "?"))
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM:
        outcome.fail(f"{node}: the case record carries no node signature it can check")
        return outcome
    try:
        body = canonical_json(document.get("record"))
        if signature.get("record_sha256") != record_digest(body).hex():
            raise ValueError("the record was altered (its digest does not match the signed one)")
        record = check_record(
            node,
            body,
            bytes.fromhex(str(signature.get("value", ""))),
            str(signature.get("certificate_pem", "")).encode(),
            ca_pem,
            revoked,
        )
    except (ValueError, TypeError) as exc:
        outcome.fail(f"{node}: {exc}")
        return outcome
    shown = {
        "case": record.case_ref,
        "request_id": record.request_id,
        "state": record.state,
        "legal_basis": record.legal_basis,
    }
    mismatches = [
        f"{name} shows {document.get(name)!r} but the node signed {signed!r}"
        for name, signed in shown.items()
        if document.get(name) != signed
    ]
    if mismatches:
        outcome.fail(f"{node}: " + "; ".join(mismatches))
        return outcome
    outcome.note(
        f"{node}: record {record.request_id} signed by node {node}, {state_label(record.state)}, "
        f"case {record.case_ref}, policy {record.policy_version}"
    )
    check_investigator(
        document, ca_pem, {record.investigator}, outcome, require_investigator_signature
    )
    return outcome


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(value_text(v))}</td></tr>" for k, v in pairs
    )


def case_record_html(document: dict[str, Any]) -> str:
    """A human-readable page of the case record (the JSON beside it is what verifies)."""
    r = FollowUpRecord.from_json(document["record"])
    signature = document["signature"]
    investigator = document.get("investigator_signature") or {}
    asked = (
        ", ".join(r.fields_asked)
        if r.kind == KIND_DISCLOSE
        else f"preservation for {r.preservation_days} days"
    )
    freeze: list[tuple[str, Any]] = []
    if r.kind == KIND_FREEZE:
        asked = f"freeze of EUR {r.amount_eur:,} for {r.preservation_days} days"
        freeze = [
            ("frozen until", r.frozen_until or "-"),
            ("released", r.released_at or "-"),
            ("released by", r.released_by or "-"),
            ("release reason", r.release_reason or "-"),
        ]
    disclosed = ""
    for number, held in enumerate(r.disclosed, 1):
        disclosed += f"<h3>Record {number}</h3>\n<table>\n{_rows(list(held.items()))}\n</table>\n"
    if not disclosed:
        disclosed = "<p>No data disclosed.</p>"
    title = f"Case {r.case_ref} — {r.kind} request {r.request_id} to {r.jurisdiction}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
th{{text-align:left;padding-right:1em;vertical-align:top}}td{{word-break:break-all}}
table{{border-collapse:collapse;margin-bottom:1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>State: <strong>{html.escape(state_label(r.state))}</strong></p>
<h2>Request</h2>
<table>
{
        _rows(
            [
                ("case", r.case_ref),
                ("requesting jurisdiction", r.investigator),
                ("requested jurisdiction", r.jurisdiction),
                ("kind", r.kind),
                ("legal basis", r.legal_basis),
                ("dataset", r.dataset),
                ("item", r.item),
                ("asked", asked),
                ("reason", r.reason or "-"),
                ("submitted", r.submitted_at),
                ("answer deadline", r.deadline or "-"),
            ]
        )
    }
</table>
<h2>Decision (approvals)</h2>
<table>
{
        _rows(
            [
                ("decided", r.decided_at or "not yet"),
                ("by", r.decided_by or "-"),
                ("reason", r.decision_reason or "-"),
                ("fields disclosed", r.fields_disclosed),
                ("fields withheld", r.fields_withheld),
                ("preserved until", r.preserved_until or "-"),
                *freeze,
                ("policy version", r.policy_version),
            ]
        )
    }
</table>
<h2>Disclosed data</h2>
{disclosed}
<h2>Signatures</h2>
<table>
{
        _rows(
            [
                ("node signature", signature.get("algorithm")),
                ("record SHA-256", signature.get("record_sha256")),
                ("signed at", r.signed_at),
                ("signature (hex)", signature.get("value")),
                ("investigator report SHA-256", investigator.get("report_sha256", "-")),
                ("investigator signature (hex)", investigator.get("value", "-")),
            ]
        )
    }
</table>
<h3>Node certificate</h3>
<pre>{html.escape(str(signature.get("certificate_pem", "")))}</pre>
<p>This page is a rendering. The JSON file beside it is the evidence: check it with
<code>fedtrace report verify FILE.json --ca CA.pem</code>.</p>
</body></html>
"""


def write_case_record(document: dict[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    """Write the signed case record as `stem.json` and its page as `stem.html` in `directory`."""
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        json_path.write_text(text, encoding="utf-8")
        html_path.write_text(case_record_html(document), encoding="utf-8")
    except OSError as exc:
        raise FedtraceError(f"{directory}: cannot write the case record: {exc.strerror}") from None
    return json_path, html_path
