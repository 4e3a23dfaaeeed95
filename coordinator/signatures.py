"""Signatures over reports: the investigator signs each report; verifiers check node transcripts.

`sign_report` adds `investigator_signature` over everything else in a report;
`check_node_signature` checks one node's signature over any kind of transcript it
signs (match, aggregate, overlap); `policy_mismatches` compares the policy file digest
a result shows with the one its transcript binds; `check_audit_head` checks the signed
audit head a result carries; `ReportVerification` collects what a verifier found, line
by line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedtrace.aggregate_transcript import AggregateTranscript
from fedtrace.audit_head import SignedHead
from fedtrace.overlap_transcript import OverlapTranscript
from fedtrace.pki import (
    ROLE_NODE,
    Identity,
    InvalidCertificate,
    PkiError,
    sign,
    verify_issued_by,
    verify_signature,
)
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM, TRANSCRIPT_VERSION, Transcript

# Every kind of transcript a node signs; check_node_signature checks any of them.
SignedTranscript = TypeVar("SignedTranscript", Transcript, AggregateTranscript, OverlapTranscript)

REPORT_DOMAIN = b"fedtrace-report-v1\x00"
INVESTIGATOR_SIGNATURE = "investigator_signature"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    # The federation's signed revocation list: a signature by a revoked certificate fails.
    revoked: RevocationList | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.lines.append(f"FAIL  {message}")

    def note(self, message: str) -> None:
        self.lines.append(f"ok    {message}")

    def is_revoked(self, who: str, identity: Identity) -> bool:
        """Fail (and say so) when `identity`'s certificate is in the revocation list."""
        entry = self.revoked.find(identity) if self.revoked is not None else None
        if entry is None:
            return False
        self.fail(
            f"{who}: signed with a certificate the federation revoked at {entry.revoked_at} "
            f"({identity.describe()}{'; ' + entry.reason if entry.reason else ''})"
        )
        return True


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
    if outcome.is_revoked(node, identity):
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


def policy_mismatches(result: Mapping[str, Any], transcript: SignedTranscript) -> list[str]:
    """The policy file SHA-256 a result shows against the one its transcript binds.

    A version-2 transcript binds the SHA-256 of the node's policy file; a version-1
    transcript binds none, and its result shows none.
    """
    shown, signed = result.get("policy_sha256", ""), transcript.policy_sha256
    if transcript.v >= TRANSCRIPT_VERSION and not _SHA256_HEX.fullmatch(signed):
        return [f"the node signed {signed!r}, not the SHA-256 of a policy file"]
    if shown != signed:
        return [f"policy_sha256 shows {shown!r} but the node signed {signed!r}"]
    return []


def check_audit_head(node: str, result: Mapping[str, Any], outcome: ReportVerification) -> bool:
    """The result's signed audit head, if it carries one, is `node`'s under the certificate
    that signed its transcript (checked first, by `check_node_signature`).

    Reports written before heads existed carry none: nothing to check.
    """
    document = result.get("audit_head")
    if document is None:
        return True
    signature = result.get("signature")
    certificate_pem = (
        str(signature.get("certificate_pem", "")).encode() if isinstance(signature, dict) else b""
    )
    try:
        head = SignedHead.from_dict(document)
    except ValueError as exc:
        outcome.fail(f"{node}: its audit head is malformed: {exc}")
        return False
    if head.jurisdiction != node or not head.verifies(certificate_pem):
        outcome.fail(f"{node}: signed audit head does not verify")
        return False
    return True
