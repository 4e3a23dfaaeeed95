"""Verifying the node's audit trail: every hash, signature, number and link, then the head.

The first problem is named: an entry edited, deleted, inserted or reordered,
entries missing at the end of the trail, a trail missing or replaced although the
node recorded its genesis (`node.audit.anchor`), an entry signed after its
signer's certificate was revoked, or a last line the node could not extend. Each
signer's certificate is checked against the federation CA when one is given;
entries signed before their key was revoked are listed in the notes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.pki import (
    InvalidCertificate,
    PkiError,
    identity_from_pem,
    verify_issued_by,
    verify_signature,
)
from fedtrace.revocation import Revocation, RevocationList
from node.audit.anchor import Anchor, anchor_problem
from node.audit.chain import (
    GENESIS,
    HEAD_FILE,
    SIGNERS_DIR,
    TRAIL_FILE,
    AuditError,
    certificate_fingerprint,
    entry_hash,
    entry_time,
    head_digest,
    read_trail_torn,
)
from node.audit.log import last_entry


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    problem: str  # the first problem, naming the entry; "" when ok
    notes: tuple[str, ...]


class _Signers:
    def __init__(
        self,
        directory: Path,
        ca_pem: bytes | None,
        jurisdiction: str | None,
        revoked: RevocationList | None = None,
    ) -> None:
        self.directory = directory
        self.ca_pem = ca_pem
        self.jurisdiction = jurisdiction
        self.revoked = revoked
        self.checked: dict[str, bytes] = {}
        self.revocations: dict[str, tuple[Revocation, dt.datetime, str]] = {}

    def revocation(self, fingerprint: str) -> tuple[Revocation, dt.datetime, str] | None:
        """The revocation of a (checked) signer: entry, time revoked, and who it is."""
        if self.revoked is None or fingerprint not in self.checked:
            return None
        if fingerprint not in self.revocations:
            try:
                identity = identity_from_pem(self.checked[fingerprint])
            except InvalidCertificate:
                return None
            found = self.revoked.find(identity)
            if found is None:
                return None
            at = entry_time({"time": found.revoked_at}) if found.revoked_at else _EPOCH_START
            self.revocations[fingerprint] = (found, at, identity.describe())
        return self.revocations[fingerprint]

    def certificate(self, fingerprint: str, at: dt.datetime) -> tuple[bytes | None, str]:
        if fingerprint in self.checked:
            return self.checked[fingerprint], ""
        path = self.directory / SIGNERS_DIR / f"{fingerprint}.pem"
        try:
            pem = path.read_bytes()
        except OSError:
            return None, f"its signer's certificate {path} is missing"
        if certificate_fingerprint(pem) != fingerprint:
            return None, f"{path} is not the certificate its name says"
        if self.ca_pem is not None:
            try:
                identity = verify_issued_by(pem, self.ca_pem, at=at)
            except (InvalidCertificate, PkiError) as exc:
                return None, f"its signer's certificate is not valid: {exc}"
            if self.jurisdiction and identity.jurisdiction != self.jurisdiction:
                return None, (
                    f"it is signed by {identity.describe()}, not by node {self.jurisdiction}"
                )
        self.checked[fingerprint] = pem
        return pem, ""


_EPOCH_START = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def verify_trail(
    directory: Path,
    *,
    ca_pem: bytes | None = None,
    jurisdiction: str | None = None,
    anchor: Anchor | None = None,
    revoked: RevocationList | None = None,
) -> Verification:
    """Check every entry's hash, signature, number and chain link, then the signed head.

    The first problem is named: an entry edited, deleted, inserted or reordered,
    entries missing at the end of the trail, a trail missing or replaced although
    `anchor` records its genesis, an entry signed after its signer was revoked in
    `revoked`, or a last line the node could not extend.
    """
    lines, head, torn = read_trail_torn(directory)
    torn_note: tuple[str, ...] = ()
    if torn and lines:  # a crash tore the last write: not an entry, and never in the head
        fragment = lines.pop()
        torn_note = (
            f"line {len(lines) + 1} is a torn write ({len(fragment)} characters, no newline), "
            "not an entry; the node sets it aside on its next append",
        )
    signers = _Signers(directory, ca_pem, jurisdiction, revoked)
    parsed: list[dict[str, Any] | None] = []
    for text in lines:
        try:
            value = json.loads(text)
            parsed.append(value if isinstance(value, dict) else None)
        except ValueError:
            parsed.append(None)
    anchored = anchor_problem(anchor, parsed[0] if parsed else None, directory)
    if anchored:
        return Verification(False, len(lines), anchored, ())
    revoked_notes: dict[str, str] = {}
    where_seq: dict[int, int] = {}
    for number, entry in enumerate(parsed, 1):
        if entry is not None and isinstance(entry.get("seq"), int):
            where_seq.setdefault(entry["seq"], number)

    def fail(message: str) -> Verification:
        return Verification(False, len(lines), message, ())

    previous_hash = GENESIS
    seen: dict[int, int] = {}
    for number, entry in enumerate(parsed, 1):
        expected = number
        if (
            entry is None
            or not isinstance(entry.get("seq"), int)
            or not all(
                isinstance(entry.get(k), str) for k in ("hash", "signature", "prev", "signer")
            )
        ):
            return fail(
                f"line {number} (entry {expected}) is not a well-formed audit entry: "
                "edited or inserted"
            )
        seq = int(entry["seq"])
        label = f"entry {seq} (line {number})"
        if entry_hash(entry) != entry["hash"]:
            return fail(f"{label} was edited: its content does not match its hash")
        pem, why = signers.certificate(str(entry["signer"]), entry_time(entry))
        if pem is None:
            return fail(f"{label} cannot be trusted: {why}")
        try:
            signed = verify_signature(
                pem, bytes.fromhex(entry["hash"]), bytes.fromhex(entry["signature"])
            )
        except ValueError:
            signed = False
        if not signed:
            return fail(
                f"{label} was edited or forged: its signature does not verify with the node's key"
            )
        revocation = signers.revocation(str(entry["signer"]))
        if revocation is not None:
            found, revoked_at, who = revocation
            why = f" ({found.reason})" if found.reason else ""
            if entry_time(entry) >= revoked_at:
                return fail(
                    f"{label} is signed by {who}, whose certificate was revoked at "
                    f"{found.revoked_at or 'an unknown time'}{why}, and dated after that"
                )
            revoked_notes.setdefault(
                str(entry["signer"]),
                f"entries from {label} on are signed by {who}, since revoked at "
                f"{found.revoked_at}{why}: they verify, but the key may have been misused",
            )
        if seq in seen:
            return fail(f"{label} was inserted: it repeats entry {seq} of line {seen[seq]}")
        if seq != expected:
            if seq > expected and expected not in where_seq:
                missing = (
                    f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
                )
                return fail(
                    f"{missing} deleted: line {number} holds entry {seq} where entry "
                    f"{expected} should be"
                )
            if expected in where_seq:
                return fail(
                    f"entries reordered: line {number} holds entry {seq}, but entry "
                    f"{expected} belongs here (it is at line {where_seq[expected]})"
                )
            return fail(f"{label} was inserted: entry {expected} belongs at line {number}")
        if entry["prev"] != previous_hash:
            return fail(
                f"{label} does not follow the entry before it (its chain link differs): "
                "an entry was inserted, deleted or reordered before it"
            )
        seen[seq] = number
        previous_hash = entry["hash"]
    result = _verify_head(head, parsed, signers, len(lines))
    notes = result.notes + torn_note + tuple(revoked_notes.values())
    if result.ok and not torn:
        try:
            last_entry(directory / TRAIL_FILE)
        except AuditError as exc:
            return Verification(False, len(lines), f"the node cannot extend this trail: {exc}", ())
    return Verification(result.ok, result.entries, result.problem, notes)


def _verify_head(
    head: dict[str, Any] | None,
    parsed: Sequence[dict[str, Any] | None],
    signers: _Signers,
    count: int,
) -> Verification:
    if head is None:
        if count == 0:
            return Verification(True, 0, "", ("the trail is empty",))
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) is missing: entries at the end may have been deleted",
            (),
        )
    fields = ("count", "last_hash", "time", "signer", "signature")
    if (
        head.get("unreadable")
        or not all(k in head for k in fields)
        or not isinstance(head["count"], int)
    ):
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) was edited: it is not a well-formed head",
            (),
        )
    pem, why = signers.certificate(str(head["signer"]), entry_time(head))
    try:
        signed = pem is not None and verify_signature(
            pem, head_digest(head), bytes.fromhex(str(head["signature"]))
        )
    except ValueError:
        signed = False
    if not signed:
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) was edited or forged"
            + (f": {why}" if why else ": its signature does not verify"),
            (),
        )
    recorded = int(head["count"])
    if recorded > count:
        missing = (
            f"entry {recorded}" if recorded == count + 1 else f"entries {count + 1}-{recorded}"
        )
        return Verification(
            False,
            count,
            f"{missing} deleted from the end of the trail (the "
            f"signed head records {recorded} entries, the file holds {count})",
            (),
        )
    last = parsed[recorded - 1] if recorded else None
    if recorded and (last is None or last.get("hash") != head["last_hash"]):
        return Verification(
            False,
            count,
            f"entry {recorded} does not match the signed head: the end of the trail was replaced",
            (),
        )
    notes: tuple[str, ...] = ()
    if recorded < count:  # a crash between an append and its head update
        notes = (
            f"the signed head records {recorded} of {count} entries (the node stopped "
            "between writing an entry and its head); the later entries verify on their own",
        )
    return Verification(True, count, "", notes)
