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

``v`` is the serialisation: 2 (every transcript signed now) is RFC 8785 canonical
JSON (`fedtrace.canonical`), reproducible byte for byte by any implementation; a
document without ``v`` is a version-1 transcript from before, serialised as
Python's sorted compact `json.dumps`, and still verifies.

Version 2 also binds ``policy_sha256``, the SHA-256 (hex) of the policy file the node
answered under, not only its free-text ``policy_version`` (and, in an aggregate
transcript, each figure's clip bounds). These are `SINCE_V2` fields: a version-2
document carries them, a version-1 document signs none of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from fedtrace.canonical import canonical_json

TRANSCRIPT_DOMAIN = b"fedtrace-transcript-v1\x00"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"
MULTIPLICATIVE = "multiplicative"
#: The serialisation of transcripts signed now: RFC 8785 (version 1: sorted `json.dumps`).
TRANSCRIPT_VERSION = 2
LEGACY_VERSION = 1
#: Fields version 2 added: the policy file's digest, and an aggregate figure's clip bounds.
SINCE_V2 = frozenset({"policy_sha256", "clip"})
#: Fields a transcript document may omit (older transcripts do); each has a default.
OPTIONAL_FIELDS = frozenset({"blinding", "blinding_point_sha256", "v", "policy_sha256"})


def check_version(document: Mapping[str, object]) -> int:
    """A stored transcript's ``v`` (absent: 1); ValueError unless it is one this code signs."""
    version = document.get("v", LEGACY_VERSION)
    if version not in (LEGACY_VERSION, TRANSCRIPT_VERSION):
        raise ValueError(f"its transcript has an unknown serialisation version {version!r}")
    return TRANSCRIPT_VERSION if version == TRANSCRIPT_VERSION else LEGACY_VERSION


def check_since_v2(
    document: Mapping[str, object],
    fields: Iterable[str],
    version: int,
    where: str = "its transcript",
) -> None:
    """ValueError if a version-2 document lacks one of ``fields`` that version 2 added, or a
    version-1 document gives one a value its signature does not cover."""
    for name in sorted(SINCE_V2.intersection(fields)):
        if version >= TRANSCRIPT_VERSION and name not in document:
            raise ValueError(f"{where} lacks {name!r}, which version {version} signs")
        if version < TRANSCRIPT_VERSION and document.get(name) not in (None, ""):
            raise ValueError(f"{where} is version {version}, which cannot sign {name!r}")


def serialise(document: Mapping[str, object], version: int) -> bytes:
    """A transcript document's signed bytes: RFC 8785 from version 2, the legacy form before."""
    if version >= TRANSCRIPT_VERSION:
        return canonical_json(document)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


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
    policy_sha256: str = ""  # SHA-256 (hex) of the node's policy file; version 2 only
    # The serialisation: both sides build version 2; a document without it is version 1.
    v: int = LEGACY_VERSION

    def signed_fields(self) -> dict[str, object]:
        """The fields the signature covers: all, minus optional fields at their defaults."""
        document = asdict(self)
        if self.blinding == MULTIPLICATIVE:
            del document["blinding"]
        if not self.blinding_point_sha256:
            del document["blinding_point_sha256"]
        if self.v == LEGACY_VERSION:
            del document["v"], document["policy_sha256"]
        return document

    def canonical_json(self) -> bytes:
        return serialise(self.signed_fields(), self.v)

    def digest(self) -> bytes:
        return hashlib.sha256(TRANSCRIPT_DOMAIN + self.canonical_json()).digest()

    @classmethod
    def from_json(cls, document: dict[str, object]) -> Transcript:
        return cls(**document)  # type: ignore[arg-type]
