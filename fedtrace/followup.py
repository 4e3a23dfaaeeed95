"""Follow-up records: what a node signs about a disclosure, preservation or freeze request.

A follow-up (docs/requests.md) is answered with a record: the request as the node
received it (case, legal basis, dataset, item, reason, fields or period asked),
its state, the decision (who, when, why), the disclosed fields and their values,
and the policy version and the SHA-256 of the policy file it was decided under
(``policy_sha256``, from format v3). The node signs the SHA-256 of the record's canonical
JSON with its certificate key each time it reports the record; the coordinator
checks the signature and the certificate, and an exported case record carries
record, signature and certificate so a third party can check them again.

Shared by node and coordinator, so both compute the same bytes. Records of format
v3 are serialised with RFC 8785 (`fedtrace.canonical`); v1 and v2 records keep the
sorted compact UTF-8 `json.dumps` they were signed with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from fedtrace import canonical

RECORD_FORMAT = "fedtrace-followup-v3"
# v2 records (before policy binding) lack policy_sha256; v1 records (before freeze orders)
# lack the freeze fields too. Both still parse and verify.
RECORD_FORMAT_V2 = "fedtrace-followup-v2"
RECORD_FORMAT_V1 = "fedtrace-followup-v1"
RECORD_DOMAIN = b"fedtrace-followup-record-v1\x00"
EXPORT_DOCUMENT = "fedtrace-followup-case-record-v1"

KIND_DISCLOSE = "disclose"
KIND_PRESERVE = "preserve"
KIND_FREEZE = "freeze"  # a restraint order on the assets behind a hit
KINDS = (KIND_DISCLOSE, KIND_PRESERVE, KIND_FREEZE)

PENDING = "pending"
APPROVED = "approved"
PARTLY_APPROVED = "partly-approved"
REFUSED = "refused"
EXPIRED = "expired"
NO_RECORD = "no-record"
FROZEN = "frozen"  # freeze: approved, in force until `frozen_until`
RELEASED = "released"  # freeze: lifted by the officer before `frozen_until`
STATES = (PENDING, APPROVED, PARTLY_APPROVED, REFUSED, EXPIRED, NO_RECORD, FROZEN, RELEASED)
FINAL_STATES = (APPROVED, PARTLY_APPROVED, REFUSED, EXPIRED, NO_RECORD, RELEASED)
_FREEZE_FIELDS = ("amount_eur", "frozen_until", "released_at", "released_by", "release_reason")
_POLICY_FIELDS = ("policy_sha256",)
# The fields each older format lacks.
_ABSENT = {
    RECORD_FORMAT_V1: (*_FREEZE_FIELDS, *_POLICY_FIELDS),
    RECORD_FORMAT_V2: _POLICY_FIELDS,
}


def canonical_json(document: Any) -> bytes:
    """A record's signed bytes: RFC 8785 for format v3, the legacy sorted form before."""
    if isinstance(document, dict) and document.get("record_format") == RECORD_FORMAT:
        return canonical.canonical_json(document)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


@dataclass(frozen=True)
class FollowUpRecord:
    """One follow-up request and its decision, exactly as the node signs it."""

    request_id: str
    jurisdiction: str  # the node answering
    investigator: str  # the asking jurisdiction, from its certificate
    kind: str  # disclose | preserve | freeze
    state: str  # one of STATES
    case_ref: str
    legal_basis: str
    reason: str
    dataset: str
    item: str  # canonical identifier the request is about (the node learns it)
    fields_asked: list[str]
    preservation_days: int  # preserve, freeze: the period asked (after the policy's default)
    submitted_at: str  # ISO 8601 UTC
    deadline: str  # "" when the policy sets no answer_within_days
    decided_at: str
    decided_by: str  # "" | "policy" (automatic) | "officer" | "deadline"
    decision_reason: str
    fields_disclosed: list[str]
    fields_withheld: list[str]
    disclosed: list[dict[str, Any]]  # one object per record the node holds for the item
    preserved_until: str
    policy_version: str
    nonce: str  # hex, from the request's QueryContext: links the record to the audit trail
    signed_at: str
    record_format: str = field(default=RECORD_FORMAT)
    amount_eur: int = 0  # freeze: the amount to restrain, in whole euros
    frozen_until: str = ""  # freeze: end of the restraint, from the approval
    released_at: str = ""  # freeze: when the officer lifted it ("" while it holds)
    released_by: str = ""
    release_reason: str = ""
    policy_sha256: str = ""  # v3: SHA-256 of the policy file the request was decided under

    def as_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        for name in _ABSENT.get(self.record_format, ()):  # exactly the fields the node signed
            del document[name]
        return document

    def canonical_json(self) -> bytes:
        return canonical_json(self.as_json())

    def digest(self) -> bytes:
        return record_digest(self.canonical_json())

    @classmethod
    def from_json(cls, document: object) -> FollowUpRecord:
        """Parse a record strictly: exactly the record fields, each of its type."""
        names = {f.name: f.type for f in dataclasses.fields(cls)}
        if isinstance(document, dict):
            absent = _ABSENT.get(str(document.get("record_format")), ())
            names = {k: v for k, v in names.items() if k not in absent}
        if not isinstance(document, dict) or set(document) != set(names):
            raise ValueError("not a follow-up record: it does not have exactly the record fields")
        for name, kind in names.items():
            value = document[name]
            expected: type = {"str": str, "int": int}.get(str(kind), list)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(f"follow-up record field {name!r} is not a {kind}")
        if document["record_format"] not in (RECORD_FORMAT, RECORD_FORMAT_V2, RECORD_FORMAT_V1):
            raise ValueError(f"unknown follow-up record format {document['record_format']!r}")
        if document["state"] not in STATES or document["kind"] not in KINDS:
            raise ValueError("follow-up record has an unknown state or kind")
        return cls(**document)


def record_digest(record_json: bytes) -> bytes:
    return hashlib.sha256(RECORD_DOMAIN + record_json).digest()


def state_label(state: str) -> str:
    """How a state reads in a table: `partly-approved` is "partly approved"."""
    return state.replace("-", " ")
