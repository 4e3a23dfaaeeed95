"""`fedtrace report verify`: re-check a saved JSON report against the federation CA.

For every result a node answered, the node signed a transcript of the exchange
(`fedtrace.transcript`). Verification recomputes the transcript's digest,
checks the node's certificate chains to the federation CA (at the time the
query was sent), that the certificate names the node the result is from, that
the signature is the node's, and that the result's visible fields (node,
disclosure, policy version, epoch, case, dataset, legal basis) agree with what
the node signed.

What a node signature proves, and what it does not: the node cannot know which
items matched (the coordinator computes that from the unblinded answer and the
node's filter), so `matched` and `match_count` are not covered by it. The
coordinator therefore signs the whole report with the investigator's key
(`investigator_signature`); that proves the report is what the investigator's
coordinator wrote, unchanged since, but it is the investigator's own statement,
not the node's. See docs/audit.md.

Aggregate and overlap reports carry their own transcripts (AggregateTranscript,
OverlapTranscript); coordinator/verify_kinds.py checks those results.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedtrace.aggregate_transcript import AggregateTranscript
from fedtrace.errors import ConfigError
from fedtrace.overlap_transcript import OverlapTranscript
from fedtrace.pki import (
    ROLE_INVESTIGATOR,
    ROLE_NODE,
    Identity,
    InvalidCertificate,
    PkiError,
    sign,
    verify_issued_by,
    verify_signature,
)
from fedtrace.transcript import SIGNATURE_ALGORITHM, Transcript

# Every kind of transcript a node signs; check_node_signature checks any of them.
SignedTranscript = TypeVar("SignedTranscript", Transcript, AggregateTranscript, OverlapTranscript)

REPORT_DOMAIN = b"fedtrace-report-v1\x00"
INVESTIGATOR_SIGNATURE = "investigator_signature"
_MEMBERSHIP_LEVELS = ("membership", "disclosure-request")
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Transcript)}


def report_digest(report: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in report.items() if k != INVESTIGATOR_SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(REPORT_DOMAIN + canonical.encode("utf-8")).digest()


def sign_report(report: dict[str, Any], key_pem: bytes, cert_pem: bytes) -> dict[str, Any]:
    """The report with the investigator's signature over everything else in it."""
    digest = report_digest(report)
    return {
        **report,
        INVESTIGATOR_SIGNATURE: {
            "algorithm": SIGNATURE_ALGORITHM,
            "report_sha256": digest.hex(),
            "value": sign(key_pem, digest).hex(),
            "certificate_pem": cert_pem.decode(),
        },
    }


@dataclass
class ReportVerification:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.lines.append(f"FAIL  {message}")

    def note(self, message: str) -> None:
        self.lines.append(f"ok    {message}")


def _transcript(document: object) -> Transcript:
    if not isinstance(document, dict) or set(document) != set(_FIELD_TYPES):
        raise ValueError("its transcript does not have exactly the transcript fields")
    for name, kind in _FIELD_TYPES.items():
        value = document[name]
        expected = {"str": str, "bool": bool, "int": int}[str(kind)]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"its transcript field {name!r} is not a {kind}")
    return Transcript.from_json(document)


def check_node_signature(
    node: str,
    signature: object,
    load: Callable[[object], SignedTranscript],
    ca_pem: bytes,
    outcome: ReportVerification,
) -> tuple[SignedTranscript, Identity] | None:
    """The transcript the node signed, when digest, certificate and signature all hold."""
    if not isinstance(signature, dict):
        outcome.fail(f"{node}: an ok result without the node's signature")
        return None
    try:
        transcript = load(signature.get("transcript"))
    except ValueError as exc:
        outcome.fail(f"{node}: {exc}")
        return None
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        outcome.fail(f"{node}: unknown signature algorithm {signature.get('algorithm')!r}")
        return None
    digest = transcript.digest()
    if signature.get("transcript_sha256") != digest.hex():
        outcome.fail(f"{node}: the transcript was altered (its digest does not match)")
        return None
    cert = str(signature.get("certificate_pem", "")).encode()
    when = dt.datetime.fromtimestamp(transcript.timestamp_unix_ms / 1000, dt.UTC)
    try:
        identity = verify_issued_by(cert, ca_pem, at=when)
    except (InvalidCertificate, PkiError) as exc:
        outcome.fail(f"{node}: the signing certificate does not chain to the federation CA: {exc}")
        return None
    if identity.role != ROLE_NODE or identity.jurisdiction != node:
        outcome.fail(f"{node}: signed by {identity.describe()}, not by node {node}")
        return None
    try:
        valid = verify_signature(cert, digest, bytes.fromhex(str(signature.get("value", ""))))
    except ValueError:
        valid = False
    if not valid:
        outcome.fail(
            f"{node}: the signature is not {node}'s signature over this transcript "
            "(forged or altered)"
        )
        return None
    return transcript, identity


