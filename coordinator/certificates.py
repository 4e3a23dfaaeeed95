"""Certificate checks on both ends: our own before any call, a node's on every answer, a report's.

`ensure_investigator_certificate` checks the investigator's certificate against the
federation CA before anything is sent; `check_node_certificate` checks the signing
certificate a node presents (issued by the CA, names that node, role node, not in
the federation's revocation list) for every query kind; `check_investigator` checks
the investigator's signature over a saved report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.federation import NodeEntry
from coordinator.results import NodeFailure
from coordinator.signatures import INVESTIGATOR_SIGNATURE, ReportVerification, report_digest
from fedtrace.errors import FedtraceError
from fedtrace.pki import (
    ROLE_INVESTIGATOR,
    ROLE_NODE,
    InvalidCertificate,
    PkiError,
    verify_issued_by,
    verify_signature,
)
from fedtrace.revocation import RevocationList
from fedtrace.wire import NodeStatus


def ensure_investigator_certificate(cert_pem: bytes, ca_pem: bytes, where: Path) -> str:
    """The investigator's own jurisdiction, after checking its certificate before any call."""
    try:
        identity = verify_issued_by(cert_pem, ca_pem)
    except InvalidCertificate as exc:
        raise FedtraceError(f"{where}: {exc}") from None
    return identity.jurisdiction


def check_node_certificate(
    entry: NodeEntry,
    certificate_pem: bytes,
    ca_pem: bytes,
    revoked: RevocationList | None = None,
) -> bytes:
    """The node's signing certificate, once it is the CA's, names `entry` and is not revoked."""
    try:
        identity = verify_issued_by(certificate_pem, ca_pem)
    except InvalidCertificate as exc:
        raise NodeFailure(
            NodeStatus.ERROR, f"{entry.name} presents an invalid signing certificate: {exc}"
        ) from None
    if identity.jurisdiction != entry.name or identity.role != ROLE_NODE:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.address} signs as {identity.describe()}, not as node {entry.name}",
        )
    if revoked is not None and revoked.find(identity) is not None:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"UNAUTHENTICATED: {entry.name}'s certificate ({identity.describe()}) is revoked in "
            "the federation's revocation list; its answer is not trusted",
        )
    return bytes(certificate_pem)


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
    if outcome.is_revoked("the investigator", identity):
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
