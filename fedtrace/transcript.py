"""Signed transcripts: what a node signs over each answer, computed identically on both sides.

The node signs the SHA-256 of a canonical JSON document describing the query
and hashes of the points exchanged; the coordinator rebuilds the same document
from what it sent and received, verifies the signature with the node's
certificate, and keeps document and signature in its report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

TRANSCRIPT_DOMAIN = b"fedtrace-transcript-v1\x00"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"


@dataclass(frozen=True)
class Transcript:
    jurisdiction: str
    investigator: str  # the investigator's jurisdiction code, from its certificate
    dataset: str
    epoch_id: str
    filter_sha256: str
    disclosure: str
    shuffled: bool
    policy_version: str
    case_ref: str
    legal_basis: str
    nonce: str
    timestamp_unix_ms: int
    item_count: int
    request_sha256: str  # SHA-256 of the concatenated blinded points received
    response_sha256: str  # SHA-256 of the concatenated points answered

    def canonical_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(TRANSCRIPT_DOMAIN + self.canonical_json()).digest()

    @classmethod
    def from_json(cls, document: dict[str, object]) -> Transcript:
        return cls(**document)  # type: ignore[arg-type]
