"""The signed transcript of an encrypted-aggregate query, computed identically on both sides.

The node signs, at the end of round 2, the SHA-256 of a canonical JSON document
describing both rounds: the query, the grant's terms it answered under
(min_cohort, epsilon, noise scale per figure), and digests of everything
exchanged (blinded points in and out, the public HE context and its parameter
set, the indicator, the answers, the total-only answering set with every member's
salt and agreement key). The coordinator rebuilds the same
document from what it sent and received and checks the signature with the
node's certificate. A report that shows a figure whose noisy count is below
``min_cohort`` contradicts what the node signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

AGGREGATE_TRANSCRIPT_DOMAIN = b"fedtrace-aggregate-transcript-v1\x00"


@dataclass(frozen=True)
class FigureTerms:
    """What the node declared for one figure: its unit, noise scale and 95% half-width."""

    figure: str
    decimals: int
    scale: float
    half_width_95: int


@dataclass(frozen=True)
class AggregateTranscript:
    jurisdiction: str
    investigator: str
    dataset: str
    epoch_id: str
    tags_sha256: str
    disclosure: str  # "aggregate"
    policy_version: str
    case_ref: str
    legal_basis: str
    nonce: str
    timestamp_unix_ms: int
    query_id: str
    item_count: int
    row_count: int
    total_only: bool
    min_cohort: int
    epsilon: float
    figures: tuple[FigureTerms, ...]
    request_sha256: str  # round 1: the blinded points received
    response_sha256: str  # round 1: the shuffled points answered
    public_context_sha256: str
    indicator_sha256: str  # SHA-256 over the indicator ciphertexts, in order
    answers_sha256: str  # SHA-256 over (figure, ciphertext) pairs, in order
    peers: tuple[str, ...]  # total-only: the answering set's codes, sorted
    total_nonce: str
    he_parameter_set: str = ""  # empty in transcripts signed before it was recorded
    # total-only: the digest that keys the masks (the nonce, every member's salt and key)
    answering_set_sha256: str = ""

    def canonical_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(AGGREGATE_TRANSCRIPT_DOMAIN + self.canonical_json()).digest()

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: Mapping[str, object]) -> AggregateTranscript:
        fields = dict(document)
        figures = fields.pop("figures")
        peers = fields.pop("peers")
        return cls(
            figures=tuple(FigureTerms(**f) for f in figures),  # type: ignore[attr-defined]
            peers=tuple(peers),  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )


def sequence_sha256(blobs: Iterable[bytes]) -> str:
    """SHA-256 over length-prefixed blobs, so boundaries are part of what is signed."""
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(len(blob).to_bytes(8, "big"))
        digest.update(blob)
    return digest.hexdigest()


def answers_sha256(answers: Iterable[tuple[str, bytes]]) -> str:
    return sequence_sha256(part for figure, blob in answers for part in (figure.encode(), blob))