def _check_result(
    result: Mapping[str, Any], report: Mapping[str, Any], ca_pem: bytes, outcome: ReportVerification
) -> str | None:
    """Check one result; returns the investigator its transcript names, when it verifies."""
    node = str(result.get("node", "?"))
    status = result.get("status")
    signature = result.get("signature")
    if status != "ok":
        if signature:
            outcome.fail(f"{node}: status {status!r} but the result carries a signature")
        else:
            outcome.note(f"{node}: {status} — not signed (only answers are signed)")
        return None
    checked = check_node_signature(node, signature, _transcript, ca_pem, outcome)
    if checked is None:
        return None
    transcript, identity = checked
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


def check_investigator(
    report: Mapping[str, Any],
    ca_pem: bytes,
    investigators: set[str],
    outcome: ReportVerification,
    required: bool,
) -> None:
    """Check the investigator's signature over a whole report (shared by every report kind)."""
    signature = report.get(INVESTIGATOR_SIGNATURE)
    if not isinstance(signature, dict):
        message = (
            "the report carries no investigator signature, so its matched lists and "
            "counts are covered by no signature"
        )
        if required:
            outcome.fail(message + " (pass --nodes-only to check only the node signatures)")
        else:
            outcome.lines.append(f"note  {message}")
        return
    digest = report_digest(report)
    if signature.get("report_sha256") != digest.hex():
        outcome.fail(
            "the report was altered after the investigator signed it (its digest does not match)"
        )
        return
    cert = str(signature.get("certificate_pem", "")).encode()
    try:
        identity = verify_issued_by(cert, ca_pem)
    except (InvalidCertificate, PkiError) as exc:
        try:  # a report stays verifiable after the investigator's certificate expired
            identity = verify_issued_by(
                cert, ca_pem, at=_signed_at(report) or dt.datetime.now(dt.UTC)
            )
        except (InvalidCertificate, PkiError):
            outcome.fail(
                f"the investigator's certificate does not chain to the federation CA: {exc}"
            )
            return
    if identity.role != ROLE_INVESTIGATOR or (
        investigators and investigators != {identity.jurisdiction}
    ):
        outcome.fail(
            f"the report is signed by {identity.describe()}, not by the investigator "
            f"the nodes answered ({', '.join(sorted(investigators)) or '?'})"
        )
        return
    try:
        valid = verify_signature(cert, digest, bytes.fromhex(str(signature.get("value", ""))))
    except ValueError:
        valid = False
    if not valid:
        outcome.fail(
            "the investigator's signature over the report is forged or the report was altered"
        )
        return
    outcome.note(f"report signed by {identity.describe()}")


def _signed_at(report: Mapping[str, Any]) -> dt.datetime | None:
    times = []
    for result in report.get("results", []):
        signature = result.get("signature") if isinstance(result, dict) else None
        if isinstance(signature, dict) and isinstance(signature.get("transcript"), dict):
            stamp = signature["transcript"].get("timestamp_unix_ms")
            if isinstance(stamp, int):
                times.append(stamp)
    return dt.datetime.fromtimestamp(max(times) / 1000, dt.UTC) if times else None


def verify_report(
    report: Mapping[str, Any], ca_pem: bytes, *, require_investigator_signature: bool = True
) -> ReportVerification:
    if report.get("document") == "fedtrace-followup-case-record-v1":  # docs/requests.md
        from coordinator.followup import verify_case_record

        return verify_case_record(
            dict(report), ca_pem, require_investigator_signature=require_investigator_signature
        )
    outcome = ReportVerification()
    results = report.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        outcome.fail("not a fedtrace report: no 'results' list")
        return outcome
    if not results:
        outcome.fail("the report holds no results")
        return outcome
    investigators: set[str] = set()
    if report.get("query") in ("aggregate", "overlap"):  # see coordinator/verify_kinds.py
        from coordinator.verify_kinds import verify_aggregate_results, verify_overlap_results

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
