"""The monitor's verdict on every sealed query of an export: consistent, misuse or unverifiable.

For each exported query the monitor checks, in this order: the investigator's
signature over the statement (with the exported certificate's key; the certificate
is not chained to any CA here, the node checked it at mTLS time, and a signature
that verifies under the key the node authenticated is what binds the investigator),
that the statement names this node, monitor, partner, dataset, epoch and case and
carries the node's own digests (points, indicator ciphertexts, the audit trail's
``opening_sha256``), and that the opening decrypts under the monitor's key to the
plaintext the statement signs. Then it recomputes what an honest client would have
sent (``fedtrace.monitor.recompute``): every point, and for an aggregate's second
round the indicator, decrypted with the opened HE secret key and compared with the
rows the opened round-1 items really match.

``misuse``: the seal opens, and what was sent differs from it (which point indices,
which indicator rows). ``unverifiable``: the investigator signed something that does
not open to what it sent (no decryption, a bad signature, other items altogether).
Both are provable misuse; the command exits 1 for either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedtrace import group
from fedtrace.errors import FedtraceError
from fedtrace.he import HeError, SecretHeContext
from fedtrace.monitor.export import ExportedQuery, MonitorExport
from fedtrace.monitor.recompute import (
    RecomputeError,
    additive_points,
    differing,
    honest_positions,
    indicator_finding,
    listed,
    multiplicative_points,
)
from fedtrace.opening import (
    KIND_AGGREGATE_INDICATOR,
    KIND_AGGREGATE_POINTS,
    KIND_MATCH,
    MODE_ADDITIVE,
    SUITE,
    Opening,
    OpeningError,
    SealedOpening,
    Statement,
    bitmap_positions,
    indicator_digest,
    open_sealed,
    points_digest,
)
from fedtrace.pki import ROLE_MONITOR, PkiError, identity_from_pem, verify_signature

CONSISTENT = "consistent"
MISUSE = "misuse"
UNVERIFIABLE = "unverifiable"


class MonitorKeyError(FedtraceError):
    """The monitor's key file is not a P-256 private key (usage error: nothing was checked)."""


def load_monitor_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The monitor's private key from the PEM `pki issue` wrote (unencrypted P-256)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, ValueError):
        raise MonitorKeyError(
            "the monitor key is not an unencrypted PEM private key: use key.pem from "
            "`fedtrace pki issue ... --role monitor`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise MonitorKeyError("the monitor key is not an ECDSA P-256 key")
    return key


def check_monitor_key(key: ec.EllipticCurvePrivateKey, cert_pem: bytes, monitor: str) -> None:
    """Refuse a key whose certificate (``cert.pem`` beside it) is not the export's monitor's.

    Without this a wrong key would make every honest query look unverifiable.
    """
    try:
        identity = identity_from_pem(cert_pem)
        public = x509.load_pem_x509_certificate(cert_pem).public_key()
    except (PkiError, ValueError):
        raise MonitorKeyError("the certificate beside the monitor key is unreadable") from None
    if identity.role != ROLE_MONITOR or identity.jurisdiction != monitor:
        raise MonitorKeyError(
            f"this export is monitor {monitor}'s; the key belongs to "
            f"{identity.jurisdiction} {identity.role}"
        )
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise MonitorKeyError("the monitor key does not belong to the certificate beside it")


@dataclass(frozen=True)
class Verdict:
    """The monitor's finding on one sealed query, with the evidence that supports it."""

    audit_seq: int
    partner: str
    case_ref: str
    time: str
    kind: str
    dataset: str
    epoch_id: str
    status: str
    reason: str = ""
    points: tuple[int, ...] = ()  # indices of points that differ from the recomputed ones
    positions: tuple[int, ...] = ()  # indicator rows that are weighted or outside the matches
    statement: bytes = b""
    signature: bytes = b""
    opened: bool = False  # the seal decrypted under the monitor's key

    def line(self) -> str:
        """One human line: who, when, what, which points or rows, and why."""
        found = ""
        if self.points:
            found = f" points {listed(self.points)}:"
        elif self.positions:
            found = f" indicator rows {listed(self.positions)}:"
        return (
            f"{self.status}: #{self.audit_seq} {self.partner} case {self.case_ref} {self.time} "
            f"{self.kind} {self.dataset}/{self.epoch_id}{found} {self.reason}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "audit_seq": self.audit_seq,
            "partner": self.partner,
            "case_ref": self.case_ref,
            "time": self.time,
            "kind": self.kind,
            "dataset": self.dataset,
            "epoch_id": self.epoch_id,
            "status": self.status,
            "reason": self.reason,
            "points": list(self.points),
            "positions": list(self.positions),
            "evidence": {"statement": self.statement.hex(), "signature": self.signature.hex()},
        }


@dataclass(frozen=True)
class MonitorReport:
    """Every verdict of one run; ``misuse`` counts the unverifiable ones too."""

    verdicts: tuple[Verdict, ...]

    @property
    def consistent(self) -> int:
        return sum(v.status == CONSISTENT for v in self.verdicts)

    @property
    def misuse(self) -> int:
        return len(self.verdicts) - self.consistent

    @property
    def opened(self) -> int:
        """How many seals decrypted under the key (none at all suggests the wrong key)."""
        return sum(v.opened for v in self.verdicts)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": len(self.verdicts),
            "consistent": self.consistent,
            "misuse": self.misuse,
            "queries": [v.as_json() for v in self.verdicts],
        }


