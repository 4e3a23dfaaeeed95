"""What a node signs over its side of an overlap query, computed identically by the coordinator.

A overlap spans several RPCs, so the node signs once, at close: the query context,
the roster, its own set size, and the SHA-256 of every point batch it sent and
received (its initial set, each relay hop, the notices). The coordinator
rebuilds the same document from the messages it relayed (it saw every one) and
checks the signature with the node's certificate. Only digests and counts: no
point and no identifier.

From version 2 (``v``) the signed bytes are RFC 8785 canonical JSON and bind
``policy_sha256``, the SHA-256 (hex) of the policy file the node joined under (as its
join answer gave it); a document without ``v`` is a version-1 transcript, signed as
before, without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from fedtrace.transcript import LEGACY_VERSION, serialise

OVERLAP_TRANSCRIPT_DOMAIN = b"fedtrace-overlap-transcript-v1\x00"


@dataclass(frozen=True)
class OverlapHop:
    """One relay pass of this node over one foreign set."""

    origin: str
    hop: int
    points: int
    received_sha256: str
    sent_sha256: str


@dataclass(frozen=True)
class OverlapTranscript:
    jurisdiction: str
    investigator: str
    dataset: str
    overlap_id: str
    roster: tuple[str, ...]
    reveal: bool
    disclosure: str
    policy_version: str
    case_ref: str
    legal_basis: str
    nonce: str
    timestamp_unix_ms: int
    set_size: int
    initial_sha256: str  # SHA-256 of the node's initial batches, concatenated
    hops: tuple[OverlapHop, ...] = field(default_factory=tuple)  # sorted by hop
    notices_sha256: str = ""  # reveal only: SHA-256 of the notices the node received
    min_cohort: int = 1  # the node's grant: counts below it are shown as "< k"
    reveal_to_owner: bool = False  # the node's grant: whether it asked to learn its shared items
    policy_sha256: str = ""  # SHA-256 (hex) of the node's policy file; version 2 only
    # The serialisation: both sides build version 2; a document without it is version 1.
    v: int = LEGACY_VERSION

    def signed_fields(self) -> dict[str, Any]:
        document = asdict(self)
        if self.v == LEGACY_VERSION:
            del document["v"], document["policy_sha256"]
        return document

    def canonical_json(self) -> bytes:
        return serialise(self.signed_fields(), self.v)

    def digest(self) -> bytes:
        return hashlib.sha256(OVERLAP_TRANSCRIPT_DOMAIN + self.canonical_json()).digest()

    @classmethod
    def from_json(cls, document: dict[str, object]) -> OverlapTranscript:
        fields = dict(document)
        fields["roster"] = tuple(fields["roster"])  # type: ignore[arg-type]
        fields["hops"] = tuple(
            OverlapHop(**hop)
            for hop in fields["hops"]  # type: ignore[attr-defined]
        )
        return cls(**fields)  # type: ignore[arg-type]
