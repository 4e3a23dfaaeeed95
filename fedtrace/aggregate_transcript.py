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

From version 2 (``v``) the signed bytes are RFC 8785 canonical JSON and the two
floats (``epsilon``, each figure's ``scale``) are signed as exact decimal strings
(`decimal_text`), so the bytes do not depend on how a JSON library prints floats.
A document without ``v`` is a version-1 transcript, signed as before.

Version 2 also binds ``policy_sha256`` (the SHA-256, hex, of the policy file the
node answered under) and, per figure, ``clip``: the ``[lo, hi]`` bounds the grant
clipped each record of that column to, in the figure's integer unit (value ×
10^decimals, as the node clips), or ``null`` for the match count and an unclipped
column. A version-1 document signs neither (`fedtrace.transcript.SINCE_V2`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from fedtrace.transcript import LEGACY_VERSION, serialise
from fedtrace.v1 import aggregate_pb2

AGGREGATE_TRANSCRIPT_DOMAIN = b"fedtrace-aggregate-transcript-v1\x00"


def decimal_text(value: float) -> str:
    """A float as the exact decimal string a transcript signs: ``0.5``, ``20.0``, ``0.0000001``
    (the shortest decimal that reads back as the same float, never in exponent form)."""
    text = format(Decimal(repr(float(value))), "f")
    return text if "." in text else f"{text}.0"


@dataclass(frozen=True)
class FigureTerms:
    """What the node declared for one figure: its unit, noise scale, 95% half-width and clip."""

    figure: str
    decimals: int
    scale: float
    half_width_95: int
    # (lo, hi) each record was clipped to, in units of 10^-decimals; None: not clipped
    clip: tuple[int, int] | None = None

    @classmethod
    def from_noise(cls, noise: aggregate_pb2.FigureNoise) -> FigureTerms:
        """The terms a round-1 summary declares for one figure, as the transcript signs them."""
        clip = (int(noise.clip_lo), int(noise.clip_hi)) if noise.clipped else None
        return cls(noise.figure, noise.decimals, noise.scale, noise.half_width_95, clip)


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
    policy_sha256: str = ""  # SHA-256 (hex) of the node's policy file; version 2 only
    # The serialisation: both sides build version 2; a document without it is version 1.
    v: int = LEGACY_VERSION

    def signed_fields(self) -> dict[str, Any]:
        """The document the signature covers; from version 2, floats as exact decimal strings."""
        document = asdict(self)
        if self.v == LEGACY_VERSION:
            del document["v"], document["policy_sha256"]
            for figure in document["figures"]:
                del figure["clip"]
            return document
        document["epsilon"] = decimal_text(self.epsilon)
        for figure in document["figures"]:
            figure["scale"] = decimal_text(figure["scale"])
            figure["clip"] = None if figure["clip"] is None else list(figure["clip"])
        return document

    def canonical_json(self) -> bytes:
        return serialise(self.signed_fields(), self.v)

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
            figures=tuple(_figure_terms(f) for f in figures),  # type: ignore[attr-defined]
            peers=tuple(peers),  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )


def _figure_terms(document: Mapping[str, Any]) -> FigureTerms:
    """One figure's terms from JSON, where ``clip`` is a list (or null, or absent: version 1)."""
    fields = dict(document)
    clip = fields.pop("clip", None)
    return FigureTerms(**fields, clip=None if clip is None else (clip[0], clip[1]))


def sequence_sha256(blobs: Iterable[bytes]) -> str:
    """SHA-256 over length-prefixed blobs, so boundaries are part of what is signed."""
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(len(blob).to_bytes(8, "big"))
        digest.update(blob)
    return digest.hexdigest()


def answers_sha256(answers: Iterable[tuple[str, bytes]]) -> str:
    return sequence_sha256(part for figure, blob in answers for part in (figure.encode(), blob))
