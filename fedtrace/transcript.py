"""Signed transcripts: what a node signs over each answer, computed identically on both sides.

The node signs the SHA-256 of a canonical JSON document describing the query
and hashes of the points exchanged; the coordinator rebuilds the same document
from what it sent and received, verifies the signature with the node's
certificate, and keeps document and signature in its report.

``blinding`` says how the coordinator blinded the points (``multiplicative`` or
``additive``, docs/protocol.md) and, for additive blinding, ``blinding_point_sha256``
the SHA-256 of the node's announced ``C``. Both have defaults and are left out of
the signed JSON while they hold them, so a multiplicative transcript (and every
transcript signed before these fields existed) keeps its exact bytes and digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

TRANSCRIPT_DOMAIN = b"fedtrace-transcript-v1\x00"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"
MULTIPLICATIVE = "multiplicative"
#: Fields a transcript document may omit (older transcripts do); each has a default.
OPTIONAL_FIELDS = frozenset({"blinding", "blinding_point_sha256"})


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
    blinding: str = MULTIPLICATIVE  # "multiplicative" | "additive"
    blinding_point_sha256: str = ""  # SHA-256 of the node's C (additive blinding only)

    def signed_fields(self) -> dict[str, object]:
        """The fields the signature covers: all, minus optional fields at their defaults."""
        document = asdict(self)
        if self.blinding == MULTIPLICATIVE:
            del document["blinding"]
        if not self.blinding_point_sha256:
            del document["blinding_point_sha256"]
        return document

    def canonical_json(self) -> bytes:
        return json.dumps(self.signed_fields(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(TRANSCRIPT_DOMAIN + self.canonical_json()).digest()

    @classmethod
    def from_json(cls, document: dict[str, object]) -> Transcript:
        return cls(**document)  # type: ignore[arg-type]