class _Finding(Exception):
    """Internal: ends the checks of one query with a status and what was found."""

    def __init__(
        self,
        status: str,
        reason: str,
        points: Sequence[int] = (),
        positions: Sequence[int] = (),
    ) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.points, self.positions = tuple(points), tuple(positions)


@dataclass
class _Opened:
    """Round-1 openings already verified in this run, by (partner, nonce), for round 2."""

    by_nonce: dict[tuple[str, bytes], tuple[ExportedQuery, Opening]] = field(default_factory=dict)


def sealed_of(query: ExportedQuery, monitor: str) -> SealedOpening:
    """The sealed opening as it travelled (the export keeps monitor and suite once)."""
    return SealedOpening(
        monitor=monitor,
        suite=SUITE,
        enc=query.enc,
        ciphertext=query.ciphertext,
        statement=query.statement,
        signature=query.signature,
    )


def _statement(query: ExportedQuery, export: MonitorExport) -> Statement:
    """Signature first (the evidence), then the strict statement and what it must name."""
    try:
        signed = verify_signature(query.investigator_cert_pem, query.statement, query.signature)
    except PkiError as exc:
        reason = f"the exported investigator certificate is unusable: {exc}"
        raise _Finding(UNVERIFIABLE, reason) from None
    if not signed:
        raise _Finding(UNVERIFIABLE, "the statement's signature does not verify")
    try:
        statement = Statement.from_bytes(query.statement)
    except OpeningError as exc:
        raise _Finding(UNVERIFIABLE, f"the signed statement is malformed: {exc}") from None
    try:
        named = identity_from_pem(query.investigator_cert_pem).jurisdiction
    except PkiError as exc:
        raise _Finding(UNVERIFIABLE, f"the investigator certificate names no one: {exc}") from None
    expected = {
        "kind": query.kind,
        "monitor": export.monitor,
        "node": export.node,
        "dataset": query.dataset,
        "epoch_id": query.epoch_id,
        "case_ref": query.case_ref,
        "investigator": query.partner,
    }
    wrong = [key for key, value in expected.items() if getattr(statement, key) != value]
    if named != query.partner:
        wrong.append("certificate")
    if wrong:
        raise _Finding(
            UNVERIFIABLE, f"the statement does not name this query: {', '.join(wrong)} differ"
        )
    received_points = _points(query.received_points, "received")
    if query.kind != KIND_AGGREGATE_INDICATOR and statement.item_count != len(received_points):
        raise _Finding(
            UNVERIFIABLE,
            f"the statement names {statement.item_count} items; the node received "
            f"{len(received_points)} points",
        )
    received = points_digest(received_points)
    if query.kind != KIND_AGGREGATE_INDICATOR and (
        statement.points_sha256 != received or query.node_points_sha256 != received.hex()
    ):
        raise _Finding(
            UNVERIFIABLE, "the statement's points digest is not that of the points received"
        )
    if query.kind == KIND_AGGREGATE_INDICATOR and (
        statement.indicator_sha256 != indicator_digest(query.indicator_ciphertexts)
        or query.node_points_sha256 != statement.points_sha256.hex()
    ):
        raise _Finding(
            UNVERIFIABLE,
            "the statement's indicator or round-1 digest is not that of what the node received",
        )
    if sealed_of(query, export.monitor).digest().hex() != query.opening_sha256:
        raise _Finding(UNVERIFIABLE, "the audit trail binds another sealed opening")
    return statement


def _points(blob: bytes, what: str) -> list[bytes]:
    try:
        return group.split_points(blob)
    except group.InvalidPoint as exc:
        raise _Finding(UNVERIFIABLE, f"the exported {what} points are malformed: {exc}") from None


def _check_points(query: ExportedQuery, opening: Opening) -> None:
    """Recompute every point from the opened items and blinding; name those that differ."""
    blinding = opening.blinding
    assert blinding is not None  # Opening.from_bytes sets it for these kinds
    received = _points(query.received_points, "received")
    if len(opening.items) != len(received):
        raise _Finding(
            UNVERIFIABLE,
            f"the opening holds {len(opening.items)} items for {len(received)} points sent",
        )
    try:
        if blinding.mode == MODE_ADDITIVE:
            if blinding.blinding_point != query.blinding_point:
                raise _Finding(
                    MISUSE, "the opening claims another blinding point than the node's epoch"
                )
            expected = additive_points(opening.items, blinding.r, query.blinding_point)
        else:
            expected = multiplicative_points(opening.items, blinding.scalar)
        wrong = differing(expected, received)
    except RecomputeError as exc:
        raise _Finding(UNVERIFIABLE, f"the opening cannot be applied: {exc}") from None
    if wrong and len(wrong) == len(received):
        raise _Finding(
            UNVERIFIABLE,
            f"the opening is of other items or another blinding: none of {len(received)} "
            "points recomputes",
            points=wrong,
        )
    if wrong:
        raise _Finding(
            MISUSE,
            f"{len(wrong)} of {len(received)} points are not the opened items under the "
            "opened blinding",
            points=wrong,
        )


def _check_indicator(
    query: ExportedQuery,
    statement: Statement,
    opening: Opening,
    export: MonitorExport,
    opened: _Opened,
) -> None:
    """Decrypt the indicator with the opened key; compare with the rows round 1 matched."""
    round_one = opened.by_nonce.get((query.partner, statement.nonce))
    if round_one is None:
        raise _Finding(
            UNVERIFIABLE,
            "its round 1 is not in the export (or did not verify), so the honest "
            "indicator is unknown",
        )
    first, first_opening = round_one
    if points_digest(_points(first.received_points, "round-1")) != statement.points_sha256:
        raise _Finding(UNVERIFIABLE, "its statement names other round-1 points than round 1's")
    tags = export.tags(query.dataset, query.epoch_id)
    if tags is None:
        raise _Finding(UNVERIFIABLE, f"the export holds no position tags for {query.epoch_id}")
    blinding = first_opening.blinding
    assert blinding is not None
    try:
        honest = honest_positions(tags, _points(first.answer_points, "answer"), blinding.scalar)
        secret = SecretHeContext.from_secret_key(opening.he_secret_context)
        values: list[int] = []
        for blob in query.indicator_ciphertexts:
            values.extend(secret.decrypt_slots(blob))
        finding = indicator_finding(values, opening.row_count, honest)
    except (RecomputeError, HeError, RuntimeError) as exc:
        raise _Finding(UNVERIFIABLE, f"the indicator cannot be checked: {exc}") from None
    claimed = bitmap_positions(opening.indicator, opening.row_count)
    sent = [row for row in range(opening.row_count) if values[row] == 1]
    if finding.misuse:
        rows = sorted(finding.not_binary + finding.outside)
        parts = []
        if finding.not_binary:
            parts.append(f"{len(finding.not_binary)} rows weighted (not 0 or 1)")
        if finding.outside:
            parts.append(f"{len(finding.outside)} rows set that no watchlisted item matched")
        raise _Finding(
            MISUSE,
            "the indicator reveals more than the matches: " + "; ".join(parts),
            positions=rows,
        )
    if claimed != sent:
        raise _Finding(MISUSE, "the sealed indicator is not the one encrypted")


def verify_query(
    query: ExportedQuery, export: MonitorExport, key: ec.EllipticCurvePrivateKey, opened: _Opened
) -> Verdict:
    """The verdict on one query (round-1 openings are remembered in ``opened``)."""
    status, reason, opened_seal = CONSISTENT, "", False
    points: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    try:
        statement = _statement(query, export)
        try:
            opening = open_sealed(sealed_of(query, export.monitor), key)
        except OpeningError as exc:
            raise _Finding(UNVERIFIABLE, f"the sealed opening does not open: {exc}") from None
        opened_seal = True
        if query.kind in (KIND_MATCH, KIND_AGGREGATE_POINTS):
            if query.kind == KIND_AGGREGATE_POINTS:  # round 2 needs it, honest or not
                opened.by_nonce[(query.partner, statement.nonce)] = (query, opening)
            _check_points(query, opening)
        elif query.kind == KIND_AGGREGATE_INDICATOR:
            _check_indicator(query, statement, opening, export, opened)
        else:
            raise _Finding(UNVERIFIABLE, f"unknown query kind {query.kind!r}")
    except _Finding as finding:
        status, reason = finding.status, finding.reason
        points, positions = finding.points, finding.positions
    return Verdict(
        audit_seq=query.audit_seq,
        partner=query.partner,
        case_ref=query.case_ref,
        time=query.time,
        kind=query.kind,
        dataset=query.dataset,
        epoch_id=query.epoch_id,
        status=status,
        reason=reason,
        points=tuple(points),
        positions=tuple(positions),
        statement=query.statement,
        signature=query.signature,
        opened=opened_seal,
    )


def verify_export(
    export: MonitorExport,
    key: ec.EllipticCurvePrivateKey,
    *,
    case: str | None = None,
    since: dt.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MonitorReport:
    """Judge every query of ``export`` (only ``case``'s, only from ``since`` on, if given).

    A round 2 is judged with its round 1, so round 1 is opened even when the filters
    leave it out of the report.
    """

    def chosen(query: ExportedQuery) -> bool:
        if case is not None and query.case_ref != case:
            return False
        moment = query.moment()
        return since is None or (moment is not None and moment >= since)

    opened = _Opened()
    verdicts = []
    total = len(export.queries)
    for done, query in enumerate(export.queries, start=1):
        wanted = chosen(query)
        if wanted or query.kind == KIND_AGGREGATE_POINTS:
            verdict = verify_query(query, export, key, opened)
            if wanted:
                verdicts.append(verdict)
        if progress is not None:
            progress(done, total)
    return MonitorReport(tuple(verdicts))
